"""reports/paper_claims.md and its figures, from a claims record (reports/claims_measurements.json) and the
evaluated claims (pipeline/claims/claims.py). Pure rendering: it runs nothing and reads no other file.

Figures (PNG, matplotlib):
- `claims_fig5_psnr.png`: PSNR against resolution (log2) of LiteVAE and the SD-VAE-architecture arm, mean and
  std over seeds (the paper's Fig. 5, PSNR panel);
- `claims_pairs.png`: every headline row of the paired claims, the two arms' values per seed (dots) and their
  means (bars), titled with the row's verdict;
- `claims_table3.png`: Table 3's throughput and memory ratios to SD-VAE, the paper's against this machine's.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from pipeline.claims.claims import SWEEP, ClaimResult, arm_labels, claims, seed_values
from pipeline.core.files import atomic_path, write_bytes

REPORT = "paper_claims.md"
FIG5, PAIRS, TABLE3 = "claims_fig5_psnr.png", "claims_pairs.png", "claims_table3.png"
VERDICT_COLOURS = {"agrees": "tab:green", "disagrees": "tab:red", "inconclusive": "tab:gray"}


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig5_figure(record: dict[str, Any]) -> bytes | None:
    """PSNR against log2(resolution) for the Fig. 5 arms, or None when neither measured the sweep."""
    plt = _pyplot()
    fig5 = next(claim for claim in claims(record["budget"]) if claim.key == "fig5")
    labels = arm_labels(record["budget"])
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    plotted = False
    for arm, marker in ((fig5.favoured, "o"), (fig5.other, "s")):
        points = []
        for side in SWEEP:
            values = list(seed_values(record, arm, f"sweep.psnr.{side}").values())
            if values:
                mean = sum(values) / len(values)
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0
                points.append((math.log2(side), mean, std))
        if points:
            x, y, err = zip(*points)
            axis.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=labels[arm])
            plotted = True
    if not plotted:
        plt.close(figure)
        return None
    axis.set_xticks([math.log2(side) for side in SWEEP], [str(side) for side in SWEEP])
    axis.set_xlabel("resolution (px, log scale)")
    axis.set_ylabel("PSNR (dB)")
    axis.set_title("Fig. 5: PSNR across resolutions (fine-tuned at 256 px)\nmean ± std over seeds")
    axis.grid(alpha=0.3)
    axis.legend()
    return _png(figure)


def pairs_figure(record: dict[str, Any], results: list[ClaimResult]) -> bytes | None:
    """One panel per headline row of the paired claims: both arms' seeds (dots) and means (bars)."""
    plt = _pyplot()
    verdicts = {(r.key, row.label): row.verdict for r in results for row in r.rows}
    labels = arm_labels(record["budget"])
    panels = [(claim, row) for claim in claims(record["budget"]) for row in claim.rows if row.headline]
    columns = 4
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, (claim, row) in zip(axes.flat, panels):
        sides = [seed_values(record, arm, row.measure) for arm in (claim.favoured, claim.other)]
        for position, values in enumerate(sides):
            if values:
                mean = sum(values.values()) / len(values)
                axis.bar(position, mean, color="tab:blue" if position == 0 else "tab:orange", alpha=0.5)
                axis.plot([position] * len(values), list(values.values()), "k.", markersize=8)
        for seed in set(sides[0]) & set(sides[1]):  # the pairs
            axis.plot([0, 1], [sides[0][seed], sides[1][seed]], color="k", linewidth=0.6, alpha=0.5)
        axis.set_xticks([0, 1], [labels[claim.favoured], labels[claim.other]], fontsize=8)
        verdict = verdicts.get((claim.key, row.label), "inconclusive")
        arrow = "higher" if row.higher_is_better else "lower"
        axis.set_title(f"{claim.key}: {row.label}\n({arrow} is better) {verdict}", fontsize=9,
                       color=VERDICT_COLOURS[verdict])
        values = [v for arm in (claim.favoured, claim.other) for v in seed_values(record, arm, row.measure).values()]
        if values:  # bars start at 0; zoom to the values so differences of a few tenths show
            low, high = min(values), max(values)
            pad = 0.25 * (high - low) or 0.05 * abs(high) or 1.0
            axis.set_ylim(low - pad, high + pad)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.suptitle("Paired claims: the arm the paper favours (blue) against the other (orange); dots are seeds, "
                    "lines join the seed pairs", fontsize=11)
    figure.tight_layout()
    return _png(figure)


def table3_figure(result: ClaimResult) -> bytes | None:
    """The paper's and the measured throughput / memory ratios to SD-VAE, per LiteVAE size (log scale)."""
    if not result.rows:
        return None
    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, kind in zip(axes, ("throughput", "memory")):
        rows = [row for row in result.rows if kind in row.label]
        names = [row.label.split()[0] for row in rows]
        paper = [float(row.paper.rstrip("x")) for row in rows]
        measured = [float(row.favoured.rstrip("x")) for row in rows]
        x = range(len(rows))
        axis.bar([i - 0.2 for i in x], paper, width=0.4, label="paper (GPU, batch 32)")
        axis.bar([i + 0.2 for i in x], measured, width=0.4, label="measured here")
        axis.axhline(1.0, color="k", linewidth=0.8)
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_xticks(list(x), names)
        axis.set_title(f"{kind} ratio to SD-VAE ({'x faster' if kind == 'throughput' else 'x less memory'})")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def _summary(result: ClaimResult) -> str:
    parts = []
    for row in result.rows:
        if not row.headline:
            continue
        if result.paired:
            paper = f"; paper {row.paper.split('(')[-1].rstrip(')')}" if row.paper != "-" else ""
            parts.append(f"{row.label}: {row.difference} (noise {row.noise.split(' (')[0]}{paper}) {row.verdict}")
        else:
            parts.append(f"{row.label}: {row.favoured} (paper {row.paper}) {row.verdict}")
    return "<br>".join(parts) or "not measured"


def _arms_table(record: dict[str, Any]) -> list[str]:
    rows = []
    for entry in record["arms"]:
        first, runs = entry["settings"]["train_128"], entry["runs"]
        finetune = entry["settings"]["train_256"]
        ok = [run for run in runs if run["status"] == "ok"]
        wall = f"{sum(run['wall_s'] for run in ok) / len(ok) / 60:.1f}" if ok else "-"
        rows.append([
            f"`{entry['name']}`", entry["description"], ", ".join(entry["targets"]),
            f"{first['steps']} x {first['batch_size']} @ {first['resolution']} px",
            f"{finetune['steps']} x {finetune['batch_size']} @ 256 px" if entry["fine_tunes"] else "-",
            f"{entry['pixels'] / 1e6:.1f}", f"{len(ok)}/{len(runs)}", wall,
            ", ".join(f"`{run['experiment']}`" for run in runs),
        ])
    header = ["arm", "recipe", "stages (with their upstream)", "first stage (steps x batch)", "fine-tuning",
              "Mpx per run", "runs ok", "wall min per run", "DVC experiments"]
    return _table(header, rows)


def _claim_section(result: ClaimResult) -> list[str]:
    lines = [f"### {result.title}: **{result.verdict}**", "", f"Paper: {result.quote}.", "",
             f"Here: {result.setting}", ""]
    if result.paired:
        header = ["measure", "paper (favoured vs other, advantage)", result.favoured, result.other,
                  "advantage", "noise (std of the advantage)", "verdict"]
        rows = [[row.label + ("" if row.headline else " (info)"), row.paper, row.favoured, row.other,
                 row.difference, row.noise, row.verdict] for row in result.rows]
    else:
        header = ["ratio", "paper", "measured", "range", "verdict"]
        rows = [[row.label + ("" if row.headline else " (info)"), row.paper, row.favoured, row.noise, row.verdict]
                for row in result.rows]
    if rows:
        lines += _table(header, rows) + [""]
    lines += [note + "\n" for note in result.notes]
    return lines


def render(record: dict[str, Any], results: list[ClaimResult], figures: list[str]) -> str:
    """The markdown report."""
    budget, code = record["budget"], record["code"]
    changes = code["changes"]
    listed = ", ".join(f"`{change}`" for change in changes[:12]) + (", ..." if len(changes) > 12 else "")
    change_text = f" plus uncommitted changes to {len(changes)} files ({listed})" if changes else ""
    seeds = ", ".join(str(s) for s in budget["seeds"])
    lines = [
        "# The paper's claims, measured by the pipeline", "",
        (f"Generated by `make claims` (`python -m pipeline.claims run --profile {record['profile']}`), "
         f"{record['started']} to {record['finished'] or 'unfinished'} "
         f"({'?' if record['wall_minutes'] is None else format(record['wall_minutes'], '.1f')} min) on "
         f"{record['machine']}, at commit `{code['commit'][:10]}`{change_text}. 1-minute load average at the start "
         f"and the end: {' and '.join(f'{load:g}' for load in record.get('load_average', [])) or 'not recorded'}."),
        (f"MLflow: parent run `{record['group']}` (id `{record['parent_run_id']}`) in experiment "
         f"`{record['experiment']}`, one nested run per arm and seed, each with its stage runs nested under it; "
         f"the DVC experiments are `{record['group']}-<arm>-s<seed>` (`dvc exp show`). The raw measurements are in "
         "`claims_measurements.json` beside this file."), "",
        "## Summary", "",
    ]
    summary = [[result.title, _summary(result), f"**{result.verdict}**"] for result in results]
    lines += _table(["claim", "headline rows: measured advantage (noise; paper) verdict", "verdict"], summary)
    lines += [
        "", "## How to read it", "",
        ("Each claim pairs the recipe the paper favours with the one it beats, trained with equal steps, batch and "
         f"data, once per seed ({seeds}); seed s of one arm is paired with seed s of the other. The **advantage** is "
         "favoured minus other where higher is better (other minus favoured where lower is better), so a positive "
         "advantage points the paper's way; its mean over seeds is shown. The **noise** is the standard deviation "
         "over seeds of the per-seed advantage (run-to-run noise of the difference itself). A row **agrees** when "
         f"the mean advantage exceeds {budget['noise_factor']:g} x the noise, **disagrees** when it is below "
         f"-{budget['noise_factor']:g} x the noise, and is **inconclusive** otherwise (always with one seed). A claim "
         "agrees when at least one headline row agrees and none disagrees, disagrees in the mirror case, and is "
         "inconclusive otherwise; a claim the paper makes for every row (its setting says so) agrees only when "
         "every headline row agrees and disagrees when any one does. Rows marked (info) are shown but do not "
         "decide. Arm columns give mean ± std over "
         "seeds. With two seeds the noise has one degree of freedom: the verdicts say which way a small budget "
         "points, not that the paper's converged numbers are reproduced."), "",
        "## Arms and budget", "",
        (f"Profile `{record['profile']}`: nz = {budget['latent_channels']}, {len(budget['seeds'])} "
         f"seed{'s' if len(budget['seeds']) != 1 else ''}, every arm's other params as params.yaml (the CPU "
         "quickstart's model and losses) plus the profile's `params`. Pixels count the training crops "
         "(steps x batch x side^2)."), "",
    ]
    lines += _arms_table(record) + [""]
    restored = [f"`{run['experiment']}` ({', '.join(stages)})" for entry in record["arms"] for run in entry["runs"]
                if (stages := [stage for stage in run.get("restored", []) if stage != "prepare"])]
    if restored:
        lines += ["Restored from DVC's run cache, trained by an earlier run of the same code, params and data "
                  "(their wall times are no training times; `--force` retrains): " + ", ".join(restored) + ".", ""]
    lines += ["## Claims", ""]
    for result in results:
        lines += _claim_section(result)
    if figures:
        lines += ["## Figures", ""] + [f"![{name}]({name})\n" for name in figures]
    return "\n".join(lines).rstrip() + "\n"


def write_report(record: dict[str, Any], results: list[ClaimResult], folder: Path) -> list[Path]:
    """Write the figures and the markdown report into `folder`; returns every file written."""
    table3 = next((r for r in results if r.key == "table3"), None)
    images = {FIG5: fig5_figure(record), PAIRS: pairs_figure(record, results),
              TABLE3: table3_figure(table3) if table3 else None}
    written = []
    for name, data in images.items():
        if data is not None:
            write_bytes(folder / name, data)
            written.append(folder / name)
    with atomic_path(folder / REPORT) as tmp:
        tmp.write_text(render(record, results, [path.name for path in written]))
    return [folder / REPORT, *written]
