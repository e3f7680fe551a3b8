"""Trainer job: refit one product line's model, gate it, and roll it out to the workers.

Commands (``python -m workers.trainer``; settings from ``LINEWATCH_*``, see
docs/configuration.md)::

    python -m workers.trainer --line tiles [--good DIR]... [--gate-good DIR]...
                              [--defects DIR]... [--from-topic TOPIC] [--dry-run]
    python -m workers.trainer rollback --line tiles [--to VERSION]
    python -m workers.trainer list --line tiles

Training run, step by step:

1. collect good frames (folders, or a topic of known-good frame records), drop
   near-duplicates, split off the gate frames by content hash, sample the training frames;
2. fit a candidate with the model package (which calibrates on its own held-out share);
3. score the candidate and the line's current model on the same gate frames (neither was
   trained on them) and on the line's labelled defective frames, if any;
4. promote only when the gate passes: write the artifact, verify it loads, write the report,
   move ``current`` atomically, notify the workers (Redis pub/sub), keep the newest K
   versions. Otherwise the current model stays and the reasons are printed.

Exit codes: 0 promoted (or gate passed on ``--dry-run``), 3 refused by the gate,
1 failure (data, store, model), 2 invalid settings or arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from pydantic import ValidationError

from pipeline.errors import LinewatchError
from pipeline.model_store import (
    artifact_path,
    list_versions,
    prune_versions,
    publish_model,
    read_current,
    report_path,
    resolve_device,
    rollback,
    set_current,
)
from pipeline.model_updates import ModelEvent, publish_model_event
from pipeline.trainer_settings import FitSettings, GateSettings, TrainerSettings
from pipeline.training_data import (
    LabelledImage,
    TrainingDataError,
    capture_from_topic,
    deduplicate,
    load_folders,
    sample,
    split_for_gate,
)

logger = logging.getLogger(__name__)

EXIT_PROMOTED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


# --------------------------------------------------------------------------- gate
@dataclass(frozen=True)
class GateFigures:
    """One model's figures on the gate frames.

    Attributes:
        version: Model version.
        good_frames: Good gate frames scored.
        false_alarm_rate: Share of them flagged at the model's calibrated threshold.
        defect_frames: Labelled defective frames scored.
        detection_rate: Share of those flagged (``None`` without defective frames).
        auroc: Good vs defective, from the raw scores (``None`` without defective frames).
    """

    version: str
    good_frames: int
    false_alarm_rate: float
    defect_frames: int = 0
    detection_rate: float | None = None
    auroc: float | None = None


def score_on_gate(detector: Any, good: Sequence[np.ndarray], defects: Sequence[np.ndarray],
                  progress: bool = False, chunk: int = 16) -> GateFigures:
    """Score a detector on the gate frames.

    Args:
        detector: Fitted detector (``predict`` -> scores, labels).
        good: Good gate frames, HxWx3 uint8 RGB.
        defects: Labelled defective frames (may be empty).
        progress: Show a progress bar.
        chunk: Frames per ``predict`` call.

    Returns:
        The figures.
    """
    from tqdm import tqdm

    from model.evaluation import auroc

    version = str(detector.metadata.version)
    frames = list(good) + list(defects)
    scores = np.empty(len(frames), np.float64)
    labels = np.empty(len(frames), bool)
    with tqdm(total=len(frames), desc=f"scoring {version}", unit="img", disable=not progress,
              leave=False) as bar:
        for start in range(0, len(frames), chunk):
            prediction = detector.predict(frames[start:start + chunk])
            scores[start:start + chunk] = prediction.scores
            labels[start:start + chunk] = prediction.labels
            bar.update(len(frames[start:start + chunk]))
    n_good = len(good)
    figures = GateFigures(version, n_good, float(labels[:n_good].mean()) if n_good else 1.0)
    if defects:
        truth = np.r_[np.zeros(n_good, bool), np.ones(len(defects), bool)]
        figures = GateFigures(version, n_good, figures.false_alarm_rate, len(defects),
                              float(labels[n_good:].mean()),
                              auroc(truth, scores) if n_good else None)
    return figures


def judge(candidate: GateFigures, current: GateFigures | None,
          bounds: GateSettings) -> list[str]:
    """Reasons to refuse the candidate (empty: it may be promoted)."""
    reasons = []
    if candidate.good_frames < bounds.min_good_frames:
        reasons.append(f"only {candidate.good_frames} gate frames "
                       f"(at least {bounds.min_good_frames} needed)")
    if candidate.false_alarm_rate > bounds.max_false_alarm_rate:
        reasons.append(f"false alarm rate {candidate.false_alarm_rate:.3f} > "
                       f"{bounds.max_false_alarm_rate:.3f}")
    if candidate.detection_rate is not None and (
            candidate.detection_rate < bounds.min_detection_rate):
        reasons.append(f"detection rate {candidate.detection_rate:.3f} < "
                       f"{bounds.min_detection_rate:.3f}")
    if candidate.auroc is not None and candidate.auroc < bounds.min_auroc:
        reasons.append(f"AUROC {candidate.auroc:.3f} < {bounds.min_auroc:.3f}")
    if current is None:
        return reasons
    if candidate.false_alarm_rate > current.false_alarm_rate + bounds.max_false_alarm_increase:
        reasons.append(f"false alarm rate {candidate.false_alarm_rate:.3f} exceeds the current "
                       f"model's {current.false_alarm_rate:.3f} by more than "
                       f"{bounds.max_false_alarm_increase:.3f}")
    if candidate.detection_rate is not None and current.detection_rate is not None and (
            candidate.detection_rate < current.detection_rate - bounds.max_detection_drop):
        reasons.append(f"detection rate {candidate.detection_rate:.3f} is below the current "
                       f"model's {current.detection_rate:.3f} by more than "
                       f"{bounds.max_detection_drop:.3f}")
    if candidate.auroc is not None and current.auroc is not None and (
            candidate.auroc < current.auroc - bounds.max_auroc_drop):
        reasons.append(f"AUROC {candidate.auroc:.3f} is below the current model's "
                       f"{current.auroc:.3f} by more than {bounds.max_auroc_drop:.3f}")
    return reasons


# --------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    """Frames of one run and how they were chosen.

    Attributes:
        train: Training frames (the fit holds out its own calibration share of these).
        gate_good: Good frames no model of the line was trained on.
        defects: Labelled defective frames.
        counts: Frames read, unreadable, duplicates, per split.
        sources: Where the frames came from.
    """

    train: list[LabelledImage]
    gate_good: list[LabelledImage]
    defects: list[LabelledImage]
    counts: dict[str, int] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)


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


def _default_folder(settings: TrainerSettings, line: str, name: str) -> tuple[Path, ...]:
    if settings.data_dir is None:
        return ()
    folder = settings.data_dir / line / name
    return (folder,) if folder.is_dir() else ()


def trained_digests(root: Path, line: str, version: str | None) -> list[str]:
    """Digests of the frames a stored version was trained on (from its report)."""
    if version is None:
        return []
    try:
        report = json.loads(report_path(root, line, version).read_text())
    except (OSError, ValueError):
        return []
    return [str(d) for d in report.get("train_digests", [])]


def collect_data(settings: TrainerSettings, options: RunOptions,
                 current_version: str | None) -> TrainingData:
    """Gather, de-duplicate, split and sample the run's frames.

    Raises:
        TrainingDataError: No source, or too few frames to fit.
        TransportUnavailableError: The capture topic cannot be read.
    """
    line = options.line
    good_folders = options.good
    topic = options.capture_topic or settings.capture_topic
    if not good_folders and topic is None:
        good_folders = _default_folder(settings, line, "good")
    if not good_folders and topic is None:
        raise TrainingDataError(f"no good frames for line {line!r}: give --good DIR, "
                                f"--from-topic TOPIC, LINEWATCH_DATA_DIR or "
                                f"LINEWATCH_CAPTURE_TOPIC")
    pool, unreadable = load_folders(good_folders, progress=options.progress, what="good frames")
    sources = {"good": [str(f) for f in good_folders]}
    counts = {"good_read": len(pool), "unreadable": unreadable}
    if topic is not None:
        if settings.kafka is None:
            raise TrainingDataError("capturing from a topic needs LINEWATCH_KAFKA__* settings")
        captured, stats = capture_from_topic(settings.kafka, topic, line,
                                             settings.capture_max_records,
                                             settings.capture_timeout_s, progress=options.progress)
        pool += captured
        sources["good"].append(f"kafka:{topic}")
        counts.update(captured=stats.matched, capture_skipped=stats.skipped,
                      capture_records=stats.records)
    unique, duplicates = deduplicate(pool, settings.dedupe_max_diff)
    seen_by_current = set(trained_digests(settings.model_store, line, current_version))
    train_pool, gate_good = split_for_gate(unique, settings.gate.gate_fraction, seen_by_current)
    gate_folders = options.gate_good or _default_folder(settings, line, "gate-good")
    extra_gate, bad = load_folders(gate_folders, progress=options.progress, what="gate frames")
    # neither model may have seen a gate frame
    extra_gate = [item for item in extra_gate if item.digest not in seen_by_current]
    gate_only = {item.digest for item in extra_gate}
    train_pool = [item for item in train_pool if item.digest not in gate_only]
    gate_good = [item for item in gate_good if item.digest not in gate_only]
    defect_folders = options.defects or _default_folder(settings, line, "defects")
    defects, bad_defects = load_folders(defect_folders, recursive=True,
                                        progress=options.progress, what="defective frames")
    train = sample(train_pool, settings.max_images, settings.fit.seed)
    if len(train) < 4:
        raise TrainingDataError(f"only {len(train)} distinct training frames for line {line!r}")
    sources.update(gate_good=[str(f) for f in gate_folders],
                   defects=[str(f) for f in defect_folders])
    counts.update(duplicates=duplicates, unique=len(unique), train=len(train),
                  train_not_sampled=len(train_pool) - len(train),
                  gate_from_split=len(gate_good), gate_extra=len(extra_gate),
                  defects=len(defects), unreadable=unreadable + bad + bad_defects)
    return TrainingData(train, gate_good + extra_gate, defects, counts, sources)


# --------------------------------------------------------------------------- run
@dataclass
class TrainingOutcome:
    """What a training run did (also the JSON report).

    Attributes:
        line: Product line.
        candidate: Candidate version ('' when no fit happened).
        previous: Version that was current before the run ('' when none).
        promoted: Whether ``current`` now names the candidate.
        reasons: Why the gate refused (empty when it passed).
        candidate_figures: Candidate on the gate frames.
        current_figures: Current model on the same frames (``None`` without one).
        counts: Data counts.
        sources: Data sources.
        fit_s: Fit duration in seconds.
        fit: Fit settings used.
        notified: Workers that received the promotion event (-1: not sent).
        pruned: Versions deleted by retention.
        notes: Other remarks (e.g. an unusable current model).
    """

    line: str
    candidate: str = ""
    previous: str = ""
    promoted: bool = False
    reasons: list[str] = field(default_factory=list)
    candidate_figures: GateFigures | None = None
    current_figures: GateFigures | None = None
    counts: dict[str, int] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    fit_s: float = 0.0
    fit: dict[str, Any] = field(default_factory=dict)
    notified: int = -1
    pruned: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


Fitter = Callable[..., Any]
"""``fit_detector``-compatible callable."""


def _fit(data: TrainingData, settings: TrainerSettings, line: str, device: str,
         progress: bool, fitter: Fitter | None) -> Any:
    from tqdm import tqdm

    from model.trainer import FitConfig, fit_detector

    fit = settings.fit
    extra = {"trainer_sources": json.dumps(data.sources, sort_keys=True),
             "trainer_counts": json.dumps(data.counts, sort_keys=True)}
    # every FitSettings field is a FitConfig field: pass them all, so a new one cannot be
    # left out here; only the weights path (str) and the resolved device differ in type
    config = FitConfig(**fit.model_dump(exclude={"backbone_weights", "device"}), device=device,
                       backbone_weights=str(fit.backbone_weights) if fit.backbone_weights
                       else None, extra=extra)
    with tqdm(total=fit.heads * fit.epochs, desc=f"fitting {line}", unit="epoch",
              disable=not progress, leave=False) as bar:
        def on_epoch(epoch: int, epochs: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        return (fitter or fit_detector)([item.image for item in data.train], config=config,
                                        product_line=line, progress=on_epoch)


def _load_current(settings: TrainerSettings, line: str, version: str | None, device: str,
                  outcome: TrainingOutcome) -> Any | None:
    from model.artifact import load_artifact
    from model.errors import ModelError

    if version is None:
        return None
    try:
        return load_artifact(artifact_path(settings.model_store, line, version), device=device,
                             expected_product_line=line)
    except (ModelError, OSError) as error:
        note = f"current model {version} is unusable ({error}); gate on absolute bounds only"
        logger.error(note)
        outcome.notes.append(note)
        return None


def _verify_published(path: Path, line: str, detector: Any, probe: list[np.ndarray],
                      device: str) -> None:
    """Reload the written artifact and check it predicts what the fitted model predicts.

    Raises:
        ModelError: The file does not load or does not match.
    """
    from model.artifact import load_artifact
    from model.errors import ArtifactError

    reloaded = load_artifact(path, device=device, expected_product_line=line)
    if probe:
        expected = detector.predict(probe).normalized_scores
        got = reloaded.predict(probe).normalized_scores
        if not np.allclose(expected, got, rtol=1e-3, atol=1e-3):
            raise ArtifactError(f"{path} does not reproduce the fitted model's scores")


def _promote(settings: TrainerSettings, line: str, detector: Any, outcome: TrainingOutcome,
             data: TrainingData, device: str) -> None:
    from model.errors import ModelError

    root = settings.model_store
    version = outcome.candidate
    path = publish_model(root, detector, make_current=False)
    try:
        _verify_published(path, line, detector, [g.image for g in data.gate_good[:4]], device)
    except (ModelError, OSError) as error:
        path.unlink(missing_ok=True)
        raise TrainingDataError(f"written artifact failed verification, not promoted: "
                                f"{error}") from error
    report = dict(outcome.to_dict(), promoted=True,
                  promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
                  train_digests=sorted(item.digest for item in data.train))
    target = report_path(root, line, version)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True))
    tmp.replace(target)
    set_current(root, line, version)
    outcome.promoted = True
    logger.info("line %s now serves %s (was %s)", line, version, outcome.previous or "none")
    outcome.notified = _notify(settings, ModelEvent(line, version, "promoted",
                                                    outcome.previous))
    outcome.pruned = prune_versions(root, line, settings.keep_versions)


def _notify(settings: TrainerSettings, event: ModelEvent) -> int:
    import redis

    from pipeline.redis_store import connect

    client = connect(settings.redis.url.get_secret_value(), settings.redis.socket_timeout_s)
    try:
        return publish_model_event(client, settings.redis.key_prefix, event)
    except redis.RedisError as error:
        logger.warning("could not notify the workers (%s); they pick %s up at their next "
                       "periodic pointer check", error, event.version)
        return -1
    finally:
        client.close()


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
    device = resolve_device(settings.fit.device)
    outcome = TrainingOutcome(line=line)
    previous = read_current(root, line)
    outcome.previous = previous or ""
    data = collect_data(settings, options, previous)
    outcome.counts, outcome.sources = data.counts, data.sources
    outcome.fit = settings.fit.model_dump(mode="json") | {"device": device}
    logger.info("line %s: %d training frames, %d gate frames, %d defective frames", line,
                len(data.train), len(data.gate_good), len(data.defects))
    started = time.perf_counter()
    candidate = _fit(data, settings, line, device, options.progress, fitter)
    outcome.fit_s = round(time.perf_counter() - started, 2)
    outcome.candidate = str(candidate.metadata.version)
    good = [item.image for item in data.gate_good]
    defects = [item.image for item in data.defects]
    outcome.candidate_figures = score_on_gate(candidate, good, defects, options.progress)
    current = _load_current(settings, line, previous, device, outcome)
    if current is not None:
        outcome.current_figures = score_on_gate(current, good, defects, options.progress)
        del current
    outcome.reasons = judge(outcome.candidate_figures, outcome.current_figures, settings.gate)
    if not outcome.reasons and not options.dry_run:
        _promote(settings, line, candidate, outcome, data, device)
    elif outcome.reasons:
        logger.warning("line %s: candidate %s refused: %s", line, outcome.candidate,
                       "; ".join(outcome.reasons))
    return outcome


# --------------------------------------------------------------------------- output
def _rate(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(outcome: TrainingOutcome, bounds: GateSettings, dry_run: bool = False) -> str:
    """The final summary of a training run, as a text table."""
    counts = outcome.counts
    cand, cur = outcome.candidate_figures, outcome.current_figures
    rows = [
        ("line", outcome.line),
        ("candidate", outcome.candidate or "-"),
        ("current before", outcome.previous or "(none)"),
        ("good frames from", ", ".join(outcome.sources.get("good", [])) or "-"),
        ("frames", f"{counts.get('good_read', 0) + counts.get('captured', 0)} good read, "
                   f"{counts.get('duplicates', 0)} duplicates, {counts.get('unreadable', 0)} "
                   f"unreadable"),
        ("split", f"train {counts.get('train', 0)} (+{counts.get('train_not_sampled', 0)} not "
                  f"sampled), gate {counts.get('gate_from_split', 0)} + "
                  f"{counts.get('gate_extra', 0)} extra, defects {counts.get('defects', 0)}"),
        ("fit", f"{outcome.fit_s:.1f} s ({outcome.fit.get('image_size')} px, "
                f"{outcome.fit.get('epochs')} epochs, {outcome.fit.get('device')})"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{key:<{width}}  {value}" for key, value in rows]
    lines.append("")
    lines.append(f"{'gate':<22}{'candidate':>11}{'current':>11}   bound")
    lines.append(f"{'false alarm rate':<22}{_rate(cand and cand.false_alarm_rate):>11}"
                 f"{_rate(cur and cur.false_alarm_rate):>11}   <= "
                 f"{bounds.max_false_alarm_rate:.3f}, <= current + "
                 f"{bounds.max_false_alarm_increase:.3f}")
    lines.append(f"{'detection rate':<22}{_rate(cand and cand.detection_rate):>11}"
                 f"{_rate(cur and cur.detection_rate):>11}   >= "
                 f"{bounds.min_detection_rate:.3f}, >= current - "
                 f"{bounds.max_detection_drop:.3f}")
    lines.append(f"{'AUROC':<22}{_rate(cand and cand.auroc):>11}{_rate(cur and cur.auroc):>11}"
                 f"   >= {bounds.min_auroc:.3f}, >= current - {bounds.max_auroc_drop:.3f}")
    lines.append(f"{'good / defect frames':<22}"
                 f"{(f'{cand.good_frames}/{cand.defect_frames}' if cand else '-'):>11}")
    lines.append("")
    if outcome.promoted:
        decision = (f"PROMOTED {outcome.candidate} (workers notified: "
                    f"{'unknown' if outcome.notified < 0 else outcome.notified})")
        if outcome.pruned:
            decision += f"; pruned {', '.join(outcome.pruned)}"
    elif outcome.reasons:
        decision = "REFUSED, current model stays: " + "; ".join(outcome.reasons)
    else:
        decision = "gate passed (dry run, nothing promoted)" if dry_run else "not promoted"
    lines.append(f"decision: {decision}")
    lines += [f"note: {note}" for note in outcome.notes]
    return "\n".join(lines)


def versions_table(root: Path, line: str) -> str:
    """The line's stored versions with their gate figures, oldest first."""
    rows = [f"{'':2}{'version':<28}{'created':<27}{'FAR':>7}{'DR':>7}{'AUROC':>7}  status"]
    for info in list_versions(root, line):
        figures: dict[str, Any] = {}
        try:
            report = json.loads(report_path(root, line, info.version).read_text())
            figures = report.get("candidate_figures") or {}
        except (OSError, ValueError):
            pass
        rows.append(f"{'*' if info.current else '':2}{info.version:<28}{info.created_at:<27}"
                    f"{_rate(figures.get('false_alarm_rate')):>7}"
                    f"{_rate(figures.get('detection_rate')):>7}{_rate(figures.get('auroc')):>7}"
                    f"  {'unusable: ' + info.error if info.error else 'ok'}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- CLI
COMMANDS = ("train", "rollback", "list")


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m workers.trainer{'' if command == 'train' else ' ' + command}",
        description={"train": "Refit a line's model, gate it, roll it out.",
                     "rollback": "Point a line back at an earlier version and notify workers.",
                     "list": "List a line's stored versions."}[command])
    parser.add_argument("--line", required=True, help="product line")
    if command == "rollback":
        parser.add_argument("--to", help="version (default: the one before the current)")
    if command == "train":
        parser.add_argument("--good", type=Path, action="append", default=[],
                            help="folder of good frames (repeatable)")
        parser.add_argument("--gate-good", type=Path, action="append", default=[],
                            help="folder of good frames used only by the gate (repeatable)")
        parser.add_argument("--defects", type=Path, action="append", default=[],
                            help="folder of labelled defective frames, recursive (repeatable)")
        parser.add_argument("--from-topic", help="capture good frames from this topic")
        parser.add_argument("--image-size", type=int, help="overrides LINEWATCH_FIT__IMAGE_SIZE")
        parser.add_argument("--epochs", type=int, help="overrides LINEWATCH_FIT__EPOCHS")
        parser.add_argument("--device", help="overrides LINEWATCH_FIT__DEVICE")
        parser.add_argument("--max-images", type=int, help="overrides LINEWATCH_MAX_IMAGES")
        parser.add_argument("--dry-run", action="store_true", help="fit and gate only")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
        parser.add_argument("--report", type=Path, help="also write the summary as JSON")
    return parser


def _with_overrides(settings: TrainerSettings, args: argparse.Namespace) -> TrainerSettings:
    fit = {k: v for k, v in (("image_size", args.image_size), ("epochs", args.epochs),
                             ("device", args.device)) if v is not None}
    update: dict[str, Any] = {
        "fit": FitSettings.model_validate(settings.fit.model_dump() | fit)}
    if args.max_images is not None:
        update["max_images"] = max(4, args.max_images)
    return settings.model_copy(update=update)


def _train(settings: TrainerSettings, args: argparse.Namespace, out: TextIO) -> int:
    options = RunOptions(line=args.line, good=tuple(args.good), gate_good=tuple(args.gate_good),
                         defects=tuple(args.defects), capture_topic=args.from_topic,
                         dry_run=args.dry_run, progress=not args.no_progress,
                         report=args.report)
    outcome = run_training(settings, options)
    print(summary_table(outcome, settings.gate, options.dry_run), file=out)
    if options.report is not None:
        options.report.write_text(json.dumps(outcome.to_dict(), indent=1, sort_keys=True))
    return EXIT_REFUSED if outcome.reasons else EXIT_PROMOTED


def _rollback(settings: TrainerSettings, args: argparse.Namespace, out: TextIO) -> int:
    previous, version = rollback(settings.model_store, args.line, args.to)
    notified = _notify(settings, ModelEvent(args.line, version, "rolled_back", previous or ""))
    print(f"line {args.line}: {previous or '(none)'} -> {version} "
          f"(workers notified: {'unknown' if notified < 0 else notified})", file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``python -m workers.trainer``: train (default), ``rollback`` or ``list`` one line."""
    from model.errors import ModelError

    out = out or sys.stdout
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = arguments.pop(0) if arguments and arguments[0] in COMMANDS else "train"
    args = _parser(command).parse_args(arguments)
    try:
        settings = TrainerSettings()
        if command == "train":
            settings = _with_overrides(settings, args)
    except ValidationError as error:
        print(f"linewatch-trainer: invalid settings:\n{error}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if command == "train":
            return _train(settings, args, out)
        if command == "rollback":
            return _rollback(settings, args, out)
        print(versions_table(settings.model_store, args.line), file=out)
        return 0
    except (LinewatchError, ModelError, FileNotFoundError, ValueError) as error:
        print(f"linewatch-trainer: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
