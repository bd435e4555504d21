"""Chapter 5, BN in convolutional networks: its exercise checkers and their catalogues of mistakes.

Public checkers: :func:`spatial_batchnorm_forward`, :func:`fold_bn_into_conv`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bnlib import reference as ref
from bnlib.check._core import (
    Outputs,
    _Case,
    _check,
    _Exercise,
    _Mistake,
)
from bnlib.check.ch03_bn_algorithm import _bn_variant

# --------------------------------------------------------------------------- spatial BN (CNNs)


def _channel_affine(x_hat: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``gamma * x_hat + beta`` with ``gamma``, ``beta`` ``(C,)`` on axis 1 of ``x_hat``."""
    return ref.per_channel(gamma, x_hat.ndim) * x_hat + ref.per_channel(beta, x_hat.ndim)


def _spatial_variant(**kw: Any) -> Callable[..., np.ndarray]:
    """Spatial BN, right with the defaults; ``kw`` swaps in one wrong step (see _bn_variant)."""
    return _bn_variant(**{"axis": (0, 2, 3), "affine": _channel_affine, **kw})


def _spatial_rows_no_transpose(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                               eps: float) -> np.ndarray:
    """The 1-D BN applied to ``x.reshape(-1, C)``: the channels are scrambled."""
    return _bn_variant()(x.reshape(-1, x.shape[1]), gamma, beta, eps).reshape(x.shape)


def _spatial_rows_not_back(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                           eps: float) -> np.ndarray:
    """Right rows (channels last), but reshaped back to (N, C, H, W) without transposing."""
    rows = x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
    return _bn_variant()(rows, gamma, beta, eps).reshape(x.shape)


_PER_CHANNEL = (
    "a convolutional layer keeps one mean and one variance per channel, over the batch and "
    "every position: `x.mean(axis=(0, 2, 3), keepdims=True)` and "
    "`x.var(axis=(0, 2, 3), keepdims=True)`."
)
_ROWS_FIX = (
    "to reuse the (N, D) batch norm, move the channels last first, "
    "`rows = x.transpose(0, 2, 3, 1).reshape(-1, C)`, and undo both steps afterwards, "
    "`y = y_rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)`."
)

_SPATIAL = _Exercise(
    name="spatial_batchnorm_forward",
    outputs=("y",),
    solution=ref.batchnorm_forward,
    formula="y = gamma[c] * (x - mean[c]) / np.sqrt(var[c] + eps) + beta[c], with mean and the "
    "biased var over axes (0, 2, 3) and gamma, beta reshaped to (1, C, 1, 1).",
    mistakes=(
        _Mistake(
            "your output matches per-activation statistics: a mean and variance for every "
            "(channel, row, column) over the batch axis only, as BatchNorm1d on flattened "
            "maps computes; " + _PER_CHANNEL,
            _spatial_variant(axis=0),
        ),
        _Mistake(
            "your output matches statistics per position, over the batch and the channels "
            "(axes 0 and 1); " + _PER_CHANNEL,
            _spatial_variant(axis=(0, 1)),
        ),
        _Mistake(
            "your output matches statistics per sample and channel over H and W only "
            "(instance normalization): the batch axis is missing; " + _PER_CHANNEL,
            _spatial_variant(axis=(2, 3)),
        ),
        _Mistake(
            "your output matches statistics per sample over C, H and W (layer "
            "normalization); " + _PER_CHANNEL,
            _spatial_variant(axis=(1, 2, 3)),
        ),
        _Mistake(
            "your output matches statistics taken over the whole array (one scalar mean and "
            "variance) instead of one per channel; " + _PER_CHANNEL,
            _spatial_variant(axis=None),
        ),
        _Mistake(
            "you normalized with the unbiased variance (dividing by m-1, `ddof=1`); batch "
            "norm divides by the m = N*H*W values of each channel: use the default `ddof=0`.",
            _spatial_variant(ddof=1),
        ),
        _Mistake(
            "gamma and beta are applied along the last axis (W): a (C,) array broadcasts "
            "against the last axis of (N, C, H, W); reshape them to (1, C, 1, 1) first, "
            "`gamma.reshape(1, -1, 1, 1) * x_hat + beta.reshape(1, -1, 1, 1)`.",
            _spatial_variant(affine=lambda x_hat, gamma, beta: gamma * x_hat + beta),
        ),
        _Mistake(
            "you reshaped (N, C, H, W) straight to (-1, C), which mixes channels and "
            "positions in every column; " + _ROWS_FIX,
            _spatial_rows_no_transpose,
        ),
        _Mistake(
            "the rows were right (channels moved last), but the result was reshaped straight "
            "back to (N, C, H, W) without moving the channels back; " + _ROWS_FIX,
            _spatial_rows_not_back,
        ),
        _Mistake(
            "eps is missing, so a channel with (almost) zero variance divides by (almost) "
            "zero: `np.sqrt(var + eps)`.",
            _spatial_variant(std=lambda var, eps: np.sqrt(var)),
        ),
        _Mistake(
            "eps is outside the square root (`np.sqrt(var) + eps`); it belongs inside: "
            "`np.sqrt(var + eps)`.",
            _spatial_variant(std=lambda var, eps: np.sqrt(var) + eps),
        ),
    ),
)


def _spatial_cases() -> list[_Case]:
    """``(N, C, H, W)`` inputs with ``W == C`` (so gamma on the wrong axis runs) and
    ``N``, ``H`` different; a position-dependent pattern, as real feature maps have."""
    rng = np.random.default_rng(2)

    def maps(shape: tuple[int, int, int, int], scale: Sequence[float],
             offset: float = 0.0) -> np.ndarray:
        n, c, h, w = shape
        loc = offset + rng.uniform(-2, 2, (1, c, 1, 1))
        pattern = rng.uniform(-1, 1, (1, 1, h, w))
        noise = rng.standard_normal(shape)
        return loc + np.asarray(scale, dtype=float).reshape(1, c, 1, 1) * (pattern + noise)

    specs = [
        ("typical batch", (4, 3, 5, 3), [1.0, 2.0, 0.5], 0.0, 1e-5),
        ("a batch of one image (N=1)", (1, 4, 6, 4), [1.0, 0.5, 2.0, 1.5], 0.0, 1e-3),
        ("channel 1 has variance ~1e-8, so eps matters", (3, 3, 4, 3), [1.0, 1e-4, 2.0],
         0.0, 1e-5),
        ("channel 2 is constant (variance 0)", (2, 4, 3, 4), [1.0, 0.5, 0.0, 2.0], 0.0, 1e-5),
        ("large offset, |mean| ~ 1e3", (4, 2, 5, 2), [1.0, 2.0], 1e3, 1e-5),
        ("N=2 with 2x5 maps, large eps", (2, 5, 2, 5), [1.0, 0.5, 2.0, 1.0, 0.7], 0.0, 0.1),
    ]
    cases = []
    for name, shape, scale, offset, eps in specs:
        c = shape[1]
        x = maps(shape, scale, offset)
        if "constant" in name:
            x[:, 2] = 2.5  # exactly representable: its variance is 0 in any summation order
        gamma, beta = rng.uniform(0.5, 2.0, c), rng.uniform(-1.0, 1.0, c)
        cases.append(_Case(name, {"x": x, "gamma": gamma, "beta": beta, "eps": eps}))
    return cases


def spatial_batchnorm_forward(fn: Callable[..., Any]) -> bool:
    """Check the reader's training-mode batch norm for convolutional feature maps.

    ``fn(x, gamma, beta, eps)`` takes ``x`` of shape ``(N, C, H, W)``, ``gamma`` and ``beta``
    of shape ``(C,)`` and a float ``eps``; it returns ``y`` of shape ``(N, C, H, W)``,
    normalized per channel over ``N``, ``H`` and ``W`` with the biased variance, or the pair
    ``(y, cache)``.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_SPATIAL, fn, _spatial_cases())


# --------------------------------------------------------------------------- BN folding


def _fold_variant(
    *,
    scale: Callable[..., np.ndarray] = lambda gamma, var, eps: gamma / np.sqrt(var + eps),
    weight_axis: int | None = 0,
    bias: Callable[..., np.ndarray] = lambda b, mean, s, beta: (b - mean) * s + beta,
) -> Callable[..., Outputs]:
    """Folding, right by default; each argument swaps in one wrong step
    (``weight_axis=None``: the weight is left as it was)."""

    def solution(weight: np.ndarray, b: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                 running_mean: np.ndarray, running_var: np.ndarray, eps: float) -> Outputs:
        s = scale(gamma, running_var, eps)
        if weight_axis is None:
            new_weight = weight
        else:
            shape = [1] * weight.ndim
            shape[weight_axis] = -1
            new_weight = weight * s.reshape(shape)
        return new_weight, bias(b, running_mean, s, beta)

    return solution


def _fold_solution(weight: np.ndarray, bias: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                   running_mean: np.ndarray, running_var: np.ndarray, eps: float) -> Outputs:
    return ref.fold_batchnorm(weight, bias, gamma, beta, running_mean, running_var, eps)


_FOLD_SCALE = "the scale is `s = gamma / np.sqrt(running_var + eps)`"
_FOLD_BIAS = "`new_bias = (bias - running_mean) * s + beta`"

_FOLD = _Exercise(
    name="fold_bn_into_conv",
    outputs=("new_weight", "new_bias"),
    solution=_fold_solution,
    formula="s = gamma / np.sqrt(running_var + eps); new_weight = weight * s[:, None, None, "
    "None] (output channel c scaled by s[c]); new_bias = (bias - running_mean) * s + beta.",
    mistakes=(
        _Mistake(
            "new_weight scales the input channels (axis 1 of the weight); BN rescales the "
            "conv's *output* channels, which are axis 0 of a (C_out, C_in, kh, kw) weight: "
            "`weight * s[:, None, None, None]`.",
            _fold_variant(weight_axis=1),
        ),
        _Mistake(
            "you divided by the variance instead of the standard deviation (the square root "
            "is missing): " + _FOLD_SCALE + ".",
            _fold_variant(scale=lambda gamma, var, eps: gamma / (var + eps)),
        ),
        _Mistake(
            "you multiplied by the standard deviation instead of dividing by it: BN divides "
            "by it, so " + _FOLD_SCALE + ".",
            _fold_variant(scale=lambda gamma, var, eps: gamma * np.sqrt(var + eps)),
        ),
        _Mistake(
            "eps is missing: BN divides by `np.sqrt(running_var + eps)`, so "
            + _FOLD_SCALE + ".",
            _fold_variant(scale=lambda gamma, var, eps: gamma / np.sqrt(var)),
        ),
        _Mistake(
            "eps is outside the square root; " + _FOLD_SCALE + ".",
            _fold_variant(scale=lambda gamma, var, eps: gamma / (np.sqrt(var) + eps)),
        ),
        _Mistake(
            "gamma is missing from the scale; " + _FOLD_SCALE + ".",
            _fold_variant(scale=lambda gamma, var, eps: 1.0 / np.sqrt(var + eps)),
        ),
        _Mistake(
            "the weight is not scaled: BN multiplies the conv's whole output channel c by "
            "s[c], weight and bias alike: `new_weight = weight * s[:, None, None, None]`.",
            _fold_variant(weight_axis=None),
        ),
        _Mistake(
            "the bias is not scaled: BN scales everything the conv outputs, its bias too: "
            + _FOLD_BIAS + ".",
            _fold_variant(bias=lambda b, mean, s, beta: b - mean + beta),
        ),
        _Mistake(
            "the running mean is subtracted after scaling; BN subtracts it first: "
            + _FOLD_BIAS + ".",
            _fold_variant(bias=lambda b, mean, s, beta: b * s - mean + beta),
        ),
        _Mistake(
            "the running mean is not subtracted: " + _FOLD_BIAS + ".",
            _fold_variant(bias=lambda b, mean, s, beta: b * s + beta),
        ),
        _Mistake(
            "beta is missing: BN adds it after scaling, " + _FOLD_BIAS + ".",
            _fold_variant(bias=lambda b, mean, s, beta: (b - mean) * s),
        ),
        _Mistake(
            "the conv's own bias is lost: it passes through BN too, " + _FOLD_BIAS + ".",
            _fold_variant(bias=lambda b, mean, s, beta: -mean * s + beta),
        ),
    ),
)


def _fold_cases() -> list[_Case]:
    """Conv weights ``(C, C, kh, kw)`` (``C_in == C_out``, so scaling the wrong axis runs)."""
    rng = np.random.default_rng(3)
    specs = [  # name, (C, kh, kw), var range, gamma sign, mean offset, eps
        ("typical 3x3 conv", (4, 3, 3), (0.5, 2.0), 1.0, 0.0, 1e-5),
        ("1x1 conv", (3, 1, 1), (0.2, 3.0), 1.0, 0.0, 1e-3),
        ("channel 0 has running_var 1e-7, so eps matters", (3, 2, 3), (0.5, 2.0), 1.0, 0.0,
         1e-5),
        ("negative gamma, |running_mean| ~ 1e2", (2, 3, 1), (1.0, 4.0), -1.0, 100.0, 1e-5),
        ("large eps", (5, 1, 2), (0.01, 0.5), 1.0, 0.0, 0.1),
    ]
    cases = []
    for name, (c, kh, kw), (v_lo, v_hi), sign, offset, eps in specs:
        var = rng.uniform(v_lo, v_hi, c)
        if "1e-7" in name:
            var[0] = 1e-7
        cases.append(_Case(name, {
            "weight": rng.standard_normal((c, c, kh, kw)),
            "bias": rng.uniform(-1, 1, c),
            "gamma": sign * rng.uniform(0.5, 2.0, c),
            "beta": rng.uniform(-1, 1, c),
            "running_mean": offset + rng.uniform(-1, 1, c),
            "running_var": var,
            "eps": eps,
        }))
    return cases


def fold_bn_into_conv(fn: Callable[..., Any]) -> bool:
    """Check the reader's folding of an eval-mode BN into the convolution before it.

    ``fn(weight, bias, gamma, beta, running_mean, running_var, eps)`` takes the conv's
    ``weight`` ``(C_out, C_in, kh, kw)`` and ``bias`` ``(C_out,)``, the BN's ``gamma``,
    ``beta``, ``running_mean``, ``running_var`` (all ``(C_out,)``) and float ``eps``; it
    returns ``(new_weight, new_bias)`` of the same shapes, such that the conv with them equals
    conv followed by BN in eval mode.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_FOLD, fn, _fold_cases())


