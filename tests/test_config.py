"""params.yaml validation: every mistake fails before any work, all at once, naming the key and what is allowed."""

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from pipeline.config.parsing import ConfigError, parse, read_yaml
from pipeline.config.profiles import hydra_value, profile_overrides
from pipeline.config.schema import SECTIONS, DataConfig, ScheduleConfig, load_params

REPO = Path(__file__).resolve().parents[1]


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
    cfg = parse(Outer, {"steps": 3, "lr": 1, "betas": [0.1, 0.2], "inner": {"mode": "b", "sizes": [4]}}, "s")
    assert cfg == Outer(steps=3, lr=1.0, betas=(0.1, 0.2), inner=Inner(mode="b", sizes=(4,)))
    assert type(cfg.lr) is float


@pytest.mark.parametrize("data, key, allowed", [
    ({"stepz": 3}, "s.stepz", "Allowed keys under 's'"),
    ({"steps": "3"}, "s.steps", "expected int"),
    ({"steps": 2.5}, "s.steps", "expected int"),
    ({"steps": True}, "s.steps", "expected int"),
    ({"steps": 0}, "s.steps", ">= 1"),
    ({"lr": 0}, "s.lr", "> 0.0"),
    ({"lr": "1e-3"}, "s.lr", "expected float"),  # YAML 1.2 reads 1e-3 as a float; a string is a mistake
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
    assert len(err.value.problems) == 1


def test_parse_reports_every_problem_across_fields_and_nested_mappings():
    data = {"stepz": 1, "steps": 0, "lr": "fast", "inner": {"mode": "c", "sizes": [1, "x", "y"], "extra": 1}}
    with pytest.raises(ConfigError) as err:
        parse(Outer, data, "s")
    assert [line.split(":")[0] for line in err.value.problems] == [
        "s.stepz", "s.steps", "s.lr", "s.inner.mode", "s.inner.sizes[1]", "s.inner.sizes[2]", "s.inner.extra"]


def test_cross_field_rule_names_the_key():
    with pytest.raises(ConfigError, match=r"^data\.path: required when source is 'folder'"):
        parse(DataConfig, {"source": "folder"}, "data")


def test_every_section_is_validated_and_every_error_reported_at_once(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train_128:\n  lr: -1\n"
                    "model:\n  vae:\n    encoder:\n      preset: XL\n"
                    "benchmark:\n  amp: false\n")
    with pytest.raises(ConfigError) as err:
        load_params(path, "data")  # a stage that reads none of the broken sections
    assert err.value.problems == [
        "model.vae.encoder.preset: got 'XL'; allowed: one of 'S', 'B', 'M', 'L'",
        "train_128.lr: got -1.0; must be > 0",
        "benchmark.amp: got False; allowed: one of 'auto', 'off', 'bf16', 'fp16'",
    ]


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


def test_params_are_read_as_yaml_1_2_like_dvc_writes_them(tmp_path):
    """DVC's writer leaves `off` bare; YAML 1.1 would read it (and `yes`) as a bool and `1e-4` as a string."""
    path = tmp_path / "params.yaml"
    path.write_text("train_128:\n  amp: off\n  lr: 1e-4\nbenchmark:\n  amp: off\ntracking:\n  experiment: yes\n")
    params = load_params(path, "train_128", "benchmark", "tracking")
    assert (params["train_128"].amp, params["train_128"].lr) == ("off", 1e-4)
    assert params["benchmark"].amp == "off"
    assert params["tracking"].experiment == "yes"


def test_repository_params_values_read_the_same_as_before_the_switch_to_yaml_1_2():
    """Every value of params.yaml (1.0e-6, null, lists, "0 3 * * *", "off") means what PyYAML read."""
    text = (REPO / "params.yaml").read_text()
    assert read_yaml(REPO / "params.yaml") == yaml.safe_load(text)


def test_repository_params_file_is_valid():
    loaded = load_params(REPO / "params.yaml", *SECTIONS)
    assert set(loaded) == set(SECTIONS)


def test_schema_imports_no_stage_library():
    """Stage libraries import their configs from the schema, so the schema must not import them."""
    code = ("import sys, pipeline\n"
            "before = set(sys.modules)  # what the package's own __init__ imports\n"
            "import pipeline.config.schema\n"
            "print(*sorted(m for m in set(sys.modules) - before if m.startswith('pipeline.')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    imported = result.stdout.split()
    assert "pipeline.config.schema" in imported
    assert [m for m in imported if m.split(".")[:2] != ["pipeline", "config"] and m != "pipeline.core.errors"] == []


def test_paper_profile_validates_and_turns_the_quickstart_aids_off():
    items = profile_overrides(REPO / "profiles/paper.yaml", REPO / "params.yaml")
    assert {"model.vae.lowpass_shortcut=false", "model.vae.posterior_logvar_init=0.0",
            "model.vae.encoder.preset='B'", "ldm.resolution=256"} <= set(items)


def test_bad_profile_fails_naming_the_key(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("ldm:\n  unet: {model_channels: 0}\n")
    with pytest.raises(ConfigError, match="ldm.unet.model_channels"):
        profile_overrides(profile, REPO / "params.yaml")


def test_profile_key_missing_from_params_fails_before_dvc_runs(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text("train_128:\n  stepz: 10\n")
    with pytest.raises(ConfigError, match="DVC cannot apply .*train_128.stepz"):
        profile_overrides(profile, REPO / "params.yaml")


def test_profile_string_with_whitespace_is_refused():
    with pytest.raises(ConfigError, match="^schedule.cron: '0 3 \\* \\* \\*' holds whitespace"):
        hydra_value("0 3 * * *", "schedule.cron")


def test_stage_cli_exits_2_listing_every_problem(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  val_fraction: 1.5\ntrain_128:\n  lr: -1\n")
    result = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(params), "--shards", "x",
                             "--manifest", "m.json", "--contact-sheet", "c.png", "--metrics", "x.json"],
                            check=False, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-2:] == ["error: data.val_fraction: got 1.5; must be < 1.0",
                                                       "train_128.lr: got -1.0; must be > 0"]
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("schedule, problem", [
    ({"cron": "0 25 * * *"}, "schedule.cron: '0 25 * * *': the hour field '25' is not a list of"),
    ({"cron": "0 3 * *"}, "schedule.cron: '0 3 * *' has 4 fields, not 5"),
    ({"cron": "0 3 * * fri-mon"}, "schedule.cron: '0 3 * * fri-mon': the day of week field 'fri-mon'"),
    ({"timezone": "Europe/Paris "}, "schedule.timezone: 'Europe/Paris ' is not an IANA time zone name"),
])
def test_a_bad_schedule_fails_at_load_naming_the_key(tmp_path, schedule, problem):
    """Not when `make serve` builds Prefect's schedule from it (a traceback), nor when it registers it."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"schedule": schedule}))
    with pytest.raises(ConfigError) as err:
        load_params(path, "data")
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(problem)


def test_prefect_accepts_every_cron_the_schema_accepts_and_the_schema_refuses_what_prefect_refuses():
    from prefect.schedules import Cron

    for cron in ("0 3 * * *", "*/15 2-5 * * 1-5", "0 0 1,15 jan-jun *", "30 4 * * SUN", "0 3 * * 7", "5/10 * * * *"):
        ScheduleConfig(cron=cron)
        Cron(cron)
    for cron in ("0 24 * * *", "60 * * * *", "0 3 0 * *", "0 3 * 13 *", "0 3 * * 8", "*/0 * * * *", "x * * * *"):
        with pytest.raises(ValueError, match="^cron: "):
            ScheduleConfig(cron=cron)
        with pytest.raises(ValueError):
            Cron(cron)


def test_schedule_defaults_are_the_repository_params():
    """Deleting a key from params.yaml keeps its value, exports included among the targets."""
    assert load_params(REPO / "params.yaml", "schedule")["schedule"] == ScheduleConfig()


def test_training_crops_larger_than_data_min_size_fail_at_load_naming_both_keys(tmp_path):
    """prepare keeps images down to data.min_size; train_256 would stop at the first one smaller than its crops,
    after pretrain_vae's hours."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"min_size": 64, "storage_size": 512}, "train_128": {"resolution": 64},
                                    "train_256": {"resolution": 256}, "ldm": {"resolution": 64}}))
    with pytest.raises(ConfigError) as err:
        load_params(path, "data")
    assert err.value.problems == [(
        "train_256.resolution: 256 exceeds data.min_size 64, so prepare keeps images too small for its crops; raise "
        "data.min_size (with data.storage_size if needed) to at least 256, or lower train_256.resolution")]
    path.write_text(yaml.safe_dump({"data": {"min_size": 64}, "train_128": {"resolution": 64},
                                    "train_256": {"resolution": 64}, "ldm": {"resolution": 64}}))
    assert load_params(path, "data")["data"].min_size == 64
