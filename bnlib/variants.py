"""BN variants built on :class:`bnlib.torch_bn.BatchNorm`: what changes, and nothing else.

:class:`NoisyShift` is Santurkar et al.'s probe for the covariate-shift chapter (not a
normalization, the noise placed after one). The batch-size chapter's variants keep
``BatchNorm``'s constructor, parameters, buffers and eval mode and change only the
training-mode statistics: :class:`GhostBatchNorm` (chunks of a large batch),
:class:`BatchRenorm` (batch statistics corrected towards the running ones) and
:class:`SyncBatchNorm` (statistics over the batches of all processes). The harness that runs
SyncBatchNorm in several processes is :mod:`bnlib.distributed`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from bnlib.torch_bn import (
    BatchNorm,
    BatchNormFunction,
    affine_params,
    check_eps,
    check_input,
    merge_moments,
    per_channel,
    reduce_dims,
    stats_dtype,
)


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
