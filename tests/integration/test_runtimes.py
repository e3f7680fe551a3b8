"""The worker in each CPU inference runtime, through a hot swap (real tansu and Redis)."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace

import cv2
import numpy as np
import pytest
import redis

from model.artifact import load_artifact
from pipeline.model_store import ModelStore, publish_model, read_current, set_current
from pipeline.redis.model_events import publish_model_event
from pipeline.runtimes import pytorch
from pipeline.wire.layout import artifact_path
from pipeline.wire.messages import ModelEvent

from .test_pipeline import ListReader, frame_sequence, produce, reader_for

pytestmark = pytest.mark.integration

LINE, CAMERA = "line-a", "cam-a"
SIZE = 128


def _store_with_two_versions(source, target):
    """line-a's fitted model (current) and a second version with another calibration."""
    shutil.copytree(source / LINE, target / LINE)
    current = read_current(target, LINE)
    detector = load_artifact(artifact_path(target, LINE, current))
    calibration = detector.metadata.calibration
    newer = replace(detector.metadata, version="20991231T000000Z-feed0002",
                    calibration=replace(calibration, threshold=calibration.threshold + 0.5))
    detector.metadata = newer
    publish_model(target, detector, make_current=False)
    return current, newer.version


def _decoded(sent):
    return [cv2.cvtColor(cv2.imdecode(np.frombuffer(f.payload, np.uint8), 1), cv2.COLOR_BGR2RGB)
            for f in sent]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_worker_in_each_cpu_runtime_serves_through_a_hot_swap(wiring, start_worker, tmp_path,
                                                              runtime):
    store = tmp_path / "store"
    old, new = _store_with_two_versions(wiring.store, store)
    wiring = replace(wiring, store=store)
    start_worker(wiring.worker_settings("w-1", runtime=runtime, runtime_cache=tmp_path / "cache",
                                        device="cpu"))
    frames = frame_sequence(18, SIZE, defect_every=3, seed=21)
    reader = reader_for(wiring)
    eager = ModelStore(store, loader=pytorch.loader(), refresh_s=0)

    def results_for(sent):
        ids = [f.frame_id for f in sent]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            found = {r.frame_id: r for r in reader.results(LINE) if r.frame_id in set(ids)}
            if len(found) == len(ids):
                break
            time.sleep(0.1)
        return [found[i] for i in ids if i in found]

    def send(chunk):
        return produce(wiring, CAMERA, lambda: ListReader(chunk))

    def check(sent, version):
        results = results_for(sent)
        assert [r.frame_id for r in results] == [f.frame_id for f in sent]
        assert {r.model_version for r in results} == {version}
        bare = eager.get(LINE).predict(_decoded(sent))  # eager PyTorch, same version
        np.testing.assert_allclose([r.image_score for r in results], bare.scores,
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose([r.normalized_score for r in results],
                                   bare.normalized_scores, rtol=1e-4, atol=1e-5)
        assert [r.label for r in results] == bare.labels.tolist()

    first = send(frames[:6])
    check(first, old)
    set_current(store, LINE, new)
    publish_model_event(redis.Redis.from_url(wiring.redis_url), wiring.prefix,
                        ModelEvent(LINE, new, "promoted", old))
    deadline = time.monotonic() + 60
    swapped = []
    while time.monotonic() < deadline:  # the new version is exported and loaded meanwhile
        swapped = results_for(send(frames[6:8]))
        if swapped and all(r.model_version == new for r in swapped):
            break
        time.sleep(0.5)
    assert swapped and swapped[-1].model_version == new, "the promoted version never served"
    check(send(frames[8:]), new)
    assert (tmp_path / "cache").is_dir() and len(list((tmp_path / "cache").iterdir())) == 2
