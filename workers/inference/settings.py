"""Settings of the inference worker (``python -m workers.inference``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from pipeline.settings import HttpSettings, KafkaSettings, ProcessSettings, RedisSettings
from pipeline.wire.codec import ImageLimits
from workers.startup import default_member_id

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
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    def image_limits(self) -> ImageLimits:
        """The codec's view of these limits."""
        return ImageLimits(self.min_side, self.max_side, self.max_message_bytes)


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

    @model_validator(mode="after")
    def _runtime_fits_device(self) -> WorkerSettings:
        if self.runtime == "openvino" and self.device.startswith("cuda"):
            raise ValueError("runtime: openvino runs on the CPU; use torch or onnxruntime "
                             f"for device {self.device!r}")
        if self.runtime_precision != "f32" and self.runtime != "openvino":
            raise ValueError("runtime_precision: bf16 is offered by the openvino runtime only")
        return self
