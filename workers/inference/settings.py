"""Settings of the inference worker (``python -m workers.inference``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from pipeline.settings import HttpSettings, KafkaSettings, ProcessSettings, RedisSettings
from pipeline.wire.codec import ImageLimits
from workers.startup import default_member_id


class BatchingSettings(BaseModel):
    """Dynamic micro-batching knobs (Triton-style)."""

    max_batch_size: int = Field(default=8, ge=1, le=1024)
    max_wait_ms: float = Field(default=20.0, ge=0)
    decode_threads: int = Field(default=2, ge=1, le=64)


class LimitSettings(BaseModel):
    """What a worker accepts; everything else goes to the dead-letter topic."""

    min_side: int = Field(default=16, ge=1)
    max_side: int = Field(default=4096, ge=1)
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    def image_limits(self) -> ImageLimits:
        """The codec's view of these limits."""
        return ImageLimits(self.min_side, self.max_side, self.max_message_bytes)


class WorkerSettings(ProcessSettings):
    """Inference worker process."""

    kafka: KafkaSettings
    redis: RedisSettings
    http: HttpSettings = HttpSettings()
    batching: BatchingSettings = BatchingSettings()
    limits: LimitSettings = LimitSettings()
    model_store: Path = Field(description="Model store directory (see docs/contracts.md).")
    group_id: str = "linewatch-workers"
    worker_id: str = Field(default_factory=default_member_id)
    model_cache_size: int = Field(default=4, ge=1)
    expected_backbone: str | None = Field(
        default=None, description="Refuse model artifacts fitted on another backbone "
        "(e.g. efficientnet_lite0); the line's previous model keeps serving.")
    model_refresh_s: float = Field(default=5.0, ge=0)
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    retry_backoff_max_s: float = Field(default=10.0, gt=0)
    health_interval_s: float = Field(
        default=5.0, ge=0.2, le=300,
        description="How often the worker publishes its health record for the console.")
