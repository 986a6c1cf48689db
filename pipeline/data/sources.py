"""Where source images come from: the embedded photos, a folder tree, or existing WebDataset shards.

Each source yields `SourceFile`s in a deterministic order: a display name, a split group (files of one group
always land in the same split, e.g. the two views of a stereo pair) and the file's path or bytes. A `SourceFile`
pickles small (a path, not its bytes, for files), so decoding workers read the files themselves. Files that cannot
even be considered (wrong extension, missing package) are yielded as `Unreadable` so the manifest lists them.

Folders are walked lazily, one directory at a time, in sorted order (so an ImageNet-style tree of class folders
is never listed whole in memory); extensions match case-insensitively (`.JPEG`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import MissingInputError
from pipeline.data.images import IMAGE_EXTENSIONS

# (package, path inside the package, split group). Real photographs only.
EMBEDDED_PHOTOS = (
    ("skimage", "data/astronaut.png", "astronaut"),
    ("skimage", "data/chelsea.png", "chelsea"),
    ("skimage", "data/coffee.png", "coffee"),
    ("skimage", "data/rocket.jpg", "rocket"),
    ("skimage", "data/hubble_deep_field.jpg", "hubble_deep_field"),
    ("skimage", "data/ihc.png", "immunohistochemistry"),
    ("skimage", "data/retina.jpg", "retina"),
    ("skimage", "data/motorcycle_left.png", "stereo_motorcycle"),
    ("skimage", "data/motorcycle_right.png", "stereo_motorcycle"),
    ("sklearn", "datasets/images/china.jpg", "china"),
    ("sklearn", "datasets/images/flower.jpg", "flower"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "grace_hopper"),
)

# Photographs from Debian's wallpaper packages, used when installed (`make data-extras`). The MATE
# "abstract" and "desktop" sets are renders, not photos, and are left out.
DEBIAN_PHOTO_GLOBS = (
    "/usr/share/backgrounds/*_by_*.jpg",  # lomiri-wallpapers-16.04
    "/usr/share/backgrounds/mate/nature/*.jpg",  # mate-backgrounds
)


@dataclass(frozen=True)
class SourceFile:
    """One candidate image: a file at `path`, or bytes already in hand (`content`, from a shard)."""

    name: str
    group: str
    path: str | None = None
    content: bytes | None = None

    def read(self) -> bytes:
        return self.content if self.content is not None else Path(self.path).read_bytes()


@dataclass(frozen=True)
class Unreadable:
    name: str
    reason: str


def embedded_sources(include_debian_wallpapers: bool) -> Iterator[SourceFile | Unreadable]:
    for package, relative, group in EMBEDDED_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            yield Unreadable(f"{package}:{relative}", f"package '{package}' is not installed")
            continue
        path = Path(spec.origin).parent / relative
        yield SourceFile(f"{package}:{relative}", group, path=str(path))
    if include_debian_wallpapers:
        for pattern in DEBIAN_PHOTO_GLOBS:
            root, glob = pattern.rsplit("/", 1)
            for path in sorted(Path(root).glob(glob)):
                yield SourceFile(str(path), f"debian:{path.stem}", path=str(path))


def folder_sources(folder: str | Path) -> Iterator[SourceFile | Unreadable]:
    """Every non-hidden file under `folder` (recursively, sorted by relative path); names are relative paths."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"data.path: folder '{folder}' does not exist; point data.path at a folder of images")
    return _walk(folder, folder)


def _walk(root: Path, directory: Path) -> Iterator[SourceFile | Unreadable]:
    # Sorted by name with folders and files interleaved, as sorting the full relative paths would order them.
    with os.scandir(directory) as entries:
        visible = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in visible:
        if entry.is_dir():
            yield from _walk(root, Path(entry.path))
            continue
        if not entry.is_file():
            continue
        name = Path(entry.path).relative_to(root).as_posix()
        suffix = Path(entry.name).suffix
        if suffix.lower() not in IMAGE_EXTENSIONS:
            yield Unreadable(name, f"extension '{suffix}' is not one of {', '.join(IMAGE_EXTENSIONS)}")
            continue
        yield SourceFile(name, name, path=entry.path)


def shard_sources(url: str) -> Iterator[SourceFile | Unreadable]:
    """Samples of existing WebDataset shards; the first image-typed field of each sample is used."""
    import webdataset as wds

    extensions = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
    dataset = wds.WebDataset(url, shardshuffle=False, empty_check=False)
    for sample in dataset:
        key = sample["__key__"]
        name = f"{sample.get('__url__', url)}#{key}"
        field = next((k for k in sample if k.lower().rsplit(".", 1)[-1] in extensions), None)
        if field is None:
            yield Unreadable(name, f"sample has no image field ({', '.join(extensions)})")
            continue
        yield SourceFile(name, key, content=sample[field])
