"""Bad model artifacts reach a running worker: refused clearly, the previous model serves.

Real artifacts (``model.artifact``) in a real directory model store, loaded by the
worker's default loader; the frame source and result sink are in-memory twins.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time

import pytest

from model.artifact import save_artifact
from model.backbones import build_backbone
from model.detector import AnomalyDetector
from pipeline.errors import ModelNotFoundError
from pipeline.model_store import ModelStore, publish_model, set_current
from pipeline.runtimes import pytorch
from pipeline.wire.layout import artifact_path
from tests.twins import TwinDeadLetters, TwinSink, TwinSource, as_record, make_frame
from tests.unit.model.conftest import make_metadata, randomized_head
from workers.inference.worker import InferenceWorker


@pytest.fixture(scope="module")
def lite0():
    return build_backbone("efficientnet_lite0")


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled!')",))


def _good(lite0, version: str) -> AnomalyDetector:
    return AnomalyDetector(backbone=lite0, head=randomized_head(),
                           metadata=make_metadata(version=version))


def _write_bad(kind: str, root, lite0, good_path) -> None:
    path = artifact_path(root, "line-a", "v2")
    if kind == "truncated":
        path.write_bytes(good_path.read_bytes()[:-1000])
    elif kind == "flipped_byte":
        data = bytearray(good_path.read_bytes())
        data[-100] ^= 0x01
        path.write_bytes(bytes(data))
    elif kind == "wrong_backbone":  # a sound artifact, fitted on another backbone
        wide = build_backbone("wide_resnet50_2", pretrained=False)
        detector = AnomalyDetector(
            backbone=wide, head=randomized_head(embed_dim=512, hidden_dim=64),
            metadata=make_metadata(version="v2", backbone="wide_resnet50_2",
                                   layers=("layer2", "layer3"), common_dim=512, embed_dim=512,
                                   heads=2))
        save_artifact(detector, path)
    elif kind == "pickle_payload":
        path.write_bytes(pickle.dumps(_Boom()))
    set_current(root, "line-a", "v2")


@pytest.mark.parametrize("kind", ["truncated", "flipped_byte", "wrong_backbone",
                                  "pickle_payload"])
def test_bad_artifact_is_refused_and_the_previous_model_keeps_serving(kind, lite0, tmp_path,
                                                                      caplog):
    root = tmp_path / "store"
    good_path = publish_model(root, _good(lite0, "v1"))
    loader = pytorch.loader("efficientnet_lite0")  # WorkerSettings.expected_backbone
    store = ModelStore(root, loader=loader, refresh_s=0.0)
    assert store.get("line-a").metadata.version == "v1"
    _write_bad(kind, root, lite0, good_path)

    frames = [make_frame("cam-a", "line-a", i, size=64) for i in range(3)]
    source = TwinSource([as_record(f, 0, i) for i, f in enumerate(frames)])
    sink, letters = TwinSink(), TwinDeadLetters()
    worker = InferenceWorker(source, sink, letters, store, worker_id="w1")
    stop = threading.Event()
    with caplog.at_level(logging.ERROR, logger="pipeline.model_store"):
        thread = threading.Thread(target=worker.run, args=(stop,))
        thread.start()
        deadline = time.monotonic() + 30
        while len(sink.stored) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        thread.join(30)
    versions = {item.result.model_version for item in sink.stored.values()}
    print(f"[{kind}] refused: {caplog.records[0].getMessage()[:160] if caplog.records else '-'}")
    assert len(sink.stored) == 3 and versions == {"v1"}, "v1 kept serving every frame"
    assert not letters.letters and worker.fatal_error is None
    refusals = [r.getMessage() for r in caplog.records if "cannot load model v2" in r.getMessage()]
    assert refusals, "the refusal is logged"
    assert "unpickled!" not in "".join(refusals)

    fresh = ModelStore(root, loader=loader, refresh_s=0.0)  # nothing loaded before: a clear error
    with pytest.raises(ModelNotFoundError, match="model v2 of line 'line-a' cannot be loaded"):
        fresh.get("line-a")
