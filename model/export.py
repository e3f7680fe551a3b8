"""Export of a fitted detector as one graph for an inference runtime (ONNX, OpenVINO IR).

The graph takes a normalised batch ``images`` ``[B, 3, S, S]`` (dynamic ``B``; each image
standardised to one grey level and contrast inside the graph when the model does so, and
scored at its second input scale too when it has one) and
returns ``scores`` ``[B]`` (raw image scores: the max of each patch score map, which includes the
patch memory's distance map when the model has one, plus the global Gaussian term when the
model has one) and ``heatmaps`` ``[B, S, S]`` (raw heatmaps: score maps upsampled and
blurred); calibration stays outside the graph, in the metadata written beside it, as do the
input's mean and std.

A metadata JSON file (:data:`METADATA_NAME`) goes with every export: the source artifact's
SHA-256 and format version, the detector's metadata, and the SHA-256 of every exported
file, so a loader can refuse a modified file and knows which artifact it came from.

ONNX is written by ``torch.onnx.export`` (the TorchScript-based exporter, opset 17);
OpenVINO IR is read from that ONNX file by OpenVINO's own reader and saved with float32
weights (``openvino.convert_model`` on the torch module is not used: it sends telemetry
unless ``CI`` is set, and it fails on in-place code). ``onnx`` and ``openvino`` are
imported only here, inside the functions, so the rest of ``model`` needs neither.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.artifact import load_artifact
from model.backbones import BACKBONE_SPECS
from model.detector import AnomalyDetector, heatmap_operators, merge_scales
from model.errors import ArtifactError, ModelError
from model.folding import GraphScorer
from model.metadata import ARTIFACT_FORMAT_VERSION, DetectorMetadata

EXPORT_FORMAT_NAME = "linewatch-exported"
EXPORT_FORMAT_VERSION = 1
METADATA_NAME = "export.json"
FORMATS = ("onnx", "openvino")
MODEL_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "heatmaps")
OPSET = 17


class ExportError(ModelError):
    """An export could not be written, or an exported model does not check out."""


class DetectorGraph(nn.Module):
    """The whole detector as one feed-forward graph: trunk, folded head, max, heatmap.

    With a patch memory the score map adds its distance map (from the unfolded patch
    features); with a second input scale the batch is also resized to it (two matrix
    products) and the two scales' maps are merged as the detector does; with a global
    Gaussian term the image score adds it, from the full-scale backbone maps.

    Args:
        detector: Fitted detector (its folded scorer is copied into a
            :class:`GraphScorer`).
    """

    def __init__(self, detector: AnomalyDetector) -> None:
        super().__init__()
        self.standardiser = detector.standardiser
        self.rescaler = detector.rescaler
        self.backbone = detector.backbone
        self.scorer = GraphScorer(detector.scorer)
        self.global_gaussian = detector.global_gaussian
        self.patch_memory = detector.patch_memory
        self.aggregator = detector.aggregator
        size = detector.metadata.image_size
        with torch.no_grad():
            maps = self.scorer(self.backbone(torch.zeros(1, 3, size, size)))
        operator_h, operator_w = heatmap_operators(tuple(maps.shape[-2:]), (size, size))
        self.register_buffer("operator_h", operator_h)  # [S, h]
        self.register_buffer("operator_w_t", operator_w.T.contiguous())  # [w, S]
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw image scores ``[B]`` and raw heatmaps ``[B, S, S]`` of a normalised batch."""
        if self.standardiser is not None:
            images = self.standardiser(images)
        batches = [images] if self.rescaler is None else [images, self.rescaler(images)]
        layer_maps = [self.backbone(scaled) for scaled in batches]
        scale_maps = [self.scorer(layers) for layers in layer_maps]
        if self.patch_memory is not None:
            scale_maps = [
                scale_map + self.patch_memory(self.aggregator(layers))
                for scale_map, layers in zip(scale_maps, layer_maps, strict=True)
            ]
        maps = merge_scales(scale_maps)
        scores = torch.amax(maps.flatten(1), dim=1)
        if self.global_gaussian is not None:
            scores = scores + self.global_gaussian(layer_maps[0])
        heatmaps = torch.matmul(torch.matmul(self.operator_h, maps), self.operator_w_t)
        return scores, heatmaps


@dataclass(frozen=True)
class ExportMetadata:
    """What :data:`METADATA_NAME` holds.

    Attributes:
        runtime_format: ``onnx`` or ``openvino``.
        artifact_sha256: SHA-256 of the source artifact file.
        artifact_format_version: The source artifact's format version.
        detector: The detector's metadata (version, line, image size, calibration, ...).
        mean: Input mean per channel, 0..1 scale.
        std: Input std per channel, 0..1 scale.
        files: SHA-256 of each exported file, by file name.
    """

    runtime_format: str
    artifact_sha256: str
    artifact_format_version: int
    detector: DetectorMetadata
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    files: dict[str, str]

    def to_json(self) -> str:
        """Serialises to JSON (with format name and version)."""
        return json.dumps(
            {
                "format": EXPORT_FORMAT_NAME,
                "format_version": EXPORT_FORMAT_VERSION,
                "runtime_format": self.runtime_format,
                "artifact_sha256": self.artifact_sha256,
                "artifact_format_version": self.artifact_format_version,
                "image_size": self.detector.image_size,
                "mean": list(self.mean),
                "std": list(self.std),
                "input_name": INPUT_NAME,
                "output_names": list(OUTPUT_NAMES),
                "calibration": json.loads(self.detector.to_json())["calibration"],
                "detector": json.loads(self.detector.to_json()),
                "files": self.files,
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ExportMetadata:
        """Parses :meth:`to_json`'s output.

        Raises:
            ExportError: Not an export metadata file of a readable version.
        """
        try:
            raw = json.loads(text)
            if raw.get("format") != EXPORT_FORMAT_NAME:
                raise ExportError(f"not a {EXPORT_FORMAT_NAME} metadata file")
            if raw.get("format_version") != EXPORT_FORMAT_VERSION:
                raise ExportError(
                    f"export format version {raw.get('format_version')!r}; this code reads "
                    f"{EXPORT_FORMAT_VERSION}"
                )
            return cls(
                runtime_format=str(raw["runtime_format"]),
                artifact_sha256=str(raw["artifact_sha256"]),
                artifact_format_version=int(raw["artifact_format_version"]),
                detector=DetectorMetadata.from_json(json.dumps(raw["detector"])),
                mean=tuple(float(v) for v in raw["mean"]),
                std=tuple(float(v) for v in raw["std"]),
                files={str(k): str(v) for k, v in raw["files"].items()},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ExportError(f"unreadable export metadata: {error}") from error


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _export_onnx(graph: DetectorGraph, path: Path, image_size: int) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it; fail with a clear message)
    except ImportError as error:
        raise ExportError(
            "exporting needs the 'onnx' package: pip install 'linewatch[runtimes]'"
        ) from error
    example = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer notes that Python-level shape checks become constants: intended, the
        # image size is fixed per model
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, "scores": {0: "batch"},
                          "heatmaps": {0: "batch"}},
        )


def _export_openvino(onnx_path: Path, xml_path: Path) -> None:
    try:
        import openvino
    except ImportError as error:
        raise ExportError(
            "the OpenVINO format needs the 'openvino' package: pip install 'linewatch[runtimes]'"
        ) from error
    model = openvino.Core().read_model(str(onnx_path))
    # float32 weights: OpenVINO compresses to float16 by default, which moves the scores
    openvino.save_model(model, str(xml_path), compress_to_fp16=False)


def export_detector(
    artifact: str | Path,
    out_dir: str | Path,
    runtime_format: str,
    *,
    detector: AnomalyDetector | None = None,
    replace: bool = True,
) -> ExportMetadata:
    """Exports an artifact's detector as one graph plus :data:`METADATA_NAME`.

    The files are written into a temporary folder beside ``out_dir`` that is renamed to
    ``out_dir`` at the end, so a reader never sees half an export; an existing ``out_dir``
    is replaced.

    Args:
        artifact: Verified safetensors artifact (checksum checked on load).
        out_dir: Folder to create with the exported files.
        runtime_format: ``onnx`` or ``openvino``.
        detector: The artifact's detector when already loaded (on the CPU), to skip a load.
        replace: Replace an existing ``out_dir``; when False and another process wrote
            ``out_dir`` meanwhile, that export is kept and this one dropped (a shared cache).

    Returns:
        The written metadata.

    Raises:
        ArtifactError: The artifact does not verify.
        ExportError: Unknown format, or the exporter failed.
    """
    if runtime_format not in FORMATS:
        raise ExportError(f"unknown export format {runtime_format!r}; one of {FORMATS}")
    artifact = Path(artifact)
    out_dir = Path(out_dir)
    if not artifact.is_file():
        raise ArtifactError(f"artifact {artifact} does not exist")
    artifact_sha = file_sha256(artifact)
    if detector is None:
        detector = load_artifact(artifact, device="cpu")
    elif detector.device.type != "cpu":
        raise ExportError("export a detector on the CPU")
    graph = DetectorGraph(detector)
    size = detector.metadata.image_size
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        onnx_path = work / "model.onnx"
        try:
            _export_onnx(graph, onnx_path, size)
            if runtime_format == "openvino":
                _export_openvino(onnx_path, work / "model.xml")
                onnx_path.unlink()
        except ExportError:
            raise
        except Exception as error:  # the exporters raise many types; name the artifact
            raise ExportError(
                f"exporting {artifact} to {runtime_format} failed: {error}"
            ) from error
        spec = BACKBONE_SPECS[detector.metadata.backbone]
        metadata = ExportMetadata(
            runtime_format=runtime_format,
            artifact_sha256=artifact_sha,
            artifact_format_version=ARTIFACT_FORMAT_VERSION,
            detector=detector.metadata,
            mean=tuple(spec.mean),
            std=tuple(spec.std),
            files={name: file_sha256(work / name) for name in MODEL_FILES[runtime_format]},
        )
        (work / METADATA_NAME).write_text(metadata.to_json())
        if out_dir.exists() and replace:
            shutil.rmtree(out_dir)
        try:
            work.rename(out_dir)
        except OSError:
            if replace or not out_dir.exists():
                raise
            return read_export(out_dir, artifact_sha)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return metadata


def read_export(folder: str | Path, artifact_sha256: str | None = None) -> ExportMetadata:
    """Reads an export's metadata and verifies every file it lists.

    Args:
        folder: An :func:`export_detector` output folder.
        artifact_sha256: When given, the artifact the export must come from.

    Returns:
        The verified metadata.

    Raises:
        ExportError: Missing metadata or file, unreadable metadata, a file whose SHA-256
            does not match (modified or corrupt), or an export of another artifact.
    """
    folder = Path(folder)
    try:
        metadata = ExportMetadata.from_json((folder / METADATA_NAME).read_text())
    except OSError as error:
        raise ExportError(f"{folder} has no readable {METADATA_NAME}: {error}") from error
    if artifact_sha256 is not None and metadata.artifact_sha256 != artifact_sha256:
        raise ExportError(
            f"{folder} was exported from artifact {metadata.artifact_sha256[:12]}, "
            f"not {artifact_sha256[:12]}"
        )
    expected = set(MODEL_FILES.get(metadata.runtime_format, ()))
    if set(metadata.files) != expected:
        raise ExportError(
            f"{folder} lists files {sorted(metadata.files)}, expected {sorted(expected)}"
        )
    for name, digest in metadata.files.items():
        path = folder / name
        if not path.is_file():
            raise ExportError(f"exported file {path} is missing")
        if file_sha256(path) != digest:
            raise ExportError(
                f"exported file {path} failed its checksum (modified or corrupt); refusing it. "
                f"Delete {folder} to export the artifact again"
            )
    return metadata


def describe(metadata: ExportMetadata) -> dict[str, Any]:
    """A short summary for the CLI."""
    return {
        "format": metadata.runtime_format,
        "version": metadata.detector.version,
        "product_line": metadata.detector.product_line,
        "image_size": metadata.detector.image_size,
        "artifact_sha256": metadata.artifact_sha256,
        "files": metadata.files,
    }


__all__ = [
    "EXPORT_FORMAT_VERSION",
    "FORMATS",
    "METADATA_NAME",
    "ArtifactError",
    "DetectorGraph",
    "ExportError",
    "ExportMetadata",
    "describe",
    "export_detector",
    "file_sha256",
    "read_export",
]
