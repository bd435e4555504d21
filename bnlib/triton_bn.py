"""Training-mode Batch Normalization as fused Triton kernels, forward and backward.

Input ``x`` of shape ``(N, C, *spatial)`` (2-D to 5-D) is seen as ``(N, C, L)`` with
``L = prod(spatial)`` and strides ``(sN, sC, sL)``: ``(C*L, L, 1)`` for contiguous NCHW,
``(L*C, 1, C)`` for channels-last; element ``(n, c, l)`` sits at ``n*sN + c*sC + l*sL``.
Where every tensor of a call allows it (channels-last, 2-D input), ``N`` is folded into
``L`` so the reduction runs over one long strided axis. No input is copied, so ``y`` and
``dx`` keep ``x``'s memory layout; ``dy`` is read through its own strides.

Four kernels, each on a grid ``(channel blocks, chunks)``: every channel's ``M = N*L``
values are cut into chunks so that even a few channels fill the GPU.

* ``_stats_kernel``: per chunk and channel, ``(count, mean, M2)`` by Chan's parallel
  formula over tiles, each tile summarized by a two-pass mean and ``M2`` in registers,
  all shifted by the channel's first value ``x[0, c, 0]`` (never ``E[x^2] - E[x]^2``);
  torch merges the ``(C, chunks)`` partials the same way.
* ``_normalize_kernel``: ``y = x * scale + shift``, ``scale = weight * inv_std``,
  ``shift = bias - mean * scale``.
* ``_grad_sums_kernel``: per chunk, ``sum(dy)`` and ``sum(dy * (x - mean))``.
* ``_grad_input_kernel``: ``dx = k1 * dy + k2 * (x - mean) + k3`` per channel, the closed
  form ``dx = weight * inv_std / M * (M dy - dbias - x_hat dweight)``.

Statistics are accumulated in float32 for float16, bfloat16 and float32 input, in float64
for float64 input.

Byte model (as in :mod:`bnlib.bench`): the training forward makes 3 passes over the tensor
(read ``x`` for the statistics, read ``x`` and write ``y``); the backward makes 5 (read
``dy`` and ``x`` for the two sums, read both again and write ``dx``).

On a machine without a GPU, run the kernels in Triton's interpreter on CPU tensors: set
``TRITON_INTERPRET=1`` in the environment *before* this module is imported (Triton decides
at decoration time), e.g. ``TRITON_INTERPRET=1 python -m pytest tests/test_triton_bn.py``.
No other bnlib module imports this one, so bnlib works without Triton.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from bnlib.torch_bn import check_input, merge_moments, stats_dtype

TILE = 1024  # elements per tile
BLOCK_C_MAX = 32  # channels per tile when the channel dim is the contiguous one
PROGRAMS = 1024  # aim for about this many programs per launch (several per SM)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _tile(t, n_lblocks, N, L, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """Tile ``t`` of the ``(N, L)`` plane: ``(n, l, in_bounds)``, each ``(BLOCK_N*BLOCK_L,)``."""
    nb = t // n_lblocks
    r = tl.arange(0, BLOCK_N * BLOCK_L)
    n = nb * BLOCK_N + r // BLOCK_L
    l = (t - nb * n_lblocks) * BLOCK_L + r % BLOCK_L
    return n, l, (n < N) & (l < L)


@triton.jit
def _offsets(c, n, l, sN, sC, sL):
    """Element offsets ``(BLOCK_C, R)`` of channels ``c`` at positions ``(n, l)``, in int64."""
    return c.to(tl.int64)[:, None] * sC + (n.to(tl.int64) * sN + l.to(tl.int64) * sL)[None, :]


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _row_sum(x):
    """``x.sum(1)``, ``(BLOCK_C, R) -> (BLOCK_C,)``.

    ``tl.reduce`` with a combine function of this module, like ``tl.sum`` inside, but without
    Triton's own ``@jit`` helpers (``tl.sum``, ``tl.zeros``): those are decorated when
    ``triton`` is imported, so using them would make the interpreter depend on
    ``TRITON_INTERPRET`` being set before ``triton`` itself was first imported.
    """
    return tl.reduce(x, 1, _add)


@triton.jit
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two ``(count, mean, M2)`` summaries (Chan, Golub & LeVeque)."""
    n = n_a + n_b
    w = n_b / tl.maximum(n, 1.0)
    delta = mean_b - mean_a
    return n, mean_a + delta * w, m2_a + m2_b + delta * delta * n_a * w


@triton.jit
def _stats_kernel(x_ptr, part_ptr, N, C, L, sN, sC, sL, tiles_per_chunk, n_lblocks, n_tiles,
                  BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """Write ``part[:, c, k] = (count, mean - x[0, c, 0], M2)`` of chunk ``k``; ``(3, C, K)``."""
    chunk, chunks = tl.program_id(1), tl.num_programs(1)
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_in = c < C
    acc = part_ptr.dtype.element_ty
    shift = tl.load(x_ptr + c.to(tl.int64) * sC, mask=c_in, other=0.0).to(acc)
    count = tl.full([BLOCK_C], 0.0, acc)
    mean = tl.full([BLOCK_C], 0.0, acc)
    m2 = tl.full([BLOCK_C], 0.0, acc)
    t0 = chunk * tiles_per_chunk
    for t in range(t0, tl.minimum(t0 + tiles_per_chunk, n_tiles)):
        n, l, r_in = _tile(t, n_lblocks, N, L, BLOCK_N, BLOCK_L)
        mask = c_in[:, None] & r_in[None, :]
        x = tl.load(x_ptr + _offsets(c, n, l, sN, sC, sL), mask=mask, other=0.0).to(acc)
        d = tl.where(mask, x - shift[:, None], 0.0)
        n_t = _row_sum(mask.to(acc))
        mean_t = _row_sum(d) / tl.maximum(n_t, 1.0)
        e = tl.where(mask, d - mean_t[:, None], 0.0)
        count, mean, m2 = _chan(count, mean, m2, n_t, mean_t, _row_sum(e * e))
    out = part_ptr + c * chunks + chunk
    tl.store(out, count, mask=c_in)
    tl.store(out + C * chunks, mean, mask=c_in)
    tl.store(out + 2 * C * chunks, m2, mask=c_in)


@triton.jit
def _normalize_kernel(x_ptr, y_ptr, scale_ptr, shift_ptr, N, C, L, sxN, sxC, sxL,
                      syN, syC, syL, tiles_per_chunk, n_lblocks, n_tiles,
                      BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """``y = x * scale[c] + shift[c]`` over the tiles of chunk ``program_id(1)``."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_in = c < C
    scale = tl.load(scale_ptr + c, mask=c_in, other=0.0)
    shift = tl.load(shift_ptr + c, mask=c_in, other=0.0)
    t0 = tl.program_id(1) * tiles_per_chunk
    for t in range(t0, tl.minimum(t0 + tiles_per_chunk, n_tiles)):
        n, l, r_in = _tile(t, n_lblocks, N, L, BLOCK_N, BLOCK_L)
        mask = c_in[:, None] & r_in[None, :]
        x = tl.load(x_ptr + _offsets(c, n, l, sxN, sxC, sxL), mask=mask, other=0.0)
        y = x.to(scale.dtype) * scale[:, None] + shift[:, None]
        tl.store(y_ptr + _offsets(c, n, l, syN, syC, syL), y.to(y_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit
def _grad_sums_kernel(x_ptr, dy_ptr, mean_ptr, part_ptr, N, C, L, sxN, sxC, sxL,
                      sgN, sgC, sgL, tiles_per_chunk, n_lblocks, n_tiles,
                      BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """Write ``part[:, c, k] = (sum dy, sum dy * (x - mean))`` of chunk ``k``; ``(2, C, K)``."""
    chunk, chunks = tl.program_id(1), tl.num_programs(1)
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_in = c < C
    mean = tl.load(mean_ptr + c, mask=c_in, other=0.0)
    sum_dy = tl.full([BLOCK_C], 0.0, mean.dtype)
    sum_dy_xc = tl.full([BLOCK_C], 0.0, mean.dtype)
    t0 = chunk * tiles_per_chunk
    for t in range(t0, tl.minimum(t0 + tiles_per_chunk, n_tiles)):
        n, l, r_in = _tile(t, n_lblocks, N, L, BLOCK_N, BLOCK_L)
        mask = c_in[:, None] & r_in[None, :]
        dy = tl.load(dy_ptr + _offsets(c, n, l, sgN, sgC, sgL), mask=mask, other=0.0)
        x = tl.load(x_ptr + _offsets(c, n, l, sxN, sxC, sxL), mask=mask, other=0.0)
        dy = dy.to(mean.dtype)
        sum_dy += _row_sum(dy)
        sum_dy_xc += _row_sum(tl.where(mask, dy * (x.to(mean.dtype) - mean[:, None]), 0.0))
    out = part_ptr + c * chunks + chunk
    tl.store(out, sum_dy, mask=c_in)
    tl.store(out + C * chunks, sum_dy_xc, mask=c_in)


@triton.jit
def _grad_input_kernel(x_ptr, dy_ptr, dx_ptr, mean_ptr, k_ptr, N, C, L, sxN, sxC, sxL,
                       sgN, sgC, sgL, sdN, sdC, sdL, tiles_per_chunk, n_lblocks, n_tiles,
                       BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """``dx = k1[c] * dy + k2[c] * (x - mean[c]) + k3[c]``; ``k`` is ``(3, C)``."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_in = c < C
    mean = tl.load(mean_ptr + c, mask=c_in, other=0.0)
    k1 = tl.load(k_ptr + c, mask=c_in, other=0.0)
    k2 = tl.load(k_ptr + C + c, mask=c_in, other=0.0)
    k3 = tl.load(k_ptr + 2 * C + c, mask=c_in, other=0.0)
    t0 = tl.program_id(1) * tiles_per_chunk
    for t in range(t0, tl.minimum(t0 + tiles_per_chunk, n_tiles)):
        n, l, r_in = _tile(t, n_lblocks, N, L, BLOCK_N, BLOCK_L)
        mask = c_in[:, None] & r_in[None, :]
        dy = tl.load(dy_ptr + _offsets(c, n, l, sgN, sgC, sgL), mask=mask, other=0.0)
        x = tl.load(x_ptr + _offsets(c, n, l, sxN, sxC, sxL), mask=mask, other=0.0)
        dx = (k1[:, None] * dy.to(mean.dtype) + k2[:, None] * (x.to(mean.dtype) - mean[:, None])
              + k3[:, None])
        tl.store(dx_ptr + _offsets(c, n, l, sdN, sdC, sdL), dx.to(dx_ptr.dtype.element_ty),
                 mask=mask)


# Triton picks the interpreter when a kernel is decorated, so this is fixed at import.
INTERPRETED = not isinstance(_stats_kernel, triton.runtime.JITFunction)


# --------------------------------------------------------------------------- layout and grid


class Strides(NamedTuple):
    """Strides of a tensor seen as ``(N, C, L)``."""

    n: int
    c: int
    l: int


class Plan(NamedTuple):
    """The ``(N, C, L)`` view, its tiling and the launch grid ``(channel blocks, chunks)``."""

    N: int
    C: int
    L: int
    strides: list[Strides]
    grid: tuple[int, int]
    tiles_per_chunk: int
    n_lblocks: int
    n_tiles: int
    block_c: int
    block_n: int
    block_l: int

    def args(self) -> tuple[int, ...]:
        """Kernel arguments after the pointers: ``N, C, L``, each tensor's strides, tiling."""
        strides = [s for st in self.strides for s in st]
        return (self.N, self.C, self.L, *strides, self.tiles_per_chunk, self.n_lblocks,
                self.n_tiles)

    def meta(self) -> dict[str, int]:
        """The kernels' compile-time block sizes."""
        return {"BLOCK_C": self.block_c, "BLOCK_N": self.block_n, "BLOCK_L": self.block_l}


def flat_strides(t: torch.Tensor) -> Strides | None:
    """Strides of ``t`` ``(N, C, *spatial)`` seen as ``(N, C, L)``; ``None`` if the spatial
    dims do not flatten to one stride. With ``L = 1``, ``sL = sN`` so ``N`` can fold into ``L``."""
    dims = [d for d in range(2, t.dim()) if t.shape[d] != 1]
    if not dims:
        return Strides(t.stride(0), t.stride(1), t.stride(0))
    if any(t.stride(a) != t.stride(b) * t.shape[b] for a, b in zip(dims, dims[1:])):
        return None
    return Strides(t.stride(0), t.stride(1), t.stride(dims[-1]))


def flattenable(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or (only for exotic strides, e.g. permuted spatial dims) a contiguous copy."""
    return t if flat_strides(t) is not None else t.contiguous()


def plan(*tensors: torch.Tensor) -> Plan:
    """Tiling and grid for same-shape :func:`flattenable` tensors ``(N, C, *spatial)``.

    ``N`` folds into ``L`` when every tensor allows it (``sN == L * sL``). A tile is
    ``BLOCK_C x (BLOCK_N * BLOCK_L)`` elements, laid out so that the first tensor's contiguous
    dim is the fast one: one channel by many positions for NCHW, up to ``BLOCK_C_MAX``
    channels by a few positions for channels-last.
    """
    x = tensors[0]
    n, c = x.shape[:2]
    l = math.prod(x.shape[2:])
    strides = [flat_strides(t) for t in tensors]
    if n == 1 or all(s.n == l * s.l for s in strides):
        n, l, strides = 1, n * l, [Strides(0, s.c, s.l) for s in strides]
    if strides[0].c == 1 and c > 1:
        block_c = min(triton.next_power_of_2(c), BLOCK_C_MAX)
    else:
        block_c = 1
    block_l = min(triton.next_power_of_2(l), TILE // block_c)
    block_n = min(triton.next_power_of_2(n), TILE // (block_c * block_l))
    n_lblocks = triton.cdiv(l, block_l)
    n_tiles = triton.cdiv(n, block_n) * n_lblocks
    c_blocks = triton.cdiv(c, block_c)
    tiles_per_chunk = triton.cdiv(n_tiles, min(n_tiles, triton.cdiv(PROGRAMS, c_blocks)))
    grid = (c_blocks, triton.cdiv(n_tiles, tiles_per_chunk))
    return Plan(n, c, l, strides, grid, tiles_per_chunk, n_lblocks, n_tiles, block_c, block_n,
                block_l)


# --------------------------------------------------------------------------- checks


def available(x: torch.Tensor | None = None) -> bool:
    """Whether the kernels can run: on CUDA tensors, or on any tensor in the interpreter.

    Importing this module needs Triton; ``x=None`` asks about the default device.
    """
    if INTERPRETED:
        return True
    return x.is_cuda if x is not None else torch.cuda.is_available()


def check_args(x: torch.Tensor, **params: torch.Tensor) -> None:
    """Raise a clear error before any launch: bad ``x`` (see :func:`bnlib.torch_bn.check_input`),
    a parameter (``weight``, ...) not of shape ``(C,)`` or on another device, no way to run."""
    for name, p in params.items():
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name} must be a tensor of shape (C,), got {type(p).__name__}")
    check_input(x, params["weight"].numel(), training=True)
    if x.numel() == 0:
        raise ValueError(f"expected a non-empty batch, got input of shape {tuple(x.shape)}")
    c = x.shape[1]
    for name, p in params.items():
        if p.shape != (c,):
            raise ValueError(f"expected {name} of shape ({c},), got {tuple(p.shape)}")
        if p.device != x.device:
            raise ValueError(f"{name} is on {p.device} but x is on {x.device}")
    if not available(x):
        raise RuntimeError(
            f"the Triton kernels need a CUDA tensor (x is on {x.device}); on CPU, set "
            "TRITON_INTERPRET=1 before importing bnlib.triton_bn"
        )


# --------------------------------------------------------------------------- forward, backward


def batch_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BN forward with batch statistics.

    Inputs: ``x`` ``(N, C, *spatial)``, 2-D to 5-D, floating point, contiguous or
    channels-last; ``weight``, ``bias`` ``(C,)``; ``eps`` inside the square root.
    Returns ``(y, mean, var, inv_std)``: ``y`` with ``x``'s shape, dtype and memory layout;
    ``mean``, the biased ``var`` and ``inv_std = 1 / sqrt(var + eps)`` all ``(C,)`` in
    float32 (float64 for float64 ``x``).
    """
    check_args(x, weight=weight, bias=bias)
    x = flattenable(x)
    acc = stats_dtype(x)
    p = plan(x)
    part = torch.empty((3, p.C, p.grid[1]), dtype=acc, device=x.device)
    _stats_kernel[p.grid](x, part, *p.args(), **p.meta())
    _, mean_shifted, var = merge_moments(*part.unbind(0), dim=1)  # part: (3, C, chunks)
    mean = x[(0, slice(None), *[0] * (x.dim() - 2))].to(acc) + mean_shifted  # + x[0, c, 0]
    inv_std = torch.rsqrt(var + eps)
    scale = weight.to(acc) * inv_std
    shift = bias.to(acc) - mean * scale
    y = torch.empty_like(x)
    p = plan(x, y)
    _normalize_kernel[p.grid](x, y, scale, shift, *p.args(), **p.meta())
    return y, mean, var, inv_std


def batch_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The closed-form backward of :func:`batch_norm_forward`.

    Inputs: ``dy`` and ``x`` ``(N, C, *spatial)`` (``dy`` in any layout); ``mean`` and
    ``inv_std`` ``(C,)`` as returned by the forward; ``weight`` ``(C,)``.
    Returns ``(dx, dweight, dbias)``: ``dx`` with ``x``'s shape, dtype and layout;
    ``dweight = inv_std * sum(dy * (x - mean))`` and ``dbias = sum(dy)``, ``(C,)`` in the
    statistics dtype.
    """
    check_args(x, weight=weight, mean=mean, inv_std=inv_std)
    if not isinstance(dy, torch.Tensor) or dy.shape != x.shape or not dy.is_floating_point():
        got = f"{dy.dtype} {tuple(dy.shape)}" if isinstance(dy, torch.Tensor) else type(dy)
        raise ValueError(f"expected a floating-point dy of shape {tuple(x.shape)}, got {got}")
    dy, x = flattenable(dy), flattenable(x)
    acc, m = mean.dtype, x.numel() // x.shape[1]
    mean = mean.contiguous()
    p = plan(x, dy)
    part = torch.empty((2, p.C, p.grid[1]), dtype=acc, device=x.device)
    _grad_sums_kernel[p.grid](x, dy, mean, part, *p.args(), **p.meta())
    dbias, sum_dy_xc = part.sum(2)
    dweight = inv_std * sum_dy_xc
    k1 = weight.to(acc) * inv_std
    k = torch.stack([k1, -k1 * inv_std * dweight / m, -k1 * dbias / m])
    dx = torch.empty_like(x)
    p = plan(x, dy, dx)
    _grad_input_kernel[p.grid](x, dy, dx, mean, k, *p.args(), **p.meta())
    return dx, dweight, dbias


class TritonBatchNormFunction(torch.autograd.Function):
    """Training-mode BN on the Triton kernels; same signature as
    :class:`bnlib.torch_bn.BatchNormFunction`.

    ``forward(x, weight, bias, eps) -> (y, mean, var)``, ``x`` ``(N, C, *spatial)``,
    ``weight``, ``bias`` ``(C,)``; ``mean`` and the biased ``var`` ``(C,)`` carry no gradient.
    Saves ``x`` itself (no ``x - mean`` copy), so the backward is the 5-pass one. It is
    differentiable once: asking for a graph of its backward (second derivatives) raises an
    error; :class:`bnlib.torch_bn.BatchNormFunction` gives correct second derivatives.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, var, inv_std = batch_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, mean, inv_std, weight)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable  # the kernels are opaque to autograd: no graph of this backward
    def backward(ctx, dy, _dmean, _dvar):
        x, mean, inv_std, weight = ctx.saved_tensors
        dx, dweight, dbias = batch_norm_backward(dy, x, mean, inv_std, weight)
        return dx, dweight.to(weight.dtype), dbias.to(weight.dtype), None
