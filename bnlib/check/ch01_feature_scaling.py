"""Chapter 1, feature scaling: its exercise checkers and their catalogues of mistakes.

Public checkers: :func:`standardize`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bnlib import scaling
from bnlib.check._core import (
    Outputs,
    _Case,
    _check,
    _Exercise,
    _Mistake,
)

# --------------------------------------------------------------------------- feature scaling


def _z_variant(
    *,
    fit_on: str = "train",
    axis: int | None = 0,
    ddof: int = 0,
    center: bool = True,
    divide: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda d, var: d / np.sqrt(var),
    var: Callable[..., np.ndarray] | None = None,
    scale_test: bool = True,
) -> Callable[..., Outputs]:
    """Standardization, right by default; each argument swaps in one wrong step.

    ``fit_on``: whose statistics scale each set: ``"train"`` (right), ``"own"`` (every
    set its own), ``"combined"`` (train and test stacked). ``var(x, axis)`` replaces the
    two-pass variance; ``divide(centered, var)`` replaces the division by the std.
    """

    def stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = x.mean(axis=axis, keepdims=True)
        v = x.var(axis=axis, ddof=ddof, keepdims=True) if var is None else var(x, axis)
        return mean, v

    def scale(x: np.ndarray, fitted: np.ndarray) -> np.ndarray:
        mean, v = stats(fitted)
        return divide(x - mean if center else x, v)

    def solution(x_train: np.ndarray, x_test: np.ndarray) -> Outputs:
        fitted = {"train": (x_train, x_train), "own": (x_train, x_test),
                  "combined": (np.vstack([x_train, x_test]),) * 2}[fit_on]
        z_test = scale(x_test, fitted[1]) if scale_test else x_test
        return scale(x_train, fitted[0]), z_test

    return solution


def _min_max_variant(x_train: np.ndarray, x_test: np.ndarray) -> Outputs:
    low, high = x_train.min(axis=0), x_train.max(axis=0)
    return (x_train - low) / (high - low), (x_test - low) / (high - low)


def _naive_var(x: np.ndarray, axis: int | None) -> np.ndarray:
    return (x**2).mean(axis=axis, keepdims=True) - x.mean(axis=axis, keepdims=True) ** 2


_FIX_Z = (
    "`mean = X_train.mean(axis=0)`, `std = X_train.std(axis=0)`, then "
    "`(X - mean) / std` for both X_train and X_test."
)

_STANDARDIZE = _Exercise(
    name="standardize",
    outputs=("Z_train", "Z_test"),
    solution=lambda x_train, x_test: scaling.standardize(x_train, x_test),
    formula="Z = (X - mean) / std for X_train and X_test alike, with mean = "
    "X_train.mean(axis=0) and std = X_train.std(axis=0) (biased, ddof=0), from the training "
    "set only.",
    mistakes=(
        _Mistake(
            "Z_test matches the test set standardized with its own statistics: that is "
            "leakage, and it makes each prediction depend on the rest of the test batch (and "
            "is undefined for a single test example). Compute the mean and std on X_train "
            "only and reuse them for X_test.",
            _z_variant(fit_on="own"),
        ),
        _Mistake(
            "your outputs match statistics over the combined set (X_train and X_test "
            "stacked): the test set leaks into the training features. Use X_train's "
            "statistics for both: " + _FIX_Z,
            _z_variant(fit_on="combined"),
        ),
        _Mistake(
            "you divided by the unbiased std (ddof=1, dividing by N-1; torch.std's and "
            "pandas' default); standardization here uses the biased one (dividing by N): "
            "`X_train.std(axis=0)` (NumPy's default ddof=0) or `unbiased=False` in torch.",
            _z_variant(ddof=1),
        ),
        _Mistake(
            "your outputs match statistics over axis 1 (one mean and std per example, "
            "across its features) instead of axis 0 (per feature, across the examples): "
            + _FIX_Z,
            _z_variant(axis=1, fit_on="own"),
        ),
        _Mistake(
            "your outputs match one scalar mean and std over the whole X_train array instead "
            "of one per feature (column): pass `axis=0`; " + _FIX_Z,
            _z_variant(axis=None),
        ),
        _Mistake(
            "your outputs match min-max scaling, (X - min) / (max - min), which maps the "
            "training range to [0, 1]; z-scores subtract the mean and divide by the std: "
            + _FIX_Z,
            _min_max_variant,
        ),
        _Mistake(
            "the mean is not subtracted: your outputs are X / std. " + _FIX_Z,
            _z_variant(center=False),
        ),
        _Mistake(
            "you subtracted the mean but did not divide by the std. " + _FIX_Z,
            _z_variant(divide=lambda d, var: d),
        ),
        _Mistake(
            "you divided by the variance instead of the standard deviation: divide by "
            "`X_train.std(axis=0)`, the square root of the variance.",
            _z_variant(divide=lambda d, var: d / var),
        ),
        _Mistake(
            "Z_train is right but Z_test is X_test unchanged: the test set must be "
            "standardized too, with the training mean and std.",
            _z_variant(scale_test=False),
        ),
        _Mistake(
            "you computed the variance as E[x^2] - E[x]^2, which cancels catastrophically "
            "when a feature's mean is large compared with its spread (see the case with "
            "|mean| ~ 1e6); use `X_train.var(axis=0)` or `((X_train - mean)**2).mean(axis=0)`.",
            _z_variant(var=_naive_var),
        ),
        *(
            _Mistake(
                f"your outputs match a variance with eps={e:g} added inside the square root "
                "(batch normalization's guard); this exercise asks for the plain std, "
                "`X_train.std(axis=0)` (no case has a constant feature).",
                _z_variant(divide=lambda d, var, e=e: d / np.sqrt(var + e)),
            )
            for e in (1e-3, 1e-5, 1e-8)
        ),
    ),
)


def _standardize_cases() -> list[_Case]:
    """``(X_train, X_test)`` pairs with ``N != D`` and ``N != M``, test sets that differ from
    the training set (so leakage shows), one test example alone, a feature with a large
    offset and one with a tiny spread; no constant features."""
    rng = np.random.default_rng(3)

    def table(n: int, loc: Sequence[float], scale: Sequence[float]) -> np.ndarray:
        loc, scale = np.asarray(loc, dtype=float), np.asarray(scale, dtype=float)
        return loc + scale * rng.standard_normal((n, loc.size))

    loc, scale = rng.uniform(-3, 3, 3), rng.uniform(0.5, 3, 3)
    shifted_loc, shifted_scale = [1.0, -2.0, 0.5, 4.0], [1.0, 3.0, 0.5, 2.0]
    spread_loc, spread_scale = [5.0, -1.0, 0.0, 2.0, 100.0], [0.01, 1.0, 30.0, 0.2, 1000.0]
    specs = [
        ("typical: test drawn like the training set", table(20, loc, scale), table(7, loc, scale)),
        ("test set shifted and rescaled (a distribution shift)",
         table(12, shifted_loc, shifted_scale),
         table(6, np.add(shifted_loc, 3.0), np.multiply(shifted_scale, 2.0))),
        ("a single test example, M=1", table(9, loc, scale), table(1, loc, scale)),
        ("large offset, |mean| ~ 1e6", table(16, [1e6, -1e6], [5.0, 2.0]),
         table(5, [1e6 + 4.0, -1e6], [5.0, 4.0])),
        ("only N=2 training examples", table(2, [0.0, 1.0, -1.0], [1.0, 2.0, 0.5]),
         table(3, [0.5, 1.0, -1.0], [1.0, 2.0, 0.5])),
        ("features on scales from 0.01 to 1000", table(10, spread_loc, spread_scale),
         table(4, spread_loc, spread_scale)),
    ]
    return [_Case(name, {"X_train": a, "X_test": b}) for name, a, b in specs]


def standardize(fn: Callable[..., Any]) -> bool:
    """Check the reader's z-score standardization of a training and a test set.

    ``fn(X_train, X_test)`` takes ``X_train`` ``(N, D)`` and ``X_test`` ``(M, D)`` and returns
    ``(Z_train, Z_test)`` of the same shapes: ``(X - mean) / std`` for both, with the
    per-feature mean and biased std (``ddof=0``) of ``X_train`` only.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_STANDARDIZE, fn, _standardize_cases())


