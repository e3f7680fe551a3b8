"""Metadata that travels with a fitted detector and its artifact."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from model.errors import ArtifactError

# 2: heads are an ensemble (members.<k>.* tensors), metadata gains heads and margin.
# 3: calibration for a target false-alarm rate (format 2's quantile q reads as rate 1 - q);
#    the backbone layers are a choice of the fit, not fixed per backbone.
# 4: an optional image-level Gaussian term (global_gaussian.* tensors, metadata
#    global_gaussian) and an optional patch memory bank (patch_memory.bank, metadata
#    patch_memory); formats 2 and 3 read as having neither.
# 5: input_standardisation (each image brought to one grey level and contrast before the
#    backbone); formats 2 to 4 read as without it.
# 6: second_image_size (the detector also scores each image resized to a second, smaller
#    side and averages the two score maps); formats 2 to 5 read as one scale.
# 7: terms_include_holdout (the memory bank and the Gaussian were rebuilt from the held-out
#    images too, after calibration); formats 2 to 6 read as without.
# 8: in_map_layers (how many of the finest backbone layers average only the in-map cells of
#    a border cell's 3x3 neighbourhood); formats 2 to 7 read as 0 (zeros counted everywhere).
ARTIFACT_FORMAT_VERSION = 8
MIN_IMAGE_SIZE = 32  # smallest input side: one cell of the stride-32 layers
READABLE_FORMAT_VERSIONS = (2, 3, 4, 5, 6, 7, 8)


def check_in_map_layers(in_map_layers: int, layer_count: int) -> None:
    """Refuses an ``in_map_layers`` that is not an integer from 0 to ``layer_count``.

    Torch-free, for the fit, the aggregator, artifact metadata and the trainer's settings.

    Raises:
        ValueError: Naming ``in_map_layers``.
    """
    if (
        not isinstance(in_map_layers, int)
        or isinstance(in_map_layers, bool)
        or not 0 <= in_map_layers <= layer_count
    ):
        raise ValueError(
            f"in_map_layers must be an integer from 0 to {layer_count} (the backbone "
            f"layers), got {in_map_layers!r}"
        )


def second_scale_size(image_size: int, second_scale: float) -> int | None:
    """Side of the second input scale, ``second_scale`` of ``image_size`` rounded to pixels.

    Args:
        image_size: Side of the full-scale input.
        second_scale: 0 (no second scale) or a share in (0, 1).

    Returns:
        The side in pixels, or None for 0.

    Raises:
        ValueError: Naming ``second_scale`` when the side would not be from
            :data:`MIN_IMAGE_SIZE` to ``image_size - 1``.
    """
    if second_scale == 0:
        return None
    side = round(image_size * second_scale)
    if not (0.0 < second_scale < 1.0 and MIN_IMAGE_SIZE <= side < image_size):
        raise ValueError(
            f"second_scale must be 0 (off) or in (0, 1) with image_size * second_scale from "
            f"{MIN_IMAGE_SIZE} px to image_size - 1; {second_scale!r} of {image_size} px is not"
        )
    return side


@dataclass(frozen=True)
class Calibration:
    """Maps raw anomaly scores to the published normalised scale.

    ``normalised = 0.5 * (raw - center) / (threshold - center)``: the median held-out good
    score maps to 0 and the decision threshold to 0.5, whatever the model.

    Attributes:
        center: Median raw image score of the held-out good images.
        threshold: Raw decision threshold, set for ``target_false_alarm_rate``.
        target_false_alarm_rate: Share of good images the threshold was set to let through
            as false alarms (the line manager's operating point).
        estimated_false_alarm_rate: The rate the held-out good scores predict at
            ``threshold`` (the fitted tail's exceedance probability).
    """

    center: float
    threshold: float
    target_false_alarm_rate: float
    estimated_false_alarm_rate: float

    def __post_init__(self) -> None:
        if not self.threshold > self.center:
            raise ValueError(
                f"calibration threshold {self.threshold} must exceed center {self.center}"
            )
        for name in ("target_false_alarm_rate", "estimated_false_alarm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")

    def normalize(self, raw: Any) -> Any:
        """Applies the affine map to a float, numpy array or tensor."""
        return 0.5 * (raw - self.center) / (self.threshold - self.center)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Calibration:
        """Reads the current form or format 2's (``quantile`` = 1 - target rate)."""
        if "quantile" in raw and "target_false_alarm_rate" not in raw:
            rate = 1.0 - float(raw["quantile"])
            return cls(
                center=raw["center"],
                threshold=raw["threshold"],
                target_false_alarm_rate=rate,
                estimated_false_alarm_rate=rate,
            )
        return cls(**raw)


def _check_finite(owner: str, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
            raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class GlobalGaussianTerm:
    """How the image-level Gaussian (``model.global_gaussian``) adds to the image score.

    Attributes:
        center: Median Mahalanobis distance of the held-out good images.
        weight: Scale putting the distance on the SimpleNet score's held-out spread.
        shrinkage: Ledoit-Wolf shrinkage of the covariance (for the record).
        dims: Pooled feature dimensions.
    """

    center: float
    weight: float
    shrinkage: float
    dims: int

    def __post_init__(self) -> None:
        _check_finite(
            "global_gaussian",
            {"center": self.center, "weight": self.weight, "shrinkage": self.shrinkage},
        )
        if self.weight <= 0.0 or not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError("global_gaussian needs weight > 0 and shrinkage in [0, 1]")
        if not isinstance(self.dims, int) or self.dims < 1:
            raise ValueError(f"global_gaussian.dims must be a positive integer, got {self.dims!r}")


@dataclass(frozen=True)
class PatchMemoryTerm:
    """How the patch memory bank (``model.patch_memory``) adds to the score map.

    Attributes:
        center: Median over the held-out good images of their largest patch distance.
        weight: Scale putting the distance map on the SimpleNet map's held-out spread, times
            the fit's memory emphasis.
        size: Patches in the bank.
        dims: Patch feature dimensions.
    """

    center: float
    weight: float
    size: int
    dims: int

    def __post_init__(self) -> None:
        _check_finite("patch_memory", {"center": self.center, "weight": self.weight})
        if self.weight <= 0.0:
            raise ValueError("patch_memory needs weight > 0")
        for name in ("size", "dims"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"patch_memory.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class DetectorMetadata:
    """Everything needed to rebuild, identify and audit a fitted detector.

    Attributes:
        version: Unique model version (also the artifact's file stem in a model store).
        product_line: Line the model was fitted for.
        backbone: Backbone registry name.
        layers: Backbone layers used.
        image_size: Side of the square input the model runs at.
        common_dim: Per-layer projection dimension (None: layers concatenated unpooled).
        embed_dim: Patch feature dimension.
        hidden_dim: Discriminator hidden width.
        heads: Independently trained heads whose floored scores are averaged.
        margin: Truncated L1 margin; each head's patch score is floored at ``-margin``.
        noise_sigma: Standard deviation of the synthetic anomaly noise used in training.
        feature_scale: Mean per-dimension std of the training patch features (measured).
        epochs: Training epochs (fixed in advance; no label-based selection).
        calibration: Score normalisation and threshold (of the image score, the Gaussian
            term included).
        calibration_scores: Normalised image scores of the held-out good images.
        train_image_count: Images used to fit.
        holdout_image_count: Good images held out for calibration.
        train_fingerprint: SHA-256 over the training images' pixels (order independent).
        created_at: ISO-8601 UTC creation time.
        code_version: linewatch version that fitted the model.
        format_version: Artifact format version.
        extra: Free-form strings from the fit's caller.
        global_gaussian: The image-level Gaussian term added to the image score, or None.
        patch_memory: The nearest-neighbour term added to the score map, or None.
        input_standardisation: Each image is brought to one mean grey level and contrast
            before the backbone (``model.detector.IntensityStandardiser``).
        second_image_size: Side of the second input scale (``model.detector.InputRescaler``:
            each image is also scored resized to it, and the two score maps averaged), or
            None for one scale. Smaller than ``image_size``.
        terms_include_holdout: The memory bank and the Gaussian hold the held-out images
            too (rebuilt after calibration; their center, weight and the threshold were set
            on the held-out images against the training images' alone).
        in_map_layers: How many of the finest backbone layers average only the in-map
            cells of a border cell's 3x3 neighbourhood
            (:class:`~model.features.PatchFeatureAggregator`); 0 counts the zeros outside
            the map on every layer.
    """

    version: str
    product_line: str
    backbone: str
    layers: tuple[str, ...]
    image_size: int
    common_dim: int | None
    embed_dim: int
    hidden_dim: int
    heads: int
    margin: float
    noise_sigma: float
    feature_scale: float
    epochs: int
    calibration: Calibration
    calibration_scores: tuple[float, ...]
    train_image_count: int
    holdout_image_count: int
    train_fingerprint: str
    created_at: str
    code_version: str
    format_version: int = ARTIFACT_FORMAT_VERSION
    extra: dict[str, str] = field(default_factory=dict)
    global_gaussian: GlobalGaussianTerm | None = None
    patch_memory: PatchMemoryTerm | None = None
    input_standardisation: bool = False
    second_image_size: int | None = None
    terms_include_holdout: bool = False
    in_map_layers: int = 0

    def to_json(self) -> str:
        """Serialises to a JSON string (stable key order)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DetectorMetadata:
        """Parses and validates JSON written by :meth:`to_json`.

        Raises:
            ArtifactError: When fields are missing, unknown or of the wrong type.
        """
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError("metadata is not an object")
            known = {item.name for item in fields(cls)}
            unknown = set(raw) - known
            missing = known - set(raw) - {
                "extra",
                "format_version",
                "global_gaussian",
                "patch_memory",
                "input_standardisation",
                "second_image_size",
                "terms_include_holdout",
                "in_map_layers",
            }
            if unknown or missing:
                raise ValueError(f"unknown fields {sorted(unknown)}, missing {sorted(missing)}")
            raw["layers"] = tuple(str(layer) for layer in raw["layers"])
            raw["calibration"] = Calibration.from_dict(raw["calibration"])
            if raw.get("global_gaussian") is not None:
                raw["global_gaussian"] = GlobalGaussianTerm(**raw["global_gaussian"])
            if raw.get("patch_memory") is not None:
                raw["patch_memory"] = PatchMemoryTerm(**raw["patch_memory"])
            raw["calibration_scores"] = tuple(float(v) for v in raw["calibration_scores"])
            for name in ("image_size", "common_dim", "embed_dim", "hidden_dim", "heads", "epochs"):
                if name == "common_dim" and raw[name] is None:
                    continue
                if not isinstance(raw[name], int) or raw[name] < 1:
                    raise ValueError(f"{name} must be a positive integer, got {raw[name]!r}")
            second = raw.get("second_image_size")
            if second is not None and (
                not isinstance(second, int)
                or isinstance(second, bool)
                or not MIN_IMAGE_SIZE <= second < raw["image_size"]
            ):
                raise ValueError(
                    f"second_image_size must be null or an integer from {MIN_IMAGE_SIZE} to "
                    f"image_size - 1, got {second!r}"
                )
            check_in_map_layers(raw.get("in_map_layers", 0), len(raw["layers"]))
            for name in ("input_standardisation", "terms_include_holdout"):
                if not isinstance(raw.get(name, False), bool):
                    raise ValueError(f"{name} must be true or false")
            if not isinstance(raw["margin"], int | float) or raw["margin"] <= 0:
                raise ValueError(f"margin must be a positive number, got {raw['margin']!r}")
            return cls(**raw)
        except (TypeError, ValueError, KeyError, json.JSONDecodeError) as error:
            raise ArtifactError(f"invalid detector metadata: {error}") from error
