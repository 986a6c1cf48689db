"""Turn a named profile (a partial params file, e.g. profiles/paper.yaml) into `dvc exp run -S` overrides.

    dvc exp run -n paper $(python -m pipeline.profiles profiles/paper.yaml)     # what `make paper` runs

Running a profile as a DVC experiment keeps params.yaml (and its comments) untouched and records the run in
`dvc exp show`. The profile merged over params.yaml is validated first, so a bad profile fails before DVC
starts any stage.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipeline.cli import run_stage
from pipeline.config import read_yaml
from pipeline.params import SECTIONS, load_params


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def overrides(profile: dict[str, Any], prefix: str = "") -> list[str]:
    """`key.sub=value` strings for every leaf (non-strings as space-free JSON, which YAML reads), so the
    shell can split them without quoting."""
    out = []
    for key, value in profile.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(overrides(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            out.append(f"{name}={text}")
    return out


def profile_overrides(profile_path: Path, params_path: Path) -> list[str]:
    """Validate params + profile, then return the overrides."""
    profile = read_yaml(profile_path)
    merged = deep_merge(read_yaml(params_path), profile)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as tmp:
        yaml.safe_dump(merged, tmp)
        tmp.flush()
        load_params(tmp.name, *SECTIONS)
    return overrides(profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    print(" ".join(f"-S {item}" for item in profile_overrides(args.profile, args.params)))


if __name__ == "__main__":
    run_stage(main)
