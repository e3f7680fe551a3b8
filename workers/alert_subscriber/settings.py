"""Settings of the alert subscriber (``python -m workers.alert_subscriber``)."""

from __future__ import annotations

from pydantic import Field

from pipeline.settings import ProcessSettings, RedisSettings
from workers.startup import default_member_id


class AlertSubscriberSettings(ProcessSettings):
    """Alert subscriber process: follows one line's alert stream."""

    redis: RedisSettings
    product_line: str
    group: str = "alert-subscribers"
    consumer: str = Field(default_factory=default_member_id)
    block_ms: int = Field(default=1000, ge=1)
    forward_url: str | None = Field(default=None, description="POST each alert here as JSON.")
