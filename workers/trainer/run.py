"""One training run of a line: collect, fit, gate, and promote when the gate passes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.model_store import read_current
from pipeline.runtimes import pytorch
from pipeline.wire.layout import artifact_path
from workers.trainer.gate import judge, score_on_gate, with_reviewed
from workers.trainer.promotion import promote
from workers.trainer.report import TrainingOutcome
from workers.trainer.selection import TrainingData, collect_data
from workers.trainer.settings import TrainerSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Per-run choices (command line), on top of the settings.

    Attributes:
        line: Product line.
        good: Folders of good frames (default ``<data_dir>/<line>/good``).
        gate_good: Folders of extra good frames used only by the gate.
        defects: Folders of labelled defective frames (searched recursively).
        capture_topic: Topic of known-good frame records.
        dry_run: Fit and gate, but promote nothing.
        progress: Show progress bars.
        report: Also write the run's summary as JSON here.
    """

    line: str
    good: tuple[Path, ...] = ()
    gate_good: tuple[Path, ...] = ()
    defects: tuple[Path, ...] = ()
    capture_topic: str | None = None
    dry_run: bool = False
    progress: bool = True
    report: Path | None = None


Fitter = Callable[..., Any]
"""``fit_detector``-compatible callable."""


def _fit(data: TrainingData, settings: TrainerSettings, line: str, device: str,
         progress: bool, fitter: Fitter | None) -> Any:
    from model.cli import fit_progress_bars
    from model.trainer import FitConfig, fit_detector

    fit = settings.fit
    extra = {"trainer_sources": json.dumps(data.sources, sort_keys=True),
             "trainer_counts": json.dumps(data.counts, sort_keys=True)}
    # every FitSettings field is a FitConfig field: pass them all, so a new one cannot be
    # left out here; only the weights path (str) and the resolved device differ in type
    config = FitConfig(**fit.model_dump(exclude={"backbone_weights", "device"}), device=device,
                       backbone_weights=str(fit.backbone_weights) if fit.backbone_weights
                       else None, extra=extra)
    with fit_progress_bars(enabled=progress, prefix=f"{line}: ") as on_progress:
        return (fitter or fit_detector)([item.image for item in data.train], config=config,
                                        product_line=line, progress=on_progress)


def _load_current(settings: TrainerSettings, line: str, version: str | None, device: str,
                  outcome: TrainingOutcome) -> Any | None:
    if version is None:
        return None
    try:
        return pytorch.loader()(artifact_path(settings.model_store, line, version), device, line)
    except pytorch.LOAD_ERRORS as error:
        note = f"current model {version} is unusable ({error}); gate on absolute bounds only"
        logger.error(note)
        outcome.notes.append(note)
        return None


def run_training(settings: TrainerSettings, options: RunOptions,
                 fitter: Fitter | None = None) -> TrainingOutcome:
    """Collect, fit, gate and (when the gate passes) promote one line's model.

    Raises:
        TrainingDataError: Unusable data, or a written artifact that does not verify.
        TransportUnavailableError: The capture topic cannot be read.
        ModelError: The fit fails (e.g. missing backbone weights).
    """
    line = options.line
    root = settings.model_store
    device = pytorch.resolve_device(settings.fit.device)
    outcome = TrainingOutcome(line=line)
    previous = read_current(root, line)
    outcome.previous = previous or ""
    data = collect_data(settings, line, previous, good_dirs=options.good,
                        gate_dirs=options.gate_good, defect_dirs=options.defects,
                        capture_topic=options.capture_topic, progress=options.progress)
    outcome.counts, outcome.sources = data.counts, data.sources
    outcome.notes += data.notes
    outcome.fit = settings.fit.model_dump(mode="json") | {"device": device}
    logger.info("line %s: %d training frames, %d gate frames, %d defective frames", line,
                len(data.train), len(data.gate_good), len(data.defects))
    started = time.perf_counter()
    candidate = _fit(data, settings, line, device, options.progress, fitter)
    outcome.fit_s = round(time.perf_counter() - started, 2)
    outcome.candidate = str(candidate.metadata.version)
    good = [item.image for item in data.gate_good]
    defects = [item.image for item in data.defects]
    reviewed = [item.image for item in data.false_alarms]
    outcome.candidate_figures = with_reviewed(
        score_on_gate(candidate, good, defects, options.progress), candidate, reviewed)
    current = _load_current(settings, line, previous, device, outcome)
    if current is not None:
        outcome.current_figures = with_reviewed(
            score_on_gate(current, good, defects, options.progress), current, reviewed)
        del current
    outcome.reasons = judge(outcome.candidate_figures, outcome.current_figures, settings.gate)
    if not outcome.reasons and not options.dry_run:
        promote(settings, line, candidate, outcome, data, device)
    elif outcome.reasons:
        logger.warning("line %s: candidate %s refused: %s", line, outcome.candidate,
                       "; ".join(outcome.reasons))
    return outcome
