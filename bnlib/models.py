"""Small networks for the chapters, each with a ``norm=`` switch and a placement option.

``norm`` picks the normalization layer placed after each hidden linear or conv layer:

* ``None``: none;
* ``"bn"``: :class:`bnlib.torch_bn.BatchNorm` (this book's implementation);
* ``"torch.nn"``: ``torch.nn.BatchNorm1d/2d`` (PyTorch's own, for comparisons);
* ``"gn"``: ``torch.nn.GroupNorm`` with ``min(GN_GROUPS, C)`` groups (fewer if that does not
  divide ``C``), statistics per example over a group of channels;
* ``"ln"``: layer norm, ``torch.nn.GroupNorm`` with one group: each example normalized over
  all its channels (and positions), with per-channel scale and shift.

``placement="before"`` puts BN before the nonlinearity (Linear -> BN -> act, as in the
paper); ``"after"`` puts it after (Linear -> act -> BN). When BN directly follows a layer,
that layer's bias is dropped: BN subtracts the mean, so the bias would have no effect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from bnlib.torch_bn import BatchNorm

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
NORMS = (None, "bn", "torch.nn", "gn", "ln")
GN_GROUPS = 4  # groups of "gn" (Wu & He use 32 groups of wide layers; our layers are narrow)
PLACEMENTS = ("before", "after")


def norm_layer(norm: str | None, num_features: int, spatial: bool) -> nn.Module | None:
    """The normalization layer for ``num_features`` channels (``spatial``: for conv maps)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm is None:
        return None
    if norm == "bn":
        return BatchNorm(num_features)
    if norm in ("gn", "ln"):
        groups = 1 if norm == "ln" else min(GN_GROUPS, num_features)
        while num_features % groups:
            groups -= 1
        return nn.GroupNorm(groups, num_features)
    return nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)


def _block(
    layer: type[nn.Module], n_in: int, n_out: int, activation: str, norm: str | None,
    placement: str, spatial: bool, **layer_kw,
) -> list[nn.Module]:
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    bn = norm_layer(norm, n_out, spatial)
    # GN/LN average over several channels, so a per-channel bias before them is not cancelled.
    bias = bn is None or placement == "after" or norm in ("gn", "ln")
    body: list[nn.Module] = [layer(n_in, n_out, bias=bias, **layer_kw)]
    act = ACTIVATIONS[activation]()
    if bn is None:
        return body + [act]
    return body + ([bn, act] if placement == "before" else [act, bn])


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    norm: str | None = None,
    placement: str = "before",
) -> nn.Sequential:
    """A fully connected network, ``sizes = [n_in, hidden..., n_out]``.

    Input ``(N, n_in)`` (a ``(N, 28, 28)`` image batch is flattened first); output the logits
    ``(N, n_out)``. Every hidden layer gets ``norm`` and ``activation``; the output layer
    gets neither.
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output size, got {sizes}")
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += _block(nn.Linear, n_in, n_out, activation, norm, placement, spatial=False)
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def cnn(
    channels: Sequence[int] = (16, 32),
    num_classes: int = 10,
    in_channels: int = 1,
    activation: str = "relu",
    norm: str | None = None,
    placement: str = "before",
) -> nn.Sequential:
    """A small CNN for 28x28 images: per stage conv3x3 -> norm/act -> 2x2 max-pool.

    Input ``(N, in_channels, 28, 28)`` (or ``(N, 28, 28)``, given a channel axis);
    output logits ``(N, num_classes)``. Global average pooling feeds the classifier.
    """
    layers: list[nn.Module] = [_ImageInput(in_channels)]
    n_in = in_channels
    for n_out in channels:
        layers += _block(nn.Conv2d, n_in, n_out, activation, norm, placement, spatial=True,
                         kernel_size=3, padding=1)
        layers.append(nn.MaxPool2d(2))
        n_in = n_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n_in, num_classes)]
    return nn.Sequential(*layers)


def insert_after(
    model: nn.Sequential, kind: type[nn.Module] | tuple[type[nn.Module], ...],
    make: Callable[[nn.Module], nn.Module],
) -> nn.Sequential:
    """A new ``nn.Sequential``: ``model``'s layers with ``make(layer)`` after each ``kind`` layer.

    The layers are shared, not copied (the result trains the same parameters); e.g.
    ``insert_after(mlp(sizes, norm="bn"), BatchNorm, lambda bn: NoisyShift(bn.num_features))``.
    """
    layers: list[nn.Module] = []
    for layer in model:
        layers.append(layer)
        if isinstance(layer, kind):
            layers.append(make(layer))
    return nn.Sequential(*layers)


def replace_layers(
    model: nn.Sequential, kind: type[nn.Module] | tuple[type[nn.Module], ...],
    make: Callable[[nn.Module], nn.Module],
) -> nn.Sequential:
    """A new ``nn.Sequential``: ``model``'s layers with each ``kind`` layer replaced by
    ``make(layer)``; the other layers are shared, not copied (as in :func:`insert_after`).

    E.g. ``replace_layers(cnn(channels, norm="bn"), BatchNorm, lambda bn: GhostBatchNorm(
    bn.num_features, 32))``: the same network with ghost BN in place of BN.
    """
    return nn.Sequential(*[make(layer) if isinstance(layer, kind) else layer for layer in model])


def init_normal_(model: nn.Module, std: float) -> nn.Module:
    """Draw every ``nn.Linear``/``nn.Conv2d`` weight from ``N(0, std^2)`` and zero its bias.

    The fixed-scale initialization of the paper-reproduction chapter (e.g. ``std=1``, or a sweep
    over ``std``), in place of PyTorch's fan-in scaled default; normalization layers keep
    ``weight=1, bias=0``. Uses the global torch RNG; returns ``model``.
    """
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


class _ImageInput(nn.Module):
    """Accept ``(N, H, W)`` or ``(N, C, H, W)`` images; add the channel axis when missing."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels

    def forward(self, x):
        return x.unsqueeze(1) if x.dim() == 3 else x
