"""params.yaml validation: every mistake fails before any work, naming the key and what is allowed."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from pipeline.config import ConfigError, parse
from pipeline.params import SECTIONS, DataConfig, load_params
from pipeline.profiles import profile_overrides


@dataclass(frozen=True)
class Inner:
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Outer:
    steps: int = field(default=10, metadata={"ge": 1})
    lr: float = field(default=1e-4, metadata={"gt": 0.0})
    betas: tuple[float, float] = (0.5, 0.9)
    name: str | None = None
    inner: Inner = Inner()


def test_valid_mapping_builds_typed_dataclass():
    cfg = parse(Outer, {"steps": 3, "lr": "1e-3", "betas": [0.1, 0.2], "inner": {"mode": "b", "sizes": [4]}}, "s")
    assert cfg == Outer(steps=3, lr=1e-3, betas=(0.1, 0.2), inner=Inner(mode="b", sizes=(4,)))


@pytest.mark.parametrize("data, key, allowed", [
    ({"stepz": 3}, "s.stepz", "Allowed keys under 's'"),
    ({"steps": "3"}, "s.steps", "expected int"),
    ({"steps": 2.5}, "s.steps", "expected int"),
    ({"steps": True}, "s.steps", "expected int"),
    ({"steps": 0}, "s.steps", ">= 1"),
    ({"lr": 0}, "s.lr", "> 0.0"),
    ({"betas": [0.5]}, "s.betas", "expected a list of 2 values"),
    ({"inner": {"mode": "c"}}, "s.inner.mode", "one of 'a', 'b'"),
    ({"inner": {"sizes": [1, "x"]}}, "s.inner.sizes[1]", "expected int"),
    ({"inner": {"extra": 1}}, "s.inner.extra", "unknown key"),
    ({"name": 5}, "s.name", "expected str"),
])
def test_bad_values_name_the_key_and_what_is_allowed(data, key, allowed):
    with pytest.raises(ConfigError) as err:
        parse(Outer, data, "s")
    assert str(err.value).startswith(key + ":")
    assert allowed in str(err.value)


def test_cross_field_rule_names_the_key():
    with pytest.raises(ConfigError, match=r"^data\.path: required when source is 'folder'"):
        parse(DataConfig, {"source": "folder"}, "data")


def test_unknown_section_fails(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data: {}\ndatta: {}\n")
    with pytest.raises(ConfigError, match="unknown section 'datta'"):
        load_params(path, "data")


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "nope.yaml", "data")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad, "data")


def test_repository_params_file_is_valid():
    loaded = load_params("params.yaml", *SECTIONS)
    assert set(loaded) == set(SECTIONS)


def test_paper_profile_validates_and_turns_the_quickstart_aids_off():
    items = profile_overrides(Path("profiles/paper.yaml"), Path("params.yaml"))
    assert {"model.vae.lowpass_shortcut=false", "model.vae.posterior_logvar_init=0.0", "model.vae.encoder.preset=B",
            "ldm.resolution=256"} <= set(items)


def test_bad_profile_fails_naming_the_key(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("ldm:\n  unet: {model_channels: 0}\n")
    with pytest.raises(ConfigError, match="ldm.unet.model_channels"):
        profile_overrides(profile, Path("params.yaml"))


def test_stage_cli_exits_2_with_one_clear_line(tmp_path):
    import subprocess
    import sys

    params = tmp_path / "params.yaml"
    params.write_text("data:\n  val_fraction: 1.5\n")
    result = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(params), "--shards", "x",
                             "--manifest", "m.json", "--contact-sheet", "c.png", "--metrics", "x.json"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: data.val_fraction: got 1.5; must be < 1.0"
    assert not (tmp_path / "m.json").exists()
