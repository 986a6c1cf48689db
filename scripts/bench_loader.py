"""Data-loader throughput (images/s at 128 and 256 px, 2 workers) next to what training consumes.

    python scripts/bench_loader.py [--shards data/shards] [--workers 2] [--batches 40]

Training's consumption is read from the training stages' metrics (batch size / median seconds per step) when
they exist; the loader keeps up when its rate is well above it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from pipeline.config.schema import load_params
from pipeline.data.shards import shard_urls, train_loader

STAGES = {128: ("train_128", "metrics/pretrain_vae.json"), 256: ("train_256", "metrics/finetune_vae.json")}


def loader_rate(urls: list[str], resolution: int, batch_size: int, workers: int, batches: int) -> float:
    iterator = iter(train_loader(urls, resolution, batch_size, seed=0, num_workers=workers))
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in itertools.islice(iterator, batches):
        pass
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    urls = shard_urls(args.shards, "train")
    params = load_params("params.yaml", "train_128", "train_256")
    print(f"{'resolution':>10} {'loader img/s':>13} {'training img/s':>15} {'headroom':>9}")
    for resolution, (section, metrics_path) in STAGES.items():
        batch_size = params[section].batch_size
        rate = loader_rate(urls, resolution, batch_size, args.workers, args.batches)
        consumed = None
        if Path(metrics_path).is_file():
            metrics = json.loads(Path(metrics_path).read_text())
            consumed = metrics["batch_size"] / metrics["sec_per_step"]
        headroom = f"{rate / consumed:8.0f}x" if consumed else "      n/a"
        shown = f"{consumed:15.1f}" if consumed else f"{'(not trained)':>15}"
        print(f"{resolution:>10} {rate:13.1f} {shown} {headroom}")


if __name__ == "__main__":
    main()
