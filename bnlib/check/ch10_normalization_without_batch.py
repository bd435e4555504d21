"""Chapter 10, normalization without the batch: its exercise checkers and their catalogues of
mistakes.

Public checkers: :func:`rms_norm`, :func:`ws_conv2d`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bnlib.batch_free import rms_norm_forward, standardize_weight
from bnlib.check._core import (
    _Case,
    _check,
    _Exercise,
    _Mistake,
)

# --------------------------------------------------------------------------- RMSNorm

# The square statistic a row is divided by (before eps and the square root).
_SQUARES: dict[str, Callable[[np.ndarray, int | None], np.ndarray]] = {
    "mean": lambda x, axis: np.mean(np.square(x), axis=axis, keepdims=True),
    "sum": lambda x, axis: np.sum(np.square(x), axis=axis, keepdims=True),
    "variance": lambda x, axis: np.var(x, axis=axis, keepdims=True),
}


def _rms_variant(
    *,
    center: bool = False,
    square: str = "mean",  # a key of _SQUARES
    axis: int | None = -1,  # the axis the statistic runs over; None: the whole tensor
    eps_inside: bool = True,
    affine: bool = True,
) -> Callable[..., np.ndarray]:
    """An RMSNorm forward pass, right by default; each argument swaps in one wrong step."""

    def solution(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
        s = _SQUARES[square](x, axis)
        centered = x - x.mean(axis=axis, keepdims=True) if center else x
        y = centered / (np.sqrt(s + eps) if eps_inside else np.sqrt(s) + eps)
        return y * weight if affine else y

    return solution


_RMS_FIX = "`y = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * weight`"

_RMS_NORM = _Exercise(
    name="rms_norm",
    outputs=("y",),
    solution=rms_norm_forward,
    formula="every row (last axis) on its own: " + _RMS_FIX + ".",
    mistakes=(
        _Mistake(
            "your output matches the mean subtracted first, `(x - mean) / sqrt(var + eps)`: "
            "that is layer norm (without beta). RMSNorm subtracts nothing; it only divides "
            "by the root of the mean square, " + _RMS_FIX + ".",
            _rms_variant(center=True, square="variance"),
        ),
        _Mistake(
            "your output matches x divided by its standard deviation (the root of the "
            "variance about the mean) without the mean subtracted: RMSNorm divides by the "
            "root of the mean *square*, `np.mean(x**2, axis=-1)`, which is not the variance "
            "unless the mean is 0; a row with a large mean shows the difference.",
            _rms_variant(square="variance"),
        ),
        _Mistake(
            "your output matches statistics over the batch (axis 0), as batch norm takes "
            "them: RMSNorm normalizes every row on its own, over its features, the last "
            "axis: `np.mean(x**2, axis=-1, keepdims=True)`.",
            _rms_variant(axis=0),
        ),
        _Mistake(
            "your output matches eps added outside the square root: use "
            "`np.sqrt(mean_square + eps)`, not `np.sqrt(mean_square) + eps`.",
            _rms_variant(eps_inside=False),
        ),
        _Mistake(
            "your output matches the square root of the *sum* of squares (the norm of the "
            "row): divide by the root of the mean square, `np.mean(x**2, axis=-1, "
            "keepdims=True)`, i.e. by the norm over sqrt(D).",
            _rms_variant(square="sum"),
        ),
        _Mistake(
            "your output matches x_hat without the weight: finish with `x_hat * weight` "
            "(weight, shape (D,), broadcasts over the rows).",
            _rms_variant(affine=False),
        ),
        _Mistake(
            "your output matches one root mean square over the whole tensor: take one per "
            "row, over the last axis only, `np.mean(x**2, axis=-1, keepdims=True)`.",
            _rms_variant(axis=None),
        ),
    ),
)


def _rms_norm_cases() -> list[_Case]:
    """Rows of several scales; ``N != D`` everywhere, so axis mistakes give wrong values."""
    rng = np.random.default_rng(10)
    specs = [  # (name, shape, loc, scale, eps)
        ("typical: 6 rows of 4 features", (6, 4), 0.0, 1.0, 1e-5),
        ("a transformer's (B, T, D) = (2, 5, 8)", (2, 5, 8), 0.5, 2.0, 1e-6),
        ("large offset, row means ~ 1e3", (4, 5), 1e3, 1.0, 1e-5),
        ("tiny rows ~1e-3 so eps matters", (5, 3), 0.0, 1e-3, 1e-6),
        ("row 1 is all zeros (y = 0 there, not NaN)", (3, 6), -0.5, 1.5, 1e-5),
        ("a single row (RMSNorm needs no batch)", (1, 7), 1.0, 2.0, 1e-3),
    ]
    cases = []
    for name, shape, loc, scale, eps in specs:
        d = shape[-1]
        x = loc + scale * (rng.uniform(-1.0, 1.0, d) + rng.standard_normal(shape))
        if "zeros" in name:
            x[1] = 0.0
        cases.append(_Case(name, {"x": x, "weight": rng.uniform(0.5, 2.0, d), "eps": eps}))
    return cases


def rms_norm(fn: Callable[..., Any]) -> bool:
    """Check the reader's RMS normalization forward pass (Zhang & Sennrich, 2019).

    ``fn(x, weight, eps)`` takes ``x`` of shape ``(..., D)`` (``(N, D)`` here, and a
    transformer's ``(B, T, D)``), ``weight`` of shape ``(D,)`` and a float ``eps``; it
    returns ``y`` of ``x``'s shape, every row (last axis) normalized on its own without
    subtracting its mean: ``x / sqrt(mean(x**2, axis=-1) + eps) * weight``, or the pair
    ``(y, cache)``.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_RMS_NORM, fn, _rms_norm_cases())


# --------------------------------------------------------------------------- weight standardization


def _conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``torch.nn.functional.conv2d`` in float64: stride 1, no padding."""
    b = None if bias is None else torch.from_numpy(bias)
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), b).numpy()


def _ws_solution(x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                 eps: float) -> np.ndarray:
    return _conv(x, standardize_weight(torch.from_numpy(weight), eps).numpy(), bias)


def _ws_variant(
    *,
    axes: tuple[int, ...] = (1, 2, 3),  # the weight axes the statistics run over
    ddof: int = 0,
    center: bool = True,
    scale: bool = True,
    eps_inside: bool = True,
    use_bias: bool = True,
) -> Callable[..., np.ndarray]:
    """A weight-standardized convolution, right by default; each argument swaps in one
    wrong step."""

    def solution(x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                 eps: float) -> np.ndarray:
        mean = weight.mean(axis=axes, keepdims=True)
        var = weight.var(axis=axes, ddof=ddof, keepdims=True)
        w_hat = weight - mean if center else weight
        if scale:
            w_hat = w_hat / (np.sqrt(var + eps) if eps_inside else np.sqrt(var) + eps)
        return _conv(x, w_hat, bias if use_bias else None)

    return solution


_WS_FIX = (
    "`w_hat = (weight - weight.mean(axis=(1, 2, 3), keepdims=True)) / "
    "np.sqrt(weight.var(axis=(1, 2, 3), keepdims=True) + eps)`"
)

_WS_CONV = _Exercise(
    name="ws_conv2d",
    outputs=("y",),
    solution=_ws_solution,
    formula="each output channel's weights (over C_in, kH, kW) standardized, " + _WS_FIX
    + ", then `conv2d(x, w_hat, bias)` with stride 1 and no padding.",
    mistakes=(
        _Mistake(
            "your output matches statistics per (output, input) channel pair, over kH and "
            "kW only: weight standardization takes one mean and one variance per *output* "
            "channel, over everything that feeds it (C_in, kH and kW): " + _WS_FIX + ".",
            _ws_variant(axes=(2, 3)),
        ),
        _Mistake(
            "your output matches one mean and one variance over the whole weight tensor: "
            "take them per output channel (axis 0 kept), " + _WS_FIX + ".",
            _ws_variant(axes=(0, 1, 2, 3)),
        ),
        _Mistake(
            "your output matches statistics over the output channels (axis 0): each output "
            "channel is standardized on its own, over its own weights, the axes "
            "(1, 2, 3): " + _WS_FIX + ".",
            _ws_variant(axes=(0,)),
        ),
        _Mistake(
            "your output matches the unbiased variance (ddof=1): standardize with the biased "
            "variance, dividing by the number of weights, `var(..., ddof=0)` (NumPy's "
            "default; torch's `var` needs `correction=0`).",
            _ws_variant(ddof=1),
        ),
        _Mistake(
            "your output matches eps added outside the square root: use "
            "`np.sqrt(var + eps)`, not `np.sqrt(var) + eps`.",
            _ws_variant(eps_inside=False),
        ),
        _Mistake(
            "your output matches weights divided by their standard deviation but not "
            "centered: subtract each output channel's mean first, " + _WS_FIX + ".",
            _ws_variant(center=False),
        ),
        _Mistake(
            "your output matches centered weights that are not divided by their standard "
            "deviation: " + _WS_FIX + ".",
            _ws_variant(scale=False),
        ),
        _Mistake(
            "your output matches the convolution without its bias: pass `bias` to the "
            "convolution (only the weight is standardized; the bias is added as it is).",
            _ws_variant(use_bias=False),
        ),
        _Mistake(
            "your output matches the convolution with the raw weight: standardize it first, "
            + _WS_FIX + ".",
            _ws_variant(center=False, scale=False),
        ),
    ),
)


def _ws_conv2d_cases() -> list[_Case]:
    """Output channels with their own offsets and scales; ``H != W`` in most inputs."""
    rng = np.random.default_rng(12)
    specs = [  # (name, x shape, weight shape, weight loc, weight scale, eps)
        ("typical: 3 -> 4 channels, 3x3 kernel", (2, 3, 6, 5), (4, 3, 3, 3), 0.0, 0.3, 1e-5),
        ("more outputs than inputs: 2 -> 6 channels", (3, 2, 5, 5), (6, 2, 3, 3), 0.2, 1.0,
         1e-5),
        ("a 1x1 kernel", (2, 4, 3, 4), (5, 4, 1, 1), 0.0, 1.0, 1e-5),
        ("weights with a large offset ~ 1e3", (2, 3, 5, 4), (4, 3, 3, 3), 1e3, 1.0, 1e-5),
        ("tiny weights ~1e-3 so eps matters", (2, 3, 5, 5), (4, 3, 3, 3), 0.0, 1e-3, 1e-5),
        ("a 2x3 kernel (kH != kW)", (2, 2, 6, 7), (3, 2, 2, 3), -0.5, 1.0, 1e-4),
    ]
    cases = []
    for name, x_shape, w_shape, loc, scale, eps in specs:
        c_out = w_shape[0]
        channel_loc = loc + scale * rng.uniform(-1.0, 1.0, (c_out, 1, 1, 1))
        channel_scale = scale * rng.uniform(0.5, 2.0, (c_out, 1, 1, 1))
        weight = channel_loc + channel_scale * rng.standard_normal(w_shape)
        cases.append(_Case(name, {"x": 0.5 + rng.standard_normal(x_shape), "weight": weight,
                                  "bias": rng.uniform(-1.0, 1.0, c_out), "eps": eps}))
    return cases


def ws_conv2d(fn: Callable[..., Any]) -> bool:
    """Check the reader's weight-standardized convolution (Qiao et al., 2019).

    ``fn(x, weight, bias, eps)`` takes ``x`` of shape ``(N, C_in, H, W)``, ``weight`` of
    shape ``(C_out, C_in, kH, kW)``, ``bias`` of shape ``(C_out,)`` (all float64 NumPy
    arrays) and a float ``eps``; it returns ``y`` of shape ``(N, C_out, H - kH + 1,
    W - kW + 1)``: the convolution (stride 1, no padding) of ``x`` with the standardized
    weight plus ``bias``, each output channel's weights ``W_i`` (over ``C_in``, ``kH``,
    ``kW``) replaced by ``(W_i - mean(W_i)) / sqrt(var(W_i) + eps)`` with the biased
    variance. ``y`` may be a NumPy array or a torch tensor (e.g. from
    ``torch.nn.functional.conv2d``).

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_WS_CONV, fn, _ws_conv2d_cases())
