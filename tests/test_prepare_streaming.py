"""prepare streams: the same bytes for any number of decoding workers, class-folder trees listed in a fixed
order, nothing half-written when a run fails; validation keeps only the crops it scores; the training stream
reads shards served over HTTP; and new images in the watched folder make DVC rerun prepare."""

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline.config.schema import DataConfig
from pipeline.data import prepare as prepare_module
from pipeline.data.prepare import prepare
from pipeline.data.shards import INDEX, load_images, shard_urls, train_loader
from pipeline.orchestration.dvc_stages import is_stale
from pipeline.training.vae_validation import validation_crops

REPO = Path(__file__).resolve().parents[1]


def _photo(path: Path, size: tuple[int, int], seed: int, **kwargs) -> None:
    """A smooth random image (width, height) saved at `path`."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(path, **kwargs)


@pytest.fixture(scope="module")
def class_tree(tmp_path_factory):
    """An ImageNet-style tree of class folders n00, n01, n02 of *.JPEG (upper-case extension), plus a bad file
    and a duplicate."""
    root = tmp_path_factory.mktemp("imagenet")
    for label in range(3):
        for index in range(5):
            _photo(root / f"n0{label}" / f"n0{label}_{index}.JPEG", (72 + 4 * index, 64), 10 * label + index,
                   format="JPEG", quality=90)
    (root / "n01" / "broken.JPEG").write_bytes(b"not a jpeg")
    shutil.copy(root / "n00" / "n00_0.JPEG", root / "n02" / "copy.jpeg")
    return root


def _cfg(root, **overrides) -> DataConfig:
    base = dict(source="folder", path=str(root), storage_size=64, min_size=48, val_fraction=0.25,
                shard_max_samples=2, seed=0)
    return DataConfig(**{**base, **overrides})


def _run(root, out, **overrides) -> tuple[dict, dict]:
    summary = prepare(_cfg(root, **overrides), out / "shards", out / "manifest.json", out / "sheet.png")
    return summary, json.loads((out / "manifest.json").read_text())


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_is_byte_identical_for_one_and_two_workers(tmp_path, class_tree):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(class_tree, one, workers=1)
    _run(class_tree, two, workers=2)
    first, second = _files(one), _files(two)
    # the manifest names the shards by their paths, which differ in the output folder only
    second["manifest.json"] = second["manifest.json"].replace(str(two).encode(), str(one).encode())
    assert first == second  # shards, index.json, manifest.json and the contact sheet
    assert not list(one.glob(".*")) and not list((one / "shards").glob(".*"))  # no temporary leftovers


def test_class_tree_is_listed_in_order_split_by_image_and_sharded_as_it_fills(tmp_path, class_tree):
    summary, manifest = _run(class_tree, tmp_path, workers=2)
    names = [s["name"] for s in manifest["sources"]]
    assert names == sorted(names) and names[0] == "n00/n00_0.JPEG" and len(names) == 15
    reasons = {s["name"]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {"n01/broken.JPEG": reasons["n01/broken.JPEG"], "n02/copy.jpeg": "duplicate of n00/n00_0.JPEG"}
    assert reasons["n01/broken.JPEG"].startswith("not an image")
    # 16 listed groups (the broken file counts, the duplicate too): round(0.25 * 16) = 4 val groups, 1 unusable
    assert summary["val_images"] + summary["train_images"] == 15 and 3 <= summary["val_images"] <= 4
    index = json.loads((tmp_path / "shards" / INDEX).read_text())
    for split, count in (("train", summary["train_images"]), ("val", summary["val_images"])):
        local = [Path(u).name for u in shard_urls(tmp_path / "shards", split)]
        assert index[split] == local == [f"{split}-{i:06d}.tar" for i in range(len(local))]  # no gaps
        assert len(local) == (count if count < 4 else 4 * -(-count // 8))  # 4 slots of shard_max_samples=2
        assert len(load_images(shard_urls(tmp_path / "shards", split))) == count


def test_split_does_not_move_when_an_image_is_added(tmp_path, class_tree):
    _, before = _run(class_tree, tmp_path / "a")
    tree = tmp_path / "tree"
    shutil.copytree(class_tree, tree)
    _photo(tree / "n03" / "new.JPEG", (70, 66), 99, format="JPEG")
    _, after = _run(tree, tmp_path / "b")
    split_before = {s["name"]: s["split"] for s in before["sources"]}
    split_after = {s["name"]: s["split"] for s in after["sources"]}
    moved = [name for name in split_before if split_before[name] != split_after[name]]
    assert len(moved) <= 1


def test_a_failed_run_keeps_the_previous_outputs_and_leaves_no_temporary_files(tmp_path, class_tree, monkeypatch):
    _run(class_tree, tmp_path, workers=1)
    before = _files(tmp_path)
    real_write = prepare_module.SplitShardWriter.write
    calls = []

    def failing_write(self, sample):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        real_write(self, sample)

    monkeypatch.setattr(prepare_module.SplitShardWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        _run(class_tree, tmp_path, workers=2)
    assert _files(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shards", "sheet.png"]


def test_validation_crops_stream_the_round_robin_of_all_images(tmp_path, class_tree):
    _run(class_tree, tmp_path, storage_size=160, min_size=48)
    urls = shard_urls(tmp_path / "shards", "train")
    per_image = []
    for _, pixels in load_images(urls):  # the whole set in memory: the reference
        height, width = pixels.shape[:2]
        rows, cols = height // 32, width // 32
        top0, left0 = (height - rows * 32) // 2, (width - cols * 32) // 2
        per_image.append([pixels[top0 + r * 32: top0 + (r + 1) * 32, left0 + c * 32: left0 + (c + 1) * 32]
                          for r in range(rows) for c in range(cols)])
    order = [t[i] for i in range(max(map(len, per_image))) for t in per_image if i < len(t)]
    for count in (3, len(per_image) + 5, 1000):
        crops = validation_crops(urls, 32, count)  # (N, 3, 32, 32)
        expected = np.stack(order[:count])
        assert torch.equal(crops, torch.from_numpy(expected).float().div(127.5).sub(1).permute(0, 3, 1, 2))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _http_server(folder: Path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{base}/{INDEX}", timeout=1).close()
                break
            time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_training_stream_reads_shards_served_over_http(tmp_path, class_tree):
    _run(class_tree, tmp_path, storage_size=64, min_size=48)
    local = shard_urls(tmp_path / "shards", "train")
    with _http_server(tmp_path / "shards") as base:
        remote = shard_urls(base, "train")
        assert remote == [f"{base}/{Path(u).name}" for u in local]
        batches = [list(zip(range(3), train_loader(urls, 32, batch_size=2, seed=0, num_workers=0)))
                   for urls in (local, remote)]
        assert len(batches[1]) == 3
        for (_, a), (_, b) in zip(*batches):
            assert torch.equal(a, b)
        with pytest.raises(FileNotFoundError, match="index.json"):
            shard_urls(f"{base}/nowhere", "train")


def test_new_image_in_the_watched_folder_makes_prepare_stale(tmp_path, monkeypatch):
    from dvc.repo import Repo

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    for package in ("stages", "pipeline", "models"):
        shutil.copytree(REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    images = tmp_path / "images"
    for index in range(3):
        _photo(images / f"{index}.png", (70, 64), index)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="folder", path=str(images), watch=str(images), storage_size=64, min_size=48)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    # The stage's outputs, made in-process (the stage command itself is tested elsewhere), committed to dvc.lock
    # as `dvc repro prepare` would leave them.
    prepare(DataConfig(**params["data"]), repo / "data/shards", repo / "data/manifest.json",
            repo / "plots/prepare/contact_sheet.png")
    (repo / "metrics").mkdir()
    (repo / "metrics/prepare.json").write_text("{}")
    monkeypatch.chdir(repo)
    with Repo.init(str(repo)) as dvc:
        dvc.commit("prepare", force=True)
    assert not is_stale(repo, "prepare")

    _photo(images / "new.png", (66, 64), 7)
    assert is_stale(repo, "prepare")  # what the scheduled Prefect flow checks before it runs the stage
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "prepare"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout
    assert f"modified:           {images}" in status


def test_a_folder_outside_data_watch_is_refused_by_the_stage(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  source: folder\n  path: {tmp_path}\n")
    result = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(params), "--shards", "s",
                             "--manifest", "m.json", "--contact-sheet", "c.png", "--metrics", "x.json"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert f"data.watch: 'pipeline/data/sources.py' does not contain data.path '{tmp_path}'" in result.stderr
