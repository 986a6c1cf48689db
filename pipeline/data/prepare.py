"""The `prepare` stage: source images -> train/val WebDataset shards, a manifest and a contact sheet.

The split is by source group (never by crop), decided by a seeded shuffle of the groups ordered by content
hash, so it is deterministic for a seed and independent of file-system order.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from pipeline.config.schema import DataConfig
from pipeline.core.errors import UserError
from pipeline.core.files import atomic_dir, write_bytes, write_json
from pipeline.core.grid import labelled_grid
from pipeline.data.images import DecodedImage, Rejected, decode_image, encode_png
from pipeline.data.sources import (
    SourceFile,
    Unreadable,
    embedded_sources,
    folder_sources,
    shard_sources,
)

MIN_SHARDS = 4  # so 2 DataLoader workers x 2 ranks each get a shard of their own
CONTACT_SHEET_COLUMNS = 8  # images shown per split


@dataclass(frozen=True)
class Accepted:
    name: str
    group: str
    sha256: str
    image: DecodedImage


class EmptyDatasetError(UserError):
    """No usable image was found in the configured source."""


def prepare(cfg: DataConfig, shards_dir: Path, manifest_path: Path, contact_sheet_path: Path) -> dict:
    """Run the stage; returns the summary metrics (also written into the manifest)."""
    accepted, skipped = _collect(_sources(cfg), cfg)
    if not accepted:
        raise EmptyDatasetError(
            f"data.source={cfg.source!r}{f' data.path={cfg.path!r}' if cfg.path else ''}: no usable image "
            f"({len(skipped)} skipped, reasons in the log above); point data.path at images of at least "
            f"{cfg.min_size}px"
        )
    splits = split_by_group(accepted, cfg.val_fraction, cfg.seed)
    with atomic_dir(shards_dir) as tmp_dir:
        shards = {name: _write_shards(items, tmp_dir, name, cfg.shard_max_samples) for name, items in splits.items()}
    shards = {name: [str(Path(shards_dir) / Path(p).name) for p in paths] for name, paths in shards.items()}
    summary = {
        "train_images": len(splits["train"]),
        "val_images": len(splits["val"]),
        "skipped_files": len(skipped),
        "train_groups": len({a.group for a in splits["train"]}),
        "val_groups": len({a.group for a in splits["val"]}),
    }
    manifest = {
        "config": asdict(cfg),
        "counts": summary,
        "shards": shards,
        "sources": [_describe(a, split) for split, items in splits.items() for a in items],
        "skipped": skipped,
    }
    write_json(manifest_path, manifest)
    _write_contact_sheet(splits, contact_sheet_path, cfg.seed)
    return summary


def split_by_group(items: list[Accepted], val_fraction: float, seed: int) -> dict[str, list[Accepted]]:
    """Assign whole groups to train or val; at least one group each when there are two or more."""
    groups = sorted({a.group: min(b.sha256 for b in items if b.group == a.group) for a in items}.items(),
                    key=lambda kv: kv[1])
    names = [g for g, _ in groups]
    random.Random(seed).shuffle(names)
    if len(names) < 2:
        raise EmptyDatasetError(
            f"only {len(names)} usable source image group(s): a train/val split needs at least 2; add images"
        )
    n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    val_groups = set(names[:n_val])
    ordered = sorted(items, key=lambda a: a.sha256)
    return {
        "train": [a for a in ordered if a.group not in val_groups],
        "val": [a for a in ordered if a.group in val_groups],
    }


def _sources(cfg: DataConfig) -> Iterable[SourceFile | Unreadable]:
    if cfg.source == "embedded":
        return embedded_sources(cfg.include_debian_wallpapers)
    if cfg.source == "folder":
        return folder_sources(cfg.path)
    return shard_sources(cfg.path)


def _collect(sources: Iterable[SourceFile | Unreadable], cfg: DataConfig) -> tuple[list[Accepted], list[dict]]:
    accepted: list[Accepted] = []
    skipped: list[dict] = []
    seen: dict[str, str] = {}
    for source in tqdm(sources, desc="prepare: decoding sources", unit="img"):
        if isinstance(source, Unreadable):
            skipped.append({"name": source.name, "reason": source.reason})
            continue
        try:
            data = source.read()
        except OSError as err:
            skipped.append({"name": source.name, "reason": f"unreadable: {err}"})
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            skipped.append({"name": source.name, "reason": f"duplicate of {seen[digest]}"})
            continue
        result = decode_image(data, min_size=cfg.min_size, max_pixels=cfg.max_pixels, storage_size=cfg.storage_size)
        if isinstance(result, Rejected):
            skipped.append({"name": source.name, "reason": result.reason})
            continue
        seen[digest] = source.name
        accepted.append(Accepted(source.name, source.group, digest, result))
    for item in skipped:
        tqdm.write(f"prepare: skipped {item['name']}: {item['reason']}")
    return accepted, skipped


def _write_shards(items: list[Accepted], folder: Path, split: str, max_samples: int) -> list[str]:
    """Write `items` round-robin into at least MIN_SHARDS tar shards (fewer only if fewer images)."""
    n_shards = min(len(items), max(MIN_SHARDS, math.ceil(len(items) / max_samples)))
    paths = [folder / f"{split}-{index:06d}.tar" for index in range(n_shards)]
    writers = [wds.TarWriter(str(path), mtime=0) for path in paths]  # mtime 0: byte-identical reruns
    try:
        for index, item in enumerate(tqdm(items, desc=f"prepare: writing {split} shards", unit="img")):
            height, width = item.image.pixels.shape[:2]
            writers[index % n_shards].write({
                "__key__": f"{item.sha256[:16]}",
                "png": encode_png(item.image.pixels),
                "json": json.dumps({"name": item.name, "group": item.group, "sha256": item.sha256,
                                    "width": width, "height": height}).encode(),
            })
    finally:
        for writer in writers:
            writer.close()
    return [str(p) for p in paths]


def _describe(item: Accepted, split: str) -> dict:
    height, width = item.image.pixels.shape[:2]
    return {
        "name": item.name,
        "group": item.group,
        "split": split,
        "sha256": item.sha256,
        "original_size": list(item.image.original_size),
        "stored_size": [width, height],
        "conversions": list(item.image.conversions),
    }


def _write_contact_sheet(splits: dict[str, list[Accepted]], path: Path, seed: int, tile: int = 128) -> None:
    """A grid of one random square crop (side up to 2 x `tile`, resized to `tile` px) of each of the first
    CONTACT_SHEET_COLUMNS images of each split, one row per split."""
    rng = np.random.default_rng(seed)
    rows = []
    for items in splits.values():
        row = []
        for item in items[:CONTACT_SHEET_COLUMNS]:
            pixels = item.image.pixels
            height, width = pixels.shape[:2]
            side = min(height, width, 2 * tile)
            top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
            crop = Image.fromarray(pixels[top:top + side, left:left + side])
            row.append(np.asarray(crop.resize((tile, tile), Image.Resampling.BICUBIC)))
        rows.append(row)
    title = (f"prepare: one random crop (side up to {2 * tile} px, shown at {tile} px) of each of the first "
             f"{CONTACT_SHEET_COLUMNS} images per split")
    row_labels = [f"{split} ({len(items)} images)" for split, items in splits.items()]
    write_bytes(path, labelled_grid(rows, title, row_labels, [""] * max(map(len, rows))))
