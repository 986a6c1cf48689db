"""Where source images come from: the embedded photos, a folder tree, or existing WebDataset shards.

Each source yields `SourceFile`s in a deterministic order: a display name, a split group (files of one group
always land in the same split, e.g. the two views of a stereo pair) and the file's path or bytes. A `SourceFile`
pickles small (a path, not its bytes, for files), so decoding workers read the files themselves. Entries that cannot
even be considered (wrong extension, missing package, broken symbolic link, FIFO or device, a folder that cannot
be listed, a symbolic link back to a folder already walked) are yielded as `Unreadable` so the manifest lists them.

Folders are walked lazily, one directory at a time, in sorted order (so an ImageNet-style tree of class folders
is never listed whole in memory: only the identity of each folder walked is kept, to stop at symbolic-link loops);
symbolic links to files and to other folders are followed; extensions match case-insensitively (`.JPEG`).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import MissingInputError, UserError
from pipeline.data.images import IMAGE_EXTENSIONS
from pipeline.data.shards import is_url

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


class UnreadableShard(UserError):
    """A shard of a `shards` source that cannot be opened or read as a tar file."""


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
    return _walk(folder, folder, {_identity(folder.stat())})


def _walk(root: Path, directory: Path, listed: set[tuple[int, int]]) -> Iterator[SourceFile | Unreadable]:
    """`listed` holds the (device, inode) of every folder walked so far, so that reaching one again through a
    symbolic link (a loop, or a second link to the same folder) is recorded instead of followed."""
    try:
        with os.scandir(directory) as entries:
            # Sorted by name with folders and files interleaved, as sorting the full relative paths would order them.
            visible = sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        yield Unreadable(f"{directory.relative_to(root).as_posix()}/", f"folder cannot be listed: {err.strerror}")
        return
    for entry in visible:
        name = Path(entry.path).relative_to(root).as_posix()
        if entry.is_dir():
            identity = _identity(entry.stat())
            if identity in listed:
                yield Unreadable(name, f"folder {os.path.realpath(entry.path)} already listed through another path "
                                       "(a symbolic-link loop, or a second link to it): not walked again")
                continue
            listed.add(identity)
            yield from _walk(root, Path(entry.path), listed)
            continue
        if not entry.is_file():
            yield Unreadable(name, _not_a_file(entry))
            continue
        suffix = Path(entry.name).suffix
        if suffix.lower() not in IMAGE_EXTENSIONS:
            yield Unreadable(name, f"extension '{suffix}' is not one of {', '.join(IMAGE_EXTENSIONS)}")
            continue
        yield SourceFile(name, name, path=entry.path)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _not_a_file(entry: os.DirEntry) -> str:
    if entry.is_symlink() and not os.path.exists(entry.path):
        return f"broken symbolic link: its target '{os.readlink(entry.path)}' does not exist (or is a link loop)"
    return "not a regular file or folder (a FIFO, socket or device)"


def shard_sources(url: str) -> Iterator[SourceFile | Unreadable]:
    """Samples of existing WebDataset shards; the first image-typed field of each sample is used, and the split
    group is the one `prepare` stored in the sample's json (so the views of a stereo pair stay together), else the
    sample's key. Raises `UnreadableShard` for a shard that cannot be read."""
    import webdataset as wds

    extensions = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
    for shard in expand_shards(url):
        try:
            for sample in wds.WebDataset([shard], shardshuffle=False, empty_check=False):
                name = f"{shard}#{sample['__key__']}"
                field = next((k for k in sample if k.lower().rsplit(".", 1)[-1] in extensions), None)
                if field is None:
                    yield Unreadable(name, f"sample has no image field ({', '.join(extensions)})")
                    continue
                yield SourceFile(name, _stored_group(sample) or sample["__key__"], content=sample[field])
        except Exception as err:
            # webdataset appends the stream and the URL to the exception's args: keep the message only
            message = err.args[0] if err.args and isinstance(err.args[0], str) else str(err)
            raise UnreadableShard(f"data.path={url!r}: shard {shard} cannot be read ({type(err).__name__}: "
                                  f"{message}); replace or remove it, or narrow data.path") from err


def expand_shards(url: str) -> list[str]:
    """data.path's shards: braces expanded (`train-{000000..000099}.tar`, by webdataset), then local glob patterns
    (`/data/*.tar`, sorted); URLs are left to webdataset. A local path that matches no file raises
    MissingInputError."""
    from webdataset.shardlists import expand_urls

    shards = []
    for expanded in expand_urls(url):
        if is_url(expanded) or Path(expanded).exists():
            shards.append(expanded)
            continue
        matches = sorted(glob.glob(expanded))
        if not matches:
            raise MissingInputError(f"data.path={url!r}: no shard file at '{expanded}'; point data.path at existing "
                                    "shards (a path, glob, brace pattern or URL)")
        shards.extend(matches)
    return shards


def _stored_group(sample: dict) -> str | None:
    """The split group `prepare` wrote into the sample's json, if any (shards from elsewhere may have none)."""
    try:
        meta = json.loads(sample.get("json", b"{}"))
    except ValueError:
        return None
    group = meta.get("group") if isinstance(meta, dict) else None
    return group if isinstance(group, str) and group else None
