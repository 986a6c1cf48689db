"""The summary's analyze_latents row reads MMD bandwidths as the stage writes them (f"{sigma:g}"), dots included."""

import json

from pipeline.orchestration.summary import summary


def test_a_fractional_mmd_bandwidth_is_read_not_shown_as_n_a(tmp_path):
    mmd = {sigma: {"mean": mean, "std": 0.0} for sigma, mean in (("0.5", 0.1), ("2.5", 0.0123), ("10", 0.3))}
    (tmp_path / "analyze_latents.json").write_text(json.dumps({
        "model": {"mmd": mmd, "scale": 0.9}, "baseline": {"mmd": {**mmd, "2.5": {"mean": 0.0456, "std": 0.0}}}}))
    row = next(line for line in summary(tmp_path).splitlines() if line.startswith("analyze_latents "))
    assert "MMD² to N(0, I) 0.0123 (σ=2.5)" in row and "baseline MMD² 0.0456" in row
