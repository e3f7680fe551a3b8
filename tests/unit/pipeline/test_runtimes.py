"""The exporting runtimes (ONNX Runtime, OpenVINO) as the worker loads them.

Equivalence with eager PyTorch on real images from ../shared/data/mtd (skipped when absent),
through ``predict`` as the worker calls it (any image size, resize included): scores,
normalised scores and heatmaps within 1e-4 relative to the largest eager magnitude, same
labels. A tampered cached export is refused and the model store keeps the previous model.
"""


import shutil

import numpy as np
import pytest

from model.artifact import load_artifact
from model.backbones import build_backbone
from model.detector import AnomalyDetector
from model.errors import ArtifactError
from model.export import ExportError
from pipeline.model_store import ModelStore, publish_model
from pipeline.runtimes import load_model, loader
from pipeline.runtimes.exported import exported_folder
from pipeline.wire.layout import artifact_path
from tests.unit.model.conftest import make_metadata, randomized_head
from tests.unit.model.test_export import TOLERANCE, real_images, relative_error

EXPORTING = ["onnxruntime", "openvino"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A model store with two versions of line-a (v1 current) on a 96 px detector."""
    root = tmp_path_factory.mktemp("store")
    lite0 = build_backbone("efficientnet_lite0")
    for seed, version in ((1, "20260101T000000Z-aaaa0001"), (2, "20260102T000000Z-aaaa0002")):
        detector = AnomalyDetector(backbone=lite0, head=randomized_head(seed=seed),
                                   metadata=make_metadata(image_size=96, version=version))
        publish_model(root, detector, make_current=seed == 1)
    return root


V1, V2 = "20260101T000000Z-aaaa0001", "20260102T000000Z-aaaa0002"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One export cache for the module (each export takes seconds)."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("runtime", EXPORTING)
def test_runtime_matches_eager_on_real_images(store, cache, runtime):
    artifact = artifact_path(store, "line-a", V1)
    images = real_images()
    expected = load_artifact(artifact).predict(images)
    detector = load_model(artifact, runtime, "cpu", cache_dir=cache)
    assert detector.metadata.version == V1
    actual = detector.predict(images)
    for field in ("scores", "normalized_scores", "heatmaps"):
        assert getattr(actual, field).shape == getattr(expected, field).shape
        assert relative_error(getattr(actual, field), getattr(expected, field)) < TOLERANCE, field
    assert (actual.labels == expected.labels).all()


def test_openvino_bf16_is_opt_in_and_close(store, cache):
    """bf16 (opt-in) moves scores a little; stated bound: 5 % of the largest magnitude."""
    artifact = artifact_path(store, "line-a", V1)
    images = real_images()
    expected = load_artifact(artifact).predict(images)
    actual = load_model(artifact, "openvino", "cpu", cache_dir=cache,
                        precision="bf16").predict(images)
    assert relative_error(actual.scores, expected.scores) < 0.05
    with pytest.raises(ValueError, match="bf16 with the openvino runtime"):
        loader("onnxruntime", precision="bf16")


def test_export_is_cached_by_artifact_checksum(store, cache):
    artifact = artifact_path(store, "line-a", V1)
    load_model(artifact, "onnxruntime", "cpu", cache_dir=cache)
    folder, _ = exported_folder(artifact, "onnx", cache)
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    load_model(artifact, "onnxruntime", "cpu", cache_dir=cache)
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp  # reused, not re-exported
    assert folder.name.endswith("-onnx") and len(folder.name) == 64 + len("-onnx")


@pytest.mark.parametrize("runtime", EXPORTING)
def test_tampered_cached_export_is_refused_and_the_previous_model_keeps_serving(
        store, cache, tmp_path, runtime):
    load_model(artifact_path(store, "line-a", V1), runtime, "cpu", cache_dir=cache)
    shutil.copytree(cache, tmp_path, dirs_exist_ok=True)  # v1's export, not v2's
    models = ModelStore(store, loader=loader(runtime, cache_dir=tmp_path), refresh_s=0)
    assert models.get("line-a").metadata.version == V1
    new = artifact_path(store, "line-a", V2)
    fmt = "onnx" if runtime == "onnxruntime" else "openvino"
    load_model(new, runtime, "cpu", cache_dir=tmp_path)  # exported and cached
    folder, _ = exported_folder(new, fmt, tmp_path)
    target = folder / ("model.onnx" if fmt == "onnx" else "model.bin")
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="failed its checksum"):
        load_model(new, runtime, "cpu", cache_dir=tmp_path)
    (store / "line-a" / "current").write_text(V2 + "\n")
    try:
        assert models.refresh("line-a") is None  # refused
        assert models.get("line-a").metadata.version == V1  # the previous one serves
    finally:
        (store / "line-a" / "current").write_text(V1 + "\n")


def test_a_bad_artifact_is_refused_before_export(store, tmp_path):
    artifact = artifact_path(store, "line-a", V1)
    with pytest.raises(ArtifactError, match="line-b"):
        loader("openvino", cache_dir=tmp_path)(artifact, "cpu", "line-b")
    copy = tmp_path / "copy.safetensors"
    data = bytearray(artifact.read_bytes())
    data[-3] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"checksum|corrupt"):
        load_model(copy, "onnxruntime", "cpu", line="line-a", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="unknown runtime"):
        loader("tensorflow")


def test_openvino_refuses_a_gpu_device(store, cache):
    with pytest.raises(Exception, match="CPU"):
        load_model(artifact_path(store, "line-a", V1), "openvino", "cuda", cache_dir=cache)


def test_preprocessing_matches_for_odd_inputs(store, cache):
    """Grayscale and other sizes take the PyTorch resize; bad input is a ValueError."""
    artifact = artifact_path(store, "line-a", V1)
    detector = load_model(artifact, "onnxruntime", "cpu", cache_dir=cache)
    eager = load_artifact(artifact)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
              rng.integers(0, 256, (70, 120), dtype=np.uint8)]
    got = detector.preprocess(images)
    assert relative_error(got, eager.preprocess(images).numpy()) < 1e-5
    with pytest.raises(ValueError):
        detector.predict([np.zeros((96, 96, 3), dtype=np.float32)])
