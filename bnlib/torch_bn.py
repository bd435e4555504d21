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

The variants (ghost, renorm, sync, noisy) are in :mod:`bnlib.variants`; the tools for
inference (PreciseBN, frozen statistics, folding) in :mod:`bnlib.inference`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
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
