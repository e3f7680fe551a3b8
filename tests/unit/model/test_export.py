"""Export of the whole detector (ONNX, OpenVINO IR): graph form, round trip, equivalence.

Equivalence is checked on real images from ../shared/data/mtd (skipped when absent) with a
stated tolerance: scores, normalised scores and heatmaps within 1e-4 relative to the
largest magnitude of the eager result, and the same labels.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from model.artifact import save_artifact
from model.cli import main as cli_main
from model.data import read_image
from model.errors import ArtifactError
from model.export import (
    METADATA_NAME,
    DetectorGraph,
    ExportError,
    export_detector,
    file_sha256,
    read_export,
)
from model.folding import GraphScorer
from tests.unit.model.conftest import full_detector, two_scale_reference

MTD = Path(__file__).resolve().parents[4] / "shared" / "data" / "mtd"
TOLERANCE = 1e-4  # relative to the largest magnitude of the eager output


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


def real_images(count: int = 6) -> list[np.ndarray]:
    files = sorted((MTD / "test").rglob("*.jpg"))
    if not files:
        pytest.skip(f"real images absent: {MTD}/test has no .jpg (shared data not laid out)")
    step = max(1, len(files) // count)
    return [read_image(path) for path in files[::step][:count]]


@pytest.fixture(scope="module")
def exported(lite0, tmp_path_factory):
    """One 96 px detector with a global Gaussian term, its artifact and both exports."""
    folder = tmp_path_factory.mktemp("export")
    detector = full_detector(lite0, image_size=96, seed=3)
    artifact = save_artifact(detector, folder / "model.safetensors")
    exports = {name: folder / name for name in ("onnx", "openvino")}
    for name, out in exports.items():
        export_detector(artifact, out, name)
    return detector, artifact, exports


def test_graph_scorer_equals_the_folded_scorer(random_detector):
    torch.manual_seed(1)
    batch = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = random_detector.backbone(batch)
        expected = random_detector.scorer(features)
        actual = GraphScorer(random_detector.scorer)(features)
    assert actual.shape == expected.shape == (3, 8, 8)
    assert relative_error(actual.numpy(), expected.numpy()) < TOLERANCE


def test_detector_graph_equals_score_maps_max_and_heatmaps(random_detector):
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = random_detector.score_maps(batch)
        scores, heatmaps = DetectorGraph(random_detector)(batch)
        expected_heatmaps = random_detector.heatmaps(maps)
    assert relative_error(scores.numpy(), maps.flatten(1).amax(1).numpy()) < TOLERANCE
    assert heatmaps.shape == (2, 64, 64)
    assert relative_error(heatmaps.numpy(), expected_heatmaps.numpy()) < TOLERANCE


def test_detector_graph_adds_the_memory_map_and_the_gaussian_term(lite0):
    detector = full_detector(lite0, seed=1, second_image_size=None)
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps, expected = detector.score(batch)
        assert detector.standardiser is not None  # the graph standardises the input too
        layer_maps = detector.backbone(detector.standardiser(batch))
        simplenet = detector.scorer(layer_maps)
        memory = detector.patch_memory(detector.aggregator(layer_maps))
        term = detector.global_gaussian(layer_maps)
        scores, heatmaps = DetectorGraph(detector)(batch)
    assert relative_error(maps.numpy(), (simplenet + memory).numpy()) < 1e-6
    assert relative_error(expected.numpy(), (maps.flatten(1).amax(1) + term).numpy()) < 1e-6
    assert relative_error(scores.numpy(), expected.numpy()) < TOLERANCE
    assert relative_error(heatmaps.numpy(), detector.heatmaps(maps).numpy()) < TOLERANCE


def test_detector_graph_averages_the_two_input_scales(lite0):
    """Eager detector and graph against a reference built from ``F.interpolate`` itself:
    each scale's SimpleNet + memory map, the second resized to the first's grid, averaged;
    the Gaussian term from the full scale only."""
    detector = full_detector(lite0, seed=2)
    assert detector.metadata.second_image_size == 48
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps, expected = detector.score(batch)
        per_scale, merged, term = two_scale_reference(detector, batch)
        assert per_scale[0].shape == (2, 8, 8) and per_scale[1].shape == (2, 6, 6)
        scores, heatmaps = DetectorGraph(detector)(batch)
    assert relative_error(maps.numpy(), merged.numpy()) < 1e-5
    assert relative_error(expected.numpy(), (maps.flatten(1).amax(1) + term).numpy()) < 1e-6
    assert relative_error(scores.numpy(), expected.numpy()) < TOLERANCE
    assert relative_error(heatmaps.numpy(), detector.heatmaps(maps).numpy()) < TOLERANCE


def test_export_writes_checksummed_metadata(exported):
    detector, artifact, exports = exported
    for name, files in (("onnx", {"model.onnx"}), ("openvino", {"model.xml", "model.bin"})):
        metadata = read_export(exports[name], file_sha256(artifact))
        assert metadata.runtime_format == name
        assert set(metadata.files) == files
        assert metadata.detector == detector.metadata
        assert metadata.detector.image_size == 96
        assert metadata.detector.second_image_size == 72  # the graph has both scales
        assert metadata.detector.in_map_layers == 1  # and pools the finest layer's border so
        assert all(file_sha256(exports[name] / f) == h for f, h in metadata.files.items())
        assert (exports[name] / METADATA_NAME).is_file()


def _run_onnx(folder: Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(folder / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    scores, heatmaps = session.run(["scores", "heatmaps"], {"images": batch})
    return scores, heatmaps


def _run_openvino(folder: Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import openvino

    compiled = openvino.Core().compile_model(
        str(folder / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    result = compiled({"images": batch})
    return result["scores"], result["heatmaps"]


@pytest.mark.parametrize("name", ["onnx", "openvino"])
def test_exported_graph_round_trip_matches_eager_on_real_images(exported, name):
    detector, _, exports = exported
    images = real_images()
    with torch.no_grad():
        batch = detector.preprocess(images)
        maps, expected_scores = detector.score(batch)
        expected_scores = expected_scores.numpy()
        assert (expected_scores != maps.flatten(1).amax(1).numpy()).all()  # the term is in
        expected_heatmaps = detector.heatmaps(maps).numpy()
    run = _run_onnx if name == "onnx" else _run_openvino
    scores, heatmaps = run(exports[name], batch.numpy())
    assert scores.shape == (len(images),)
    assert heatmaps.shape == (len(images), 96, 96)
    assert relative_error(scores, expected_scores) < TOLERANCE
    assert relative_error(heatmaps, expected_heatmaps) < TOLERANCE
    # a batch of one (dynamic batch axis)
    single, _ = run(exports[name], batch[:1].numpy())
    assert relative_error(single, expected_scores[:1]) < TOLERANCE


def test_a_modified_exported_file_is_refused(exported, tmp_path):
    _, artifact, exports = exported
    copy = tmp_path / "onnx"
    copy.mkdir()
    for file in exports["onnx"].iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    read_export(copy, file_sha256(artifact))
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="failed its checksum"):
        read_export(copy)


def test_an_export_of_another_artifact_is_refused(exported):
    _, _, exports = exported
    with pytest.raises(ExportError, match="exported from artifact"):
        read_export(exports["onnx"], "0" * 64)


def test_export_refuses_a_missing_or_tampered_artifact(exported, tmp_path):
    _, artifact, _ = exported
    with pytest.raises(ArtifactError, match="does not exist"):
        export_detector(tmp_path / "none.safetensors", tmp_path / "out", "onnx")
    data = bytearray(artifact.read_bytes())
    data[-5] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        export_detector(bad, tmp_path / "out", "onnx")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match="unknown export format"):
        export_detector(artifact, tmp_path / "out", "tflite")


def test_cli_export_writes_the_folder(exported, tmp_path, capsys):
    _, artifact, _ = exported
    out = tmp_path / "cli-onnx"
    assert cli_main(["export", "--model", str(artifact), "--format", "onnx",
                     "--out", str(out)]) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    assert read_export(out, file_sha256(artifact)).runtime_format == "onnx"
