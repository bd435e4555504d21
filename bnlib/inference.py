"""BN at inference time: running statistics, PreciseBN, frozen statistics, folding.

The running-statistics chapter's tools: :func:`bn_layers` finds the BN layers of a model,
:func:`precise_bn` recomputes their running statistics as exact averages over many batches,
and :func:`frozen_bn_stats` runs a model in training mode with the statistics frozen. The
CNN chapter's :func:`fold_bn_into_conv` and :func:`fold_model` fold eval-mode BN into the
convolution before it. All accept this book's :class:`bnlib.torch_bn.BatchNorm` and
``torch.nn.BatchNorm1d/2d/3d`` alike.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# --------------------------------------------------------------------------- running statistics

BN_TYPES = (_BatchNorm,)  # torch's BatchNorm1d/2d/3d, SyncBatchNorm, and this book's layers


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The BN layers of ``model`` that keep running statistics, in ``model.modules()`` order.

    Both this book's :class:`BatchNorm` and ``torch.nn.BatchNorm1d/2d/3d`` count; layers
    built with ``track_running_stats=False`` have no running statistics and are left out.
    """
    return [m for m in model.modules() if isinstance(m, BN_TYPES) and m.track_running_stats]


@torch.no_grad()
def precise_bn(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
    num_batches: int | None = None,
) -> int:
    """Recompute every BN layer's running statistics with the weights frozen (PreciseBN).

    Wu & Johnson (2021): after (or during) training, replace the exponential moving averages
    by true averages over many batches, all computed with the *current* weights. Every BN
    layer is reset and switched to ``momentum=None`` (a cumulative average), the model runs
    forward in train mode under ``no_grad`` on the first ``num_batches`` of ``batches`` (all
    of them if ``None``), then each layer's momentum and every module's mode are restored.
    Afterwards ``running_mean`` is the mean of the batch means and ``running_var`` the mean
    of the unbiased batch variances, ``m/(m-1)`` times the mean batch variance (Algorithm 2
    of Ioffe & Szegedy, 2015); ``num_batches_tracked`` counts the batches used.

    Args:
        model: any module holding BN layers (see :func:`bn_layers`); its parameters are not
            changed. The whole model is in train mode during the pass (dropout too), as in
            training.
        batches: input batches ``(N, ...)`` as the model takes them, or tuples whose first
            item is the input (e.g. ``(x, y)``); moved to the device of the BN buffers.
            Use batches of the training batch size, so every example counts the same.
        num_batches: how many batches to use; ``None`` uses them all.
    Returns:
        the number of batches used. If the pass fails, or ``batches`` is empty, the running
        statistics are left as they were and the error is raised.
    """
    layers = bn_layers(model)
    if not layers:
        raise ValueError("precise_bn: the model has no BN layer with running statistics")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be positive or None, got {num_batches}")
    saved = [(bn.momentum, {k: b.clone() for k, b in bn.named_buffers()}) for bn in layers]
    modes = [(m, m.training) for m in model.modules()]
    dev = layers[0].running_mean.device
    used = 0
    try:
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for batch in itertools.islice(batches, num_batches):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(torch.as_tensor(x).to(dev))
            used += 1
        if used == 0:
            raise ValueError("precise_bn: got no batches to average over")
    except BaseException:
        for bn, (_, buffers) in zip(layers, saved):
            for k, b in bn.named_buffers():
                b.copy_(buffers[k])
        raise
    finally:
        for bn, (momentum, _) in zip(layers, saved):
            bn.momentum = momentum
        for m, mode in modes:
            m.training = mode
    return used


def _normalize_with_running_stats(module: nn.Module, args: tuple) -> None:
    module.train(False)


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every BN layer normalizes with its running statistics, as in eval mode.

    For fine-tuning with "frozen" BN: even while ``model`` is in train mode (a training
    loop calls ``model.train()``), each layer of :func:`bn_layers` switches itself to eval
    mode before every forward call, so its running statistics neither normalize with batch
    statistics nor change; its ``weight`` and ``bias`` still get gradients. On exit the
    hooks are removed and every BN layer gets back the mode it had on entry. Yields ``model``.
    """
    layers = bn_layers(model)
    modes = [bn.training for bn in layers]
    handles = [bn.register_forward_pre_hook(_normalize_with_running_stats) for bn in layers]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for bn, mode in zip(layers, modes):
            bn.train(mode)


# --------------------------------------------------------------------------- folding for inference

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_foldable(conv: nn.Module, bn: nn.Module, where: str = "") -> None:
    """Raise a clear error unless ``bn`` (an eval-mode BN) can be folded into ``conv``."""
    if not isinstance(conv, CONV_TYPES):
        raise TypeError(
            f"expected nn.Conv1d/2d/3d{where}, got {type(conv).__name__} (a transposed "
            "convolution keeps its output channels on dim 1 of its weight; not supported)"
        )
    if not isinstance(bn, BN_TYPES):
        raise TypeError(
            f"expected bnlib's BatchNorm or torch.nn.BatchNorm1d/2d/3d{where}, "
            f"got {type(bn).__name__}"
        )
    if bn.training:
        raise ValueError(
            f"cannot fold a BN layer in training mode{where}: it normalizes with each batch's "
            "own statistics, which no fixed convolution can reproduce; call model.eval() first"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"cannot fold a BN layer without running statistics{where} "
            "(track_running_stats=False): it normalizes with batch statistics even in eval mode"
        )
    if bn.num_features != conv.out_channels:
        raise ValueError(
            f"the convolution has {conv.out_channels} output channels but the BN layer "
            f"normalizes {bn.num_features}{where}"
        )


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Module, bn: nn.Module) -> nn.Module:
    r"""A new convolution computing ``bn(conv(x))`` for an eval-mode ``bn``, in one layer.

    With :math:`s = \gamma / \sqrt{\text{running\_var} + \epsilon}` per output channel:
    ``weight' = weight * s`` (output channel ``c`` scaled by ``s[c]``) and
    ``bias' = (bias - running_mean) * s + beta``; a missing conv bias counts as zeros, a BN
    without affine parameters as ``gamma = 1``, ``beta = 0``. Computed in float64, stored in
    ``conv``'s dtype on its device; the new layer always has a bias. ``conv`` and ``bn`` are
    not changed; stride, padding, dilation and groups are kept.

    Args:
        conv: ``nn.Conv1d/2d/3d`` with ``C`` output channels.
        bn: bnlib's :class:`BatchNorm` or ``torch.nn.BatchNorm1d/2d/3d`` over ``C`` channels,
            in eval mode and with running statistics (otherwise ``ValueError``).
    """
    _check_foldable(conv, bn)
    w = conv.weight.double()
    ones = torch.ones(conv.out_channels, dtype=torch.float64, device=w.device)
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(ones)
    gamma = bn.weight.double() if bn.weight is not None else ones
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(ones)
    scale = gamma * torch.rsqrt(bn.running_var.double() + bn.eps)
    folded = copy.deepcopy(conv)
    dtype = conv.weight.dtype
    folded.weight = nn.Parameter((w * scale.reshape(-1, *[1] * (w.dim() - 1))).to(dtype))
    folded.bias = nn.Parameter(((b - bn.running_mean.double()) * scale + beta).to(dtype))
    return folded


def fold_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference with every conv -> BN pair folded into one conv.

    Inside every ``nn.Sequential`` of ``model`` (nested ones too), each convolution directly
    followed by a BN layer (see :func:`fold_bn_into_conv`) becomes the folded convolution
    and the BN layer becomes ``nn.Identity()``, so the layer indices stay as they were. BN
    layers after anything else are kept. ``model`` itself is not changed. Every BN layer
    folded must be in eval mode and have running statistics; otherwise ``ValueError`` (naming
    the layer) and nothing is returned. In eval mode the copy computes what ``model`` does.
    """
    folded = copy.deepcopy(model)
    for prefix, seq in list(folded.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, CONV_TYPES) and isinstance(bn, BN_TYPES):
                where = f" (layer '{prefix + '.' if prefix else ''}{bn_name}')"
                _check_foldable(conv, bn, where)
                setattr(seq, name, fold_bn_into_conv(conv, bn))
                setattr(seq, bn_name, nn.Identity())
    return folded
