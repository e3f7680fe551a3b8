import pickle

import numpy as np
import pytest
import torch

from model.artifact import load_artifact, read_metadata, save_artifact
from model.errors import ArtifactError


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
