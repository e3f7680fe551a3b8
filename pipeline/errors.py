"""Exception family of the streaming pipeline.

Every error raised on purpose by ``pipeline/`` and ``workers/`` derives from
:class:`LinewatchError`. Per-message errors (:class:`FrameError` and children) carry a
short machine-readable ``reason`` that becomes the dead-letter reason.
"""

from __future__ import annotations


class LinewatchError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class FrameError(LinewatchError):
    """One message cannot be processed; it goes to the dead-letter topic.

    Attributes:
        reason: Short, stable, machine-readable reason (used as dead-letter reason and
            metrics label), e.g. ``"undecodable_payload"``.
    """

    reason: str = "invalid_frame"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class SchemaError(FrameError):
    """Headers are missing, malformed, or name an unknown schema version."""

    reason = "invalid_headers"


class DecodeError(FrameError):
    """The payload is empty, corrupt, or cannot be decoded into an image."""

    reason = "undecodable_payload"


class ModelNotFoundError(FrameError):
    """No model exists (or none can be loaded) for the frame's product line."""

    reason = "unknown_product_line"


class TransportUnavailableError(LinewatchError):
    """Kafka or Redis cannot be reached right now; the caller retries with backoff."""


class ConfigurationError(LinewatchError):
    """Settings or the environment are unusable; the process exits with a clear message."""
