"""Residual blocks that train with and without BN: the chapter "Normalization without the batch".

Every block maps a residual stream ``x`` ``(N, C, H, W)`` to ``x + branch(x)``, same shape,
with the pre-activation order of He et al. (2016): the branch is two 3x3 convolutions, each
preceded by a ReLU (and, in :class:`PreActBlock` with BN, by a BN layer). They differ only in
how the branch is kept from blowing the stream up at initialization:

* :class:`PreActBlock` with ``norm=True``: BN in the branch, so the branch adds variance
  about 1 whatever the stream's variance (De & Smith, 2020: BN biases the block towards the
  identity as depth grows); with ``norm=False``, nothing: the variance doubles per block.
* :class:`SkipInitBlock`: no normalization, a learned scalar ``alpha = 0`` on the branch
  (De & Smith, 2020): every block is exactly the identity at initialization.
* :class:`FixupBlock`: no normalization; the last conv of the branch starts at zero, the
  first is scaled down by :func:`fixup_scale`, with scalar biases and a scalar multiplier
  (Zhang, Dauphin & Ma, 2019).
* :class:`NFBlock`: a normalizer-free block (Brock, De & Smith, 2021): the branch sees
  ``x / beta``, where ``beta**2`` is the stream's expected variance, its convolutions use
  scaled weight standardization, and its output is multiplied by ``alpha``, so the variance
  grows by exactly ``alpha**2`` per block at initialization.

:class:`ResidualCNN` stacks one kind of block into a small image classifier, and its
:meth:`~ResidualCNN.stream` returns the residual stream after every block (the
signal-propagation plot).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bnlib.batch_free import ScaledWSConv2d, relu_gain

KINDS = ("bn", "none", "skipinit", "fixup", "nf")


def _conv3x3(width: int) -> nn.Conv2d:
    """A bias-free 3x3 conv, ``width -> width`` channels, He-initialized for a ReLU input."""
    conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    return conv


class PreActBlock(nn.Module):
    """``x + conv(relu(bn(conv(relu(bn(x))))))``; without ``norm``, the same minus the BNs.

    Input and output ``(N, width, H, W)``. The convs are He-initialized (variance
    ``2 / fan_in``), so each ``relu -> conv`` keeps the second moment of a zero-mean input.
    """

    def __init__(self, width: int, norm: bool = True) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(width) if norm else nn.Identity()
        self.bn2 = nn.BatchNorm2d(width) if norm else nn.Identity()
        self.conv1, self.conv2 = _conv3x3(width), _conv3x3(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(torch.relu(self.bn1(x)))
        return x + self.conv2(torch.relu(self.bn2(h)))


class SkipInitBlock(nn.Module):
    """``x + alpha * conv(relu(conv(relu(x))))`` with a learned scalar ``alpha``, 0 at start.

    Input and output ``(N, width, H, W)``. With ``alpha = 0`` the block is exactly the
    identity (De & Smith, 2020); the convs are He-initialized as in :class:`PreActBlock`.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv3x3(width), _conv3x3(width)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.conv2(torch.relu(self.conv1(torch.relu(x))))


def fixup_scale(num_blocks: int, layers_per_branch: int = 2) -> float:
    """Fixup's factor for the branch's inner layers: ``L ** (-1 / (2 m - 2))``.

    ``L = num_blocks`` residual branches of ``m = layers_per_branch`` layers each (Zhang,
    Dauphin & Ma, 2019, their rule 2): so that the whole network's output changes by
    ``O(1)`` after one SGD step whatever ``L``. For ``m = 2``, ``1 / sqrt(L)``.
    """
    if num_blocks < 1 or layers_per_branch < 2:
        raise ValueError(f"need num_blocks >= 1 and layers_per_branch >= 2, got "
                         f"{num_blocks} and {layers_per_branch}")
    return num_blocks ** (-1.0 / (2 * layers_per_branch - 2))


class FixupBlock(nn.Module):
    """A Fixup block (Zhang, Dauphin & Ma, 2019), pre-activation order, no normalization.

    ``x + scale * conv2(relu(conv1(relu(x) + b1a) + b1b) + b2a) + b2b``, input and output
    ``(N, width, H, W)``. At initialization ``conv1`` is He-initialized and then multiplied
    by :func:`fixup_scale` of ``num_blocks`` (the number of blocks of the whole network),
    ``conv2`` is zero, the four scalar biases are 0 and the scalar multiplier ``scale`` is 1:
    the block is exactly the identity, yet ``conv2`` gets a nonzero gradient at once (and
    ``conv1`` one as soon as ``conv2`` has moved).
    """

    def __init__(self, width: int, num_blocks: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv3x3(width), _conv3x3(width)
        with torch.no_grad():
            self.conv1.weight.mul_(fixup_scale(num_blocks))
        nn.init.zeros_(self.conv2.weight)
        self.b1a, self.b1b, self.b2a, self.b2b = (nn.Parameter(torch.zeros(())) for _ in range(4))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(torch.relu(x) + self.b1a) + self.b1b)
        return x + self.scale * self.conv2(h + self.b2a) + self.b2b


class NFBlock(nn.Module):
    """A normalizer-free block (Brock, De & Smith, 2021): ``x + alpha * f(x / beta)``.

    ``f(u) = conv2(relu(conv1(g * relu(u))))`` with ``g = relu_gain()`` and both convs
    :class:`~bnlib.batch_free.ScaledWSConv2d` (``conv1`` with ``gamma=g``). Input and output
    ``(N, width, H, W)``. If ``x`` has variance ``beta**2`` (independent values), ``u`` has
    variance 1, ``g * relu(u)`` and ``relu(conv1(...))`` have variance about 1, and so does
    ``f``: the block's output has variance ``beta**2 + alpha**2``, the next block's
    ``beta**2``. ``alpha`` and ``beta`` are fixed numbers, not learned.
    """

    def __init__(self, width: int, beta: float, alpha: float = 0.2) -> None:
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.beta, self.alpha = beta, alpha
        self.conv1 = ScaledWSConv2d(width, width, 3, padding=1, gamma=relu_gain())
        self.conv2 = ScaledWSConv2d(width, width, 3, padding=1)

    def extra_repr(self) -> str:
        return f"beta={self.beta:.4g}, alpha={self.alpha:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(relu_gain() * torch.relu(x / self.beta))
        return x + self.alpha * self.conv2(torch.relu(h))


class ResidualCNN(nn.Module):
    """A small residual classifier: stem conv, ``depth`` blocks of one kind, pooled linear head.

    Args:
        kind: one of ``KINDS``: ``"bn"`` and ``"none"`` (:class:`PreActBlock` with and
            without BN), ``"skipinit"``, ``"fixup"``, ``"nf"``.
        depth: the number of residual blocks ``L``.
        width: channels of the residual stream.
        num_classes, in_channels: of the data.
        alpha: the NF blocks' branch scale (only for ``"nf"``).

    Input ``(N, in_channels, H, W)`` or ``(N, H, W)``; output logits ``(N, num_classes)``.
    The stem is a stride-2 3x3 conv (a :class:`~bnlib.batch_free.ScaledWSConv2d` for ``"nf"``,
    whose ``k``-th block then gets ``beta = sqrt(1 + k alpha**2)``, the expected standard
    deviation for a stem output of variance 1). The head is ``relu -> global average pool ->
    linear`` (``bn -> relu -> ...`` for ``"bn"``, as a pre-activation ResNet ends); for
    ``"fixup"`` and ``"skipinit"`` the linear layer starts at zero, as Fixup prescribes.
    """

    def __init__(self, kind: str, depth: int, width: int = 16, num_classes: int = 10,
                 in_channels: int = 1, alpha: float = 0.2) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if depth < 1:
            raise ValueError(f"depth must be positive, got {depth}")
        self.kind = kind
        stem = ScaledWSConv2d if kind == "nf" else nn.Conv2d
        self.stem = stem(in_channels, width, 3, stride=2, padding=1)
        blocks: list[nn.Module] = []
        for k in range(depth):
            if kind in ("bn", "none"):
                blocks.append(PreActBlock(width, norm=kind == "bn"))
            elif kind == "skipinit":
                blocks.append(SkipInitBlock(width))
            elif kind == "fixup":
                blocks.append(FixupBlock(width, depth))
            else:
                blocks.append(NFBlock(width, beta=math.sqrt(1 + k * alpha**2), alpha=alpha))
        self.blocks = nn.ModuleList(blocks)
        self.head_norm = nn.BatchNorm2d(width) if kind == "bn" else nn.Identity()
        self.fc = nn.Linear(width, num_classes)
        if kind in ("fixup", "skipinit"):
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def stream(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after the stem and after each block: ``depth + 1`` tensors
        ``(N, width, H', W')``."""
        h = self.stem(x.unsqueeze(1) if x.dim() == 3 else x)
        out = [h]
        for block in self.blocks:
            h = block(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stream(x)[-1]
        h = torch.relu(self.head_norm(h)).mean(dim=(2, 3))
        return self.fc(h)
