"""Settings of the operations processes: the operator's dashboard and the drift monitor.

Same conventions as :mod:`pipeline.settings` (env prefix ``LINEWATCH_``, nested delimiter
``__``, built in the process's ``main()``), and the same shared Redis and HTTP sections.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

import redis
from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pipeline.drift import DriftConfig, DriftMethod
from pipeline.settings import _CONFIG, HttpSettings, RedisSettings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def redis_client(settings: RedisSettings) -> redis.Redis:
    """Build a Redis client that returns bytes (frames and heatmaps are binary).

    Args:
        settings: Redis section of a process's settings.

    Returns:
        A lazily connecting client.
    """
    # Two quick retries: a probe or a page request must answer within about a second.
    return redis.Redis.from_url(
        settings.url.get_secret_value(),
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )


class DashboardSettings(BaseSettings):
    """Operator's dashboard process (``python -m workers.dashboard``)."""

    model_config = _CONFIG

    redis: RedisSettings
    http: HttpSettings = HttpSettings(port=8080)
    refresh_ms: int = Field(default=2000, ge=200, description="How often the page polls.")
    chart_points: int = Field(
        default=300, ge=10, le=2000, description="Results per line in the score chart."
    )
    log_level: LogLevel = "INFO"


class DriftBounds(BaseModel):
    """Bounds of the drift detector (see :class:`pipeline.drift.DriftConfig`)."""

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


class DriftSettings(BaseSettings):
    """Drift monitor process (``python -m workers.drift_monitor``)."""

    model_config = _CONFIG

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
    log_level: LogLevel = "INFO"

    @model_validator(mode="after")
    def _check_block(self) -> DriftSettings:
        if self.block_ms / 1000 >= self.redis.socket_timeout_s:
            raise ValueError("block_ms must stay below redis.socket_timeout_s")
        return self
