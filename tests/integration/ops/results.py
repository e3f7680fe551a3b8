"""Seeding a line's results stream with result messages, as a worker would."""

from __future__ import annotations

import numpy as np
import redis

from pipeline.wire.messages import ResultMessage, Timings

LINE = "tiles"


def publish_results(
    client: redis.Redis, prefix: str, scores: np.ndarray, version: str, start: int
) -> None:
    """Appends one result per normalised score to ``{prefix}:results:tiles``."""
    pipe = client.pipeline()
    for i, score in enumerate(scores):
        result = ResultMessage(
            frame_id=f"f{start + i:06d}",
            camera_id="cam-1",
            product_line=LINE,
            capture_ts=1_700_000_000.0 + start + i,
            image_score=float(score),
            normalized_score=float(score),
            label=bool(score >= 0.5),
            model_version=version,
            timings=Timings(queue_ms=1.0, decode_ms=1.0, infer_ms=5.0, batch_size=8),
        )
        pipe.xadd(f"{prefix}:results:{LINE}", {"result": result.to_json()})
    pipe.execute()
