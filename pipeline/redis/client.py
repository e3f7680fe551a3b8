"""The one Redis client factory, and the errors that retrying cannot fix."""

from __future__ import annotations

import logging

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
)
from redis.retry import Retry

from pipeline.settings import RedisSettings

logger = logging.getLogger(__name__)

#: Redis errors that retrying cannot fix (wrong password, missing ACL permission).
PERMANENT_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError,
)

#: Errors that mean "Redis cannot be reached right now".
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, OSError,
)


def connect(settings: RedisSettings, blocking_ms: int = 0, retries: int = 2) -> redis.Redis:
    """A lazily connecting client that returns bytes (frames and heatmaps are binary).

    Args:
        settings: Redis section of a process's settings (URL, timeouts).
        blocking_ms: Longest blocking read this client makes (``XREADGROUP BLOCK``); the
            socket timeout is raised by as much, so a quiet stream is not a timeout.
        retries: Quick internal retries of a failed command (a probe or a page request
            must answer within about a second; longer outages are retried by the caller
            with :mod:`pipeline.retry`).

    Returns:
        The client (no I/O until first use).
    """
    timeout_s = settings.socket_timeout_s + blocking_ms / 1000.0
    return redis.Redis.from_url(
        settings.url.get_secret_value(),
        socket_timeout=timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
    )


def ping(client: redis.Redis) -> bool:
    """Whether Redis answers a PING now (a failure is logged, not raised)."""
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError) as error:
        logger.warning("redis ping failed: %s", error)
        return False


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Redis server answers PING at ``url`` now (no retry, nothing logged)."""
    client = connect(RedisSettings(url=url, socket_timeout_s=timeout_s), retries=0)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()
