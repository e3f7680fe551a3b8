"""Process settings (pydantic-settings): env vars ``LINEWATCH_*`` and ``.env``.

One class per process, built in that process's ``main()`` and never at import time.
Nested sections use ``__``: ``LINEWATCH_KAFKA__BOOTSTRAP_SERVERS=broker:9092``.
Required fields have no default, so a missing one fails at start-up naming the field.
Secrets are :class:`~pydantic.SecretStr` and are never logged.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.codec import ImageLimits
from pipeline.messages import Encoding

_CONFIG = SettingsConfigDict(
    env_prefix="LINEWATCH_",
    env_nested_delimiter="__",
    env_file=".env",
    env_file_encoding="utf-8",
    extra="ignore",
)


class KafkaSettings(BaseModel):
    """Kafka connection and topics (SASL/SSL supported)."""

    bootstrap_servers: str = Field(description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    frames_topic: str = "linewatch.frames"
    dead_letter_topic: str = "linewatch.frames.dlq"
    request_timeout_ms: int = Field(default=10_000, ge=1000)
    #: Idempotent producer (recommended with Apache Kafka and acks=all).
    enable_idempotence: bool = True
    #: Broker API version as "x.y.z"; given explicitly, clients skip the version probe.
    api_version: str | None = None

    @model_validator(mode="after")
    def _check_sasl(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and (
            self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None
        ):
            raise ValueError(
                "security_protocol SASL_* needs sasl_mechanism, sasl_username and sasl_password"
            )
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """Connection keyword arguments shared by kafka-python clients (secrets revealed)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",")],
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.api_version:
            kwargs["api_version"] = tuple(int(p) for p in self.api_version.split("."))
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                value = getattr(self, name)
                if value is not None:
                    kwargs[name] = str(value)
            if self.ssl_password is not None:
                kwargs["ssl_password"] = self.ssl_password.get_secret_value()
        return kwargs


class RedisSettings(BaseModel):
    """Redis connection and layout. Password/TLS go in the URL (``rediss://:pw@host``)."""

    url: SecretStr = Field(description="redis:// or rediss:// URL (may hold a password).")
    key_prefix: str = Field(default="linewatch", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    result_ttl_s: int = Field(default=24 * 3600, ge=1)
    stream_maxlen: int = Field(default=10_000, ge=10)
    alert_stream_maxlen: int = Field(default=10_000, ge=10)
    socket_timeout_s: float = Field(default=2.0, gt=0)
    store_frames: bool = Field(default=True, description="Also keep each frame's JPEG.")


class HttpSettings(BaseModel):
    """Health/metrics endpoint; binds to localhost unless configured otherwise."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port.")


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


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BaseSettings):
    """Inference worker process."""

    model_config = _CONFIG

    kafka: KafkaSettings
    redis: RedisSettings
    http: HttpSettings = HttpSettings()
    batching: BatchingSettings = BatchingSettings()
    limits: LimitSettings = LimitSettings()
    model_store: Path = Field(description="Model store directory (see docs/contracts.md).")
    group_id: str = "linewatch-workers"
    worker_id: str = Field(default_factory=_default_worker_id)
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


class ProducerSettings(BaseSettings):
    """Camera producer process (one per camera)."""

    model_config = _CONFIG

    kafka: KafkaSettings
    http: HttpSettings = HttpSettings()
    camera_id: str
    product_line: str
    source: str = Field(description="Video file, RTSP/HTTP URL, device index or image folder.")
    fps_limit: float | None = Field(default=None, gt=0)
    loop: bool = False
    max_frames: int | None = Field(default=None, ge=1)
    encoding: Encoding = Encoding.JPEG
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    resize_to: int | None = Field(default=None, ge=16, description="Square side to resize to.")
    buffer_max_frames: int = Field(default=1000, ge=1)
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)
    send_batch: int = Field(default=32, ge=1)
    linger_ms: int = Field(default=5, ge=0)


class AlertSubscriberSettings(BaseSettings):
    """Alert subscriber process: follows one line's alert stream."""

    model_config = _CONFIG

    redis: RedisSettings
    product_line: str
    group: str = "alert-subscribers"
    consumer: str = Field(default_factory=_default_worker_id)
    block_ms: int = Field(default=1000, ge=1)
    forward_url: str | None = Field(default=None, description="POST each alert here as JSON.")


class DeadLetterSettings(BaseSettings):
    """Dead-letter tool (``python -m workers.dead_letters list|replay``)."""

    model_config = _CONFIG

    kafka: KafkaSettings
    read_timeout_ms: int = Field(default=2000, ge=100,
                                 description="Stop reading after this long without a record.")
