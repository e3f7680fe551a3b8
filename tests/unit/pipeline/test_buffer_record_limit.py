"""A camera frame over the record limit is dropped and counted, never retried forever."""

from __future__ import annotations

import time

import numpy as np

from pipeline.kafka.buffer import BufferedFrameSink
from pipeline.kafka.producer import KafkaRecordSink
from pipeline.settings import KafkaSettings
from pipeline.wire.codec import encode_image
from pipeline.wire.messages import Encoding, FrameMessage


def test_a_frame_over_the_record_limit_is_dropped_before_sending() -> None:
    # nothing listens on port 1: a frame that reached the sender would be retried there
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", max_message_bytes=64 * 1024)
    producer = KafkaRecordSink(kafka)
    assert producer.max_request_size == 64 * 1024
    sink = BufferedFrameSink(producer, "frames").start()
    noise = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    frame = FrameMessage("cam", "line", "big", time.time(), Encoding.RAW, 512, 512,
                         encode_image(noise, Encoding.RAW))
    sink.publish(frame)
    deadline = time.monotonic() + 5
    while sink.too_large == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.too_large == 1 and sink.dropped == 1 and sink.buffered == 0
    assert sink.close(drain_timeout_s=1) == 0
