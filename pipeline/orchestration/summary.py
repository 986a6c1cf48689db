"""The end of `make repro`: one line per stage, its headline result next to its baseline, read from
metrics/*.json, then where to look next. A stage without a metrics file shows 'not run'; a value its file
lacks or reports as null shows 'n/a', with the stage's stated reason as a numbered note under the table.

    python -m pipeline.orchestration.summary [--metrics DIR]
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.core.environment import repo_root

NEXT_STEPS = """\
Where to look next:
  make ui              http://127.0.0.1:5000: every run, metric, artefact and registered model
  plots/               curves, reconstructions, latents, samples, the encoder benchmark table
  dvc metrics diff     every metric against the last commit"""
SPEEDUP_ENCODERS = {"S": "LiteVAE-S", "B": "LiteVAE-B"}


class Notes:
    """The reasons behind 'n/a' values, numbered once each in order of appearance."""

    def __init__(self):
        self.reasons: list[str] = []

    def mark(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"[{self.reasons.index(reason) + 1}]"


Key = str | tuple[str, ...]  # dotted (`model.scale`), or the parts themselves when one holds a dot (an MMD bandwidth)


def _parts(key: Key) -> tuple[str, ...]:
    return tuple(key.split(".")) if isinstance(key, str) else key


class Metrics:
    """One stage's metrics JSON, read by dotted keys (`model.scale`) or by key parts (`("model", "mmd", "2.5",
    "mean")`)."""

    def __init__(self, data: dict[str, Any], notes: Notes):
        self.data, self.notes = data, notes

    def get(self, key: Key) -> Any:
        value: Any = self.data
        for part in _parts(key):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def num(self, key: Key, spec: str = ".2f") -> str:
        """The value formatted with `spec`, or 'n/a' plus the note of the reason in `unavailable.<last part>`."""
        value = self.get(key)
        if isinstance(value, (int, float)):
            return format(value, spec)
        reason = self.get(("unavailable", _parts(key)[-1]))
        return f"n/a {self.notes.mark(reason)}" if reason else "n/a"


def _prepare(m: Metrics) -> tuple[str, str]:
    return (f"{m.num('train_images', 'd')} train / {m.num('val_images', 'd')} val images, "
            f"{m.num('skipped_files', 'd')} files skipped"), ""


def _vae(m: Metrics) -> tuple[str, str]:
    return (f"PSNR {m.num('val_psnr')} dB, SSIM {m.num('val_ssim', '.3f')} "
            f"({m.num('resolution', 'd')} px, {m.num('steps', 'd')} steps)"), \
           (f"bicubic x8 {m.num('baseline_bicubic_x8_psnr')} dB / {m.num('baseline_bicubic_x8_ssim', '.3f')}, "
            f"flat {m.num('baseline_flat_psnr')} dB / {m.num('baseline_flat_ssim', '.3f')}")


def _eval_recon(m: Metrics) -> tuple[str, str]:
    """Both protocols at `eval.resolution`: native crops (the training validation's) and resized views (Fig. 5)."""
    return (f"PSNR {m.num('native_crops.psnr')} dB (native crops), {m.num('resized_views.psnr')} dB (resized "
            f"views); LPIPS {m.num('resized_views.lpips', '.3f')}, rFID {m.num('resized_views.rfid')}"), \
        f"bicubic x8 {m.num('native_crops.baseline_bicubic_x8_psnr')} dB"


def _analyze_latents(m: Metrics) -> tuple[str, str]:
    # One bandwidth of Table 6's sweep: the middle one the stage reported
    mmd = m.get("model.mmd")
    bandwidths = sorted(mmd, key=float) if isinstance(mmd, dict) else []
    sigma = bandwidths[len(bandwidths) // 2] if bandwidths else "?"
    result = f"MMD² to N(0, I) {m.num(('model', 'mmd', sigma, 'mean'), '.3g')} (σ={sigma}), " \
             f"latent scale {m.num('model.scale', '.3g')}"
    baseline = f"baseline MMD² {m.num(('baseline', 'mmd', sigma, 'mean'), '.3g')}" if m.get("baseline") else ""
    return result, baseline


def _train_ldm(m: Metrics) -> tuple[str, str]:
    return f"val loss {m.num('val_loss', '.3f')} ({m.num('steps', 'd')} steps)", \
        f"at start {m.num('val_loss_at_start', '.3f')}"


def _eval_generation(m: Metrics) -> tuple[str, str]:
    return (f"FID {m.num('fid')}, KID {m.num('kid', '.4f')}, SWD {m.num('swd.samples.mean', '.3f')} "
            f"({m.num('num_samples', 'd')} samples)"),  \
        (f"FID floor {m.num('real_floor.fid')}; SWD floor {m.num('swd.real_floor.mean', '.3f')}, "
         f"noise {m.num('swd.noise_ceiling.mean', '.3f')}")


def _benchmark_encoders(m: Metrics) -> tuple[str, str]:
    devices = [d for d in ("cpu", "cuda") if m.get(f"{d}.inference.rows")] or ["cpu"]
    results, baselines = [], []
    for device in devices:
        rows = f"{device}.inference.rows"
        speedups = ", ".join(f"{name} {m.num(f'{rows}.{key}.throughput_ratio', '.1f')}x"
                             for key, name in SPEEDUP_ENCODERS.items())
        results.append(f"{speedups} faster ({device})")
        baselines.append(f"SD-VAE {m.num(f'{rows}.sd_vae.images_per_s.median')} img/s ({device})")
    return "; ".join(results), "; ".join(baselines)


STAGES: dict[str, Callable[[Metrics], tuple[str, str]]] = {
    "prepare": _prepare,
    "pretrain_vae": _vae,
    "finetune_vae": _vae,
    "eval_recon": _eval_recon,
    "analyze_latents": _analyze_latents,
    "train_ldm": _train_ldm,
    "eval_generation": _eval_generation,
    "benchmark_encoders": _benchmark_encoders,
}


def summary(metrics_dir: Path) -> str:
    """The table of every stage's headline result and baseline, its notes, and where to look next."""
    notes = Notes()
    rows = [("stage", "result", "baseline")]
    for stage, headline in STAGES.items():
        path = metrics_dir / f"{stage}.json"
        if path.is_file():
            rows.append((stage, *headline(Metrics(json.loads(path.read_text()), notes))))
        else:
            rows.append((stage, "not run", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip() for row in rows]
    lines.insert(1, "-" * len(max(lines, key=len)))
    if notes.reasons:
        lines.append("")
    for number, reason in enumerate(notes.reasons, 1):
        lines.append(textwrap.fill(reason, width=110, initial_indent=f"[{number}] ", subsequent_indent="    ",
                                   break_long_words=False, break_on_hyphens=False))  # keeps paths whole
    return "\n".join([*lines, "", NEXT_STEPS])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", type=Path, default=repo_root() / "metrics", help="folder of metrics/*.json")
    print(summary(parser.parse_args(argv).metrics))


if __name__ == "__main__":
    main()
