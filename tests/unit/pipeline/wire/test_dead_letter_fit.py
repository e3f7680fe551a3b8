"""Dead letters always fit the record limit; the replay tool refuses letters without payload."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.errors import ConfigurationError
from pipeline.settings import KafkaSettings
from pipeline.wire.dead_letters import (
    HEADER_DLQ_PAYLOAD_BYTES,
    HEADER_DLQ_PAYLOAD_SHA256,
    DeadLetter,
    dead_letter_record,
    record_size,
)
from pipeline.wire.messages import ConsumedRecord
from workers.dead_letters.tool import describe, replay

LIMIT = 64 * 1024


def _record(value: bytes, headers=None) -> ConsumedRecord:
    return ConsumedRecord("frames", 2, 41, b"cam-a", value,
                          headers or [("lw-frame-id", b"f-1")], 0.0)


def test_a_letter_that_fits_keeps_the_original_bytes() -> None:
    key, value, headers = dead_letter_record(_record(b"x" * 1000), "undecodable_payload",
                                             "detail", "w1", LIMIT)
    assert value == b"x" * 1000 and key == b"cam-a"
    assert dict(headers)["lw-dlq-offset"] == b"41"


@pytest.mark.parametrize("size", [LIMIT, 20 * 1024 * 1024])
def test_a_letter_over_the_limit_carries_digest_and_size_instead(size: int) -> None:
    payload = b"\xab" * size
    key, value, headers = dead_letter_record(_record(payload), "message_too_large", "d",
                                             "w1", LIMIT)
    fields = dict(headers)
    assert value is None
    assert fields[HEADER_DLQ_PAYLOAD_SHA256].decode() == hashlib.sha256(payload).hexdigest()
    assert int(fields[HEADER_DLQ_PAYLOAD_BYTES]) == size
    assert fields["lw-dlq-reason"] == b"message_too_large"
    assert fields["lw-frame-id"] == b"f-1", "original headers kept"
    assert record_size(key, value, headers) <= LIMIT


def test_even_absurd_headers_are_cut_to_fit() -> None:
    headers = [(f"h{i}", b"v" * 10_000) for i in range(40)]
    key, value, kept = dead_letter_record(_record(b"x", headers), "invalid_headers", "d", "w1",
                                          LIMIT)
    assert record_size(key, value, kept) <= LIMIT
    assert dict(kept)["lw-dlq-reason"] == b"invalid_headers"


def test_replay_refuses_letters_without_payload_and_names_the_originals() -> None:
    _, value, headers = dead_letter_record(_record(b"y" * (2 * LIMIT)), "message_too_large",
                                           "d", "w1", LIMIT)
    letter = DeadLetter(0, 7, b"cam-a", value, headers)
    assert "(payload not kept)" in describe(letter)
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1")  # never contacted
    with pytest.raises(ConfigurationError, match=r"carry no payload .* frames/2@41"):
        replay(kafka, [letter])
