"""Score drift: compare a line's recent normalised scores with the model's calibration scores.

A SimpleNet model is calibrated on held-out good images: their normalised scores (0.5 is
the decision threshold) are stored in the artifact as ``calibration_scores``. While the line
runs under the same conditions as at training time, the normalised scores of its frames
follow roughly the same distribution. When lighting, focus, camera position or the product
itself changes, the distribution shifts (usually upwards) long before every frame crosses the
threshold, so an operator can retrain before false alarms pile up.

This module is pure (numpy only): :class:`DriftDetector` keeps a sliding window of recent
scores and compares it with the reference by a two-sample Kolmogorov-Smirnov statistic or
the population stability index (PSI). An alert starts when the statistic reaches
``raise_above`` with at least ``min_samples`` scores in the window, and ends only when it falls
to ``clear_below`` (hysteresis), so a statistic hovering at the bound does not flap.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

__all__ = [
    "DriftConfig",
    "DriftDetector",
    "DriftEvaluation",
    "DriftMethod",
    "DriftTransition",
    "ks_critical_value",
    "ks_statistic",
    "population_stability_index",
]


class DriftMethod(StrEnum):
    """Statistic used to compare the window with the reference."""

    KS = "ks"
    PSI = "psi"


class DriftTransition(StrEnum):
    """Change of the alert state produced by one evaluation."""

    STARTED = "drift_started"
    CLEARED = "drift_cleared"


def _as_scores(values: np.ndarray | list[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} must hold at least one score")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds a non-finite score")
    return array


def ks_statistic(reference: np.ndarray, sample: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs.

    Args:
        reference: Reference scores, shape ``[M]``.
        sample: Scores to compare, shape ``[N]``.

    Returns:
        ``sup_x |F_ref(x) - F_sample(x)|`` in ``[0, 1]``.

    Raises:
        ValueError: If either array is empty or holds a non-finite value.
    """
    ref = np.sort(_as_scores(reference, "reference"))
    cur = np.sort(_as_scores(sample, "sample"))
    grid = np.concatenate([ref, cur])
    cdf_ref = np.searchsorted(ref, grid, side="right") / ref.size
    cdf_cur = np.searchsorted(cur, grid, side="right") / cur.size
    return float(np.max(np.abs(cdf_ref - cdf_cur)))


def ks_critical_value(reference_size: int, sample_size: int, alpha: float = 0.01) -> float:
    """Asymptotic critical value of the two-sample KS statistic at significance ``alpha``.

    ``c(alpha) * sqrt((n + m) / (n * m))`` with ``c(alpha) = sqrt(-ln(alpha / 2) / 2)``.
    Consecutive frames of a line are correlated, so treat this as a floor for the
    configured bound rather than an exact false-alarm rate.

    Args:
        reference_size: Number of reference scores ``m``.
        sample_size: Number of window scores ``n``.
        alpha: Significance level in ``(0, 1)``.

    Returns:
        The statistic value above which equal distributions are rejected at ``alpha``.
    """
    if reference_size < 1 or sample_size < 1:
        raise ValueError("sample sizes must be positive")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must lie in (0, 1)")
    coefficient = math.sqrt(-math.log(alpha / 2.0) / 2.0)
    return coefficient * math.sqrt((reference_size + sample_size) / (reference_size * sample_size))


def population_stability_index(
    reference: np.ndarray, sample: np.ndarray, bins: int = 10, epsilon: float = 1e-4
) -> float:
    """Population stability index of ``sample`` against ``reference``.

    Bin edges are the reference's quantiles (so each bin holds about ``1 / bins`` of the
    reference), widened to the whole real line at both ends; empty bins get ``epsilon``
    mass so the logarithm stays finite. Common reading: below 0.1 stable, 0.1-0.25 a
    moderate shift, above 0.25 a major shift.

    Args:
        reference: Reference scores, shape ``[M]``.
        sample: Scores to compare, shape ``[N]``.
        bins: Number of quantile bins (at least 2).
        epsilon: Floor of a bin's probability mass.

    Returns:
        ``sum((p_sample - p_ref) * ln(p_sample / p_ref))`` over the bins, ``>= 0``.
    """
    if bins < 2:
        raise ValueError("bins must be at least 2")
    ref = _as_scores(reference, "reference")
    cur = _as_scores(sample, "sample")
    inner_edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    edges = np.concatenate([[-np.inf], inner_edges, [np.inf]])
    ref_mass = np.histogram(ref, bins=edges)[0] / ref.size
    cur_mass = np.histogram(cur, bins=edges)[0] / cur.size
    ref_mass = np.maximum(ref_mass, epsilon)
    cur_mass = np.maximum(cur_mass, epsilon)
    return float(np.sum((cur_mass - ref_mass) * np.log(cur_mass / ref_mass)))


@dataclass(frozen=True)
class DriftConfig:
    """Bounds of the drift detector.

    Attributes:
        method: Statistic comparing window and reference.
        window: Number of most recent scores compared with the reference.
        min_samples: No evaluation until the window holds this many scores.
        raise_above: An alert starts when the statistic is at or above this bound.
        clear_below: An active alert ends when the statistic is at or below this bound.
        evaluate_every: Evaluate after this many new scores (the statistic costs
            ``O((M + N) log(M + N))``; there is no need to compute it for every frame).
        psi_bins: Quantile bins of the PSI method.
    """

    method: DriftMethod = DriftMethod.KS
    window: int = 500
    min_samples: int = 200
    raise_above: float = 0.3
    clear_below: float = 0.15
    evaluate_every: int = 25
    psi_bins: int = 10

    def __post_init__(self) -> None:
        """Check that the bounds make sense together.

        Raises:
            ValueError: On an inconsistent configuration.
        """
        if self.window < 1 or self.min_samples < 1 or self.evaluate_every < 1:
            raise ValueError("window, min_samples and evaluate_every must be positive")
        if self.min_samples > self.window:
            raise ValueError("min_samples must not exceed window")
        if self.clear_below > self.raise_above:
            raise ValueError("clear_below must not exceed raise_above (hysteresis)")
        if self.raise_above <= 0.0:
            raise ValueError("raise_above must be positive")


@dataclass(frozen=True)
class DriftEvaluation:
    """Result of comparing the current window with the reference.

    Attributes:
        statistic: KS statistic or PSI of the window against the reference.
        sample_count: Scores in the window.
        reference_count: Scores in the reference.
        window_mean: Mean normalised score of the window.
        reference_mean: Mean normalised score of the reference.
        drifting: Alert state after this evaluation.
        transition: Whether this evaluation started or cleared an alert, else ``None``.
    """

    statistic: float
    sample_count: int
    reference_count: int
    window_mean: float
    reference_mean: float
    drifting: bool
    transition: DriftTransition | None


class DriftDetector:
    """Sliding-window drift detector for one product line and one model version.

    Args:
        reference: Calibration scores of the model, shape ``[M]``.
        config: Bounds of the detector.
    """

    def __init__(self, reference: np.ndarray | list[float], config: DriftConfig) -> None:
        self._reference = np.sort(_as_scores(reference, "reference"))
        self._config = config
        self._window: deque[float] = deque(maxlen=config.window)
        self._since_evaluation = 0
        self._drifting = False
        self._last: DriftEvaluation | None = None

    @property
    def config(self) -> DriftConfig:
        """The detector's bounds."""
        return self._config

    @property
    def drifting(self) -> bool:
        """Whether an alert is active."""
        return self._drifting

    @property
    def sample_count(self) -> int:
        """Number of scores in the window."""
        return len(self._window)

    @property
    def last_evaluation(self) -> DriftEvaluation | None:
        """The most recent evaluation, if any."""
        return self._last

    def statistic(self) -> float:
        """Compute the configured statistic of the current window against the reference.

        Returns:
            KS statistic or PSI.

        Raises:
            ValueError: If the window is empty.
        """
        window = np.fromiter(self._window, dtype=np.float64, count=len(self._window))
        if self._config.method is DriftMethod.PSI:
            return population_stability_index(self._reference, window, self._config.psi_bins)
        return ks_statistic(self._reference, window)

    def update(self, score: float) -> DriftEvaluation | None:
        """Add one normalised score; evaluate when due.

        Args:
            score: Normalised score of one frame. Non-finite scores are ignored.

        Returns:
            The evaluation if one was due (every ``evaluate_every`` scores once the window
            holds ``min_samples``), else ``None``.
        """
        if not math.isfinite(score):
            return None
        self._window.append(float(score))
        self._since_evaluation += 1
        if len(self._window) < self._config.min_samples:
            return None
        if self._since_evaluation < self._config.evaluate_every and self._last is not None:
            return None
        return self.evaluate()

    def update_many(self, scores: np.ndarray | list[float]) -> list[DriftEvaluation]:
        """Add several scores in order.

        Args:
            scores: Normalised scores, shape ``[N]``.

        Returns:
            The evaluations that were due, in order.
        """
        evaluations = []
        for score in np.asarray(scores, dtype=np.float64).ravel():
            evaluation = self.update(float(score))
            if evaluation is not None:
                evaluations.append(evaluation)
        return evaluations

    def evaluate(self) -> DriftEvaluation:
        """Evaluate the window now and apply the hysteresis.

        Returns:
            The evaluation; ``transition`` tells whether the alert state changed.

        Raises:
            ValueError: If the window is empty.
        """
        statistic = self.statistic()
        transition: DriftTransition | None = None
        enough = len(self._window) >= self._config.min_samples
        if not self._drifting and enough and statistic >= self._config.raise_above:
            self._drifting = True
            transition = DriftTransition.STARTED
        elif self._drifting and statistic <= self._config.clear_below:
            self._drifting = False
            transition = DriftTransition.CLEARED
        self._since_evaluation = 0
        self._last = DriftEvaluation(
            statistic=statistic,
            sample_count=len(self._window),
            reference_count=int(self._reference.size),
            window_mean=float(np.mean(self._window)),
            reference_mean=float(np.mean(self._reference)),
            drifting=self._drifting,
            transition=transition,
        )
        return self._last
