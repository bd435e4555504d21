"""Chapter 3, the Batch Normalization algorithm: its checkers and their catalogues of mistakes.

Public checkers: :func:`batchnorm_forward`, :func:`batchnorm_backward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

# --------------------------------------------------------------------------- BN inputs


def _bn_batches(rng: np.random.Generator) -> list[tuple[str, np.ndarray, float]]:
    """The hard ``(N, D)`` inputs of the BN checkers, as ``(description, x, eps)``.

    ``N != D`` everywhere so axis mistakes change the result; the eps values differ so an
    ignored ``eps`` argument shows; the constant feature is exactly representable, so its
    variance is exactly 0 in any summation order.
    """

    def batch(n: int, loc: Sequence[float], scale: Sequence[float]) -> np.ndarray:
        loc, scale = np.asarray(loc, dtype=float), np.asarray(scale, dtype=float)
        return loc + scale * rng.standard_normal((n, loc.size))

    return [
        ("typical batch", batch(16, rng.uniform(-2, 2, 5), rng.uniform(0.5, 3, 5)), 1e-5),
        ("small batch, N=2", batch(2, [0.5, -1.0, 2.0], [1.0, 2.0, 0.5]), 1e-3),
        ("feature 2 has variance ~1e-8, so eps matters",
         batch(8, [0.0, 1.0, 3.0, -2.0], [1.0, 0.5, 1e-4, 2.0]), 1e-5),
        ("feature 1 is constant (variance 0)", batch(8, [0.0, 2.5, -1.0], [1.0, 0.0, 2.0]), 1e-5),
        ("large offset, |mean| ~ 1e3", batch(16, [1e3, -1e3, 1005.0], [1.0, 2.0, 0.5]), 1e-5),
        ("more features than samples, large eps",
         batch(4, rng.uniform(-1, 1, 7), rng.uniform(0.5, 2, 7)), 0.1),
    ]


# --------------------------------------------------------------------------- BN forward


def _bn_variant(
    *,
    axis: int | None = 0,
    ddof: int = 0,
    center: bool = True,
    std: Callable[[np.ndarray, float], np.ndarray] = lambda var, eps: np.sqrt(var + eps),
    affine: Callable[..., np.ndarray] = lambda x_hat, gamma, beta: gamma * x_hat + beta,
) -> Callable[..., np.ndarray]:
    """A BN forward pass, right by default; each argument swaps in one wrong step."""

    def solution(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
        mean = x.mean(axis=axis, keepdims=True)
        var = x.var(axis=axis, ddof=ddof, keepdims=True)
        x_hat = ((x - mean) if center else x) / std(var, eps)
        return affine(x_hat, gamma, beta)

    return solution


_ONE_PASS_CASE = "float32 input, |mean| ~ 3e3"
_FIX_AFFINE = "finish with `y = gamma * x_hat + beta`."
_FIXED_EPS_NOTE = {1e-3: " (Keras's default)", 1e-5: " (PyTorch's default)"}

_FORWARD = _Exercise(
    name="batchnorm_forward",
    outputs=("y",),
    solution=ref.batchnorm_forward,
    formula="y = gamma * (x - mean) / np.sqrt(var + eps) + beta, with mean = x.mean(axis=0) "
    "and var = x.var(axis=0).",
    mistakes=(
        _Mistake(
            "your output matches batch norm computed over axis 1 (per sample) instead of "
            "axis 0 (per feature): take the mean and variance over the batch axis, "
            "`x.mean(axis=0)` and `x.var(axis=0)`.",
            _bn_variant(axis=1),
        ),
        _Mistake(
            "your output matches statistics taken over the whole array (one scalar mean and "
            "variance) instead of one per feature: pass `axis=0` to `mean` and `var`.",
            _bn_variant(axis=None),
        ),
        _Mistake(
            "you normalized with the unbiased variance (dividing by N-1: `ddof=1`, or "
            "torch.var's default); batch norm normalizes with the biased variance (dividing "
            "by N): use `x.var(axis=0)` (NumPy's default ddof=0) or `unbiased=False` in torch.",
            _bn_variant(ddof=1),
        ),
        _Mistake(
            "eps is missing, so a feature with (almost) zero variance divides by (almost) "
            "zero: add eps to the variance inside the square root, `np.sqrt(var + eps)`.",
            _bn_variant(std=lambda var, eps: np.sqrt(var)),
        ),
        _Mistake(
            "eps is outside the square root (`np.sqrt(var) + eps`); it belongs inside: "
            "`np.sqrt(var + eps)`.",
            _bn_variant(std=lambda var, eps: np.sqrt(var) + eps),
        ),
        _Mistake(
            "you divided by the variance instead of the standard deviation: divide by "
            "`np.sqrt(var + eps)`.",
            _bn_variant(std=lambda var, eps: var + eps),
        ),
        _Mistake(
            "you took the square root of the standard deviation (`np.sqrt(std + eps)`); "
            "take it of the variance: `np.sqrt(var + eps)` with `var = x.var(axis=0)`.",
            _bn_variant(std=lambda var, eps: np.sqrt(np.sqrt(var) + eps)),
        ),
        _Mistake(
            "the mean is not subtracted: `x_hat = (x - mean) / np.sqrt(var + eps)`.",
            _bn_variant(center=False),
        ),
        _Mistake(
            "gamma and beta are not applied: your output is x_hat; " + _FIX_AFFINE,
            _bn_variant(affine=lambda x_hat, gamma, beta: x_hat),
        ),
        _Mistake(
            "beta is not added: " + _FIX_AFFINE,
            _bn_variant(affine=lambda x_hat, gamma, beta: gamma * x_hat),
        ),
        _Mistake(
            "gamma is not applied: " + _FIX_AFFINE,
            _bn_variant(affine=lambda x_hat, gamma, beta: x_hat + beta),
        ),
        _Mistake(
            "gamma and beta are swapped: gamma scales and beta shifts, " + _FIX_AFFINE,
            _bn_variant(affine=lambda x_hat, gamma, beta: beta * x_hat + gamma),
        ),
        *(
            _Mistake(
                f"your output ignores the eps argument and behaves as if eps={e:g}"
                f"{_FIXED_EPS_NOTE.get(e, '')}: use the eps your function is given, "
                "`np.sqrt(var + eps)`.",
                _bn_variant(std=lambda var, eps, e=e: np.sqrt(var + e)),
            )
            for e in (1e-3, 1e-5, 1e-8)
        ),
    ),
    case_hints={_ONE_PASS_CASE: (
        "right on every float64 batch but wrong on float32 input with a large mean: the "
        "one-pass variance `(x**2).mean(axis=0) - mean**2` (E[x^2] - E[x]^2) subtracts two "
        "numbers near 9e6 that agree in all but their last digits, and float32 keeps about "
        "7 of them (catastrophic cancellation). Take the variance of the deviations instead, "
        "`((x - mean)**2).mean(axis=0)` or `x.var(axis=0)` (two-pass), as the pitfalls "
        "section explains.")},
)


def _forward_cases() -> list[_Case]:
    rng = np.random.default_rng(0)
    cases = []
    for name, x, eps in _bn_batches(rng):
        d = x.shape[1]
        gamma, beta = rng.uniform(0.5, 2.0, d), rng.uniform(-1.0, 1.0, d)
        cases.append(_Case(name, {"x": x, "gamma": gamma, "beta": beta, "eps": eps}))
    # The pitfall of the one-pass variance E[x^2] - E[x]^2: in float32 with a large mean it
    # cancels catastrophically (an error of 0.7 or more in y over 200 draws, or NaN), where
    # the two-pass variance in float32 stays within 2e-3 of the float64 truth. The tolerance,
    # 1e-2 of the largest |y|, sits between the two.
    x32 = (3e3 + rng.standard_normal((32, 3)) * [1.0, 2.0, 0.5]).astype(np.float32)
    gamma32, beta32 = rng.uniform(0.5, 2.0, 3), rng.uniform(-1.0, 1.0, 3)
    cases.append(_Case(_ONE_PASS_CASE, {"x": x32, "gamma": gamma32.astype(np.float32),
                                        "beta": beta32.astype(np.float32), "eps": 1e-5},
                       rtol=1e-2, atol_factor=1.0))
    return cases


def batchnorm_forward(fn: Callable[..., Any]) -> bool:
    """Check the reader's training-mode batch norm forward pass.

    ``fn(x, gamma, beta, eps)`` takes ``x`` of shape ``(N, D)``, ``gamma`` and ``beta`` of
    shape ``(D,)`` and a float ``eps``; it returns ``y`` of shape ``(N, D)``, normalized per
    feature over the batch (axis 0) with the biased variance, or the pair ``(y, cache)``.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_FORWARD, fn, _forward_cases())


# --------------------------------------------------------------------------- BN backward


@dataclass(frozen=True)
class _Grad:
    """The pieces every BN backward formula is built from, for one ``(dy, x, gamma, eps)``."""

    dy: np.ndarray  # (N, D)
    x: np.ndarray  # (N, D)
    gamma: np.ndarray  # (D,)
    x_hat: np.ndarray  # (N, D)
    inv_std: np.ndarray  # (1, D), 1 / sqrt(var + eps)
    n: int  # N, the number of values per feature
    axis: int  # the axis the sums run over (0 when right)

    def sum(self, a: np.ndarray, keepdims: bool = False) -> np.ndarray:
        return a.sum(axis=self.axis, keepdims=keepdims)


def _dx(p: _Grad) -> np.ndarray:
    return p.gamma * p.inv_std / p.n * (
        p.n * p.dy - p.sum(p.dy, True) - p.x_hat * p.sum(p.dy * p.x_hat, True)
    )


def _dgamma(p: _Grad) -> np.ndarray:
    return p.sum(p.dy * p.x_hat)


def _dbeta(p: _Grad) -> np.ndarray:
    return p.sum(p.dy)


def _bn_grad_variant(
    *,
    dx: Callable[[_Grad], np.ndarray] = _dx,
    dgamma: Callable[[_Grad], np.ndarray] = _dgamma,
    dbeta: Callable[[_Grad], np.ndarray] = _dbeta,
    axis: int = 0,
    ddof: int = 0,
    use_eps: bool = True,
) -> Callable[..., Outputs]:
    """A BN backward pass, right by default; each argument swaps in one wrong step."""

    def solution(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, eps: float) -> Outputs:
        var = x.var(axis=0, ddof=ddof, keepdims=True)
        inv_std = 1.0 / np.sqrt(var + (eps if use_eps else 0.0))
        x_hat = (x - x.mean(axis=0, keepdims=True)) * inv_std
        p = _Grad(dy, x, gamma, x_hat, inv_std, x.shape[0], axis)
        return dx(p), dgamma(p), dbeta(p)

    return solution


def _backward_solution(
    dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _, cache = ref.batchnorm_forward(x, gamma, np.zeros_like(gamma), eps)
    return ref.batchnorm_backward(dy, cache)


_FIX_N = (
    "the mean and the biased variance both average over N values, so dx divides by N: "
    "`dx = gamma / np.sqrt(var + eps) / N * (N * dy - dy.sum(axis=0) - "
    "x_hat * (dy * x_hat).sum(axis=0))`."
)
_UNBIASED = (
    "you used the unbiased variance (ddof=1); the forward pass normalizes with the biased "
    "one (dividing by N), so the backward pass must use it too: `var = x.var(axis=0)`."
)

_BACKWARD = _Exercise(
    name="batchnorm_backward",
    outputs=("dx", "dgamma", "dbeta"),
    solution=_backward_solution,
    formula="dx = gamma / np.sqrt(var + eps) / N * (N * dy - dy.sum(axis=0) - "
    "x_hat * (dy * x_hat).sum(axis=0)), dgamma = (dy * x_hat).sum(axis=0), "
    "dbeta = dy.sum(axis=0), with the biased var = x.var(axis=0).",
    mistakes=(
        _Mistake(
            "dx treats the batch mean and variance as constants (`dx = dy * gamma / "
            "np.sqrt(var + eps)`, the eval-mode gradient), but in training both depend on x; "
            + _FIX_N,
            _bn_grad_variant(dx=lambda p: p.dy * p.gamma * p.inv_std),
        ),
        _Mistake(
            "dx is missing the path through the mean: mean = x.mean(axis=0) depends on x and "
            "adds the `- dy.sum(axis=0)` term inside the bracket; " + _FIX_N,
            _bn_grad_variant(
                dx=lambda p: p.gamma * p.inv_std * (p.dy - p.x_hat * p.sum(p.dy * p.x_hat) / p.n)
            ),
        ),
        _Mistake(
            "dx is missing the path through the variance: var depends on x and adds the "
            "`- x_hat * (dy * x_hat).sum(axis=0)` term inside the bracket; " + _FIX_N,
            _bn_grad_variant(dx=lambda p: p.gamma * p.inv_std * (p.dy - p.sum(p.dy) / p.n)),
        ),
        _Mistake(
            "dx is missing the factor gamma: y = gamma * x_hat + beta, so the gradient that "
            "reaches x_hat is `dy * gamma`.",
            _bn_grad_variant(dx=lambda p: _dx(p) / p.gamma),
        ),
        _Mistake(
            "dgamma forgets x_hat: y = gamma * x_hat + beta gives "
            "`dgamma = (dy * x_hat).sum(axis=0)`.",
            _bn_grad_variant(dgamma=lambda p: p.sum(p.dy)),
        ),
        _Mistake(
            "dgamma uses x where it needs x_hat, the normalized input that gamma multiplies: "
            "`dgamma = (dy * x_hat).sum(axis=0)`.",
            _bn_grad_variant(dgamma=lambda p: p.sum(p.dy * p.x)),
        ),
        _Mistake(
            "dgamma and dbeta are swapped: gamma multiplies x_hat, so "
            "`dgamma = (dy * x_hat).sum(axis=0)`, and beta is added, so `dbeta = dy.sum(axis=0)`.",
            _bn_grad_variant(dgamma=_dbeta, dbeta=_dgamma),
        ),
        _Mistake(
            "the sums run over axis 1 (per sample) instead of axis 0 (over the batch): gamma "
            "and beta are shared by all samples, so dgamma and dbeta have shape (D,) and every "
            "sum, in dx too, is `.sum(axis=0)`.",
            _bn_grad_variant(axis=1),
        ),
        _Mistake(_UNBIASED, _bn_grad_variant(ddof=1)),
        _Mistake(  # the exact gradient of a forward pass that used the unbiased variance
            "your gradients are exactly those of a forward pass that normalized with the "
            "unbiased variance (ddof=1, dividing by N-1), the N-1 carried through every "
            "term; BN's forward pass divides by N, so use `var = x.var(axis=0)` throughout.",
            _bn_grad_variant(
                ddof=1,
                dx=lambda p: p.gamma * p.inv_std * (
                    p.dy - p.sum(p.dy) / p.n - p.x_hat * p.sum(p.dy * p.x_hat) / (p.n - 1)
                ),
            ),
        ),
        _Mistake(
            "dx divides by N-1 where it should divide by N: " + _FIX_N,
            _bn_grad_variant(dx=lambda p: _dx(p) * p.n / (p.n - 1)),
        ),
        _Mistake(
            "dx divides the sums by N-1 where it should divide by N: " + _FIX_N,
            _bn_grad_variant(
                dx=lambda p: p.gamma * p.inv_std * (
                    p.dy - (p.sum(p.dy) + p.x_hat * p.sum(p.dy * p.x_hat)) / (p.n - 1)
                )
            ),
        ),
        _Mistake(
            "dbeta is averaged over the batch; sum it, since every sample adds its own "
            "contribution: `dbeta = dy.sum(axis=0)`.",
            _bn_grad_variant(dbeta=lambda p: p.sum(p.dy) / p.n),
        ),
        _Mistake(
            "dgamma is averaged over the batch; sum it, since every sample adds its own "
            "contribution: `dgamma = (dy * x_hat).sum(axis=0)`.",
            _bn_grad_variant(dgamma=lambda p: p.sum(p.dy * p.x_hat) / p.n),
        ),
        _Mistake(
            "eps is missing from the backward pass: use `1 / np.sqrt(var + eps)`, as in the "
            "forward pass.",
            _bn_grad_variant(use_eps=False),
        ),
    ),
)


def _backward_cases() -> list[_Case]:
    rng = np.random.default_rng(1)
    cases = []
    for name, x, eps in _bn_batches(rng):
        dy, gamma = rng.standard_normal(x.shape), rng.uniform(0.5, 2.0, x.shape[1])
        cases.append(_Case(name, {"dy": dy, "x": x, "gamma": gamma, "eps": eps}))
    return cases


def batchnorm_backward(fn: Callable[..., Any]) -> bool:
    """Check the reader's training-mode batch norm backward pass.

    ``fn(dy, x, gamma, eps)`` takes the upstream gradient ``dy`` and the input ``x``, both
    of shape ``(N, D)``, ``gamma`` of shape ``(D,)`` and a float ``eps``; it returns
    ``(dx, dgamma, dbeta)`` with shapes ``(N, D)``, ``(D,)``, ``(D,)``: the gradients of
    ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with batch statistics over axis 0.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_BACKWARD, fn, _backward_cases())


