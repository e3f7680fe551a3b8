"""Detector artifacts: one safetensors file with the trained head and verified metadata.

Only the fitted parts (feature adaptor and discriminator, with the BatchNorm running
statistics, the image-level Gaussian's mean and whitening under ``global_gaussian.`` and the
patch memory bank under ``patch_memory.``) are stored; the frozen backbone is rebuilt from
its own weights. The header carries the metadata as JSON and a SHA-256 over the metadata and
every tensor (name, dtype, shape, bytes). Loading never unpickles anything and refuses a file
whose checksum, format, shapes or backbone do not match.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.backbones import BACKBONES, FeatureBackbone, backbone_spec, build_backbone
from model.detector import AnomalyDetector
from model.errors import ArtifactError
from model.global_gaussian import GlobalGaussian
from model.metadata import ARTIFACT_FORMAT_VERSION, READABLE_FORMAT_VERSIONS, DetectorMetadata
from model.network import HeadEnsemble
from model.patch_memory import PatchMemory

FORMAT_NAME = "linewatch-simplenet"
GAUSSIAN_PREFIX = "global_gaussian."
MEMORY_PREFIX = "patch_memory."
MAX_ARTIFACT_BYTES = 256 * 1024 * 1024


def _digest(metadata_json: str, tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(metadata_json.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return digest.hexdigest()


def save_artifact(detector: AnomalyDetector, path: str | Path) -> Path:
    """Writes the detector's artifact atomically (temp file + rename).

    Args:
        detector: Fitted detector.
        path: Target file (conventionally ``<version>.safetensors``).

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in detector.head.state_dict().items()
    }
    for prefix, part in (
        (GAUSSIAN_PREFIX, detector.global_gaussian),
        (MEMORY_PREFIX, detector.patch_memory),
    ):
        if part is not None:
            for name, tensor in part.state_dict().items():
                tensors[prefix + name] = tensor.detach().cpu().contiguous()
    metadata_json = detector.metadata.to_json()
    header = {
        "format": FORMAT_NAME,
        "format_version": str(ARTIFACT_FORMAT_VERSION),
        "metadata": metadata_json,
        "sha256": _digest(metadata_json, tensors),
    }
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temp_name, metadata=header)
        with open(temp_name, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    return path


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    size = path.stat().st_size
    if size > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"artifact {path} is {size} bytes, over the {MAX_ARTIFACT_BYTES} limit")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ArtifactError(
            f"artifact {path} is not a readable safetensors file (corrupt, truncated or not "
            f"an artifact): {error}"
        ) from error
    return header, tensors


def read_metadata(path: str | Path) -> DetectorMetadata:
    """Reads and verifies an artifact's metadata (checksum included) without building a model.

    Raises:
        ArtifactError: When the file is corrupt, tampered with or not an artifact.
    """
    metadata, _ = _verified(Path(path))
    return metadata


def _verified(path: Path) -> tuple[DetectorMetadata, dict[str, torch.Tensor]]:
    header, tensors = _read(path)
    if header.get("format") != FORMAT_NAME:
        raise ArtifactError(
            f"{path} is not a {FORMAT_NAME} artifact (format={header.get('format')!r})"
        )
    if header.get("format_version") not in {str(v) for v in READABLE_FORMAT_VERSIONS}:
        raise ArtifactError(
            f"{path} has artifact format version {header.get('format_version')!r}; "
            f"this code reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
        )
    metadata_json = header.get("metadata", "")
    if header.get("sha256") != _digest(metadata_json, tensors):
        raise ArtifactError(f"{path} failed its checksum: the file was modified or is corrupt")
    metadata = DetectorMetadata.from_json(metadata_json)
    if metadata.backbone not in BACKBONES:
        raise ArtifactError(f"{path} needs unknown backbone {metadata.backbone!r}")
    try:
        backbone_spec(metadata.backbone, metadata.layers)
    except ValueError as error:
        raise ArtifactError(f"{path} uses layers {metadata.layers}: {error}") from error
    return metadata, tensors


def load_artifact(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    expected_backbone: str | None = None,
    expected_product_line: str | None = None,
    backbone: FeatureBackbone | None = None,
    backbone_weights: str | Path | None = None,
) -> AnomalyDetector:
    """Loads a detector from an artifact, refusing anything that does not check out.

    Args:
        path: Artifact file.
        device: Device to load onto.
        expected_backbone: Refuse an artifact built on another backbone.
        expected_product_line: Refuse an artifact fitted for another line.
        backbone: Prebuilt frozen backbone to share (must match the artifact's).
        backbone_weights: Explicit backbone weights file.

    Returns:
        The detector, in eval mode on ``device``.

    Raises:
        ArtifactError: Corrupt, tampered, mismatched or unreadable artifact.
        BackboneWeightsError: When the backbone's weights are missing.
    """
    path = Path(path)
    metadata, tensors = _verified(path)
    if expected_backbone is not None and metadata.backbone != expected_backbone:
        raise ArtifactError(
            f"{path} was fitted on backbone {metadata.backbone!r}, expected {expected_backbone!r}"
        )
    if expected_product_line is not None and metadata.product_line != expected_product_line:
        raise ArtifactError(
            f"{path} is a model for line {metadata.product_line!r}, "
            f"expected {expected_product_line!r}"
        )
    stored = sum(tensor.numel() for tensor in tensors.values())
    implied = metadata.heads * (metadata.embed_dim**2 + metadata.embed_dim * metadata.hidden_dim)
    if implied > stored:
        # crafted sizes must not make the loader allocate what the file cannot hold
        raise ArtifactError(
            f"{path}'s metadata implies at least {implied} weights, the file holds {stored}"
        )
    head = HeadEnsemble.empty(
        metadata.heads, metadata.embed_dim, metadata.hidden_dim, -metadata.margin
    )
    # shapes only: the metadata's sizes are not trusted with an allocation before they match
    expected = {name: tuple(tensor.shape) for name, tensor in head.state_dict().items()}
    term = metadata.global_gaussian
    if term is not None:
        expected[GAUSSIAN_PREFIX + "mean"] = (term.dims,)
        expected[GAUSSIAN_PREFIX + "whitening"] = (term.dims, term.dims)
    memory_term = metadata.patch_memory
    if memory_term is not None:
        if memory_term.dims != metadata.embed_dim:
            raise ArtifactError(
                f"{path}'s patch memory has {memory_term.dims} dimensions, its patch features "
                f"{metadata.embed_dim}"
            )
        expected[MEMORY_PREFIX + "bank"] = (memory_term.size, memory_term.dims)
    problems = [
        f"{name}: {tuple(tensors[name].shape) if name in tensors else 'missing'} != {shape}"
        for name, shape in expected.items()
        if name not in tensors or tuple(tensors[name].shape) != shape
    ]
    problems += [f"unexpected tensor {name}" for name in tensors if name not in expected]
    if problems:
        raise ArtifactError(f"{path} does not match its metadata: {'; '.join(problems[:4])}")
    head.load_state_dict(
        {
            name: t
            for name, t in tensors.items()
            if not name.startswith((GAUSSIAN_PREFIX, MEMORY_PREFIX))
        },
        strict=True,
    )
    gaussian = None
    if term is not None:
        mean = tensors[GAUSSIAN_PREFIX + "mean"]
        whitening = tensors[GAUSSIAN_PREFIX + "whitening"]
        if not (torch.isfinite(mean).all() and torch.isfinite(whitening).all()):
            raise ArtifactError(f"{path} has a global Gaussian with non-finite values")
        channels = sum(backbone_spec(metadata.backbone, metadata.layers).channels)
        if term.dims != channels:
            raise ArtifactError(
                f"{path}'s global Gaussian has {term.dims} dimensions, its layers {channels}"
            )
        gaussian = GlobalGaussian(mean, whitening, center=term.center, weight=term.weight)
    memory = None
    if memory_term is not None:
        bank = tensors[MEMORY_PREFIX + "bank"]
        if not torch.isfinite(bank).all():
            raise ArtifactError(f"{path} has a patch memory with non-finite values")
        memory = PatchMemory(bank, center=memory_term.center, weight=memory_term.weight)
    if backbone is None:
        backbone = build_backbone(
            metadata.backbone, layers=metadata.layers, weights_path=backbone_weights
        )
    elif (backbone.spec.name, backbone.spec.layers) != (metadata.backbone, metadata.layers):
        raise ArtifactError(
            f"{path} needs backbone {metadata.backbone} {metadata.layers}, got "
            f"{backbone.spec.name} {backbone.spec.layers}"
        )
    return AnomalyDetector(
        backbone=backbone,
        head=head,
        metadata=metadata,
        global_gaussian=gaussian,
        patch_memory=memory,
    ).to(device)
