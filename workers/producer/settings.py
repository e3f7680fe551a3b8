"""Settings of a camera producer (``python -m workers.producer``; one process per camera)."""

from __future__ import annotations

from pydantic import Field

from pipeline.settings import HttpSettings, KafkaSettings, ProcessSettings
from pipeline.wire.messages import Encoding


class ProducerSettings(ProcessSettings):
    """Camera producer process (one per camera)."""

    kafka: KafkaSettings
    http: HttpSettings = HttpSettings()
    camera_id: str
    product_line: str
    source: str = Field(description="Video file, RTSP/HTTP URL, device index or image folder.")
    fps_limit: float | None = Field(default=None, gt=0)
    loop: bool = False
    max_frames: int | None = Field(default=None, ge=1)
    encoding: Encoding = Encoding.JPEG
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    resize_to: int | None = Field(default=None, ge=16, description="Square side to resize to.")
    buffer_max_frames: int = Field(default=1000, ge=1)
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=10.0, gt=0)
    send_batch: int = Field(default=32, ge=1)
    linger_ms: int = Field(default=5, ge=0)
