"""The encoder benchmark's result (pipeline/benchmark/encoders.py) as tables: Markdown, a PNG, and flat metrics for DVC
and MLflow."""

from __future__ import annotations

import io
from typing import Any

DISPLAY_NAMES = {"sd_vae": "SD-VAE", "S": "LiteVAE-S", "B": "LiteVAE-B", "M": "LiteVAE-M", "L": "LiteVAE-L"}


def _devices(result: dict[str, Any]) -> list[str]:
    return [device for device in ("cpu", "cuda") if "inference" in result.get(device, {})]


def table_rows(device_result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per encoder of a device's table, as strings."""
    inference_section = device_result["inference"]
    trains = [(key, section) for key, section in device_result.items() if key.startswith("train_")]
    header = ["encoder", "params (M)", "GFLOPs/img", "img/s median [min-max]", "x SD-VAE", "FLOP ceiling",
              "GFLOP/s (% of peak)", "MB/img", "x less memory"]
    for _, section in trains:
        side = section["resolution"]
        header += [f"fwd+bwd {side}: ms/img (x faster)", f"fwd+bwd {side}: MB/img (x less)"]
    rows = []
    for name, row in inference_section["rows"].items():
        speed = row["images_per_s"]
        cells = [
            DISPLAY_NAMES[name], f"{row['params_m']:.2f}", f"{row['gflops_per_image']:.1f}",
            f"{speed['median']:.2f} [{speed['min']:.2f}-{speed['max']:.2f}]", f"{row['throughput_ratio']:.2f}",
            f"{row['flops_ratio']:.2f}", f"{row['gflops_per_s']:.1f} ({row['fraction_of_peak']:.0%})",
            f"{row['memory_mb_per_image']:.1f}", f"{row['memory_ratio']:.2f}",
        ]
        for _, section in trains:
            train = section["rows"].get(name)
            cells += [f"{train['ms_per_image']['median']:.0f} ({train['time_ratio']:.2f})",
                      f"{train['memory_mb_per_image']:.0f} ({train['memory_ratio']:.2f})"] if train else ["-", "-"]
        rows.append(cells)
    return header, rows


def table_caption(device: str, result: dict[str, Any]) -> list[str]:
    """The lines that say what a device's table measured: hardware, batch, switches, peak and load."""
    device_result = result[device]
    inference_section = device_result["inference"]
    peak = inference_section["peak_gflops_per_s"]
    trains = [s for k, s in device_result.items() if k.startswith("train_")]
    switches = ", ".join(f"{key}={value}" for key, value in device_result["switches"].items())
    environment = result["environment"]
    return [
        f"{device.upper()}: {device_result['device']}, {device_result['precision']}, batch "
        f"{inference_section['batch_size']} at {inference_section['resolution']} px (forward+backward: batch "
        f"{trains[0]['batch_size'] if trains else '-'}); median over {result['config']['repeats']} interleaved rounds "
        f"(short passes repeated to about {result['config']['min_timed_seconds']:g} s per encoder)",
        f"reference peak, the best dense probe in the same rounds ({peak['probe']}): {peak['median']:.1f} GFLOP/s "
        f"[{peak['min']:.1f}-{peak['max']:.1f}]; "
        f"1-min load average {environment['load_average_1min_before']:.2f} before, "
        f"{environment['load_average_1min_after']:.2f} after",
        f"speed-ups (all encoders): {switches}",
    ]


def markdown_table(result: dict[str, Any]) -> str:
    """Every measured device's table in Markdown, with its caption."""
    parts = ["# Encoder efficiency (paper Table 3 on this machine)"]
    for device in _devices(result):
        header, rows = table_rows(result[device])
        parts.append("\n".join(f"- {line}" for line in table_caption(device, result)))
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append("\n".join(lines))
    for device in ("cpu", "cuda"):
        if "skipped" in result.get(device, {}):
            parts.append(f"{device.upper()} skipped: {result[device]['skipped']}")
    return "\n\n".join(parts) + "\n"


def table_png(result: dict[str, Any]) -> bytes:
    """The Markdown tables rendered as one PNG (a table per measured device)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = _devices(result)
    fig, axes = plt.subplots(len(devices), 1, figsize=(18, 3.6 * len(devices)), squeeze=False)
    for ax, device in zip(axes[:, 0], devices):
        header, rows = table_rows(result[device])
        ax.axis("off")
        labels = [label.replace(": ", "\n").replace(" median ", "\nmedian ") for label in header]
        table = ax.table(cellText=rows, colLabels=labels, loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.auto_set_column_width(list(range(len(header))))
        table.scale(1, 1.6)
        for column in range(len(header)):
            table[0, column].set_height(table[0, column].get_height() * 1.8)  # two-line labels
        ax.set_title("\n".join(table_caption(device, result)), fontsize=8, loc="left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Every number of the result under its dotted path, e.g. `cpu.inference.rows.B.throughput_ratio`."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("", {device: result[device] for device in _devices(result)})
    return flat
