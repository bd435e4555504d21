"""Chapter 8, reproducing the paper: its exercise checkers and their catalogues of mistakes.

Public checkers: :func:`inference_bn`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bnlib.check._core import (
    _Case,
    _check,
    _Exercise,
    _Mistake,
)

# --------------------------------------------------------------------------- Algorithm 2


def _inference_variant(
    *,
    correction: Callable[[int, int], float] = lambda m, n: m / (m - 1),
    population: Callable[[np.ndarray, np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]
    | None = None,
    axis: int = 0,
    eps_inside: bool = True,
    root: bool = True,
    use_gamma: bool = True,
    use_beta: bool = True,
) -> Callable[..., np.ndarray]:
    """Algorithm 2's inference transform, right by default; each argument swaps in one mistake.

    ``population(x, batch_means, batch_vars, factor)`` replaces the way E[x] and Var[x] are
    estimated from the training batches (``factor`` is the chosen correction).
    """

    def solution(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, batch_means: np.ndarray,
                 batch_vars: np.ndarray, m: int, eps: float) -> np.ndarray:
        factor = correction(m, x.shape[0])
        if population is None:
            mean, var = batch_means.mean(axis=axis), factor * batch_vars.mean(axis=axis)
        else:
            mean, var = population(x, batch_means, batch_vars, factor)
        spread = np.sqrt(var + eps) if eps_inside else np.sqrt(var) + eps
        if not root:
            spread = var + eps
        y = (x - mean) / spread
        return (gamma if use_gamma else 1.0) * y + (beta if use_beta else 0.0)

    return solution


def _ema_population(x: np.ndarray, means: np.ndarray, variances: np.ndarray,
                    factor: float) -> tuple[np.ndarray, np.ndarray]:
    mean, var = np.zeros(means.shape[1]), np.ones(means.shape[1])
    for mu, v in zip(means, variances):
        mean, var = 0.9 * mean + 0.1 * mu, 0.9 * var + 0.1 * factor * v
    return mean, var


_FIX_INFERENCE = (
    "E[x] = batch_means.mean(axis=0), Var[x] = m / (m - 1) * batch_vars.mean(axis=0), and "
    "y = gamma * (x - E[x]) / sqrt(Var[x] + eps) + beta."
)

_INFERENCE = _Exercise(
    name="inference_bn",
    outputs=("y",),
    solution=_inference_variant(),
    formula=_FIX_INFERENCE,
    mistakes=(
        _Mistake(
            "Var[x] is the plain average of the biased batch variances; Algorithm 2 makes it "
            "unbiased with the factor m / (m - 1): `m / (m - 1) * batch_vars.mean(axis=0)`.",
            _inference_variant(correction=lambda m, n: 1.0),
        ),
        _Mistake(
            "the correction factor is upside down: it is m / (m - 1) (> 1, the unbiased "
            "estimate is larger than the biased one), not (m - 1) / m.",
            _inference_variant(correction=lambda m, n: (m - 1) / m),
        ),
        _Mistake(
            "the correction uses the number of rows of x, but m is the size of the training "
            "mini-batches the variances came from: use the argument `m`.",
            _inference_variant(correction=lambda m, n: n / (n - 1)),
        ),
        _Mistake(
            "you normalized x with its own statistics (training-mode BN at inference): "
            "Algorithm 2 uses the population estimates from the training batches, so each "
            "output depends on its own input only. " + _FIX_INFERENCE,
            _inference_variant(population=lambda x, bm, bv, f: (x.mean(axis=0), x.var(axis=0))),
        ),
        _Mistake(
            "you used the last training batch's statistics only; Algorithm 2 averages over "
            "all the training batches: " + _FIX_INFERENCE,
            _inference_variant(population=lambda x, bm, bv, f: (bm[-1], f * bv[-1])),
        ),
        _Mistake(
            "you took an exponential moving average of the batch statistics (what PyTorch's "
            "running buffers do); Algorithm 2 averages all batches with equal weight: "
            "`batch_means.mean(axis=0)`.",
            _inference_variant(population=_ema_population),
        ),
        _Mistake(
            "Var[x] is the variance of the batch means; it is the (corrected) mean of the "
            "batch variances: `m / (m - 1) * batch_vars.mean(axis=0)`.",
            _inference_variant(population=lambda x, bm, bv, f: (bm.mean(axis=0),
                                                                 bm.var(axis=0, ddof=1))),
        ),
        _Mistake(
            "you averaged the batch standard deviations and squared the result; average the "
            "variances themselves: `m / (m - 1) * batch_vars.mean(axis=0)`.",
            _inference_variant(population=lambda x, bm, bv, f: (
                bm.mean(axis=0), f * np.sqrt(bv).mean(axis=0) ** 2)),
        ),
        _Mistake(
            "your averages run over axis 1 (over features); average over axis 0, over the "
            "training batches: `batch_means.mean(axis=0)`.",
            _inference_variant(axis=1),
        ),
        _Mistake(
            "eps belongs inside the square root: `np.sqrt(var + eps)`, not `np.sqrt(var) + eps`.",
            _inference_variant(eps_inside=False),
        ),
        _Mistake(
            "you divided by the variance; divide by the standard deviation `np.sqrt(var + eps)`.",
            _inference_variant(root=False),
        ),
        _Mistake("the output is not scaled by gamma: `y = gamma * x_hat + beta`.",
                 _inference_variant(use_gamma=False)),
        _Mistake("the output is not shifted by beta: `y = gamma * x_hat + beta`.",
                 _inference_variant(use_beta=False)),
    ),
)


def _inference_cases() -> list[_Case]:
    """K training batches of size m, with K == D (an axis mistake keeps the right shape) and a
    test batch of N != m rows; gamma and beta are not 1 and 0, so neither can be forgotten."""
    rng = np.random.default_rng(8)

    def case(name: str, d: int, n: int, m: int, loc: np.ndarray, scale: np.ndarray,
             eps: float) -> _Case:
        batches = loc + scale * rng.standard_normal((d, m, d))  # K = d batches of (m, d)
        x = loc + scale * rng.standard_normal((n, d))
        return _Case(name, {
            "x": x, "gamma": rng.uniform(0.5, 2.0, d) * rng.choice([-1.0, 1.0], d),
            "beta": rng.uniform(-1.0, 1.0, d), "batch_means": batches.mean(axis=1),
            "batch_vars": batches.var(axis=1), "m": m, "eps": eps,
        })

    return [
        case("4 features, batches of m=10, eps=1e-5", 4, 7, 10, rng.uniform(-2, 2, 4),
             rng.uniform(0.5, 3, 4), 1e-5),
        case("batches of m=2 (correction factor 2)", 3, 5, 2, rng.uniform(-2, 2, 3),
             rng.uniform(0.5, 2, 3), 1e-5),
        case("large offset, |mean| ~ 1e3", 5, 6, 16, np.array([1e3, -1e3, 500.0, 0.0, 2.0]),
             rng.uniform(0.5, 3, 5), 1e-5),
        case("eps=0.1, small spread", 3, 4, 8, rng.uniform(-1, 1, 3), np.full(3, 0.2), 0.1),
        case("feature 2 is constant (variance 0), eps=1e-3", 3, 9, 6, rng.uniform(-1, 1, 3),
             np.array([1.0, 2.0, 0.0]), 1e-3),
        case("a test batch of two examples", 6, 2, 32, rng.uniform(-3, 3, 6),
             rng.uniform(0.2, 4, 6), 1e-5),
    ]


def inference_bn(fn: Callable[..., Any]) -> bool:
    """Check the reader's inference-time BN of Algorithm 2 (Ioffe and Szegedy, 2015).

    ``fn(x, gamma, beta, batch_means, batch_vars, m, eps)`` takes test inputs ``x`` of shape
    ``(N, D)``, the learned ``gamma`` and ``beta`` ``(D,)``, the means and (biased)
    variances of ``K`` training mini-batches of size ``m``, both ``(K, D)``, and ``eps``; it
    returns ``y`` ``(N, D)``: ``gamma * (x - E[x]) / sqrt(Var[x] + eps) + beta`` with
    ``E[x]`` the average batch mean and ``Var[x] = m / (m - 1)`` times the average batch
    variance. It must not change its inputs in place.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_INFERENCE, fn, _inference_cases())


