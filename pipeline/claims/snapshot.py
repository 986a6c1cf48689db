"""A private snapshot of the working tree, where the claims experiments run.

`dvc exp run --temp` in the user's checkout has two problems for an hour of paired runs, both measured with DVC
3.67.1: each run starts by stashing the working tree (`git stash`), so for some milliseconds every modified file
reverts to HEAD under the feet of whoever is editing or testing there; and each run takes the working tree as it
is at its own start, so a file edited during the hour makes later arms run other code than earlier ones and the
pairs stop being pairs. (Also, files git does not track are left out of `--temp` experiments unless staged.)

So the runs happen in a clone: `git clone --shared` of HEAD (objects borrowed from the checkout, nothing copied),
the working tree's differences from HEAD copied over once and staged (staged files are part of a DVC
experiment, untracked ones are not), and DVC's cache pointed at the checkout's cache, so outputs and the run cache
are shared (prepare runs at most once) and `dvc exp apply` works in the checkout. A params file given to the claims
command (`--params`) becomes the clone's params.yaml, the one every stage of the experiments reads, and is listed
among the changes when it differs from HEAD's. Each finished experiment's git
ref is fetched into the checkout, where `dvc exp show` lists it beside the user's own experiments. The checkout's
files are only read; its git refs gain the experiments, as `dvc exp run` itself would do.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError

PARAMS = "params.yaml"  # the file every stage reads (dvc.yaml's params and --params)


def git(root: Path, *args: str) -> str:
    """stdout of `git -C root args`; a failure raises with git's own message."""
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise UserError(f"git {' '.join(args)} in {root} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Snapshot:
    """The clone at `path` of the checkout at `root`: commit `commit` plus the working-tree `changes`."""

    root: Path
    path: Path
    commit: str
    changes: tuple[str, ...]  # paths that differ from `commit` in the checkout (modified, added, deleted)


def working_tree_changes(root: Path) -> list[str]:
    """Paths whose working-tree content differs from HEAD (staged or not, deletions included), and files git
    does not track but does not ignore."""
    changed = git(root, "diff", "--name-only", "-z", "--no-renames", "HEAD").split("\0")
    untracked = git(root, "ls-files", "-z", "--others", "--exclude-standard").split("\0")
    return sorted({path for path in changed + untracked if path})


def take_snapshot(root: Path, path: Path, skip: tuple[str, ...] = (), params: Path | None = None) -> Snapshot:
    """Clone `root` into the empty or missing folder `path` as its working tree is now, with DVC's cache shared;
    changes under the folders `skip` (relative, e.g. the claims' own report folder) are left out, and `params`,
    if given, replaces params.yaml."""
    root = root.resolve()
    commit = git(root, "rev-parse", "HEAD").strip()
    changes = [change for change in working_tree_changes(root)
               if not any(Path(change).is_relative_to(folder) for folder in skip)]
    if params is not None and not params.is_file():
        raise UserError(f"--params {params}: no such file; give the params file the experiments should use")
    git(root, "clone", "--quiet", "--shared", "--no-checkout", str(root), str(path))
    git(path, "checkout", "--quiet", "--detach", commit)
    for relative in changes:
        source, target = root / relative, path / relative
        if source.is_file() or source.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
        elif target.is_file() or target.is_symlink():
            target.unlink()
    if params is not None:
        shutil.copyfile(params, path / PARAMS)
        changed = bool(git(path, "diff", "--name-only", "HEAD", "--", PARAMS).strip())
        changes = sorted({*changes, PARAMS} if changed else set(changes) - {PARAMS})
    git(path, "add", "--all")
    for key, fallback in (("user.name", "litevae claims"), ("user.email", "claims@localhost")):
        value = subprocess.run(["git", "-C", str(root), "config", key], capture_output=True, text=True,
                               check=False).stdout.strip()
        git(path, "config", key, value or fallback)  # `dvc exp run` commits; the clone's local config only
    cache = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=root, capture_output=True, text=True,
                           check=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "dvc", "cache", "dir", "--local", cache], cwd=path, check=True,
                   capture_output=True)
    return Snapshot(root, path, commit, tuple(changes))


def experiment_ref(snapshot: Snapshot, name: str) -> tuple[str, str]:
    """(ref, commit) of the DVC experiment `name` in the snapshot (refs/exps/<baseline>/<name>)."""
    lines = git(snapshot.path, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/").splitlines()
    found = [line.split() for line in lines if line.split()[0].endswith(f"/{name}")]
    if len(found) != 1:
        raise UserError(f"experiment {name}: expected one ref under refs/exps in {snapshot.path}, found {len(found)}")
    return found[0][0], found[0][1]


def publish(snapshot: Snapshot, ref: str) -> None:
    """Fetch experiment `ref` into the user's checkout, where `dvc exp show` lists it."""
    git(snapshot.root, "fetch", "--quiet", str(snapshot.path), f"+{ref}:{ref}")
