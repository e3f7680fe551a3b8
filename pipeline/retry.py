"""The one retry policy of the pipeline: exponential backoff, capped, stoppable.

Every wait between two attempts at something transient (a broker that does not answer,
Redis down, a camera that dropped) follows :class:`Backoff`: ``initial_s``, then doubling,
capped at ``max_s``, back to ``initial_s`` after a success. Two shapes use it:

* :func:`retry` repeats one call until it succeeds, or until a stop event, a give-up
  check or a permanent error ends it (waiting for topics, reopening a camera, storing a
  batch, listening for model events);
* :func:`repeat_until_stopped` runs one step of a follower loop over and over, waiting
  out outages between steps (the alert subscriber, the drift monitor);
* a loop that retries across its own turns keeps a :class:`Backoff` and asks it for the
  next delay (the producer's sender thread, the worker's connection attempts).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RetryAborted(Exception):  # noqa: N818 - control flow, not an error of the pipeline
    """A stop event or a give-up check ended the retries before a success.

    Attributes:
        last_error: The error of the last attempt.
    """

    def __init__(self, last_error: BaseException) -> None:
        super().__init__(f"stopped retrying after: {last_error}")
        self.last_error = last_error


@dataclass
class Backoff:
    """Exponential delays: ``initial_s``, x2, x4, ... capped at ``max_s``.

    Args:
        initial_s: First delay (at most ``max_s``).
        max_s: Largest delay.
    """

    initial_s: float = 0.5
    max_s: float = 10.0
    _next_s: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s <= 0:
            raise ValueError("backoff delays must be positive")
        self.initial_s = min(self.initial_s, self.max_s)
        self._next_s = self.initial_s

    @property
    def fresh(self) -> bool:
        """Whether no failure happened since the start or the last :meth:`reset`."""
        return self._next_s == self.initial_s

    def next_delay(self) -> float:
        """The delay to wait now; the following one doubles (up to ``max_s``)."""
        delay = self._next_s
        self._next_s = min(self.max_s, delay * 2.0)
        return delay

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a success)."""
        self._next_s = self.initial_s


def retry(call: Callable[[], T], *, retry_on: tuple[type[BaseException], ...],
          backoff: Backoff, what: str, stop: threading.Event | None = None,
          give_up: Callable[[], bool] | None = None,
          on_error: Callable[[BaseException], None] | None = None) -> T:
    """Call ``call`` until it returns, waiting :class:`Backoff` delays between attempts.

    Args:
        call: The attempt.
        retry_on: Transient errors; any other error propagates at once.
        backoff: Delays between attempts (reset when this returns).
        what: What is attempted, for the log line.
        stop: Ends the wait early; no attempt is made once it is set.
        give_up: Checked after each failure; True ends the retries.
        on_error: Called with each transient error (metrics).

    Returns:
        What ``call`` returned.

    Raises:
        RetryAborted: ``stop`` was set or ``give_up`` said so before a success.
    """
    while True:
        try:
            result = call()
        except retry_on as error:
            if on_error is not None:
                on_error(error)
            if give_up is not None and give_up():
                raise RetryAborted(error) from error
            delay = backoff.next_delay()
            logger.warning("%s failed (%s); retrying in %.1fs", what, error, delay)
            if stop is not None:
                if stop.wait(delay):
                    raise RetryAborted(error) from error
            else:
                time.sleep(delay)
            continue
        backoff.reset()
        return result


def repeat_until_stopped(step: Callable[[], object], *, stop: threading.Event,
                         retry_on: tuple[type[BaseException], ...], backoff: Backoff,
                         what: str) -> None:
    """Run ``step`` until ``stop`` is set; after a transient error wait a backoff delay.

    Args:
        step: One turn of the loop (it should not block much longer than a second).
        stop: Ends the loop (checked between steps and during waits).
        retry_on: Transient errors; any other error propagates.
        backoff: Delays after consecutive failures (reset by a successful step).
        what: What the loop does, for the log line.
    """
    while not stop.is_set():
        try:
            step()
        except retry_on as error:
            delay = backoff.next_delay()
            logger.warning("%s failed (%s); retrying in %.1fs", what, error, delay)
            stop.wait(delay)
            continue
        backoff.reset()
