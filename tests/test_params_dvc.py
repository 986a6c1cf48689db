"""`dvc exp run -S key=value` end to end on the params side: DVC's own override code rewrites a copy of
params.yaml (dvc/utils/hydra.py `apply_overrides`, which `dvc exp run` calls for each params file), and the
rewritten file must load, changed at exactly the keys overridden."""

import dataclasses
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
from dvc.utils.hydra import apply_overrides, to_hydra_overrides

from pipeline.config.parsing import read_yaml
from pipeline.config.profiles import hydra_value, profile_overrides
from pipeline.config.schema import SECTIONS, load_params

REPO = Path(__file__).resolve().parents[1]

# One override per section: (what follows -S, the key, the value it must load as).
OVERRIDES = [
    ("data.path='/data/train-{000000..000099}.tar'", "data.path", "/data/train-{000000..000099}.tar"),
    ("model.vae.encoder.preset=B", "model.vae.encoder.preset", "B"),
    ("loss.kl_weight=1e-5", "loss.kl_weight", 1e-5),
    ("train_128.amp=off", "train_128.amp", "off"),
    ("train_256.betas=[0.8,0.99]", "train_256.betas", (0.8, 0.99)),
    ("eval.max_images=16", "eval.max_images", 16),
    ("latents.max_images=null", "latents.max_images", None),
    ("ldm.unet.num_head_channels=8", "ldm.unet.num_head_channels", 8),
    ("generation.sampling_steps=10", "generation.sampling_steps", 10),
    ("tracking.experiment=yes", "tracking.experiment", "yes"),
    ("schedule.cron=0 4 * * 1", "schedule.cron", "0 4 * * 1"),
    ("benchmark.amp=off", "benchmark.amp", "off"),  # restates the file's "off": DVC writes it back bare
    ("launch.rdzv_endpoint=node0.cluster:29400", "launch.rdzv_endpoint", "node0.cluster:29400"),
    ("speed.compile=off", "speed.compile", "off"),
]


def dvc_set(tmp_path: Path, overrides: list[str]) -> Path:
    """A copy of params.yaml as `dvc exp run -S ...` leaves it."""
    params = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params)
    apply_overrides(params, overrides)
    return params


def flat(params_path: Path) -> dict[str, Any]:
    """Every loaded value by its full key, e.g. {"model.vae.encoder.preset": "S", ...}."""
    def walk(value: Any, key: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return {k: v for name, item in value.items() for k, v in walk(item, f"{key}.{name}").items()}
        return {key: value}

    loaded = load_params(params_path, *SECTIONS)
    return {k: v for name, cfg in loaded.items() for k, v in walk(dataclasses.asdict(cfg), name).items()}


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    assert before.keys() == after.keys()
    return {key: after[key] for key in before if after[key] != before[key]}


@pytest.fixture(scope="module")
def original() -> dict[str, Any]:
    return flat(REPO / "params.yaml")


def test_the_overrides_cover_every_section():
    assert {key.split(".")[0] for _, key, _ in OVERRIDES} == set(SECTIONS)


@pytest.mark.parametrize("override, key, value", OVERRIDES, ids=[key for _, key, _ in OVERRIDES])
def test_dvc_set_param_loads_and_changes_exactly_that_key(tmp_path, original, override, key, value):
    after = flat(dvc_set(tmp_path, [override]))
    assert after[key] == value
    assert changed(original, after) == ({} if original[key] == value else {key: value})


def test_dvc_rewrite_of_params_yaml_keeps_every_value(tmp_path, original):
    params = dvc_set(tmp_path, [])
    assert "amp: off " in params.read_text()  # DVC's writer dropped the quotes of benchmark.amp: "off"
    assert read_yaml(params) == read_yaml(REPO / "params.yaml")
    assert flat(params) == original


def readme_set_params() -> list[list[str]]:
    """The `-S` values of README.md, one list per command (a run of `-S value` words), shell quoting removed."""
    word = r"""(?:"[^"]*"|'[^']*'|[^\s`"'])+"""
    runs = re.finditer(rf"(?:(?<![\w-])-S\s+{word}\s*)+", (REPO / "README.md").read_text())
    return [shlex.split(run.group(0))[1::2] for run in runs]


def test_readme_set_param_examples_parse_and_load(tmp_path, original):
    commands = readme_set_params()
    assert ["data.source=shards", "data.path='/data/train-{000000..000099}.tar'"] in commands
    for overrides in commands:
        after = flat(dvc_set(tmp_path, overrides))
        assert changed(original, after).keys() == {item.split("=")[0] for item in overrides}, overrides


def test_paper_profile_applied_by_dvc_gives_params_merged_with_the_profile(tmp_path):
    def merge(base: dict, overlay: dict) -> dict:
        return {**base, **{k: merge(base[k], v) if isinstance(v, dict) else v for k, v in overlay.items()}}

    items = profile_overrides(REPO / "profiles/paper.yaml", REPO / "params.yaml")
    params = dvc_set(tmp_path, items)
    assert read_yaml(params) == merge(read_yaml(REPO / "params.yaml"), read_yaml(REPO / "profiles/paper.yaml"))
    assert load_params(params, "model")["model"].vae.encoder.preset == "B"


@pytest.mark.parametrize("text", ["B", "/data/train-{000000..000099}.tar", "null", "12", "it's", "x:y=z,w",
                                  "back\\slash", "trailing\\", "quote\\'s"])
def test_profile_strings_come_back_from_dvc_unchanged(text):
    assert to_hydra_overrides([f"k={hydra_value(text, 'k')}"])[0].value() == text
