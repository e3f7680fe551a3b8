"""The one retry policy and the local-file helpers."""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np
import pytest

from pipeline.errors import TransportUnavailableError
from pipeline.files import IMAGE_SUFFIXES, atomic_path, atomic_write, list_image_files
from pipeline.retry import Backoff, RetryAborted, repeat_until_stopped, retry


def test_backoff_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert not backoff.fresh
    backoff.reset()
    assert backoff.fresh and backoff.next_delay() == 0.5
    assert Backoff(1.0, 0.25).next_delay() == 0.25, "the first delay never exceeds the cap"


def test_retry_until_success_and_only_on_transient_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransportUnavailableError("down")
        return "stored"

    errors = []
    assert retry(flaky, retry_on=(TransportUnavailableError,), backoff=Backoff(0.001, 0.002),
                 what="test", on_error=errors.append) == "stored"
    assert len(calls) == 3 and len(errors) == 2
    with pytest.raises(KeyError):
        retry(lambda: {}["x"], retry_on=(TransportUnavailableError,), backoff=Backoff(),
              what="test")


def test_retry_ends_on_stop_or_give_up():
    def down():
        raise TransportUnavailableError("down")

    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    with pytest.raises(RetryAborted) as aborted:
        retry(down, retry_on=(TransportUnavailableError,), backoff=Backoff(10.0, 10.0),
              what="test", stop=stop)
    assert isinstance(aborted.value.last_error, TransportUnavailableError)
    with pytest.raises(RetryAborted):
        retry(down, retry_on=(TransportUnavailableError,), backoff=Backoff(),
              what="test", give_up=lambda: True)


def test_repeat_until_stopped_waits_out_failures():
    stop, steps = threading.Event(), []

    def step():
        steps.append(1)
        if len(steps) == 2:
            raise ConnectionError("away")
        if len(steps) == 4:
            stop.set()

    repeat_until_stopped(step, stop=stop, retry_on=(ConnectionError,),
                         backoff=Backoff(0.001, 0.001), what="test")
    assert len(steps) == 4


def test_atomic_write_replaces_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "line" / "current"
    atomic_write(target, "v1\n")
    atomic_write(target, b"v2\n")
    assert target.read_text() == "v2\n"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert target.read_text() == "v2\n"
    assert os.listdir(target.parent) == ["current"], "no temporary file left"


def test_image_folders_list_every_suffix(tmp_path):
    image = np.full((8, 8, 3), 90, np.uint8)
    for suffix in (".png", ".jpg", ".tif", ".bmp"):
        cv2.imwrite(str(tmp_path / f"a{suffix}"), image)
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "b.tiff"), image)
    (tmp_path / "notes.txt").write_text("x")
    assert {p.suffix for p in list_image_files(tmp_path)} == {".png", ".jpg", ".tif", ".bmp"}
    assert len(list_image_files(tmp_path, recursive=True)) == 5
    assert {".tif", ".tiff", ".webp"} <= IMAGE_SUFFIXES
    with pytest.raises(NotADirectoryError):
        list_image_files(tmp_path / "missing")
