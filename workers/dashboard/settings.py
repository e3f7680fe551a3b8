"""Settings of the operator's dashboard (``python -m workers.dashboard``)."""

from __future__ import annotations

from pydantic import Field

from pipeline.settings import HttpSettings, ProcessSettings, RedisSettings


class DashboardSettings(ProcessSettings):
    """Operator's dashboard process (``python -m workers.dashboard``)."""

    redis: RedisSettings
    http: HttpSettings = HttpSettings(port=8080)
    refresh_ms: int = Field(default=2000, ge=200, description="How often the page polls.")
    chart_points: int = Field(
        default=300, ge=10, le=2000, description="Results per line in the score chart."
    )
