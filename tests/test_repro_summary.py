"""The end of `make repro`: `python -m pipeline.orchestration.summary` prints each stage's headline result next
to its baseline from metrics/*.json, and never crashes on missing files or keys."""

import json
import subprocess
import sys
from pathlib import Path

from pipeline.orchestration.summary import STAGES, summary

REPO = Path(__file__).resolve().parents[1]


def _row(text: str, stage: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"{stage} "))


def test_summary_of_the_committed_metrics_is_short_and_names_results_and_baselines():
    command = [sys.executable, "-m", "pipeline.orchestration.summary", "--metrics", str(REPO / "metrics")]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    text = result.stdout
    table = text.split("\n\n")[0].splitlines()
    assert len(table) == 2 + len(STAGES) and max(map(len, table)) < 160
    metrics = {stage: json.loads((REPO / "metrics" / f"{stage}.json").read_text()) for stage in STAGES}

    prepare = metrics["prepare"]
    assert f"{prepare['train_images']} train / {prepare['val_images']} val images" in _row(text, "prepare")
    finetune = metrics["finetune_vae"]
    row = _row(text, "finetune_vae")
    assert f"PSNR {finetune['val_psnr']:.2f} dB" in row
    assert f"bicubic x8 {finetune['baseline_bicubic_x8_psnr']:.2f} dB" in row
    assert f"flat {finetune['baseline_flat_psnr']:.2f} dB" in row
    ldm = metrics["train_ldm"]
    assert f"at start {ldm['val_loss_at_start']:.3f}" in _row(text, "train_ldm")
    speedup = metrics["benchmark_encoders"]["cpu"]["inference"]["rows"]["S"]["throughput_ratio"]
    assert f"LiteVAE-S {speedup:.1f}x" in _row(text, "benchmark_encoders")
    assert "latent scale" in _row(text, "analyze_latents") and "MMD" in _row(text, "analyze_latents")
    swd = metrics["eval_generation"]["swd"]
    assert f"SWD {swd['samples']['mean']:.3f}" in _row(text, "eval_generation")
    assert f"noise {swd['noise_ceiling']['mean']:.3f}" in _row(text, "eval_generation")

    # a null metric shows 'n/a' with its reason from the stage's `unavailable` section as a note
    recon = metrics["eval_recon"]
    if recon["resized_views"]["rfid"] is None:
        assert "rFID n/a [" in _row(text, "eval_recon")
        assert " ".join(recon["unavailable"]["rfid"].split()) in " ".join(text.split())
    assert "http://127.0.0.1:5000" in text and "plots/" in text and "dvc metrics diff" in text


def test_summary_of_missing_files_and_keys_says_not_run_and_n_a(tmp_path):
    text = summary(tmp_path)
    assert all(_row(text, stage).split(None, 1)[1] == "not run" for stage in STAGES)

    for stage in STAGES:
        (tmp_path / f"{stage}.json").write_text("{}")
    (tmp_path / "eval_recon.json").write_text(json.dumps({"resized_views": {"psnr": 20.0, "rfid": None},
                                                          "unavailable": {"rfid": "no Inception weights"}}))
    text = summary(tmp_path)
    row = _row(text, "eval_recon")
    assert "20.00 dB (resized views)" in row and "rFID n/a [1]" in row and "PSNR n/a dB (native crops)" in row
    assert "[1] no Inception weights" in text
    assert "val loss n/a" in _row(text, "train_ldm")
