"""The claims command (pipeline/claims): the verdict rule, the arms' `-S` overrides as DVC applies them (each pair
differs exactly where its claim says), the measures read from the stages' metrics JSONs, the high-frequency error,
the private snapshot of the working tree, and the report on synthetic measurements. The experiments themselves
(an hour of training) are not run here."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dvc.utils.hydra import apply_overrides

from pipeline.claims.arms import ARM_KEYS, arm_runs, check_overrides
from pipeline.claims.budget import load_profile
from pipeline.claims.claims import evaluate
from pipeline.claims.experiments import stage_arguments
from pipeline.claims.hf_error import hf_l1
from pipeline.claims.measures import stage_measures
from pipeline.claims.report import FIG5, PAIRS, REPORT, TABLE3, write_report
from pipeline.claims.snapshot import take_snapshot
from pipeline.claims.verdict import AGREES, DISAGREES, INCONCLUSIVE, combine, paired, verdict
from pipeline.config.parsing import ConfigError
from pipeline.config.schema import SECTIONS, load_params

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "claims.yaml"
GPU_PROFILE = REPO / "profiles" / "claims_gpu.yaml"
TITLES = ("Table 2b", "Table 3", "Table 4", "Table 6", "Fig. 5", "high-frequency losses", "Table 5")


# ---- the verdict rule ----

def test_verdict_follows_the_mean_advantage_against_twice_its_seed_noise():
    # higher is better: advantages 1.0, 1.2 (mean 1.1, std 0.14) -> agrees
    assert verdict(paired({0: 30.0, 1: 30.2}, {0: 29.0, 1: 29.0}, True), 2.0) == AGREES
    # the same numbers with lower better point the other way
    assert verdict(paired({0: 30.0, 1: 30.2}, {0: 29.0, 1: 29.0}, False), 2.0) == DISAGREES
    # advantages -0.5, +0.4: the noise swamps the mean
    assert verdict(paired({0: 29.5, 1: 30.6}, {0: 30.0, 1: 30.2}, True), 2.0) == INCONCLUSIVE
    # mean 0.3, noise 0.14: 2.1 stds, agrees at k = 2, not at k = 3
    result = paired({0: 1.2, 1: 1.4}, {0: 1.0, 1: 1.0}, True)
    assert result.advantages == pytest.approx((0.2, 0.4))
    assert verdict(result, 2.0) == AGREES and verdict(result, 3.0) == INCONCLUSIVE
    # one seed: no noise estimate, never decided; unpaired or non-finite seeds are left out
    assert verdict(paired({0: 31.0}, {0: 29.0}, True), 2.0) == INCONCLUSIVE
    assert paired({0: 1.0, 1: float("nan"), 2: 3.0}, {0: 0.0, 1: 0.0}, True).advantages == (1.0,)


def test_a_claim_agrees_only_when_no_headline_row_contradicts_it():
    assert combine([AGREES, INCONCLUSIVE]) == AGREES
    assert combine([DISAGREES, INCONCLUSIVE]) == DISAGREES
    assert combine([AGREES, DISAGREES]) == INCONCLUSIVE
    assert combine([INCONCLUSIVE]) == combine([]) == INCONCLUSIVE


def test_a_claim_about_every_row_needs_every_row_and_falls_to_one_counter_example():
    assert combine([AGREES, AGREES], every_row=True) == AGREES
    assert combine([AGREES, INCONCLUSIVE], every_row=True) == INCONCLUSIVE
    assert combine([AGREES, AGREES, DISAGREES], every_row=True) == DISAGREES
    assert combine([], every_row=True) == INCONCLUSIVE


# ---- the arms' overrides, as `dvc exp run -S` applies them ----

def _flat(params: Path) -> dict:
    def walk(value, key):
        if isinstance(value, dict):
            return {k: v for name, item in value.items() for k, v in walk(item, f"{key}.{name}").items()}
        return {key: value}

    loaded = load_params(params, *SECTIONS)
    return {k: v for name, cfg in loaded.items() for k, v in walk(dataclasses.asdict(cfg), name).items()}


def _applied(tmp_path: Path, run) -> dict:
    params = tmp_path / f"{run.experiment}.yaml"
    shutil.copyfile(REPO / "params.yaml", params)
    apply_overrides(params, list(run.overrides))  # what `dvc exp run -S` does to params.yaml
    return _flat(params)


# what each arm changes from the LiteVAE arm at the same seed (beyond which keys nothing may differ)
EXPECTED_CHANGES = {
    "vae-small": {"model.vae.encoder.kind": "vae_small"},
    "smc": {"model.vae.decoder.norm": "smc"},
    "no-hf-loss": {"loss.wavelet_weight": 0.0, "loss.gaussian_weight": 0.0},
    "256-only": {"train_128.resolution": 256, "train_128.batch_size": 1},
}


def test_each_arm_differs_from_the_litevae_arm_exactly_where_its_claim_says(tmp_path):
    profile = load_profile(PROFILE)
    runs = arm_runs(profile, "claims-test")
    check_overrides(runs, REPO / "params.yaml")
    assert {run.arm.name for run in runs} == {"litevae", *EXPECTED_CHANGES}
    assert len(runs) == (len(EXPECTED_CHANGES) + 1) * len(profile.budget.seeds)
    applied = {(run.arm.name, run.seed): _applied(tmp_path, run) for run in runs}
    for seed in profile.budget.seeds:
        lite = applied["litevae", seed]
        assert lite["model.vae.encoder.kind"] == "litevae" and lite["model.vae.encoder.preset"] == "B"
        assert lite["model.vae.decoder.norm"] == "group" and lite["loss.wavelet_weight"] > 0
        assert (lite["train_128.seed"], lite["train_256.seed"]) == (seed, seed + 1)
        assert lite["loss.disc_start"] == lite["train_128.steps"] == profile.budget.pretrain.steps
        assert lite["tracking.vae_model_name"] != load_params(REPO / "params.yaml", "tracking")["tracking"].vae_model_name
        for arm, changes in EXPECTED_CHANGES.items():
            other = applied[arm, seed]
            assert {key: other[key] for key in other if other[key] != lite[key]} == changes, arm
    # Table 5 at equal compute: the 256-only arm's first stage processes the 128 px stage's pixels
    lite, only = applied["litevae", 0], applied["256-only", 0]
    assert only["train_128.steps"] * only["train_128.batch_size"] * 256**2 == \
        lite["train_128.steps"] * lite["train_128.batch_size"] * 128**2
    # names recognisable in `dvc exp show`
    assert {run.experiment for run in runs} >= {"claims-test-litevae-s0", "claims-test-256-only-s1"}


def test_the_gpu_profile_runs_the_full_sd_vae_encoder_as_its_own_arm(tmp_path):
    profile = load_profile(GPU_PROFILE)
    runs = arm_runs(profile, "claims-gpu")
    check_overrides(runs, REPO / "params.yaml")
    assert len(runs) == 6 * len(profile.budget.seeds)
    sd = next(run for run in runs if run.arm.name == "sd-vae")
    assert sd.arm.targets == ("eval_recon", "analyze_latents")
    params = _applied(tmp_path, sd)
    assert params["model.vae.encoder.kind"] == "sd_vae" and params["model.vae.decoder.ch"] == 128
    assert params["train_128.val_every"] == 2500  # the profile's params win over the runner's loop defaults
    assert next(run for run in runs if run.arm.name == "vae-small").arm.targets == ("pretrain_vae",)


def test_a_profile_cannot_set_what_the_arms_set_or_mistype_its_budget(tmp_path):
    profile = tmp_path / "claims.yaml"
    profile.write_text("params:\n  model: {vae: {decoder: {norm: smc}}}\n")
    with pytest.raises(ConfigError, match="model.vae.decoder.norm"):
        arm_runs(load_profile(profile), "x")
    assert "model.vae.decoder.norm" in ARM_KEYS
    profile.write_text("pretrain: {steps: 0, batch_sise: 4}\nseeds: [1, 1]\n")
    with pytest.raises(ConfigError) as err:
        load_profile(profile)
    assert "claims.yaml.pretrain.steps" in str(err.value) and "batch_sise" in str(err.value)
    profile.write_text("params:\n  loss: {wavelet_weight: 0.0}\n")  # the LiteVAE arm must train with both losses
    with pytest.raises(ConfigError, match="wavelet_weight"):
        check_overrides(arm_runs(load_profile(profile), "x"), REPO / "params.yaml")


def test_plan_command_lists_every_arm_and_the_estimate():
    done = subprocess.run([sys.executable, "-m", "pipeline.claims", "plan"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    for arm in ("litevae", *EXPECTED_CHANGES):
        assert f"\n{arm}: " in done.stdout
    assert "estimated total" in done.stdout and "-S model.vae.encoder.kind='vae_small'" in done.stdout


# ---- measures ----

def test_measures_read_the_committed_metrics_of_every_stage_a_claim_uses():
    def metrics(stage):
        return json.loads((REPO / stage_arguments((REPO / "dvc.yaml").read_text(), stage)["--metrics"]).read_text())

    pretrain = stage_measures("pretrain_vae", metrics("pretrain_vae"))
    assert pretrain["pretrain.psnr"] == metrics("pretrain_vae")["val_psnr"] and pretrain["pretrain.resolution"] == 128
    assert stage_measures("finetune_vae", metrics("finetune_vae"))["finetune.resolution"] == 256
    sweep = stage_measures("eval_recon", metrics("eval_recon"))
    others = [sweep[f"sweep.psnr.{r}"] for r in (32, 64, 128, 512)]
    assert sweep["sweep.psnr_drop"] == pytest.approx(sweep["sweep.psnr.256"] - sum(others) / 4)
    mmd = stage_measures("analyze_latents", metrics("analyze_latents"))
    assert {f"mmd.{kind}.{s}" for kind in ("raw", "normalised") for s in (25, 50, 100, 250, 500)} <= set(mmd)


def test_hf_error_sees_lost_detail_but_not_colour_shifts():
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 200, (2, 3, 32, 32), generator=generator, dtype=torch.uint8)
    assert hf_l1(image, image) == 0.0
    assert hf_l1(image, image + 10) == pytest.approx(0.0, abs=1e-9)  # a flat offset lives in the LL band only
    blurred = torch.nn.functional.avg_pool2d(image.float(), 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert hf_l1(image, blurred.round().to(torch.uint8)) > 5.0


# ---- the snapshot the experiments run in ----

def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


def test_snapshot_holds_the_working_tree_and_leaves_the_checkout_alone(tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "t@localhost")
    _git(root, "config", "user.name", "t")
    (root / ".gitignore").write_text("ignored.txt\n")
    for name in ("kept.py", "edited.py", "deleted.py", "staged.py"):
        (root / name).write_text(f"# {name}\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "base")
    (root / "edited.py").write_text("# edited\n")
    (root / "staged.py").write_text("# staged\n")
    _git(root, "add", "staged.py")
    (root / "deleted.py").unlink()
    (root / "pkg").mkdir()
    (root / "pkg" / "new.py").write_text("# untracked\n")
    (root / "ignored.txt").write_text("ignored\n")
    (root / "reports").mkdir()
    (root / "reports" / "paper_claims.md").write_text("# an earlier report\n")
    status = _git(root, "status", "--porcelain")

    snapshot = take_snapshot(root, tmp_path / "snapshot", skip=("reports",))
    assert snapshot.changes == ("deleted.py", "edited.py", "pkg/new.py", "staged.py")
    copy = snapshot.path
    assert (copy / "edited.py").read_text() == "# edited\n" and (copy / "staged.py").read_text() == "# staged\n"
    assert (copy / "pkg" / "new.py").is_file() and not (copy / "deleted.py").exists()
    assert not (copy / "ignored.txt").exists() and not (copy / "reports").exists()
    assert _git(copy, "rev-parse", "HEAD") == _git(root, "rev-parse", "HEAD")  # experiments' baseline: HEAD
    assert "pkg/new.py" in _git(copy, "diff", "--cached", "--name-only")  # staged: part of a DVC experiment
    assert _git(root, "status", "--porcelain") == status  # the checkout is untouched
    cache = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=copy, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert Path(cache) == root / ".dvc" / "cache"  # outputs and run cache shared with the checkout


# ---- the report ----

def _measures(arm: str, seed: int) -> dict:
    """Synthetic measures: LiteVAE beats VAE-Small clearly, SMC is noise, the HF losses lose, 256-only ties."""
    shift = {"litevae": 0.0, "vae-small": -1.0, "smc": (-0.5, 0.4)[seed], "no-hf-loss": 1.0,
             "256-only": (0.3, -0.3)[seed]}[arm]
    psnr = 30.0 + 0.2 * seed + shift
    out = {"pretrain.psnr": psnr, "pretrain.ssim": 0.8 + shift / 100, "pretrain.hf_l1": 5.0 - shift,
           "pretrain.minutes": 3.0, "finetune.psnr": psnr - 2, "finetune.ssim": 0.7 + shift / 100,
           "finetune.hf_l1": 6.0 - shift, "finetune.minutes": 1.5,
           "pretrain.encoder_params": 6_591_000.0 if arm == "vae-small" else 6_749_116.0}
    for r in (32, 64, 128, 256, 512):  # LiteVAE degrades less away from 256 px
        drop = abs(8 - r.bit_length()) * (0.5 if arm == "litevae" else 1.5)
        out[f"sweep.psnr.{r}"] = 26.0 + 0.1 * seed - drop
        out[f"sweep.ssim.{r}"] = 0.6
    out["sweep.psnr_drop"] = 1.0 if arm == "litevae" else 3.0
    for s in (25, 50, 100, 250, 500):
        out[f"mmd.raw.{s}"] = (0.1 if arm == "litevae" else 0.3) + 0.01 * seed
        out[f"mmd.normalised.{s}"] = 0.02 + 0.001 * seed
    return out


def _record(failed: tuple[str, int] | None = None, benchmark: dict | None = None) -> dict:
    from pipeline.claims.runner import new_record

    profile = load_profile(PROFILE)
    runs = arm_runs(profile, "claims-test")
    record = new_record(profile, runs, "claims-test", "0123abcd", "litevae", benchmark)
    arms = {entry["name"]: entry for entry in record["arms"]}
    for run in runs:
        ok = (run.arm.name, run.seed) != failed
        arms[run.arm.name]["runs"].append({
            "seed": run.seed, "experiment": run.experiment, "rev": "f" * 40 if ok else None,
            "status": "ok" if ok else "failed", "wall_s": 300.0, "measures": _measures(run.arm.name, run.seed)
            if ok else {}, "error": None if ok else "dvc exp run exited with 1"})
    record.update(finished="later", wall_minutes=50.0, code={"commit": "c" * 40, "changes": ["models/losses.py"]})
    return record


def _benchmark() -> dict:
    dvc_yaml = (REPO / "dvc.yaml").read_text()
    return json.loads((REPO / stage_arguments(dvc_yaml, "benchmark_encoders")["--metrics"]).read_text())


def test_report_renders_every_claim_with_numbers_verdicts_and_figures(tmp_path):
    record = _record(benchmark=_benchmark())
    results = evaluate(record)
    verdicts = {result.key: result.verdict for result in results}
    assert verdicts == {"table2b": AGREES, "table3": AGREES, "table4": INCONCLUSIVE, "table6": AGREES,
                        "fig5": AGREES, "hf_losses": DISAGREES, "table5": INCONCLUSIVE}
    files = write_report(record, results, tmp_path)
    assert {path.name for path in files} == {REPORT, FIG5, PAIRS, TABLE3}
    for path in files[1:]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / REPORT).read_text()
    for title in TITLES:
        assert title in text, title
    table2b = next(line for line in text.splitlines() if line.startswith("| PSNR (dB), 128 px |"))
    # paper 24.49 vs 24.10; LiteVAE 30.10 ± 0.14 against 29.10 ± 0.14, advantage +1.00 with noise 0.00
    assert "24.49 vs 24.10 (+0.39)" in table2b and "30.10 ± 0.14" in table2b and "29.10 ± 0.14" in table2b
    assert "+1.00" in table2b and table2b.rstrip(" |").endswith("agrees")
    assert "**disagrees**" in text and "**inconclusive**" in text
    assert "LiteVAE-B throughput vs SD-VAE" in text and "1.90x" in text  # paper's 129 / 68
    assert "VAE-Small, Table 2b's arm" in text  # the CPU stand-in for the SD-VAE architecture is stated
    assert "Compute per run" in text and "7.9 Mpx" in text
    assert "Encoder parameters: LiteVAE-B 6.75M, VAE-Small 6.59M" in text
    assert "`claims-test-smc-s1`" in text and "models/losses.py" in text
    for figure in (FIG5, PAIRS, TABLE3):
        assert f"]({figure})" in text


def test_a_failed_arm_leaves_its_pairs_unmeasured_not_wrong(tmp_path):
    record = _record(failed=("smc", 1))
    table4 = next(result for result in evaluate(record) if result.key == "table4")
    assert table4.verdict == INCONCLUSIVE  # one seed left: no noise estimate
    assert "smc seed 1" in table4.notes[0]
    assert all("(1 seed)" in row.favoured for row in table4.rows)
    table3 = next(result for result in evaluate(record) if result.key == "table3")
    assert table3.verdict == INCONCLUSIVE and "benchmark_encoders" in table3.setting


# ---- the record alone decides the report; claims about every row; the texts follow the data ----

def test_report_command_renders_table3_from_the_benchmark_the_record_kept(tmp_path):
    from pipeline.claims.runner import MEASUREMENTS, rerender
    from pipeline.core.files import write_json

    kept = _benchmark()
    row_b = kept["cpu"]["inference"]["rows"]["B"]
    row_b["throughput_ratio"], row_b["memory_ratio"] = 4.56, 7.89  # not what the checkout's benchmark says
    record = _record(benchmark=kept)
    write_json(tmp_path / MEASUREMENTS, record)
    rerender(tmp_path)
    text = (tmp_path / REPORT).read_text()
    assert "| LiteVAE-B throughput vs SD-VAE | 1.90x | 4.56x |" in text
    assert "| LiteVAE-B memory (x less) vs SD-VAE | 2.81x | 7.89x |" in text
    # a record from before records kept their benchmark shows none, not the checkout's of today
    del record["benchmark"]
    write_json(tmp_path / MEASUREMENTS, record)
    rerender(tmp_path)
    text = (tmp_path / REPORT).read_text()
    assert "holds no encoder benchmark" in text and "LiteVAE-B throughput vs SD-VAE" not in text


def _set_measure(record: dict, arm: str, measure: str, values: tuple[float, ...]) -> None:
    entry = next(entry for entry in record["arms"] if entry["name"] == arm)
    for run in entry["runs"]:
        run["measures"][measure] = values[run["seed"]]


def test_claims_made_for_every_row_agree_only_when_every_headline_row_does():
    from pipeline.claims.claims import claims

    record = _record()
    assert {claim.key for claim in claims(record["budget"]) if claim.every_row} == {"table6", "hf_losses"}
    # Table 9: the HF losses clearly raise PSNR (+1.0 at both seeds) while HF-L1 is noise (+0.5, -0.5)
    _set_measure(record, "litevae", "pretrain.psnr", (30.0, 30.2))
    _set_measure(record, "no-hf-loss", "pretrain.psnr", (29.0, 29.2))
    _set_measure(record, "litevae", "pretrain.hf_l1", (5.0, 5.0))
    _set_measure(record, "no-hf-loss", "pretrain.hf_l1", (5.5, 4.5))
    # Table 2b, a claim about the rows overall, with the same pattern: PSNR agrees, SSIM is noise
    _set_measure(record, "vae-small", "pretrain.psnr", (29.0, 29.2))
    _set_measure(record, "litevae", "pretrain.ssim", (0.80, 0.80))
    _set_measure(record, "vae-small", "pretrain.ssim", (0.79, 0.81))
    results = {result.key: result for result in evaluate(record)}
    assert [row.verdict for row in results["hf_losses"].rows if row.headline] == [AGREES, INCONCLUSIVE]
    assert results["hf_losses"].verdict == INCONCLUSIVE
    assert [row.verdict for row in results["table2b"].rows if row.headline] == [AGREES, INCONCLUSIVE]
    assert results["table2b"].verdict == AGREES


def test_setting_texts_follow_the_benchmark_and_the_profile():
    from pipeline.claims.claims import shortcut_note, table3

    benchmark = _benchmark()
    rows = benchmark["cpu"]["inference"]["rows"]
    rows["S"]["throughput_ratio"], rows["S"]["flops_ratio"] = 12.0, 24.0
    setting = table3(benchmark).setting
    assert "S 12.00x of 24.00x (50%)" in setting and "FLOP ceiling" not in setting
    # Table 4: the zero-initialised output conv is the shortcut's; the GPU profile turns the shortcut off
    quickstart = shortcut_note(load_profile(PROFILE).params)
    assert "lowpass_shortcut on" in quickstart and "noisier" in quickstart
    gpu = shortcut_note(load_profile(GPU_PROFILE).params)
    assert "lowpass_shortcut off" in gpu and "noisier" not in gpu


def test_hf_error_weighs_level_l_by_2_to_the_l_minus_1_as_documented():
    flat = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    scores = []
    for period in (2, 4, 8):  # a ±1 grey-level checkerboard of squares period/2 px wide
        y = torch.arange(32) // (period // 2)
        board = ((y[:, None] + y[None, :]) % 2) * 2 - 1  # (32, 32) of ±1
        scores.append(hf_l1(flat, (flat + board).to(torch.uint8)))
    assert scores == pytest.approx([2 / 9, 4 / 9, 8 / 9])


def _checkout(root: Path) -> None:
    """A git + DVC repository at `root` with a committed params.yaml."""
    root.mkdir()
    _git(root, "init", "-q")
    _git(root, "config", "user.email", "t@localhost")
    _git(root, "config", "user.name", "t")
    (root / "params.yaml").write_text("train_128: {steps: 80}\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "base")


def test_the_params_option_becomes_the_experiments_params_yaml(tmp_path):
    from pipeline.core.errors import UserError

    root = tmp_path / "checkout"
    _checkout(root)
    custom = tmp_path / "gpu_params.yaml"
    custom.write_text("train_128: {steps: 5000}\n")
    snapshot = take_snapshot(root, tmp_path / "snapshot", params=custom)
    assert (snapshot.path / "params.yaml").read_text() == custom.read_text()
    assert snapshot.changes == ("params.yaml",)  # the report lists it as an uncommitted change
    assert "params.yaml" in _git(snapshot.path, "diff", "--cached", "--name-only")  # part of every experiment
    assert (root / "params.yaml").read_text() == "train_128: {steps: 80}\n"  # the checkout's is left alone
    # the checkout's own params.yaml, unchanged: no change to report
    assert take_snapshot(root, tmp_path / "same", params=root / "params.yaml").changes == ()
    with pytest.raises(UserError, match="missing.yaml"):
        take_snapshot(root, tmp_path / "none", params=tmp_path / "missing.yaml")


# ---- one experiment's child process ----

def test_an_experiment_that_prints_undecodable_bytes_is_read_to_its_end(tmp_path, monkeypatch):
    from pipeline.claims import experiments

    script = ("import sys; out = sys.stdout.buffer; out.write(b'loss \\xff\\xfe\\n'); "
              "out.write(b\"Stage 'pretrain_vae' is cached - skipping run\\n\"); out.flush()")
    monkeypatch.setattr(experiments, "dvc_command", lambda run, force: [sys.executable, "-c", script])
    run = arm_runs(load_profile(PROFILE), "claims-test")[0]
    done = experiments.run_experiment(run, tmp_path, dict(os.environ), tmp_path / "log.txt")
    assert done.code == 0 and done.restored == ["pretrain_vae"]
    assert "loss \ufffd\ufffd" in done.tail and "loss \ufffd\ufffd" in (tmp_path / "log.txt").read_text()


def test_an_interrupted_experiment_stops_with_everything_it_started(tmp_path, monkeypatch):
    import time

    import psutil

    from pipeline.claims import experiments

    # the experiment (as dvc exp run would) starts a stage process, reports it, and runs on
    script = ("import subprocess, sys, time; stage = subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(60)']); print(stage.pid, flush=True); time.sleep(60)")
    monkeypatch.setattr(experiments, "dvc_command", lambda run, force: [sys.executable, "-c", script])
    started = []

    class Interrupted(Exception):
        """The error raised while the experiment runs."""

    class Console:
        def write(self, line):
            started.append(int(line))
            raise Interrupted  # an error while the experiment runs (as Ctrl-C would be)

    monkeypatch.setattr(sys, "stdout", Console())
    run = arm_runs(load_profile(PROFILE), "claims-test")[0]
    begin = time.perf_counter()
    with pytest.raises(Interrupted):
        experiments.run_experiment(run, tmp_path, dict(os.environ), tmp_path / "log.txt")
    monkeypatch.undo()
    assert time.perf_counter() - begin < 20  # stopped, not waited for
    stage = started[0]
    for _ in range(100):  # reparented when its parent died: gone, or a zombie until its new parent reaps it
        try:
            if psutil.Process(stage).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the experiment's stage process {stage} still runs")
