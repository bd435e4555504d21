"""Batch Normalization in PyTorch, with the backward pass written by hand.

:class:`BatchNormFunction` is an ``autograd.Function`` whose ``backward`` is the closed
form derived in the BN-algorithm chapter; autograd never looks inside its forward.
:class:`BatchNorm` wraps it in an ``nn.Module`` that is a drop-in for
``torch.nn.BatchNorm1d/2d/3d``: it is built on torch's own base class, so it has the same
constructor, parameters, buffers, ``state_dict`` and ``reset_*`` methods, and torch's
utilities recognise it; it computes the same numbers, first and second derivatives
included. :func:`normalize_batch` is the Function as a plain function (it alone takes
``eps = 0``, for exact identities); :func:`to_bnlib` and :func:`to_torch` swap the BN layers
of any model between torch's classes and this one. The same code runs on CPU and CUDA.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from bnlib.reference import running_update


def reduce_dims(x: torch.Tensor) -> list[int]:
    """The dimensions BN averages over: every dimension but the channel dimension 1."""
    return [0, *range(2, x.dim())]


def per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape ``(C,)`` to ``(1, C, 1, ...)`` so it broadcasts against ``ndim``-D input."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def stats_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics are kept in float32 for half and bfloat16 input, else in ``x``'s dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def channel_matrix(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A copy-free view of ``x`` in which the per-channel sums are fast reductions.

    Contiguous ``(N, C, *spatial)`` becomes ``(N, C, L)`` reduced over dims ``(0, 2)``;
    channels-last input (and 2-D ``(N, C)``) becomes the row-major matrix ``(M, C)``
    reduced over dim 0. Anything else is left as it is, reduced over every dim but 1.
    Summing in the memory order matters on CPU: reducing a channels-last tensor over
    ``(0, 2, 3)`` as if it were NCHW is several times slower.
    """
    if x.dim() == 2:
        return x, (0,)
    if x.is_contiguous():
        return x.reshape(x.shape[0], x.shape[1], -1), (0, 2)
    cl = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    if x.dim() in (4, 5) and x.is_contiguous(memory_format=cl):
        return x.movedim(1, -1).reshape(-1, x.shape[1]), (0,)
    return x, tuple(reduce_dims(x))


def channel_sum(x: torch.Tensor) -> torch.Tensor:
    """``sum over all dims but 1`` of ``x`` ``(N, C, *spatial)``: shape ``(C,)``."""
    v, dims = channel_matrix(x)
    return v.sum(dim=dims)


def channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-channel ``sum(a * b)`` of two ``(N, C, *spatial)`` tensors: shape ``(C,)``.

    Uses ``torch.linalg.vecdot`` when both share a layout, so no ``a * b`` temporary is
    written; falls back to ``(a * b)`` summed over the channel-free dims otherwise.
    """
    if torch.compiler.is_compiling():  # Inductor fuses the product into the sum itself
        return (a * b).sum(dim=reduce_dims(a))
    va, dims = channel_matrix(a)
    vb, dims_b = channel_matrix(b)
    if va.shape != vb.shape or dims != dims_b or va.dim() > 3:  # layouts differ
        return (a * b).sum(dim=reduce_dims(a))
    if dims == (0,):  # (M, C): a dot product down each column
        return torch.linalg.vecdot(va, vb, dim=0)
    return torch.linalg.vecdot(va, vb, dim=2).sum(dim=0)  # (N, C, L)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode BN with batch statistics and a hand-derived backward.

    ``forward(x, weight, bias, eps) -> (y, mean, var)`` with ``x`` of shape
    ``(N, C, *spatial)``, ``weight`` and ``bias`` of shape ``(C,)``; ``mean`` and the biased
    ``var`` are ``(C,)`` in float32 for half input, returned so the caller can update the
    running averages, and carry no gradient. ``y`` keeps ``x``'s memory layout. ``eps >= 0``
    (``eps = 0``: see :func:`normalize_batch`). ``x`` must not be empty.

    Written for speed as well as clarity: every line below is one pass over the tensor, and
    the code makes as few as it can (forward: 5 reads and 2 writes; backward: 6 reads and
    2 writes), because BN is memory-bound. The statistics are still exact two-pass ones.

    Second derivatives: ``d``, ``c`` and ``inv_std`` are computed in ``forward``, where
    autograd does not look, so a graph of the fast backward would treat them as constants
    and give wrong second derivatives. When such a graph is asked for
    (``create_graph=True``), ``backward`` therefore runs :func:`differentiable_backward`,
    the same closed form recomputed from the saved input ``x`` with ordinary tensor
    operations, which autograd records and differentiates. The plain backward never reads
    ``x``: saving it costs no time, only the memory of keeping ``x`` alive until then.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        nd = x.dim()
        xs = x.to(stats_dtype(x))
        m = xs.numel() // xs.shape[1]
        # Corrected two-pass statistics (Chan, Golub & LeVeque), never E[x^2] - E[x]^2:
        # centre on the mean, then correct the mean by the residual mean c of the centred
        # values d, which removes the rounding error of the first pass. d itself is kept
        # uncorrected (d - c is never written out): c is folded into the per-channel shift.
        mean = channel_sum(xs) / m
        d = xs - per_channel(mean, nd)
        c = channel_sum(d) / m
        var = (channel_dot(d, d) / m - c.square()).clamp_min(0)
        inv_std = torch.rsqrt(var + eps)
        scale = weight.to(xs.dtype) * inv_std
        shift = bias.to(xs.dtype) - c * scale  # y = (d - c) * scale + bias
        y = torch.addcmul(per_channel(shift, nd), d, per_channel(scale, nd))
        ctx.save_for_backward(x, d, c, inv_std, weight)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean + c, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        # d = x - mean + c was saved, not x_hat: no extra full-size write in the forward.
        x, d, c, inv_std, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: this backward will be differentiated
            return (*differentiable_backward(dy, x, weight, ctx.eps), None)
        nd = dy.dim()
        g = dy.to(d.dtype)
        m = g.numel() // g.shape[1]
        dbeta = channel_sum(g)
        dgamma = (channel_dot(g, d) - c * dbeta) * inv_std  # sum(dy * x_hat)
        # dx = gamma * inv_std / m * (m dy - dbeta - x_hat dgamma), as dy*k1 + d*k2 + k3
        k1 = weight.to(d.dtype) * inv_std
        k2 = -k1 * inv_std * dgamma / m
        k3 = -k1 * dbeta / m - k2 * c
        dx = torch.addcmul(per_channel(k3, nd), d, per_channel(k2, nd))
        dx.addcmul_(g, per_channel(k1, nd))
        return dx.to(dy.dtype), dgamma.to(weight.dtype), dbeta.to(weight.dtype), None


def differentiable_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The backward of :class:`BatchNormFunction` as operations autograd can differentiate.

    The closed form of the BN-algorithm chapter, with the statistics recomputed from ``x``:

    .. math:: \frac{\partial L}{\partial x} = \frac{\gamma}{m \sigma}\Big(m\, dy
              - \textstyle\sum dy - \hat x \sum dy\, \hat x\Big)

    Run under ``create_graph=True`` it is recorded like any other computation, so autograd
    gets second derivatives through ``x``, ``weight`` and ``dy`` (gradient penalties,
    Hessian-vector products). It makes extra passes over ``x``; the plain backward does not
    use it. Inputs: ``dy`` and ``x`` ``(N, C, *spatial)``, ``weight`` ``(C,)``. Returns
    ``(dx, dweight, dbias)`` in the dtypes of ``dy`` and ``weight``.
    """
    nd, dims = x.dim(), reduce_dims(x)
    xs, g = x.to(stats_dtype(x)), dy.to(stats_dtype(x))
    m = xs.numel() // xs.shape[1]
    var, mean = torch.var_mean(xs, dim=dims, correction=0)
    inv_std = torch.rsqrt(var + eps)
    x_hat = (xs - per_channel(mean, nd)) * per_channel(inv_std, nd)
    dbeta = g.sum(dim=dims)
    dgamma = (g * x_hat).sum(dim=dims)
    k = per_channel(weight.to(xs.dtype) * inv_std / m, nd)
    dx = k * (m * g - per_channel(dbeta, nd) - x_hat * per_channel(dgamma, nd))
    return dx.to(dy.dtype), dgamma.to(weight.dtype), dbeta.to(weight.dtype)


def merge_moments(
    counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the moments of several groups along ``dim`` (Chan, Golub & LeVeque, 1983).

    ``counts``, ``means`` and ``m2s`` (sums of squared deviations from each group's own
    mean) have one entry per group along ``dim``, e.g. ``(groups, C)``. Returns the
    ``(count, mean, biased variance)`` of all groups together, ``dim`` summed away:
    ``mean = sum n_k mean_k / n`` and ``M2 = sum M2_k + sum n_k (mean_k - mean)^2``, which
    stays accurate where a difference of sums of squares would cancel.
    """
    count = counts.sum(dim)
    mean = (counts * means).sum(dim) / count
    m2 = m2s.sum(dim) + (counts * (means - mean.unsqueeze(dim)).square()).sum(dim)
    return count, mean, m2 / count


def check_input(x: torch.Tensor, num_features: int | None, training: bool) -> None:
    """Raise a clear error for input BN cannot normalize, before any state changes.

    ``num_features``: the channels ``x`` must have (``None``: any number). ``training``: the
    batch's own statistics will be used, which needs more than one value per channel. An
    empty batch (no values at all) is fine, as in torch.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point tensor, got dtype {x.dtype}; convert it first, "
            "e.g. x.float()"
        )
    if not 2 <= x.dim() <= 5:
        raise ValueError(
            f"expected 2-D to 5-D input (N, C, *spatial), got {x.dim()}-D input of shape "
            f"{tuple(x.shape)}"
        )
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(
            f"expected {num_features} channels on dim 1, got input of shape {tuple(x.shape)}"
        )
    if training and math.prod((x.shape[0], *x.shape[2:])) == 1:
        raise ValueError(
            "expected more than 1 value per channel when training, got input of shape "
            f"{tuple(x.shape)}"
        )


def check_eps(eps: float, batch_stats: bool) -> None:
    """Raise torch's error for an ``eps`` it refuses: ``eps <= 0`` with batch statistics,
    ``eps < 0`` with running ones (where ``eps = 0`` only fails for a zero running variance)."""
    if batch_stats and not eps > 0:
        raise ValueError(
            f"eps must be positive during training (batch statistics), got {eps}: a constant "
            "channel would divide by zero. For an exact identity with eps = 0, use "
            "bnlib.torch_bn.normalize_batch(x, eps=0.0) or bnlib.reference.batchnorm_forward"
        )
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps}")


def affine_params(
    weight: torch.Tensor | None, bias: torch.Tensor | None, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` and ``bias`` ``(C,)`` as given; ones and zeros (in ``x``'s statistics dtype)
    for those that are ``None`` (a layer that does not learn them)."""
    ones = torch.ones(x.shape[1], dtype=stats_dtype(x), device=x.device)
    return (weight if weight is not None else ones,
            bias if bias is not None else torch.zeros_like(ones))


def empty_batch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """BN of an empty batch ``x`` (no values): an empty output of ``x``'s shape and dtype,
    from a per-channel map, so ``weight`` and ``bias`` get zero gradients, as in torch."""
    sd, nd = stats_dtype(x), x.dim()
    return (x.to(sd) * per_channel(weight.to(sd), nd) + per_channel(bias.to(sd), nd)).to(x.dtype)


def normalize_batch(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Training-mode BN of ``x`` with its own batch statistics, as a plain function.

    No module and no running statistics: :class:`BatchNormFunction` (and its backward) on
    ``x`` ``(N, C, *spatial)``, with ``weight`` and ``bias`` ``(C,)`` (ones and zeros when
    ``None``). Returns ``y`` of ``x``'s shape. Unlike :class:`BatchNorm` and torch, it takes
    ``eps = 0`` (``eps`` must be ``>= 0``), for exact identities such as the scale
    invariance of BN; a constant channel then divides by zero.
    """
    check_input(x, None if weight is None else weight.numel(), training=True)
    check_eps(eps, batch_stats=False)
    weight, bias = affine_params(weight, bias, x)
    if x.numel() == 0:
        return empty_batch(x, weight, bias)
    return BatchNormFunction.apply(x, weight, bias, eps)[0]


def check_dtypes(x: torch.Tensor, state: dict[str, torch.Tensor | None]) -> None:
    """Raise torch's error unless every tensor in ``state`` (a layer's parameters and running
    statistics, by name) has ``x``'s dtype; half and bfloat16 ``x`` may also use float32."""
    for name, t in state.items():
        if t is not None and t.dtype not in (x.dtype, stats_dtype(x)):
            raise RuntimeError(
                f"mixed dtype: the layer's {name} is {t.dtype} but the input is {x.dtype}; "
                f"convert one of them (e.g. layer.to({x.dtype}) or x.to({t.dtype}))"
            )


class BatchNorm(_BatchNorm):
    r"""Batch Normalization over channel dim 1 of 2-D to 5-D input; ``nn.BatchNorm1d/2d/3d``'s twin.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Args:
        num_features: ``C``.
        eps: added to the variance inside the square root (default ``1e-5``); must be
            positive when batch statistics are used, as in torch.
        momentum: weight of the new batch in the running averages (default ``0.1``);
            ``None`` gives a cumulative average through ``num_batches_tracked``.
        affine: learn ``weight`` (ones) and ``bias`` (zeros), both ``(C,)``.
        device, dtype: where and in which dtype parameters and buffers are created.
        bias: (keyword only) with ``affine``, ``False`` learns ``weight`` alone, as in
            ``torch.nn.BatchNorm*(bias=False)``.
        track_running_stats: keep ``running_mean``, ``running_var`` (updated with the
            unbiased batch variance) and ``num_batches_tracked``; if ``False`` batch
            statistics are used in eval mode too.

    Shape: input ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``;
    output the same. Half and bfloat16 input keeps float32 statistics and buffers. An empty
    batch gives an empty output; in training it is counted in ``num_batches_tracked`` but
    moves no running average (as in torch).

    The state lives in torch's own base class, ``torch.nn.modules.batchnorm._BatchNorm``,
    exactly as for ``nn.BatchNorm1d/2d/3d``: the parameters and buffers,
    ``reset_running_stats()``, ``reset_parameters()`` (so a model built on the ``meta``
    device can be materialized with ``to_empty()``), ``repr``, and loading old checkpoints
    that lack ``num_batches_tracked``. Tools that look for BN layers with
    ``isinstance(m, _BatchNorm)`` (``nn.SyncBatchNorm.convert_sync_batchnorm``,
    ``torch.optim.swa_utils.update_bn``, ``torch.func.replace_all_batch_norm_modules_``,
    "no weight decay on norm layers" parameter groups) find it. This class adds only the
    forward pass, built on :class:`BatchNormFunction`.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if affine and not bias:  # bias=False as in torch (an older torch base lacks the argument)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As in torch: batch statistics in training, and in eval when there are no running ones.
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        update = self.training and self.track_running_stats
        check_input(x, self.num_features, training=use_batch)
        check_eps(self.eps, batch_stats=use_batch)
        check_dtypes(x, {"weight": self.weight, "bias": self.bias,
                         "running_mean": self.running_mean, "running_var": self.running_var})
        weight, bias = affine_params(self.weight, self.bias, x)
        nd, sd = x.dim(), stats_dtype(x)
        if x.numel() == 0:  # nothing to normalize; torch still counts the batch
            if update:
                self._update_running_stats(None, None, 0)
            return empty_batch(x, weight, bias)
        if not use_batch:
            # Fixed statistics: a per-channel affine map; autograd differentiates it.
            scale = weight.to(sd) * torch.rsqrt(self.running_var.to(sd) + self.eps)
            x_centered = x.to(sd) - per_channel(self.running_mean.to(sd), nd)
            return (x_centered * per_channel(scale, nd) + per_channel(bias.to(sd), nd)).to(x.dtype)
        y, mean, var = BatchNormFunction.apply(x, weight, bias, self.eps)
        if update:
            self._update_running_stats(mean, var, x.numel() // x.shape[1])
        return y

    @torch.no_grad()
    def _update_running_stats(
        self, mean: torch.Tensor | None, var: torch.Tensor | None, m: int
    ) -> None:
        """Count the batch of ``m`` values per channel; unless it is empty (``m = 0``), move
        the running averages towards its ``mean`` and unbiased variance (``var`` biased)."""
        self.num_batches_tracked.add_(1)
        if m == 0:
            return
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        dtype = self.running_mean.dtype
        new_mean, new_var = running_update(self.running_mean, self.running_var,
                                           mean.to(dtype), var.to(dtype), m, factor)
        self.running_mean.copy_(new_mean)
        self.running_var.copy_(new_var)


# --------------------------------------------------------------------------- converting models
# Any model's BN layers, swapped between torch's classes and this book's, keeping their state.

TORCH_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _twin(bn: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """A ``cls`` layer with ``bn``'s arguments that shares its parameters, buffers and mode."""
    twin = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
               device="meta")  # meta: nothing is allocated, every tensor is bn's own
    for name in ("weight", "bias"):
        twin.register_parameter(name, getattr(bn, name))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        twin.register_buffer(name, getattr(bn, name))
    return twin.train(bn.training)


def _replace(model: nn.Module, twins: dict[nn.Module, nn.Module]) -> nn.Module:
    """Put ``twins[m]`` wherever ``model`` holds layer ``m``, in place; returns the new root."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):  # named_children() skips repeats
            if child in twins:
                setattr(parent, name, twins[child])
    return twins.get(model, model)


def to_bnlib(model: nn.Module) -> nn.Module:
    """Replace every ``torch.nn.BatchNorm1d/2d/3d`` layer of ``model`` by a :class:`BatchNorm`.

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``: ``model`` is changed in place and
    returned (if ``model`` is itself such a layer, its replacement is returned). Each new
    layer gets the old one's arguments and *shares* its state: the same ``weight`` and
    ``bias`` parameters (an optimizer built before keeps working), the same buffers and the
    same train/eval mode. It remembers the class it replaced in ``torch_class``, for
    :func:`to_torch`. Only these three exact classes are converted (not subclasses, not
    ``nn.SyncBatchNorm``); a layer shared by several parents gets one replacement. Copy the
    model first (``copy.deepcopy``) to keep the original.
    """
    twins = {}
    for m in model.modules():
        if type(m) in TORCH_BN:
            twins[m] = _twin(m, BatchNorm)
            twins[m].torch_class = type(m)
    return _replace(model, twins)


def to_torch(model: nn.Module, default: type[nn.Module] | None = None) -> nn.Module:
    """The reverse of :func:`to_bnlib`: every :class:`BatchNorm` of ``model`` becomes torch's.

    Each becomes the class it was converted from (its ``torch_class``, set by
    :func:`to_bnlib`), else ``default``: ``nn.BatchNorm1d``, ``2d`` or ``3d`` (this book's
    layer takes 2-D to 5-D input, each of torch's one or two ranks). In place and sharing
    the state, as :func:`to_bnlib`. bnlib's variants (:class:`GhostBatchNorm`,
    :class:`BatchRenorm`, :class:`SyncBatchNorm`) have no torch twin and stay as they are.
    A layer with no class to become raises ``ValueError``, naming it, before any change.
    """
    if default is not None and default not in TORCH_BN:
        raise ValueError(f"default must be nn.BatchNorm1d, 2d or 3d (or None), got {default}")
    twins = {}
    for name, m in model.named_modules():
        if type(m) is not BatchNorm:
            continue
        cls = getattr(m, "torch_class", None) or default
        if cls is None:
            raise ValueError(
                f"BN layer '{name}' was not converted from torch, so its torch class is "
                "unknown: pass default=nn.BatchNorm1d, nn.BatchNorm2d or nn.BatchNorm3d"
            )
        twins[m] = _twin(m, cls)
    return _replace(model, twins)


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


class NoisyShift(nn.Module):
    r"""A deliberate, ever-changing distribution shift: Santurkar et al.'s "noisy BN" probe.

    .. math:: y = s \odot x + m, \qquad m_c \sim \mathcal{N}(0, \text{mean\_std}^2), \quad
              s_c = \exp(\text{scale\_std} \cdot z_c),\ z_c \sim \mathcal{N}(0, 1)

    In training mode a new shift ``m`` and scale ``s`` (one per channel, shared by every
    sample and position) are drawn from PyTorch's global RNG at every forward call, so the
    next layer sees a distribution whose mean and spread jump from step to step. The scale is
    log-normal, hence always positive (a negative one would flip a unit's sign). In eval mode
    it is the identity. Placed after a BN layer it undoes BN's "stable distribution".

    Shape: input ``(N, C)`` or ``(N, C, *spatial)``; output the same.
    """

    def __init__(self, num_features: int, mean_std: float = 1.0, scale_std: float = 0.5) -> None:
        super().__init__()
        if mean_std < 0 or scale_std < 0:
            raise ValueError(f"noise levels must be >= 0, got {mean_std} and {scale_std}")
        self.num_features, self.mean_std, self.scale_std = num_features, mean_std, scale_std

    def extra_repr(self) -> str:
        return f"{self.num_features}, mean_std={self.mean_std}, scale_std={self.scale_std}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected input (N, {self.num_features}, *spatial), got shape {tuple(x.shape)}"
            )
        if not self.training:
            return x
        z = torch.randn(2, self.num_features, device=x.device, dtype=x.dtype)
        shift = self.mean_std * z[0]
        scale = torch.exp(self.scale_std * z[1])
        return x * per_channel(scale, x.dim()) + per_channel(shift, x.dim())


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


# --------------------------------------------------------------------------- batch-size variants
# The batch-size chapter: BN variants for batches that are too large, too small, not i.i.d.,
# or spread over several processes. All keep BatchNorm's constructor, parameters, buffers and
# eval-mode behaviour; only the training-mode statistics differ.


class GhostBatchNorm(BatchNorm):
    """Ghost Batch Normalization (Hoffer et al., 2017): BN over chunks of a large batch.

    In training mode the batch ``(N, C, *spatial)`` is split along dim 0 into consecutive
    "ghost batches" of ``ghost_batch_size`` examples (the last one may be smaller); each
    chunk is normalized with its own statistics and updates the running statistics in turn,
    as if it were a separate mini-batch. Eval mode uses the running statistics, like
    :class:`BatchNorm`. With ``ghost_batch_size >= N`` it is exactly :class:`BatchNorm`.
    Other arguments as in :class:`BatchNorm`.
    """

    def __init__(self, num_features: int, ghost_batch_size: int, *args, **kwargs) -> None:
        if ghost_batch_size < 2:
            raise ValueError(f"ghost_batch_size must be at least 2, got {ghost_batch_size}")
        super().__init__(num_features, *args, **kwargs)
        self.ghost_batch_size = ghost_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.dim() < 2 or x.shape[0] <= self.ghost_batch_size:
            return super().forward(x)
        chunks = list(x.split(self.ghost_batch_size, dim=0))
        for chunk in chunks:  # check every chunk before any running statistic moves
            check_input(chunk, self.num_features, training=True)
        check_eps(self.eps, batch_stats=True)
        return torch.cat([super(GhostBatchNorm, self).forward(chunk) for chunk in chunks])


class BatchRenorm(BatchNorm):
    r"""Batch Renormalization (Ioffe, 2017): BN corrected towards the running statistics.

    In training mode, with batch statistics :math:`\mu_B`, :math:`\sigma_B = \sqrt{\sigma_B^2
    + \epsilon}` and running ones :math:`\mu`, :math:`\sigma = \sqrt{\mathrm{running\_var} +
    \epsilon}` (before this batch updates them),

    .. math:: r = \mathrm{clip}_{[1/r_{max}, r_{max}]}(\sigma_B / \sigma), \quad
              d = \mathrm{clip}_{[-d_{max}, d_{max}]}((\mu_B - \mu) / \sigma), \quad
              y = \gamma \left(\frac{x - \mu_B}{\sigma_B} r + d\right) + \beta,

    with ``r`` and ``d`` treated as constants (no gradient flows through them). Unclipped,
    ``y`` equals what eval mode computes, so training and inference agree; ``r_max=1,
    d_max=0`` gives plain BN. The running statistics are updated as in :class:`BatchNorm`
    (momentum, unbiased variance); the paper starts with ``r_max=1, d_max=0`` and relaxes
    them during training, which a caller does by setting the attributes. Other arguments as
    in :class:`BatchNorm` (``track_running_stats`` must be ``True``).
    """

    def __init__(self, num_features: int, r_max: float = 3.0, d_max: float = 5.0,
                 *args, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        if not self.track_running_stats:
            raise ValueError("BatchRenorm needs running statistics (track_running_stats=True)")
        if r_max < 1.0 or d_max < 0.0:
            raise ValueError(f"need r_max >= 1 and d_max >= 0, got {r_max} and {d_max}")
        self.r_max, self.d_max = r_max, d_max

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}"

    def correction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipped ``(r, d)``, each ``(C,)``, for batch ``x`` against the running stats."""
        with torch.no_grad():
            sd = stats_dtype(x)
            var_b, mean_b = torch.var_mean(x.to(sd), dim=reduce_dims(x), correction=0)
            sigma_b = torch.sqrt(var_b + self.eps)
            sigma = torch.sqrt(self.running_var.to(sd) + self.eps)
            r = (sigma_b / sigma).clamp(1.0 / self.r_max, self.r_max)
            d = ((mean_b - self.running_mean.to(sd)) / sigma).clamp(-self.d_max, self.d_max)
        return r, d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.numel() == 0:  # an empty batch has no statistics to correct
            return super().forward(x)
        check_input(x, self.num_features, training=True)
        check_eps(self.eps, batch_stats=True)
        r, d = self.correction(x)
        weight, bias = affine_params(self.weight, self.bias, x)
        # gamma (x_hat r + d) + beta = (gamma r) x_hat + (gamma d + beta): BN with a changed
        # scale and shift, so the hand-derived backward applies with r, d as constants.
        y, mean, var = BatchNormFunction.apply(x, weight * r, weight * d + bias, self.eps)
        self._update_running_stats(mean, var, x.numel() // x.shape[1])
        return y


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode BN whose statistics cover the batches of all processes.

    ``forward(x, weight, bias, eps) -> (y, mean, var, count)``: every process all-gathers the
    per-channel ``(count, mean, M2)`` of its local batch and merges them
    (:func:`merge_moments`), which is stable where sums of squares are not. The backward
    all-reduces ``sum(dy)`` and ``sum(dy * x_hat)``; the returned weight and bias gradients
    are the *local* ones (DDP sums them over processes). It is differentiable once: asking
    for a graph of its backward (second derivatives) raises an error.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        import torch.distributed as dist

        nd, dims = x.dim(), reduce_dims(x)
        xs = x.to(stats_dtype(x))
        n_local = xs.numel() // xs.shape[1]
        c = xs.shape[1]
        if n_local > 0:
            var_k, mean_k = torch.var_mean(xs, dim=dims, correction=0)
        else:
            var_k = mean_k = torch.zeros(c, dtype=xs.dtype, device=xs.device)
        local = torch.stack([torch.full_like(mean_k, float(n_local)), mean_k, var_k * n_local])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        counts, means, m2s = torch.stack(gathered).unbind(1)  # each (world, C)
        if float(counts.sum(0)[0]) <= 1:
            raise ValueError("expected more than 1 value per channel when training, "
                             f"got {int(counts.sum(0)[0])} over all processes")
        count, mean, var = merge_moments(counts, means, m2s, dim=0)  # var biased
        inv_std = torch.rsqrt(var + eps)
        x_hat = (xs - per_channel(mean, nd)) * per_channel(inv_std, nd)
        y = x_hat * per_channel(weight.to(xs.dtype), nd) + per_channel(bias.to(xs.dtype), nd)
        ctx.save_for_backward(x_hat, inv_std, weight, count)
        ctx.mark_non_differentiable(mean, var, count)
        return y.to(x.dtype), mean, var, count

    @staticmethod
    @once_differentiable  # no graph of this backward: second derivatives raise, never lie
    def backward(ctx, dy, _dmean, _dvar, _dcount):
        import torch.distributed as dist

        x_hat, inv_std, weight, count = ctx.saved_tensors
        nd, dims = dy.dim(), reduce_dims(dy)
        g = dy.to(x_hat.dtype)
        dbeta = g.sum(dim=dims)
        dgamma = (g * x_hat).sum(dim=dims)
        sums = torch.stack([dbeta, dgamma])
        dist.all_reduce(sums)  # sum over processes
        m = per_channel(count, nd)
        dx = per_channel(weight.to(x_hat.dtype) * inv_std, nd) / m * (
            m * g - per_channel(sums[0], nd) - x_hat * per_channel(sums[1], nd)
        )
        return dx.to(dy.dtype), dgamma.to(weight.dtype), dbeta.to(weight.dtype), None


class SyncBatchNorm(BatchNorm):
    """BN for data-parallel training: batch statistics over all processes of the default group.

    Same constructor, parameters, buffers and eval mode as :class:`BatchNorm`. In training
    mode with an initialized ``torch.distributed`` default process group of more than one
    process, every process normalizes its local batch ``(N_k, C, *spatial)`` (sizes may
    differ) with the mean and variance of the *concatenated* batch, and every process updates
    its running statistics identically; the input gradient is that of BN on the concatenated
    batch, and ``weight``/``bias`` get the local gradients, which DDP's all-reduce sums.
    Works with any backend (gloo on CPU; ``torch.nn.SyncBatchNorm`` needs CUDA). Without an
    initialized process group (or with one process) it behaves exactly like :class:`BatchNorm`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch = self.training or not self.track_running_stats
        if not use_batch or not _distributed():
            return super().forward(x)
        check_input(x, self.num_features, training=False)  # the global count is checked later
        check_eps(self.eps, batch_stats=True)
        weight, bias = affine_params(self.weight, self.bias, x)
        y, mean, var, count = SyncBatchNormFunction.apply(x, weight, bias, self.eps)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, int(count[0]))
        return y


def free_port() -> int:
    """A free TCP port on localhost, for a ``torch.distributed`` rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, world: int, port: int, sizes: list[int], shape: tuple[int, ...],
                 seed: int, folder: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(seed)
        x_all = 3.0 + 2.0 * torch.randn(sum(sizes), *shape, generator=gen, dtype=torch.float64)
        dy_all = torch.randn(x_all.shape, generator=gen, dtype=torch.float64)
        start = sum(sizes[:rank])
        x = x_all[start:start + sizes[rank]].clone().requires_grad_(True)
        bn = SyncBatchNorm(shape[0], dtype=torch.float64)
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 2.0, shape[0], dtype=torch.float64))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, shape[0], dtype=torch.float64))
        y = bn(x)
        (y * dy_all[start:start + sizes[rank]]).sum().backward()
        torch.save({"y": y.detach(), "dx": x.grad, "dweight": bn.weight.grad,
                    "dbias": bn.bias.grad, "state": bn.state_dict()},
                   os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def sync_batchnorm_run(
    sizes: Sequence[int], shape: tuple[int, ...] = (3, 5), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Run one :class:`SyncBatchNorm` step in ``len(sizes)`` CPU processes (gloo backend).

    Process ``k`` takes rows ``sizes[0] + ... + sizes[k-1]`` onward (``sizes[k]`` of them) of
    a seeded float64 batch ``x`` ``(sum(sizes), *shape)`` (``shape[0]`` channels), runs a
    training-mode forward, and backpropagates the loss ``sum(y * dy)`` for a seeded ``dy``.
    Returns ``(x, dy, results)``; ``results[k]`` holds process ``k``'s ``y``, ``dx``,
    ``dweight``, ``dbias`` and ``state`` (its state_dict afterwards). ``weight`` starts as
    ``linspace(0.5, 2, C)`` and ``bias`` as ``linspace(-1, 1, C)``.
    """
    import tempfile

    import torch.multiprocessing as mp

    sizes = list(sizes)
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_sync_worker, args=(len(sizes), free_port(), sizes, tuple(shape), seed, folder),
                 nprocs=len(sizes), join=True)
        results = [torch.load(f"{folder}/rank{k}.pt") for k in range(len(sizes))]
    gen = torch.Generator().manual_seed(seed)
    x = 3.0 + 2.0 * torch.randn(sum(sizes), *shape, generator=gen, dtype=torch.float64)
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return x, dy, results
