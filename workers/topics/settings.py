"""Settings of the topics job (``python -m workers.topics``)."""

from __future__ import annotations

from pydantic import Field

from pipeline.settings import KafkaSettings, ProcessSettings


class TopicsSettings(ProcessSettings):
    """Topics job: creates the frames and dead-letter topics that do not exist yet."""

    kafka: KafkaSettings
    frames_partitions: int = Field(
        default=12, ge=1, description="Partitions of the frames topic: the most workers that "
        "can share the load (docs/scaling.md).")
    dead_letter_partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=3, ge=1, description="Replicas of each topic.")
    min_insync_replicas: int = Field(
        default=2, ge=1, description="With acks=all, a write is acknowledged once on this many.")
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=60_000,
                              description="How long unconsumed frames wait (an outage).")
    timeout_s: float = Field(default=120.0, gt=0, description="Wait this long for the broker.")
