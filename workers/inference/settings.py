"""Settings of the inference worker (``python -m workers.inference``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from pipeline.settings import HttpSettings, KafkaSettings, ProcessSettings, RedisSettings
from pipeline.wire.codec import ImageLimits
from workers.startup import default_member_id

#: Batches of decoded frames alive at once (decoding the next, in the model, queued, being
#: stored).
PIPELINE_DEPTH = 4
#: Default frames per model call on the CPU: bench/speed.py's sweep on 2 cores found no
#: runtime gaining past small batches (eager PyTorch even loses at 8), and a small batch
#: keeps latency low.
CPU_BATCH_SIZE = 4
#: Default frames per model call on a GPU (larger batches keep the device busy).
GPU_BATCH_SIZE = 32


class BatchingSettings(BaseModel):
    """Dynamic micro-batching knobs (Triton-style)."""

    max_batch_size: int | None = Field(
        default=None, ge=1, le=1024,
        description=f"Most frames per model call; default per device: {CPU_BATCH_SIZE} on the "
        f"CPU, {GPU_BATCH_SIZE} on a GPU.")
    max_wait_ms: float = Field(default=20.0, ge=0)
    decode_threads: int = Field(default=2, ge=1, le=64)


    def batch_size(self, device: str) -> int:
        """``max_batch_size``, or the device's default when it is not set."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return GPU_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE


class LimitSettings(BaseModel):
    """What a worker accepts; everything else goes to the dead-letter topic."""

    min_side: int = Field(default=16, ge=1)
    max_side: int = Field(default=4096, ge=1)
    max_pixels: int = Field(
        default=4096 * 4096, ge=256, description="Largest width x height, checked against "
        "what the image file declares before decoding (bounds the worker's memory).")
    max_capture_age_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="Frames captured longer ago than this are "
        "dead-lettered (capture_time_out_of_window).")
    max_capture_lead_s: float = Field(
        default=300.0, ge=0, description="Frames stamped this far in the future (clock skew) "
        "are dead-lettered (capture_time_out_of_window).")

    def image_limits(self, max_message_bytes: int) -> ImageLimits:
        """The codec's view of these limits (the payload limit is the Kafka record limit)."""
        return ImageLimits(self.min_side, self.max_side, max_message_bytes, self.max_pixels)


class WorkerSettings(ProcessSettings):
    """Inference worker process."""

    kafka: KafkaSettings
    redis: RedisSettings
    http: HttpSettings = HttpSettings()
    batching: BatchingSettings = BatchingSettings()
    limits: LimitSettings = LimitSettings()
    model_store: Path = Field(description="Model store directory (see docs/contracts.md).")
    group_id: str = "linewatch-workers"
    worker_id: str = Field(default_factory=default_member_id)
    model_cache_size: int = Field(default=4, ge=1)
    expected_backbone: str | None = Field(
        default=None, description="Refuse model artifacts fitted on another backbone "
        "(e.g. efficientnet_lite0); the line's previous model keeps serving.")
    model_refresh_s: float = Field(default=5.0, ge=0)
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    runtime: Literal["torch", "onnxruntime", "openvino"] = Field(
        default="torch", description="Inference runtime: torch (eager PyTorch, CPU or CUDA), "
        "onnxruntime (CPU, or CUDA/TensorRT providers with onnxruntime-gpu) or openvino (CPU; "
        "fastest on the CPU, see README). The last two export each promoted model on load "
        "and need the [runtimes] extra.")
    runtime_threads: int = Field(
        default=0, ge=0, le=256,
        description="Inference threads of onnxruntime/openvino (0: the runtime's choice).")
    runtime_precision: Literal["f32", "bf16"] = Field(
        default="f32", description="openvino only: bf16 runs faster on CPUs with bfloat16 "
        "support but moves scores by about 1 percent; f32 matches PyTorch.")
    runtime_cache: Path | None = Field(
        default=None, description="Folder for exported models, keyed by artifact SHA-256 "
        "(default: linewatch-runtime-cache in the system's temporary directory).")
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    retry_backoff_max_s: float = Field(default=10.0, gt=0)
    health_interval_s: float = Field(
        default=5.0, ge=0.2, le=300,
        description="How often the worker publishes its health record for the console.")
    shutdown_timeout_s: float = Field(
        default=30.0, gt=0, description="After SIGTERM, stop within this long even while "
        "Redis or Kafka are down (unstored frames stay uncommitted and are replayed); keep "
        "it below Kubernetes' terminationGracePeriodSeconds.")
    readiness_probe_s: float = Field(
        default=2.0, gt=0, description="How often an idle worker pings Redis for /readyz.")

    def memory_bound_bytes(self, device: str = "cpu") -> int:
        """Decoded frames a worker can hold at once, in bytes (the README's bound).

        A batch being decoded, one batch in the model, one queued for the publisher and
        one being stored: 4 batches of at most ``max_batch_size`` frames of
        ``max_pixels`` x 3 bytes (plus the model, which is not counted here).
        """
        return PIPELINE_DEPTH * self.batching.batch_size(device) * self.limits.max_pixels * 3

    @model_validator(mode="after")
    def _runtime_fits_device(self) -> WorkerSettings:
        if self.runtime == "openvino" and self.device.startswith("cuda"):
            raise ValueError("runtime: openvino runs on the CPU; use torch or onnxruntime "
                             f"for device {self.device!r}")
        if self.runtime_precision != "f32" and self.runtime != "openvino":
            raise ValueError("runtime_precision: bf16 is offered by the openvino runtime only")
        return self
