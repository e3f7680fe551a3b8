"""Shared settings: the base of every process's settings class and the common sections.

pydantic-settings reads env vars ``LINEWATCH_*`` and ``.env``. Each process has one class
(``workers/<process>/settings.py``) derived from :class:`ProcessSettings`, built in that
process's start-up and never at import time. Nested sections use ``__``:
``LINEWATCH_KAFKA__BOOTSTRAP_SERVERS=broker:9092``. Required fields have no default, so a
missing one fails at start-up naming the field. Secrets are :class:`~pydantic.SecretStr`
and are never logged. The adapters (``pipeline.kafka``, ``pipeline.redis``) take the
sections defined here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Where every process reads its settings from.
SETTINGS_CONFIG = SettingsConfigDict(
    env_prefix="LINEWATCH_",
    env_nested_delimiter="__",
    env_file=".env",
    env_file_encoding="utf-8",
    extra="ignore",
)

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

#: One bootstrap server: a host name, IPv4 or [IPv6] address, then a port.
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?):\d{1,5}")


class ProcessSettings(BaseSettings):
    """Base of every process's settings class (same source, same log level field)."""

    model_config = SETTINGS_CONFIG

    log_level: LogLevel = Field(default="INFO", description="Overridden by --log-level.")


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
    max_message_bytes: int = Field(
        default=8 * 1024 * 1024, ge=64 * 1024, description="Largest record (key, value and "
        "headers) anywhere: the producers' max_request_size, the worker's fetch sizes and "
        "frame limit, the dead-letter producer's limit and the topics' max.message.bytes.")

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_servers(cls, value: str) -> str:
        for server in value.split(","):
            if not _HOST_PORT.fullmatch(server.strip()):
                raise ValueError(f"{server.strip()!r} is not host:port (e.g. broker:9092)")
        return value

    @field_validator("api_version")
    @classmethod
    def _check_api_version(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+(\.\d+){1,2}", value):
            raise ValueError(f"{value!r} is not a version like 2.8.0")
        return value

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

    # the URL may hold a password: errors never repeat what was given
    model_config = ConfigDict(hide_input_in_errors=True)

    url: SecretStr = Field(description="redis:// or rediss:// URL (may hold a password).")
    key_prefix: str = Field(default="linewatch", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    result_ttl_s: int = Field(default=24 * 3600, ge=1)
    stream_maxlen: int = Field(default=10_000, ge=10)
    alert_stream_maxlen: int = Field(default=10_000, ge=10)
    socket_timeout_s: float = Field(default=2.0, gt=0)
    store_frames: bool = Field(default=True, description="Also keep each frame's JPEG.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        scheme = value.get_secret_value().partition("://")[0].lower()
        if scheme not in ("redis", "rediss", "unix"):
            # the URL may hold a password: name the scheme only
            raise ValueError(f"scheme {scheme[:20]!r} is not redis://, rediss:// or unix://")
        return value


class HttpSettings(BaseModel):
    """Health/metrics endpoint; binds to localhost unless configured otherwise."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port.")
