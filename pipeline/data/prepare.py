"""The `prepare` stage: source images -> train/val WebDataset shards, a manifest and a contact sheet, streamed.

Two passes over the listing, never over the pixels held at once:
1. the split: each source group gets a seeded hash of its name, and the `round(val_fraction * groups)` groups with
   the smallest hashes are val (at least one group each). It is decided from the listing alone, so it is
   deterministic for a seed, independent of decode order and of the number of workers, and adding an image moves
   at most one other group across the split (a `shards` source is read twice: this pass needs its keys);
2. the data: worker processes decode the sources (pipeline/data/decoding.py); results come back in listing
   order and go straight into the shards of their split (pipeline/data/shard_writer.py), each shard closed when
   full, and into a JSON-lines log of the manifest.
Memory holds the images in flight (a few per worker) and small per-file records: one 8-byte hash per group, and
the content hash and name of each accepted image (duplicate detection). The output is byte-identical for any
number of workers. Everything is written into a temporary folder that replaces `shards_dir` at the end, and the
manifest is assembled from its log and renamed into place, so a killed run leaves the previous outputs intact.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.config.parsing import ConfigError
from pipeline.config.schema import DataConfig
from pipeline.core.errors import UserError
from pipeline.core.files import atomic_dir, atomic_path, write_bytes, write_json
from pipeline.core.grid import labelled_grid
from pipeline.data.decoding import Limits, Skipped, Stored, default_workers, examine_all
from pipeline.data.shard_writer import SplitShardWriter
from pipeline.data.shards import INDEX
from pipeline.data.sources import (
    SourceFile,
    Unreadable,
    embedded_sources,
    folder_sources,
    shard_sources,
)

SPLITS = ("train", "val")
SHEET_IMAGES = 8  # contact sheet columns: the first images of each split
NEUTRAL_KEYS = ("workers", "watch")  # data params that change how prepare runs, never what it writes


class EmptyDatasetError(UserError):
    """No usable image was found in the configured source."""


def prepare(cfg: DataConfig, shards_dir: Path, manifest_path: Path, contact_sheet_path: Path) -> dict:
    """Run the stage; returns the summary metrics (also written into the manifest)."""
    val_below = val_threshold(_sources(cfg), cfg.val_fraction, cfg.seed)
    workers = cfg.workers or default_workers()
    limits = Limits(cfg.min_size, cfg.max_pixels, cfg.storage_size)
    with _removing_new_parents(shards_dir), atomic_dir(shards_dir) as tmp_dir:
        run = _Run(tmp_dir, cfg.shard_max_samples)
        try:
            results = examine_all(_sources(cfg), limits, workers)
            for result in tqdm(results, desc=f"prepare: decoding on {workers} worker(s)", unit="img"):
                if isinstance(result, Skipped):
                    run.skip(result.name, result.reason)
                    continue
                place = group_hash(result.group, cfg.seed)
                run.add(result, "val" if val_below is not None and place <= val_below else "train", place)
        finally:
            shards = run.close()
        summary = run.summary()
        _check_usable(cfg, summary)
        write_json(tmp_dir / INDEX, shards)
        _write_manifest(manifest_path, cfg, summary,
                        {split: [str(Path(shards_dir) / name) for name in names] for split, names in shards.items()},
                        run.logs)
        for log in run.logs.values():
            log.unlink()
    _write_contact_sheet(run.sheet, run.images, contact_sheet_path, cfg.seed)
    return summary


def check_watched(cfg: DataConfig) -> None:
    """A folder source must lie inside data.watch (dvc.yaml's dependency of prepare), or new images there would
    never rerun prepare."""
    if cfg.source != "folder":
        return
    folder, watched = Path(cfg.path).resolve(), Path(cfg.watch).resolve()
    if watched != folder and watched not in folder.parents:
        raise ConfigError(f"data.watch: {cfg.watch!r} does not contain data.path {cfg.path!r}, so DVC would not "
                          f"see new images; set data.watch={cfg.path}")


def group_hash(group: str, seed: int) -> int:
    """A seeded 64-bit hash of a split group's name: the group's place in the split order."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{group}".encode(), digest_size=8).digest(), "big")


def val_threshold(sources: Iterable[SourceFile | Unreadable], val_fraction: float, seed: int) -> int | None:
    """The largest group hash that is still val: round(val_fraction * groups) groups, at least one, at most all but
    one; None when fewer than two groups are listed (everything goes to train and the split check fails)."""
    hashes = np.unique(np.fromiter((group_hash(s.group, seed) for s in sources if isinstance(s, SourceFile)),
                                   dtype=np.uint64))  # (groups,), sorted
    if len(hashes) < 2:
        return None
    n_val = min(len(hashes) - 1, max(1, round(val_fraction * len(hashes))))
    return int(hashes[n_val - 1])


def _sources(cfg: DataConfig) -> Iterator[SourceFile | Unreadable]:
    if cfg.source == "embedded":
        return embedded_sources(cfg.include_debian_wallpapers)
    if cfg.source == "folder":
        return folder_sources(cfg.path)
    return shard_sources(cfg.path)


class _Run:
    """One pass of writing: the shards of both splits, the manifest's JSON-lines logs, counts, contact-sheet PNGs."""

    def __init__(self, folder: Path, max_samples: int):
        self.writers = {split: SplitShardWriter(folder, split, max_samples) for split in SPLITS}
        self.logs = {"sources": folder / ".sources.jsonl", "skipped": folder / ".skipped.jsonl"}
        self.files = {name: path.open("w") for name, path in self.logs.items()}
        self.seen: dict[bytes, str] = {}  # content hash (first 16 bytes) -> name of the first image with it
        self.images = dict.fromkeys(SPLITS, 0)
        self.groups: dict[str, set[int]] = {split: set() for split in SPLITS}
        self.sheet: dict[str, list[bytes]] = {split: [] for split in SPLITS}
        self.skipped = 0

    def skip(self, name: str, reason: str) -> None:
        tqdm.write(f"prepare: skipped {name}: {reason}")
        self.files["skipped"].write(json.dumps({"name": name, "reason": reason}) + "\n")
        self.skipped += 1

    def add(self, item: Stored, split: str, group_key: int) -> None:
        digest = bytes.fromhex(item.sha256[:32])
        if digest in self.seen:
            self.skip(item.name, f"duplicate of {self.seen[digest]}")
            return
        self.seen[digest] = item.name
        width, height = item.stored_size
        self.writers[split].write({
            "__key__": item.sha256[:16],
            "png": item.png,
            "json": json.dumps({"name": item.name, "group": item.group, "sha256": item.sha256,
                                "width": width, "height": height}).encode(),
        })
        self.files["sources"].write(json.dumps({
            "name": item.name, "group": item.group, "split": split, "sha256": item.sha256,
            "original_size": list(item.original_size), "stored_size": [width, height],
            "conversions": list(item.conversions)}) + "\n")
        self.images[split] += 1
        self.groups[split].add(group_key)
        if len(self.sheet[split]) < SHEET_IMAGES:
            self.sheet[split].append(item.png)

    def close(self) -> dict[str, list[str]]:
        """Close shards and logs (again: a no-op); {split: shard file names}."""
        for file in self.files.values():
            file.close()
        return {split: writer.close() for split, writer in self.writers.items()}

    def summary(self) -> dict:
        return {
            "train_images": self.images["train"],
            "val_images": self.images["val"],
            "skipped_files": self.skipped,
            "train_groups": len(self.groups["train"]),
            "val_groups": len(self.groups["val"]),
        }


def _check_usable(cfg: DataConfig, summary: dict) -> None:
    if summary["train_images"] + summary["val_images"] == 0:
        raise EmptyDatasetError(
            f"data.source={cfg.source!r}{f' data.path={cfg.path!r}' if cfg.path else ''}: no usable image "
            f"({summary['skipped_files']} skipped, reasons in the log above); point data.path at images of at "
            f"least {cfg.min_size}px"
        )
    if not summary["train_groups"] or not summary["val_groups"]:
        groups = summary["train_groups"] + summary["val_groups"]
        raise EmptyDatasetError(
            f"only {groups} usable source image group(s) and none of them in "
            f"{'val' if summary['train_groups'] else 'train'}: a train/val split needs at least 2; add images "
            "(or change data.seed)"
        )


@contextmanager
def _removing_new_parents(path: Path) -> Iterator[None]:
    """On error, remove the (empty) parent folders of `path` that did not exist before, so a failed run leaves
    nothing behind."""
    missing = [p for p in Path(path).absolute().parents if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        for parent in missing:
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()
        raise


def _write_manifest(path: Path, cfg: DataConfig, summary: dict, shards: dict[str, list[str]],
                    logs: dict[str, Path]) -> None:
    """manifest.json from the JSON-lines logs, streamed (one line per source or skipped file), renamed into place."""
    config = {key: value for key, value in asdict(cfg).items() if key not in NEUTRAL_KEYS}
    with atomic_path(path) as tmp, tmp.open("w") as out:
        out.write(f'{{\n  "config": {json.dumps(config)},\n  "counts": {json.dumps(summary)},\n'
                  f'  "shards": {json.dumps(shards)}')
        for name, log in logs.items():
            out.write(f',\n  "{name}": [')
            with log.open() as lines:
                for index, line in enumerate(lines):
                    out.write(f'{"," if index else ""}\n    {line.rstrip()}')
            out.write("\n  ]")
        out.write("\n}\n")


def _write_contact_sheet(sheet: dict[str, list[bytes]], counts: dict[str, int], path: Path, seed: int,
                         tile: int = 128) -> None:
    """A grid of one random square crop (side up to 2 x `tile`, shown at `tile` px) of each of the first
    SHEET_IMAGES images of each split, one row per split labelled with the split's image count."""
    rng = np.random.default_rng(seed)
    rows = []
    for images in sheet.values():
        row = []
        for png in images:
            with Image.open(io.BytesIO(png)) as image:
                pixels = np.asarray(image.convert("RGB"))
            height, width = pixels.shape[:2]
            side = min(height, width, 2 * tile)
            top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
            crop = Image.fromarray(pixels[top:top + side, left:left + side])
            row.append(np.asarray(crop.resize((tile, tile), Image.Resampling.BICUBIC)))
        rows.append(row)
    title = (f"prepare: one random crop (side up to {2 * tile} px, shown at {tile} px) of each of the first "
             f"{SHEET_IMAGES} images per split")
    row_labels = [f"{split} ({counts[split]} images)" for split in sheet]
    write_bytes(path, labelled_grid(rows, title, row_labels, [""] * max(map(len, rows))))
