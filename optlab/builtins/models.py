"""Built-in models: ``fn(task_info, **options) -> nn.Module``.

Every model accepts ``decouple=True`` to weight-normalize its conv/linear layers
(``optlab.decouple``), giving channel-wise scales to BN-free variants.
"""

from __future__ import annotations

import functools

import torch.nn.functional as F
from torch import nn

from optlab.optim.modeltools import decouple as _decouple


def _with_decouple(build):
    @functools.wraps(build)
    def fn(task_info, decouple: bool = False, **options):
        model = build(task_info, **options)
        return _decouple(model) if decouple else model

    return fn


def _flat_dim(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@_with_decouple
def mlp_bn(info, width: int = 128, depth: int = 2):
    """MLP with BatchNorm1d after every hidden linear layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = _flat_dim(info["input_shape"])
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, info["num_classes"]))


def _norm2d(c, bn):
    return nn.BatchNorm2d(c) if bn else nn.Identity()


@_with_decouple
def cnn_bn(info, width: int = 32, bn: bool = True):
    """Small 2-D CNN (three 3x3 conv-BN-ReLU blocks, global pooling) for 8x8 digits and similar."""
    c = info["input_shape"][0]
    w = width
    return nn.Sequential(
        nn.Conv2d(c, w, 3, padding=1, bias=not bn),
        _norm2d(w, bn),
        nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=not bn),
        _norm2d(2 * w, bn),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=not bn),
        _norm2d(2 * w, bn),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * w, info["num_classes"]),
    )


@_with_decouple
def cnn1d(info, width: int = 32, bn: bool = True):
    """Small 1-D CNN for MNIST-1D: three conv-BN-ReLU blocks, global pooling, linear head."""
    c, w = info["input_shape"][0], width
    norm = (lambda k: nn.BatchNorm1d(k)) if bn else (lambda k: nn.Identity())
    return nn.Sequential(
        nn.Conv1d(c, w, 5, padding=2, bias=not bn),
        norm(w),
        nn.ReLU(),
        nn.Conv1d(w, 2 * w, 3, stride=2, padding=1, bias=not bn),
        norm(2 * w),
        nn.ReLU(),
        nn.Conv1d(2 * w, 2 * w, 3, stride=2, padding=1, bias=not bn),
        norm(2 * w),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(2 * w, info["num_classes"]),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, cout, stride=1, bn=True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)
        self.bn1 = _norm2d(cout, bn)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not bn)
        self.bn2 = _norm2d(cout, bn)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # projection shortcut (option B)
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not bn), _norm2d(cout, bn))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs. ``stages``: blocks per stage; ``widths``: channels per stage."""

    def __init__(self, info, stages, widths, stem=16, bn=True):
        super().__init__()
        c = info["input_shape"][0]
        self.conv1 = nn.Conv2d(c, stem, 3, 1, 1, bias=not bn)
        self.bn1 = _norm2d(stem, bn)
        layers, cin = [], stem
        for i, (n, w) in enumerate(zip(stages, widths)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, bn))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, info["num_classes"])

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _resnet(depth):
    n = (depth - 2) // 6

    @_with_decouple
    def build(info, width: int = 16, bn: bool = True):
        return CifarResNet(info, [n] * 3, [width, 2 * width, 4 * width], stem=width, bn=bn)

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, 3 stages of {n} basic blocks)."
    return build


@_with_decouple
def resnet18(info, width: int = 64, bn: bool = True):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool; 4 stages of 2 basic blocks)."""
    return CifarResNet(info, [2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width], stem=width, bn=bn)


VGG_CFG: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _vgg(depth, bn):
    @_with_decouple
    def build(info, width_mult: float = 1.0):
        layers: list[nn.Module] = []
        c = info["input_shape"][0]
        for v in VGG_CFG[depth]:
            if isinstance(v, str):  # "M"
                layers.append(nn.MaxPool2d(2))
                continue
            w = max(1, int(v * width_mult))
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=not bn), *([nn.BatchNorm2d(w)] if bn else []), nn.ReLU()]
            c = w
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, info["num_classes"]))

    build.__doc__ = f"VGG-{depth}{' with BatchNorm' if bn else ''} for 32x32 inputs (one linear head)."
    return build


MODELS = {
    "mlp-bn": mlp_bn,
    "cnn-bn": cnn_bn,
    "cnn1d": cnn1d,
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
    "resnet18": resnet18,
    "vgg11": _vgg(11, False),
    "vgg11-bn": _vgg(11, True),
    "vgg16": _vgg(16, False),
    "vgg16-bn": _vgg(16, True),
}
