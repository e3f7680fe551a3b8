import json
import pickle

import numpy as np
import pytest
import torch

from model.artifact import load_artifact, read_metadata, save_artifact
from model.errors import ArtifactError
from tests.unit.model.conftest import full_detector


def test_round_trip_keeps_scores_and_metadata(random_detector, images, lite0, tmp_path):
    path = save_artifact(random_detector, tmp_path / "model.safetensors")
    loaded = load_artifact(path, backbone=lite0)
    assert loaded.metadata == random_detector.metadata
    assert read_metadata(path) == random_detector.metadata
    np.testing.assert_allclose(
        loaded.predict(images).scores, random_detector.predict(images).scores, rtol=1e-6
    )


def _saved(random_detector, tmp_path):
    return save_artifact(random_detector, tmp_path / "model.safetensors")


def test_flipped_byte_is_refused(random_detector, lite0, tmp_path):
    path = _saved(random_detector, tmp_path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(path, backbone=lite0)


def test_truncated_file_is_refused(random_detector, lite0, tmp_path):
    path = _saved(random_detector, tmp_path)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        load_artifact(path, backbone=lite0)


def test_pickle_payload_is_refused_and_never_unpickled(lite0, tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ArtifactError):
        load_artifact(path, backbone=lite0)
    torch_file = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1)}, torch_file)
    with pytest.raises(ArtifactError):
        load_artifact(torch_file, backbone=lite0)


def test_mismatches_are_refused(random_detector, lite0, tmp_path):
    path = _saved(random_detector, tmp_path)
    with pytest.raises(ArtifactError, match="backbone"):
        load_artifact(path, expected_backbone="wide_resnet50_2", backbone=lite0)
    with pytest.raises(ArtifactError, match="line"):
        load_artifact(path, expected_product_line="other-line", backbone=lite0)


def test_tampered_metadata_is_refused(random_detector, lite0, tmp_path):
    path = _saved(random_detector, tmp_path)
    data = path.read_bytes()
    tampered = data.replace(
        b'\\"product_line\\": \\"line-a\\"', b'\\"product_line\\": \\"line-b\\"'
    )
    assert tampered != data
    path.write_bytes(tampered)
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(path, backbone=lite0)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nope.safetensors")


def _rewrite(path, tensors, metadata_json, format_version="4"):
    """Writes an artifact by hand (a correct checksum over what is given)."""
    from safetensors.torch import save_file

    from model.artifact import FORMAT_NAME, _digest

    header = {
        "format": FORMAT_NAME,
        "format_version": format_version,
        "metadata": metadata_json,
        "sha256": _digest(metadata_json, tensors),
    }
    save_file(tensors, str(path), metadata=header)


def _contents(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        return tensors, handle.metadata()["metadata"]


def test_memory_and_gaussian_round_trip_keeps_scores_and_heatmaps(lite0, images, tmp_path):
    detector = full_detector(lite0)
    path = save_artifact(detector, tmp_path / "model.safetensors")
    loaded = load_artifact(path, backbone=lite0)
    assert loaded.metadata == detector.metadata
    assert loaded.global_gaussian is not None and loaded.patch_memory is not None
    expected, actual = detector.predict(images), loaded.predict(images)
    np.testing.assert_allclose(actual.scores, expected.scores, rtol=1e-6)
    np.testing.assert_allclose(actual.heatmaps, expected.heatmaps, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        maps = detector.scorer(detector.backbone(detector.preprocess(images)))
    assert not np.allclose(expected.scores, maps.flatten(1).amax(1).numpy())  # the terms count


def test_a_format_3_artifact_loads_without_a_gaussian_term(random_detector, lite0, tmp_path):
    path = _saved(random_detector, tmp_path)
    tensors, metadata_json = _contents(path)
    raw = json.loads(metadata_json)
    del raw["global_gaussian"], raw["patch_memory"]
    raw["format_version"] = 3
    _rewrite(path, tensors, json.dumps(raw, sort_keys=True), format_version="3")
    loaded = load_artifact(path, backbone=lite0)
    assert loaded.global_gaussian is None and loaded.metadata.global_gaussian is None
    assert loaded.patch_memory is None and loaded.metadata.patch_memory is None


def test_a_gaussian_term_without_its_tensors_is_refused(lite0, tmp_path):
    path = save_artifact(full_detector(lite0), tmp_path / "model.safetensors")
    tensors, metadata_json = _contents(path)
    del tensors["global_gaussian.whitening"]
    _rewrite(path, tensors, metadata_json)
    with pytest.raises(ArtifactError, match=r"global_gaussian\.whitening: missing"):
        load_artifact(path, backbone=lite0)


@pytest.mark.parametrize("name", ["global_gaussian.mean", "patch_memory.bank"])
def test_non_finite_extra_tensors_are_refused(lite0, tmp_path, name):
    path = save_artifact(full_detector(lite0), tmp_path / "model.safetensors")
    tensors, metadata_json = _contents(path)
    tensors[name].view(-1)[5] = float("nan")
    _rewrite(path, tensors, metadata_json)
    with pytest.raises(ArtifactError, match="non-finite"):
        load_artifact(path, backbone=lite0)


def test_a_bank_of_another_size_than_the_metadata_says_is_refused(lite0, tmp_path):
    path = save_artifact(full_detector(lite0), tmp_path / "model.safetensors")
    tensors, metadata_json = _contents(path)
    tensors["patch_memory.bank"] = tensors["patch_memory.bank"][:10].clone()
    _rewrite(path, tensors, metadata_json)
    with pytest.raises(ArtifactError, match=r"patch_memory\.bank: \(10, 344\) != \(50, 344\)"):
        load_artifact(path, backbone=lite0)


def test_gaussian_tensors_without_the_metadata_term_are_refused(lite0, random_detector, tmp_path):
    path = _saved(random_detector, tmp_path)
    tensors, metadata_json = _contents(path)
    tensors["global_gaussian.mean"] = torch.zeros(344)
    _rewrite(path, tensors, metadata_json)
    with pytest.raises(ArtifactError, match=r"unexpected tensor global_gaussian\.mean"):
        load_artifact(path, backbone=lite0)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("heads", 10**6, "implies at least"),
        ("patch_memory", {"center": 1.0, "weight": 1.0, "size": 10**9, "dims": 344}, "bank"),
        ("global_gaussian", {"center": 1.0, "weight": 1.0, "shrinkage": 0.1, "dims": 10**6},
         "global_gaussian"),
    ],
)
def test_crafted_sizes_are_refused_without_allocating_them(lite0, tmp_path, field, value, match):
    path = save_artifact(full_detector(lite0), tmp_path / "model.safetensors")
    tensors, metadata_json = _contents(path)
    raw = json.loads(metadata_json)
    raw[field] = value
    _rewrite(path, tensors, json.dumps(raw, sort_keys=True))  # a valid checksum over the lie
    with pytest.raises(ArtifactError, match=match):
        load_artifact(path, backbone=lite0)
