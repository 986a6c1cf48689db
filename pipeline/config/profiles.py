"""Turn a named profile (a partial params file, e.g. profiles/paper.yaml) into `dvc exp run -S` overrides.

    dvc exp run -n paper $(python -m pipeline.config.profiles profiles/paper.yaml)     # what `make paper` runs

Running a profile as a DVC experiment keeps params.yaml (and its comments) untouched and records the run in
`dvc exp show`. The overrides are first applied the way `dvc exp run -S` applies them, by DVC's own code, to a
copy of params.yaml, which must then load: a bad profile fails before DVC starts any stage.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.config.parsing import ConfigError, read_yaml
from pipeline.config.schema import load_params
from pipeline.core.cli import exit_on_user_error


def overrides(profile: dict[str, Any], prefix: str = "") -> list[str]:
    """`key.sub=value` for every leaf, in the Hydra override grammar `-S` takes. Each is one shell word
    meant for `$(...)`, which splits on whitespace and passes quotes through to DVC."""
    out = []
    for key, value in profile.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(overrides(value, name + "."))
        else:
            out.append(f"{name}={hydra_value(value, name)}")
    return out


def hydra_value(value: Any, key: str) -> str:
    """`value` in the Hydra override grammar. Strings are quoted, since the grammar reads braces
    (`train-{000000..000099}.tar`) as a mapping, and `null`, `true` or `12` as other types."""
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(item, key) for item in value) + "]"
    if not isinstance(value, str):
        return json.dumps(value)  # numbers, true, false, null: the same words in Hydra's grammar
    if re.search(r"\s", value):
        raise ConfigError(f"{key}: {value!r} holds whitespace, which `$(...)` splits; set it in params.yaml")
    # In a quoted Hydra string a backslash escapes only a quote or the backslashes before one.
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"


def profile_overrides(profile_path: Path, params_path: Path) -> list[str]:
    """The profile's overrides, once DVC's `-S` code has applied them to a copy of params.yaml that loads."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` calls

    items = overrides(read_yaml(profile_path))
    load_params(params_path)  # a clear error if params.yaml itself is missing or invalid
    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "params.yaml"
        shutil.copyfile(params_path, params)
        try:
            apply_overrides(params, items)
        except InvalidArgumentError as err:
            raise ConfigError(f"{profile_path}: DVC cannot apply {items}: {err.__cause__}") from None
        load_params(params)
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    print(" ".join(f"-S {item}" for item in profile_overrides(args.profile, args.params)))


if __name__ == "__main__":
    exit_on_user_error(main)
