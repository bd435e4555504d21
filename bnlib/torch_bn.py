"""Batch Normalization in PyTorch, with the backward pass written by hand.

:class:`BatchNormFunction` is an ``autograd.Function`` whose ``backward`` is the closed
form derived in the BN-algorithm chapter; autograd never looks inside its forward.
:class:`BatchNorm` wraps it in an ``nn.Module`` that is a drop-in for
``torch.nn.BatchNorm1d/2d/3d``: same constructor, same parameters and buffers, same
``state_dict`` keys, the same numbers. The same code runs on CPU and CUDA.
"""

from __future__ import annotations

import torch
from torch import nn


def reduce_dims(x: torch.Tensor) -> list[int]:
    """The dimensions BN averages over: every dimension but the channel dimension 1."""
    return [0, *range(2, x.dim())]


def per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape ``(C,)`` to ``(1, C, 1, ...)`` so it broadcasts against ``ndim``-D input."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def stats_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics are kept in float32 for half and bfloat16 input, else in ``x``'s dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


class BatchNormFunction(torch.autograd.Function):
    """Training-mode BN with batch statistics and a hand-derived backward.

    ``forward(x, weight, bias, eps) -> (y, mean, var)`` with ``x`` of shape
    ``(N, C, *spatial)``, ``weight`` and ``bias`` of shape ``(C,)``; ``mean`` and the biased
    ``var`` are ``(C,)`` in float32 for half input, returned so the caller can update the
    running averages, and carry no gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # noqa: ANN001, ANN205 (autograd's signature)
        nd, dims = x.dim(), reduce_dims(x)
        xs = x.to(stats_dtype(x))
        mean = xs.mean(dim=dims)
        var = (xs - per_channel(mean, nd)).square().mean(dim=dims)  # two-pass, stable
        inv_std = torch.rsqrt(var + eps)
        x_hat = (xs - per_channel(mean, nd)) * per_channel(inv_std, nd)
        y = x_hat * per_channel(weight.to(xs.dtype), nd) + per_channel(bias.to(xs.dtype), nd)
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):  # noqa: ANN001, ANN205
        x_hat, inv_std, weight = ctx.saved_tensors
        nd, dims = dy.dim(), reduce_dims(dy)
        g = dy.to(x_hat.dtype)
        m = g.numel() // g.shape[1]
        dbeta = g.sum(dim=dims)
        dgamma = (g * x_hat).sum(dim=dims)
        dx = per_channel(weight.to(x_hat.dtype) * inv_std / m, nd) * (
            m * g - per_channel(dbeta, nd) - x_hat * per_channel(dgamma, nd)
        )
        return dx.to(dy.dtype), dgamma.to(weight.dtype), dbeta.to(weight.dtype), None


def check_input(x: torch.Tensor, num_features: int, training: bool) -> None:
    """Raise a clear error for input BN cannot normalize, before any state changes."""
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
    if x.shape[1] != num_features:
        raise ValueError(
            f"expected {num_features} channels on dim 1, got input of shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch, got input of shape {tuple(x.shape)}")
    if training and x.numel() // x.shape[1] <= 1:
        raise ValueError(
            "expected more than 1 value per channel when training, got input of shape "
            f"{tuple(x.shape)}"
        )


class BatchNorm(nn.Module):
    r"""Batch Normalization over channel dim 1 of 2-D to 5-D input; ``nn.BatchNorm1d/2d/3d``'s twin.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Args:
        num_features: ``C``.
        eps: added to the variance inside the square root (default ``1e-5``).
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
    output the same. Half and bfloat16 input keeps float32 statistics and buffers.
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
        super().__init__()
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        kw = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **kw))
            if bias:
                self.bias = nn.Parameter(torch.zeros(num_features, **kw))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **kw))
            self.register_buffer("running_var", torch.ones(num_features, **kw))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None or not self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_batch = self.training or not self.track_running_stats
        check_input(x, self.num_features, training=use_batch)
        sd = stats_dtype(x)
        ones = torch.ones(self.num_features, dtype=sd, device=x.device)
        weight = self.weight if self.weight is not None else ones
        bias = self.bias if self.bias is not None else torch.zeros_like(ones)
        if not use_batch:
            # Fixed statistics: a per-channel affine map; autograd differentiates it.
            nd = x.dim()
            scale = weight.to(sd) * torch.rsqrt(self.running_var.to(sd) + self.eps)
            x_centered = x.to(sd) - per_channel(self.running_mean.to(sd), nd)
            return (x_centered * per_channel(scale, nd) + per_channel(bias.to(sd), nd)).to(x.dtype)
        y, mean, var = BatchNormFunction.apply(x, weight, bias, self.eps)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var, x.numel() // x.shape[1])
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, m: int) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * (m / (m - 1))
        self.running_mean.mul_(1.0 - factor).add_(factor * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1.0 - factor).add_(factor * unbiased.to(self.running_var.dtype))
