"""Chapter 4, running statistics: its exercise checkers and their catalogues of mistakes.

Public checkers: :func:`running_stats_update`.
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

# --------------------------------------------------------------------------- running statistics


def _running_variant(
    *,
    axis: int = 0,
    ddof: int = 1,
    spread: Callable[[np.ndarray], np.ndarray] = lambda var: var,
    new_weight: Callable[[float], float] = lambda momentum: momentum,
    average_mean: bool = True,
    average_var: bool = True,
    update_var: bool = True,
    swap: bool = False,
) -> Callable[..., Outputs]:
    """A running-statistics update, right by default; each argument swaps in one wrong step."""

    def solution(
        running_mean: np.ndarray, running_var: np.ndarray, x: np.ndarray, momentum: float
    ) -> Outputs:
        mean, var = x.mean(axis=axis), spread(x.var(axis=axis, ddof=ddof))
        w = new_weight(momentum)
        new_mean = (1.0 - w) * running_mean + w * mean if average_mean else mean
        new_var = (1.0 - w) * running_var + w * var if average_var else var
        if not update_var:
            new_var = running_var
        return (new_var, new_mean) if swap else (new_mean, new_var)

    return solution


def _running_solution(
    running_mean: np.ndarray, running_var: np.ndarray, x: np.ndarray, momentum: float
) -> Outputs:
    mean, var = ref.batch_stats(x)
    n = x.shape[0]
    return (
        ref.ema_update(running_mean, mean, momentum),
        ref.ema_update(running_var, var * n / (n - 1), momentum),
    )


_FIX_EMA = (
    "`new_mean = (1 - momentum) * running_mean + momentum * x.mean(axis=0)` and "
    "`new_var = (1 - momentum) * running_var + momentum * x.var(axis=0, ddof=1)`."
)
_FIX_STD = (
    "running_var averages variances, not standard deviations: use "
    "`x.var(axis=0, ddof=1)`, not `x.std(...)`."
)

_RUNNING = _Exercise(
    name="running_stats_update",
    outputs=("new_mean", "new_var"),
    solution=_running_solution,
    formula=_FIX_EMA,
    mistakes=(
        _Mistake(
            "momentum weighs the old value in your update (Keras's convention, where 0.99 is "
            "the default); in PyTorch's convention it weighs the new batch: " + _FIX_EMA,
            _running_variant(new_weight=lambda m: 1.0 - m),
        ),
        _Mistake(
            "the running variance averages the biased batch variance (dividing by N); it "
            "must average the unbiased one (dividing by N-1), the estimate of the population "
            "variance: `x.var(axis=0, ddof=1)`. (Normalizing the batch uses the biased one.)",
            _running_variant(ddof=0),
        ),
        _Mistake(_FIX_STD, _running_variant(spread=np.sqrt)),
        _Mistake("running_var averages the biased standard deviation `x.std(axis=0)`: two "
                 "slips, a standard deviation instead of a variance and N instead of N-1; use "
                 "`x.var(axis=0, ddof=1)`.", _running_variant(ddof=0, spread=np.sqrt)),
        _Mistake(
            "your statistics are taken over axis 1 (one per sample) instead of axis 0 (one "
            "per feature, over the batch): `x.mean(axis=0)` and `x.var(axis=0, ddof=1)`.",
            _running_variant(axis=1),
        ),
        _Mistake(
            "new_var is the batch variance itself: the momentum is applied to the mean only; "
            "average the variance the same way: " + _FIX_EMA,
            _running_variant(average_var=False),
        ),
        _Mistake(
            "you returned the batch statistics themselves, not moving averages: mix them into "
            "the running values, " + _FIX_EMA,
            _running_variant(average_mean=False, average_var=False),
        ),
        _Mistake(
            "new_var is running_var unchanged: the running variance must be updated too: "
            + _FIX_EMA,
            _running_variant(update_var=False),
        ),
        _Mistake(
            "new_mean and new_var are swapped: return `(new_mean, new_var)`.",
            _running_variant(swap=True),
        ),
        *(
            _Mistake(
                f"your update ignores the momentum argument and behaves as if momentum={m:g}"
                f"{note}: use the momentum your function is given.",
                _running_variant(new_weight=lambda _, m=m: m),
            )
            for m, note in ((0.1, " (PyTorch's default)"), (0.01, " (Keras's 0.99, converted)"))
        ),
    ),
)


def _running_cases() -> list[_Case]:
    """Square batches (N == D): statistics over the wrong axis then have the right shape
    and wrong values, so they get a named hint rather than a broadcasting error."""
    rng = np.random.default_rng(3)

    def batch(loc: Sequence[float], scale: Sequence[float]) -> np.ndarray:
        loc, scale = np.asarray(loc, dtype=float), np.asarray(scale, dtype=float)
        return loc + scale * rng.standard_normal((loc.size, loc.size))

    def buffers(d: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.uniform(-2.0, 2.0, d), rng.uniform(0.2, 3.0, d)

    specs = [
        ("fresh buffers (zeros and ones), momentum=0.1", (np.zeros(5), np.ones(5)),
         batch(rng.uniform(-2, 2, 5), rng.uniform(0.5, 3, 5)), 0.1),
        ("buffers from earlier batches, momentum=0.1", buffers(6),
         batch(rng.uniform(-2, 2, 6), rng.uniform(0.5, 3, 6)), 0.1),
        ("small batch, N=2, momentum=0.3", buffers(2), batch([0.5, -1.0], [1.0, 2.0]), 0.3),
        ("momentum=0.01 (Keras's momentum=0.99)", buffers(4),
         batch([1.0, 0.0, -1.0, 2.0], [0.5, 1.0, 2.0, 1.5]), 0.01),
        ("momentum=0.9", buffers(3), batch([2.0, -0.5, 0.0], [1.0, 0.3, 2.0]), 0.9),
        ("large offset, |mean| ~ 1e3", buffers(4),
         batch([1e3, -1e3, 1005.0, 0.0], [1.0, 2.0, 0.5, 1.0]), 0.1),
        ("feature 1 is constant (variance 0)", buffers(3),
         batch([0.0, 2.5, -1.0], [1.0, 0.0, 2.0]), 0.2),
    ]
    return [
        _Case(name, {"running_mean": rm, "running_var": rv, "x": x, "momentum": m})
        for name, (rm, rv), x, m in specs
    ]


def running_stats_update(fn: Callable[..., Any]) -> bool:
    """Check the reader's update of BN's running statistics, in PyTorch's convention.

    ``fn(running_mean, running_var, x, momentum)`` takes the running buffers, both of shape
    ``(D,)``, a training batch ``x`` of shape ``(N, D)`` and a float ``momentum`` (the weight
    of the new batch); it returns ``(new_mean, new_var)``, both ``(D,)``:
    ``(1 - momentum) * running + momentum * batch``, with the batch mean and the *unbiased*
    batch variance over axis 0. It must not change its inputs in place.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_RUNNING, fn, _running_cases())


