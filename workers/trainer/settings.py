"""Settings of the trainer job (``python -m workers.trainer``).

The fit's defaults are the model package's (``model.trainer.FitConfig``), written out here
so that reading the trainer's settings does not import torch;
``tests/unit/workers/trainer/test_trainer.py`` fails when the two disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from model.metadata import check_in_map_layers, second_scale_size
from pipeline.settings import KafkaSettings, ProcessSettings, RedisSettings

# Layers of each backbone's default layer set (model.backbones; torch-free here, and
# tests/unit/model/test_in_map_layers.py fails when they disagree).
DEFAULT_LAYER_COUNTS = {
    "efficientnet_lite0": 3, "efficientnet_lite1": 3, "efficientnet_lite2": 3, "wide_resnet50_2": 2,
}


class FitSettings(BaseModel):
    """How a candidate is fitted (``model.trainer.FitConfig``)."""

    backbone: Literal[
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "wide_resnet50_2"
    ] = "efficientnet_lite0"
    backbone_weights: Path | None = Field(default=None, description="Explicit weights file.")
    layers: tuple[str, ...] | None = Field(
        default=None,
        description='Backbone layers, finest first, as JSON (["blocks4","blocks10"]); '
                    "default: the backbone's.")
    image_size: int = Field(default=256, ge=32, le=1024)
    epochs: int = Field(default=3, ge=1, le=1000, description="Per head.")
    heads: int = Field(
        default=6, ge=1, le=16,
        description="Heads trained from different seeds; their floored scores are averaged.")
    hidden_dim: int = Field(
        default=384, ge=8, le=8192,
        description="Discriminator width per head; inference cost follows heads x hidden_dim.")
    batch_size: int = Field(default=8, ge=1, le=256)
    holdout_fraction: float = Field(
        default=0.2, gt=0, lt=1,
        description="Share of training frames used to calibrate.")
    target_false_alarm_rate: float = Field(
        default=0.01, gt=0, le=0.5,
        description="Share of good frames allowed above the threshold (the operating point).")
    noise_ratio: float = Field(
        default=0.3, gt=0, description="Synthetic noise std relative to the feature scale.")
    local_anomaly_share: float = Field(
        default=0.0, ge=0, lt=1,
        description="Share of synthetic anomalies made in image space; 0 turns them off.")
    global_gaussian: bool = Field(
        default=True,
        description="Add an image-level Gaussian on pooled backbone features to the score.")
    memory_bank_size: int = Field(
        default=4000, ge=0, le=100_000,
        description="Training patches kept as a nearest-neighbour memory bank; 0 turns it off.")
    input_standardisation: bool = Field(
        default=True,
        description="Bring every frame to one mean grey level and contrast before the backbone.")
    second_scale: float = Field(
        default=0.75, ge=0, lt=1,
        description="Also score each frame resized to this share of image_size and average "
        "the two score maps; 0 turns it off.")
    all_images_in_terms: bool = Field(
        default=True,
        description="After calibration, rebuild the memory bank and the Gaussian from every "
        "training frame, the held-out ones included.")
    memory_emphasis: float = Field(
        default=2.0, gt=0, le=100,
        description="Weight of the memory term in the score map over SimpleNet's map once "
        "both have the same spread on the held-out good frames.")
    in_map_layers: int = Field(
        default=1, ge=0, le=4,
        description="How many of the finest backbone layers average only the in-map cells of a "
        "border cell's 3x3 neighbourhood (0: the zeros outside the map counted everywhere).")
    seed: int = 0
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")

    @model_validator(mode="after")
    def _second_scale_fits(self) -> FitSettings:
        second_scale_size(self.image_size, self.second_scale)  # the model's rule, torch-free
        return self

    @model_validator(mode="after")
    def _in_map_layers_fit(self) -> FitSettings:
        layers = len(self.layers) if self.layers else DEFAULT_LAYER_COUNTS[self.backbone]
        check_in_map_layers(self.in_map_layers, layers)  # the model's rule, torch-free
        return self


class GateSettings(BaseModel):
    """When a candidate may replace the line's current model.

    False alarm rate: share of held-out good frames flagged at the model's own calibrated
    threshold. Detection rate: share of labelled defective frames flagged. AUROC: good vs
    defective frames, threshold-free. Candidate and current model are scored on the same
    frames, which neither was trained on.
    """

    gate_fraction: float = Field(
        default=0.2, gt=0, lt=1,
        description="Share of good frames kept out of training for the gate (by content hash).")
    min_good_frames: int = Field(default=10, ge=1, description="Fewer gate frames: refuse.")
    max_false_alarm_rate: float = Field(default=0.05, ge=0, le=1)
    min_detection_rate: float = Field(
        default=0.0, ge=0, le=1, description="With defective frames; also without a current model.")
    min_auroc: float = Field(
        default=0.5, ge=0, le=1, description="With defective frames; also without a current model.")
    max_false_alarm_increase: float = Field(
        default=0.02, ge=0, le=1, description="Over the current model's rate.")
    max_detection_drop: float = Field(
        default=0.05, ge=0, le=1, description="Under the current model's detection rate.")
    max_auroc_drop: float = Field(
        default=0.02, ge=0, le=1, description="Under the current model's AUROC.")


class TrainerSettings(ProcessSettings):
    """Trainer job: refit one product line, gate the candidate, roll it out."""

    redis: RedisSettings
    kafka: KafkaSettings | None = Field(
        default=None, description="Only to capture good frames from a topic.")
    model_store: Path = Field(description="Model store directory (see docs/contracts.md).")
    data_dir: Path | None = Field(
        default=None,
        description="Per line: <data_dir>/<line>/good, optional /gate-good and /defects.")
    capture_topic: str | None = Field(
        default=None, description="Topic of known-good frames (frame records) to train from.")
    capture_max_records: int = Field(default=5000, ge=1, description="Newest records scanned.")
    capture_timeout_s: float = Field(default=60.0, gt=0)
    max_images: int = Field(default=1000, ge=4, description="Good frames sampled at most.")
    dedupe_max_diff: float = Field(
        default=0.5, ge=0,
        description="Frames whose 16x16 grey thumbnails differ by less (mean abs, 0-255) "
                    "are duplicates; 0 turns de-duplication off.")
    keep_versions: int = Field(default=5, ge=1, description="Versions kept per line.")
    max_false_alarms: int = Field(
        default=500, ge=0,
        description="Newest frames marked as false alarms in the console taken as good "
                    "training frames (also scored by the gate); 0 ignores them.")
    fit: FitSettings = FitSettings()
    gate: GateSettings = GateSettings()
