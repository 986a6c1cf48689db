"""prepare's throughput and peak memory on generated photo-like JPEGs, for two dataset sizes and 1 or 2 workers.

    python scripts/bench_prepare.py [--sizes 500 2000] [--workers 1 2] [--keep DIR]

The images (smooth random colour fields plus sensor-like noise, 512-800 px a side, JPEG quality 90) are made once
in a temporary folder; the smaller sets are symlinks to the first images of the largest. Each configuration runs
the real path, `pipeline.data.prepare.prepare` on a folder source with the default storage and size limits, in a
fresh Python process, so no configuration inherits another's memory. Reported per configuration:
- images/s: source images over the wall time of `prepare` in that process (imports excluded);
- tree PSS: the peak memory of the process and its decoding workers together, sampled every 50 ms with psutil as
  the sum of their proportional set sizes (a page shared by k processes counts 1/k in each: the forked workers
  share the parent's imported libraries, which a sum of RSS would count once per process);
- tree RSS: the same sampling with plain RSS (the upper bound);
- main RSS: `resource.getrusage(RUSAGE_SELF).ru_maxrss` of the process itself (exact, not sampled).
Then the done-when ratios of issue 15: tree PSS large/small for each worker count (target <= 1.10) and speed
2 workers / 1 worker for each size (target >= 1.6). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

RSS_TARGET = 1.10
SPEED_TARGET = 1.6
SAMPLE_SECONDS = 0.05


def photo(rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB image: a bicubically upsampled coarse colour field with Gaussian noise, 512-800 px a side."""
    width, height = (int(v) for v in rng.integers(512, 801, 2))
    coarse = rng.integers(0, 256, (int(rng.integers(4, 12)), int(rng.integers(4, 12)), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    noisy = field + rng.normal(0.0, 6.0, field.shape).astype(np.float32)  # (H, W, 3)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_images(root: Path, sizes: list[int]) -> dict[int, Path]:
    """{size: a folder of `size` JPEGs}; the largest holds the files, the others link to its first ones."""
    largest = root / f"images_{max(sizes)}"
    largest.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(max(sizes)):
        photo(rng).save(largest / f"{index:06d}.jpg", quality=90)
    folders = {max(sizes): largest}
    for size in sorted(set(sizes) - {max(sizes)}):
        folder = root / f"images_{size}"
        folder.mkdir()
        for index in range(size):
            (folder / f"{index:06d}.jpg").symlink_to(largest / f"{index:06d}.jpg")
        folders[size] = folder
    return folders


def child(folder: Path, workers: int, out: Path) -> None:
    """The measured process: prepare `folder` with `workers` workers; prints one JSON line."""
    from pipeline.config.schema import DataConfig
    from pipeline.data.prepare import prepare

    cfg = DataConfig(source="folder", path=str(folder), workers=workers, watch=str(folder))
    start = time.perf_counter()
    summary = prepare(cfg, out / "shards", out / "manifest.json", out / "contact_sheet.png")
    seconds = time.perf_counter() - start
    images = summary["train_images"] + summary["val_images"] + summary["skipped_files"]
    print(json.dumps({
        "images": images, "seconds": seconds,
        "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    }))


def measure(folder: Path, workers: int, out: Path) -> dict:
    """Run `child` in a fresh interpreter while sampling its process tree's RSS."""
    process = psutil.Popen([sys.executable, __file__, "--child", str(folder), str(workers), str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = {"pss": 0, "rss": 0}

    def sample() -> None:
        while process.poll() is None:
            try:
                tree = [p.memory_full_info() for p in [process, *process.children(recursive=True)]]
                peak["pss"] = max(peak["pss"], sum(m.pss for m in tree))
                peak["rss"] = max(peak["rss"], sum(m.rss for m in tree))
            except psutil.Error:
                pass  # a worker ended between listing and reading
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"prepare failed for {folder} with {workers} worker(s) (exit {process.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "pss_mb": peak["pss"] / 2**20, "rss_mb": peak["rss"] / 2**20,
            "rate": result["images"] / result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", type=Path, help="generate into (and keep) this folder instead of a temporary one")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "WORKERS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), Path(args.child[2]))
        return

    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as scratch:
        root = args.keep or Path(scratch)
        print(f"generating {max(args.sizes)} images in {root} ...", flush=True)
        folders = make_images(root, args.sizes)
        results = {}
        print(f"{'images':>7} {'workers':>7} {'img/s':>8} {'tree PSS MB':>12} {'tree RSS MB':>12} {'main RSS MB':>12}")
        for size in sorted(args.sizes):
            for workers in sorted(args.workers):
                r = measure(folders[size], workers, Path(scratch) / f"out_{size}_{workers}")
                results[size, workers] = r
                print(f"{size:>7} {workers:>7} {r['rate']:>8.1f} {r['pss_mb']:>12.0f} {r['rss_mb']:>12.0f} "
                      f"{r['main_mb']:>12.0f}", flush=True)
    small, large = min(args.sizes), max(args.sizes)
    if small != large:
        for workers in sorted(args.workers):
            ratio = results[large, workers]["pss_mb"] / results[small, workers]["pss_mb"]
            print(f"tree PSS {large}/{small} images, {workers} worker(s): {ratio:.3f} "
                  f"({'meets' if ratio <= RSS_TARGET else 'misses'} <= {RSS_TARGET})")
    if 1 in args.workers and 2 in args.workers:
        for size in sorted(args.sizes):
            ratio = results[size, 2]["rate"] / results[size, 1]["rate"]
            print(f"speed 2/1 workers, {size} images: {ratio:.2f}x "
                  f"({'meets' if ratio >= SPEED_TARGET else 'misses'} >= {SPEED_TARGET})")


if __name__ == "__main__":
    main()
