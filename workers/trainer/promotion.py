"""Rolling a line's model out (or back): write, verify, report, move ``current``, notify.

Order (docs/contracts.md): the artifact is written and re-loaded and checked against the
fitted model *before* its report and the ``current`` pointer are written; then the
workers are told over Redis pub/sub (:mod:`pipeline.redis.model_events`) and old versions
beyond ``keep_versions`` are deleted.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis

from model.errors import ArtifactError
from pipeline.files import atomic_write
from pipeline.model_store import prune_versions, publish_model, rollback, set_current
from pipeline.redis.client import connect
from pipeline.redis.model_events import publish_model_event
from pipeline.runtimes import pytorch
from pipeline.wire.layout import report_path
from pipeline.wire.messages import ModelEvent
from workers.trainer.data import TrainingDataError
from workers.trainer.report import TrainingOutcome
from workers.trainer.selection import TrainingData
from workers.trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)


def _verify_published(path: Path, line: str, detector: Any, probe: list[np.ndarray],
                      device: str) -> None:
    """Reload the written artifact and check it predicts what the fitted model predicts.

    Raises:
        ModelError: The file does not load or does not match.
    """
    reloaded = pytorch.loader()(path, device, line)
    if probe:
        expected = detector.predict(probe).normalized_scores
        got = reloaded.predict(probe).normalized_scores
        if not np.allclose(expected, got, rtol=1e-3, atol=1e-3):
            raise ArtifactError(f"{path} does not reproduce the fitted model's scores")


def promote(settings: TrainerSettings, line: str, detector: Any, outcome: TrainingOutcome,
             data: TrainingData, device: str) -> None:
    """Write, verify, report, point ``current`` at the candidate, notify, prune.

    Raises:
        TrainingDataError: The written artifact did not verify (it is removed).
    """
    root = settings.model_store
    version = outcome.candidate
    path = publish_model(root, detector, make_current=False)
    try:
        _verify_published(path, line, detector, [g.image for g in data.gate_good[:4]], device)
    except pytorch.LOAD_ERRORS as error:
        path.unlink(missing_ok=True)
        raise TrainingDataError(f"written artifact failed verification, not promoted: "
                                f"{error}") from error
    report = dict(outcome.to_dict(), promoted=True,
                  promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
                  train_digests=sorted(item.digest for item in data.train))
    atomic_write(report_path(root, line, version), json.dumps(report, indent=1, sort_keys=True))
    set_current(root, line, version)
    outcome.promoted = True
    logger.info("line %s now serves %s (was %s)", line, version, outcome.previous or "none")
    outcome.notified = notify(settings, ModelEvent(line, version, "promoted",
                                                    outcome.previous))
    outcome.pruned = prune_versions(root, line, settings.keep_versions)


def notify(settings: TrainerSettings, event: ModelEvent) -> int:
    """Tell the workers that a line's pointer moved; -1 when Redis cannot be reached."""
    client = connect(settings.redis)
    try:
        return publish_model_event(client, settings.redis.key_prefix, event)
    except redis.RedisError as error:
        logger.warning("could not notify the workers (%s); they pick %s up at their next "
                       "periodic pointer check", error, event.version)
        return -1
    finally:
        client.close()


def roll_back(settings: TrainerSettings, line: str, to: str | None) -> tuple[str, str, int]:
    """Point a line back at an earlier version and notify the workers.

    Returns:
        (previous version or '', new version, workers notified or -1).
    """
    previous, version = rollback(settings.model_store, line, to)
    notified = notify(settings, ModelEvent(line, version, "rolled_back", previous or ""))
    return previous or "", version, notified
