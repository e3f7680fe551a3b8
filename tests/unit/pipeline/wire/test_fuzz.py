"""Fuzzing the record parser and the image decoder (hypothesis, bounded, replayable).

Inputs: the crafted corpus (tests/corpus/: every format valid, as a bomb, truncated)
mutated byte by byte, cut, spliced and re-labelled with random ``lw-*`` headers, plus
headers made of arbitrary bytes. The only errors allowed out of
``FrameMessage.from_record`` and ``decode_frame`` are the pipeline's own
:class:`~pipeline.errors.FrameError` family (each carries a dead-letter reason), and the
process's peak memory stays bounded. The figures (inputs tried, distinct outcomes,
crashes) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import os
import resource
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import FrameError
from pipeline.wire.codec import ImageLimits, decode_frame
from pipeline.wire.messages import FrameMessage

CORPUS = Path(__file__).resolve().parents[3] / "corpus"
SEEDS = sorted(p.read_bytes() for p in CORPUS.iterdir() if p.suffix != ".py")
LIMITS = ImageLimits(min_side=16, max_side=512, max_payload_bytes=1 << 20,
                     max_pixels=512 * 512)
#: Inputs per run; LINEWATCH_FUZZ_EXAMPLES=5000 for a longer local run (same checks).
EXAMPLES = int(os.environ.get("LINEWATCH_FUZZ_EXAMPLES", "300"))
#: Largest growth of the process's peak RSS the whole run may cause (decoded images are
#: at most 512 x 512 x 3 bytes here; a decoded bomb would be gigabytes).
MAX_PEAK_GROWTH_BYTES = 256 * 1024 * 1024

NAMES = ["lw-schema", "lw-camera", "lw-line", "lw-frame-id", "lw-capture-ts", "lw-encoding",
         "lw-width", "lw-height", "lw-dlq-reason", "x-other"]
TEXT_VALUES = st.one_of(
    st.sampled_from([b"1", b"2", b"cam-a", b"line-a", b"f-1", b"jpeg", b"raw", b"32", b"16",
                     b"0", b"-1", b"nan", b"inf", b"1e308", b"1700000000.5", b"cam\n",
                     b"\xff\xfe", b"", b"99999999999999999999", b"65535"]),
    st.binary(max_size=24),
)
STATS: Counter[str] = Counter()


@st.composite
def _payloads(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "cut", "splice", "insert"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "splice":
            other = draw(st.sampled_from(SEEDS))
            data[at:] = other[draw(st.integers(0, max(0, len(other) - 1))):]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@st.composite
def _records(draw: st.DrawFn) -> tuple[bytes | None, list[tuple[str, bytes | None]], bytes]:
    payload = draw(_payloads())
    size = draw(st.sampled_from([b"32"] * 6 + [b"16", b"512", b"30000", b"0"]))
    headers: list[tuple[str, bytes | None]] = [
        ("lw-schema", b"1"), ("lw-camera", b"cam-a"), ("lw-line", b"line-a"),
        ("lw-frame-id", b"f-1"), ("lw-capture-ts", b"1700000000.0"),
        ("lw-encoding", draw(st.sampled_from([b"jpeg", b"jpeg", b"raw"]))),
        ("lw-width", size), ("lw-height", size)]
    # most records keep sound headers, so the payload fuzzing reaches the decoder
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):  # overwrite, add or drop
        name = draw(st.sampled_from(NAMES))
        action = draw(st.sampled_from(["set", "add", "drop", "none"]))
        if action == "set":
            headers = [(k, draw(TEXT_VALUES) if k == name else v) for k, v in headers]
        elif action == "add":
            headers.append((name, draw(TEXT_VALUES)))
        elif action == "drop":
            headers = [(k, v) for k, v in headers if k != name]
        else:
            headers.append((name, None))
    key = draw(st.sampled_from([b"cam-a"] * 6 + [None, b"cam-b", b"\x00"]))
    return key, headers, payload


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(_records())
def _fuzz_one(record: tuple[bytes | None, list[tuple[str, bytes | None]], bytes]) -> None:
    key, headers, payload = record
    STATS["inputs"] += 1
    try:
        frame = FrameMessage.from_record(key, headers, payload)
        image = decode_frame(frame, LIMITS)
    except FrameError as error:
        STATS[f"refused:{error.reason}"] += 1
        return
    except Exception as error:  # the finding a fuzzer exists for: record it, fail below
        STATS[f"CRASH:{type(error).__name__}:{str(error)[:80]}"] += 1
        return
    assert image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] <= LIMITS.max_pixels
    STATS["decoded"] += 1


def test_fuzz_parser_and_decoder_only_raise_frame_errors() -> None:
    STATS.clear()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _fuzz_one()
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    crashes = {k: n for k, n in STATS.items() if k.startswith("CRASH")}
    outcomes = {k: n for k, n in sorted(STATS.items()) if k != "inputs"}
    print(f"\n[fuzz] inputs tried {STATS['inputs']}, distinct outcomes {len(outcomes)}, "
          f"crashes {sum(crashes.values())}, peak RSS growth {growth / 2**20:.1f} MiB")
    for name, count in outcomes.items():
        print(f"  {name}: {count}")
    assert STATS["inputs"] >= EXAMPLES
    assert not crashes, crashes
    assert STATS["decoded"] > 0 and len(outcomes) >= 5, "the fuzzer reaches the decoder"
    assert growth < MAX_PEAK_GROWTH_BYTES
