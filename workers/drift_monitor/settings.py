"""Settings of the drift monitor (``python -m workers.drift_monitor``)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from pipeline.settings import HttpSettings, ProcessSettings, RedisSettings
from workers.drift_monitor.statistics import DriftConfig, DriftMethod


class DriftBounds(BaseModel):
    """Bounds of the drift detector (see :class:`workers.drift_monitor.statistics.DriftConfig`)."""

    method: DriftMethod = DriftMethod.KS
    window: int = Field(default=500, ge=10, description="Recent scores compared.")
    min_samples: int = Field(default=200, ge=10, description="No verdict before this many.")
    raise_above: float = Field(default=0.3, gt=0, description="Alert starts at this statistic.")
    clear_below: float = Field(default=0.15, ge=0, description="Alert ends at this statistic.")
    evaluate_every: int = Field(default=25, ge=1, description="Scores between evaluations.")
    psi_bins: int = Field(default=10, ge=2, le=100)

    @model_validator(mode="after")
    def _check(self) -> DriftBounds:
        self.to_config()  # raises ValueError on inconsistent bounds
        return self

    def to_config(self) -> DriftConfig:
        """The pure detector's configuration."""
        return DriftConfig(
            method=self.method,
            window=self.window,
            min_samples=self.min_samples,
            raise_above=self.raise_above,
            clear_below=self.clear_below,
            evaluate_every=self.evaluate_every,
            psi_bins=self.psi_bins,
        )


class DriftSettings(ProcessSettings):
    """Drift monitor process (``python -m workers.drift_monitor``)."""

    redis: RedisSettings
    http: HttpSettings = HttpSettings(port=9102)
    drift: DriftBounds = DriftBounds()
    model_store: Path = Field(description="Model store directory (see docs/contracts.md).")
    lines: list[str] = Field(
        default_factory=list, description="Lines to follow; empty: every line in {p}:lines."
    )
    consumer_group: str = "linewatch-drift"
    consumer_name: str = Field(default_factory=socket.gethostname)
    block_ms: int = Field(default=1000, ge=1, description="Wait of one stream read.")
    batch_size: int = Field(default=200, ge=1, le=10_000)
    drift_stream_maxlen: int = Field(default=1000, ge=10)
