"""Where source images come from: the embedded photos, a folder, or existing WebDataset shards.

Each source yields `SourceFile`s: a display name, a split group (files of one group always land in the same
split, e.g. the two views of a stereo pair) and a way to read the bytes. Files that cannot even be
considered (wrong extension, unreadable) are yielded as `Unreadable` so the manifest lists them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
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
    name: str
    group: str
    read: Callable[[], bytes]


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
        yield _file_source(path, f"{package}:{relative}", group)
    if include_debian_wallpapers:
        for pattern in DEBIAN_PHOTO_GLOBS:
            root, glob = pattern.rsplit("/", 1)
            for path in sorted(Path(root).glob(glob)):
                yield _file_source(path, str(path), f"debian:{path.stem}")


def folder_sources(folder: str | Path) -> Iterator[SourceFile | Unreadable]:
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"data.path: folder '{folder}' does not exist; point data.path at a folder of images")
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        name = str(path.relative_to(folder))
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            yield Unreadable(name, f"extension '{path.suffix}' is not one of {', '.join(IMAGE_EXTENSIONS)}")
            continue
        yield _file_source(path, name, name)


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
        data = sample[field]
        yield SourceFile(name, key, lambda data=data: data)


def _file_source(path: Path, name: str, group: str) -> SourceFile:
    return SourceFile(name, group, path.read_bytes)
