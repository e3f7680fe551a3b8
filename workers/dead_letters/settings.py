"""Settings of the dead-letter tool (``python -m workers.dead_letters``)."""

from __future__ import annotations

from pydantic import Field

from pipeline.settings import KafkaSettings, LogLevel, ProcessSettings


class DeadLetterSettings(ProcessSettings):
    """Dead-letter tool (``python -m workers.dead_letters list|replay``)."""

    kafka: KafkaSettings
    read_timeout_ms: int = Field(default=2000, ge=100,
                                 description="Stop reading after this long without a record.")
    log_level: LogLevel = Field(default="WARNING", description="Overridden by --log-level.")
