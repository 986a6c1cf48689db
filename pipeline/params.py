"""The schema of `params.yaml`: one dataclass per section, and the loader every stage uses.

A stage reads only the sections it declares in dvc.yaml, e.g.
`data = load_params("params.yaml", "data")["data"]`; the file's other sections are checked by name only,
so an unknown or misspelt section still fails before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.config import ConfigError, parse, read_yaml


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how `prepare` stores them.

    source: `embedded` (real photos shipped in installed packages), `folder` (a directory of images, searched
    recursively) or `shards` (existing WebDataset tar shards: a path, glob, brace pattern or URL).
    """

    source: Literal["embedded", "folder", "shards"] = "embedded"
    path: str = ""
    storage_size: int = field(default=512, metadata={"ge": 32})
    min_size: int = field(default=256, metadata={"ge": 8})
    val_fraction: float = field(default=0.2, metadata={"gt": 0.0, "lt": 1.0})
    max_pixels: int = field(default=89_478_485, metadata={"ge": 1})
    shard_max_samples: int = field(default=64, metadata={"ge": 1})
    include_debian_wallpapers: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source != "embedded" and not self.path:
            raise ValueError(f"path: required when source is '{self.source}'; set data.path")
        if self.min_size > self.storage_size:
            raise ValueError(
                f"min_size: {self.min_size} exceeds storage_size {self.storage_size}; "
                "images are stored with their shorter side at most storage_size"
            )


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: the experiment every stage run goes to, and the names models are registered under."""

    experiment: str = "litevae"
    vae_model_name: str = "litevae-autoencoder"
    ldm_model_name: str = "litevae-ldm"


@dataclass(frozen=True)
class ScheduleConfig:
    """When `serve` runs the Prefect flow (standard 5-field cron), and which stages it targets."""

    cron: str = "0 3 * * *"
    timezone: str = "UTC"
    targets: tuple[str, ...] = ("eval_generation", "eval_recon", "analyze_latents", "benchmark_encoders")

    def __post_init__(self) -> None:
        if len(self.cron.split()) != 5:
            raise ValueError(f"cron: {self.cron!r} is not a 5-field cron expression, e.g. '0 3 * * *'")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "tracking": TrackingConfig,
    "schedule": ScheduleConfig,
}


def load_params(path: str | Path, *names: str) -> dict[str, Any]:
    """Parse and validate the named sections of a params file.

    Returns {section name: dataclass instance}. Raises ConfigError naming the file, section or key.
    """
    raw = read_yaml(path)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section '{unknown[0]}'; allowed sections: {sorted(SECTIONS)}")
    for name in names:
        if name not in SECTIONS:
            raise ConfigError(f"{name}: not a params section; allowed sections: {sorted(SECTIONS)}")
    return {name: parse(SECTIONS[name], raw.get(name), name) for name in names}
