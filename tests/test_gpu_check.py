"""scripts/gpu_check.sh refuses at once without a GPU; its driver runs dvc.yaml's stage commands at tiny size on
the CPU and tables what the stages measured, without a GPU number it did not measure."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists(),
                    reason="this machine has an NVIDIA GPU")
def test_the_script_fails_fast_without_a_gpu(tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), str(tmp_path / "table.md")], cwd=tmp_path,
                            env=_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "gpu_check: no NVIDIA GPU on this machine" in result.stderr and "--device cpu" in result.stderr
    assert not (tmp_path / "table.md").exists() and "make setup" not in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_the_driver_refuses_cuda_without_a_gpu(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), "--workdir", str(tmp_path / "w"),
                             "--out", str(tmp_path / "table.md")], env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and "gpu_check: no CUDA GPU visible" in result.stderr
    assert not (tmp_path / "table.md").exists()


def test_cpu_run_tables_the_stages_own_measurements(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(10):
        coarse = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((48, 40), Image.Resampling.BILINEAR).save(images / f"{index}.png")
    work, out = tmp_path / "work", tmp_path / "table.md"
    result = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), "--device", "cpu", "--images",
                             str(images), "--workdir", str(work), "--out", str(out)],
                            env=_env(), capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {}
    for line in out.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| part"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows.setdefault(cells[0], []).append(cells)
    assert list(rows) == ["prepare", "pretrain_vae", "finetune_vae", "train_ldm", "benchmark_encoders"]

    # each training row is its stage's metrics JSON (the stage ran through its dvc.yaml command in the scratch folder)
    for stage in ("pretrain_vae", "finetune_vae", "train_ldm"):
        [cells] = rows[stage]
        metrics = json.loads((work / "metrics" / f"{stage}.json").read_text())
        assert metrics["steps"] == 2 and metrics["world_size"] == 1 and "peak_gpu_memory_mb" not in metrics
        assert cells[2] == "cpu, fp32" and cells[3] == "2 x 32 px" and cells[6] == "-"
        assert cells[5].startswith(f"{metrics['images_per_sec']:,.1f} img/s")
        assert (work / "checkpoints" / f"{stage}.pt").is_file()

    # encoders on the CPU next to the paper's numbers; the CUDA benchmark skipped, and said so
    benchmark = json.loads((work / "metrics" / "benchmark_encoders.json").read_text())
    encoders = {cells[1].split(" encoder")[0]: cells
                for cells in rows["benchmark_encoders"] if "encoder inference (" in cells[1]}
    assert list(encoders) == ["SD-VAE", "LiteVAE-S", "LiteVAE-B"]
    speed = benchmark["cpu"]["inference"]["rows"]["B"]["images_per_s"]["median"]
    assert encoders["LiteVAE-B"][2] == "cpu, fp32" and encoders["LiteVAE-B"][5].startswith(f"{speed:,.1f} img/s")
    assert encoders["LiteVAE-B"][7] == "129 img/s (1.90x), 3,155 MB"
    [skipped] = [cells for cells in rows["benchmark_encoders"] if cells[2] == "cuda"]
    assert skipped[5].startswith("skipped: no CUDA device")
    assert not any(cells[2].startswith("cuda,") for stage_rows in rows.values() for cells in stage_rows)
