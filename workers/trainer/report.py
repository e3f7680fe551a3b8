"""What a training run did: the outcome (also the version's JSON report) and the tables.

The report of a promoted version is written next to its artifact
(:func:`pipeline.wire.layout.report_path`); its fields: docs/contracts.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.model_store import list_versions
from pipeline.wire.layout import report_path
from workers.trainer.gate import GateFigures
from workers.trainer.settings import GateSettings


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


def read_report(root: Path, line: str, version: str | None) -> dict[str, Any]:
    """A stored version's report ({} when it has none or it cannot be read)."""
    if version is None:
        return {}
    try:
        report = json.loads(report_path(root, line, version).read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


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
        ("false alarms", f"{counts.get('false_alarms', 0)} marked in the console, trained on "
                         f"as good frames (in train)"),
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
    lines.append(f"{'reviewed still flagged':<22}"
                 f"{_rate(cand and cand.reviewed_flagged_rate):>11}"
                 f"{_rate(cur and cur.reviewed_flagged_rate):>11}   <= current")
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
        figures: dict[str, Any] = read_report(root, line, info.version).get(
            "candidate_figures") or {}
        rows.append(f"{'*' if info.current else '':2}{info.version:<28}{info.created_at:<27}"
                    f"{_rate(figures.get('false_alarm_rate')):>7}"
                    f"{_rate(figures.get('detection_rate')):>7}{_rate(figures.get('auroc')):>7}"
                    f"  {'unusable: ' + info.error if info.error else 'ok'}")
    return "\n".join(rows)
