"""Chapter 2, covariate shift: its exercise checkers and their catalogues of mistakes.

Public checkers: :func:`saturation_fraction`, :func:`importance_weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bnlib import reference as ref
from bnlib.check._core import (
    _Case,
    _check,
    _Exercise,
    _Mistake,
)

# --------------------------------------------------------------------------- saturation


def _saturation_variant(
    *,
    below: Callable[[np.ndarray, float], np.ndarray] = lambda a, low: a < low,
    above: Callable[[np.ndarray, float], np.ndarray] = lambda a, high: a > high,
    combine: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.logical_or,
    before: Callable[[np.ndarray], np.ndarray] = lambda a: a,
    reduce: Callable[[np.ndarray], np.ndarray] = np.mean,
) -> Callable[..., np.ndarray]:
    """The saturated fraction, right by default; each argument swaps in one wrong step."""

    def solution(a: np.ndarray, low: float, high: float) -> np.ndarray:
        a = before(a)
        return np.asarray(reduce(combine(below(a, low), above(a, high)).astype(float)))

    return solution


def _never(a: np.ndarray, _threshold: float) -> np.ndarray:
    return np.zeros(a.shape, dtype=bool)


_FIX_SAT = "`((a < low) | (a > high)).mean()`"

_SATURATION = _Exercise(
    name="saturation_fraction",
    outputs=("fraction",),
    solution=_saturation_variant(),
    formula="fraction = ((a < low) | (a > high)).mean(): one number, over every entry.",
    mistakes=(
        _Mistake(
            "you counted only the entries below `low` (the sigmoid's flat part near 0); the "
            "flat part near 1 saturates too: " + _FIX_SAT + ".",
            _saturation_variant(above=_never),
        ),
        _Mistake(
            "you counted only the entries above `high` (the sigmoid's flat part near 1); the "
            "flat part near 0 saturates too: " + _FIX_SAT + ".",
            _saturation_variant(below=_never),
        ),
        _Mistake(
            "your comparisons are not strict (`<=`, `>=`): an entry exactly at `low` or `high` "
            "is the boundary, not saturated. Use " + _FIX_SAT + ".",
            _saturation_variant(below=lambda a, low: a <= low, above=lambda a, high: a >= high),
        ),
        _Mistake(
            "you returned a percentage (x100); return the fraction, a number in [0, 1]: "
            + _FIX_SAT + ".",
            _saturation_variant(reduce=lambda s: 100 * s.mean()),
        ),
        _Mistake(
            "you returned the number of saturated entries; divide by the number of entries "
            "(`.mean()` instead of `.sum()`): " + _FIX_SAT + ".",
            _saturation_variant(reduce=np.sum),
        ),
        _Mistake(
            "you returned the fraction of entries that are NOT saturated (those inside "
            "[low, high]); the saturated ones are outside: " + _FIX_SAT + ".",
            _saturation_variant(reduce=lambda s: 1.0 - s.mean()),
        ),
        _Mistake(
            "your result has one fraction per unit (a mean over axis 0); the exercise asks for "
            "one number over every sample and unit: " + _FIX_SAT + " (no axis).",
            _saturation_variant(reduce=lambda s: s.mean(axis=0)),
        ),
        _Mistake(
            "your result has one fraction per sample (a mean over axis 1); the exercise asks "
            "for one number over every sample and unit: " + _FIX_SAT + " (no axis).",
            _saturation_variant(reduce=lambda s: s.mean(axis=1)),
        ),
        _Mistake(
            "you combined the two sides with `&` (and): no value is both below `low` and above "
            "`high`, so you always get 0. Use `|` (or): " + _FIX_SAT + ".",
            _saturation_variant(combine=np.logical_and),
        ),
        _Mistake(
            "you applied the sigmoid to `a`, but `a` already holds sigmoid *outputs* (the "
            "pre-activations went through the sigmoid before): compare `a` itself, "
            + _FIX_SAT + ".",
            _saturation_variant(before=ref.sigmoid),
        ),
        _Mistake(
            "you averaged each unit over the batch first and then thresholded the means (the "
            "fraction of units whose *mean* output is saturated); saturation is counted entry "
            "by entry, sample by sample: " + _FIX_SAT + ".",
            _saturation_variant(before=lambda a: a.mean(axis=0)),
        ),
        _Mistake(
            "your result ignores the `low` and `high` arguments and behaves as if they were 0.05 "
            "and 0.95: use the thresholds your function is given, " + _FIX_SAT + ".",
            _saturation_variant(below=lambda a, low: a < 0.05, above=lambda a, high: a > 0.95),
        ),
        _Mistake(
            "you assumed symmetric thresholds (`abs(a - 0.5) > high - 0.5`), which ignores "
            "`low`; with low=0.1, high=0.8 the two sides differ. Use " + _FIX_SAT + ".",
            _saturation_variant(below=_never, above=lambda a, high: np.abs(a - 0.5) > high - 0.5),
        ),
    ),
)


def _saturation_cases() -> list[_Case]:
    """Sigmoid outputs ``(N, D)`` with ``N != D``: entries exactly at the thresholds (so
    strictness shows), one-sided saturation, asymmetric thresholds, loose thresholds that
    values in ``[0.5, 0.73]`` (a second sigmoid's range) can cross."""
    rng = np.random.default_rng(5)

    def sigmoid_outputs(n: int, d: int, scale: float, shift: float = 0.0) -> np.ndarray:
        return ref.sigmoid(shift + scale * rng.standard_normal((n, d)))

    at_thresholds = sigmoid_outputs(12, 5, 3.0)
    at_thresholds[[0, 3, 7], [1, 2, 4]] = [0.05, 0.95, 0.95]
    one_sided = sigmoid_outputs(10, 4, 2.0, shift=3.0)  # saturated near 1 only
    specs = [
        ("typical sigmoid outputs", sigmoid_outputs(20, 7, 2.5), 0.05, 0.95),
        ("entries exactly at low=0.05 and high=0.95", at_thresholds, 0.05, 0.95),
        ("saturated on one side only (near 1)", one_sided, 0.05, 0.95),
        ("asymmetric thresholds low=0.1, high=0.8", sigmoid_outputs(9, 6, 2.0), 0.1, 0.8),
        ("loose thresholds low=0.3, high=0.6", sigmoid_outputs(15, 3, 1.5), 0.3, 0.6),
        ("a single sample, N=1", sigmoid_outputs(1, 8, 4.0), 0.05, 0.95),
    ]
    return [_Case(name, {"a": a, "low": low, "high": high}) for name, a, low, high in specs]


def saturation_fraction(fn: Callable[..., Any]) -> bool:
    """Check the reader's measure of sigmoid saturation.

    ``fn(a, low, high)`` takes sigmoid outputs ``a`` of shape ``(N, D)`` (N samples, D
    units) and two floats; it returns one number: the fraction of all ``N * D`` entries that
    are saturated, strictly below ``low`` or strictly above ``high``.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_SATURATION, fn, _saturation_cases())


# --------------------------------------------------------------------------- importance weights


def _log_ratio(x: np.ndarray, mt: float, st: float, me: float, se: float) -> np.ndarray:
    """log p_test(x) - log p_train(x) for train N(mt, st^2) and test N(me, se^2)."""
    return ref.log_normal_pdf(x, me, se) - ref.log_normal_pdf(x, mt, st)


def _weights_solution(
    x: np.ndarray, mean_train: float, std_train: float, mean_test: float, std_test: float
) -> np.ndarray:
    return np.exp(_log_ratio(x, mean_train, std_train, mean_test, std_test))


_FIX_W = (
    "w = p_test(x) / p_train(x), computed in log space: `np.exp(logp_test - logp_train)` with "
    "`logp = -0.5 * ((x - mean) / std)**2 - np.log(std) - 0.5 * np.log(2 * np.pi)`."
)

# The catalogue's wrong solutions take (x, mean_train, std_train, mean_test, std_test), named
# (x, mt, st, me, se) for short.
_WEIGHTS = _Exercise(
    name="importance_weights",
    outputs=("w",),
    solution=_weights_solution,
    formula=_FIX_W,
    mistakes=(
        _Mistake(
            "your weights are upside down, p_train(x) / p_test(x): a weight must be large where "
            "test inputs are more likely than training inputs. " + _FIX_W,
            lambda x, mt, st, me, se: np.exp(-_log_ratio(x, mt, st, me, se)),
        ),
        _Mistake(
            "the two normalizing constants 1/(std*sqrt(2*pi)) do not cancel when the two "
            "stds differ: you left out the factor std_train / std_test (the `- np.log(std)` "
            "term of each log density). " + _FIX_W,
            lambda x, mt, st, me, se: np.exp(-0.5 * ((x - me) / se) ** 2
                                             + 0.5 * ((x - mt) / st) ** 2),
        ),
        _Mistake(
            "you returned the log of the ratio; exponentiate it: " + _FIX_W,
            _log_ratio,
        ),
        _Mistake(
            "the exponent lacks the 1/2: a normal log density is "
            "`-0.5 * ((x - mean) / std)**2 - ...`. " + _FIX_W,
            lambda x, mt, st, me, se: st / se * np.exp(-((x - me) / se) ** 2
                                                       + ((x - mt) / st) ** 2),
        ),
        _Mistake(
            "you used the std where the variance belongs (dividing the squared distance by "
            "`std` instead of `std**2`, as if std were the variance). " + _FIX_W,
            lambda x, mt, st, me, se: np.sqrt(st / se) * np.exp(-0.5 * (x - me) ** 2 / se
                                                                + 0.5 * (x - mt) ** 2 / st),
        ),
        _Mistake(
            "you paired the means and stds the wrong way round (the test mean with the "
            "training std and the other way round): each density takes its own mean and "
            "std. " + _FIX_W,
            lambda x, mt, st, me, se: np.exp(_log_ratio(x, mt, se, me, st)),
        ),
        _Mistake(
            "you divided the two densities directly: far in the tails both underflow to 0.0 in "
            "float64 (exp(-800) is 0), giving 0/0 = nan or x/0 = inf, where the ratio itself "
            "is an ordinary number. Subtract log densities instead: " + _FIX_W,
            lambda x, mt, st, me, se: ref.normal_pdf(x, me, se) / ref.normal_pdf(x, mt, st),
        ),
        _Mistake(
            "your weights are normalized to sum to 1; the exercise asks for the density ratio "
            "itself (whose average over training inputs is about 1, not 1/N): do not divide "
            "by `w.sum()`. " + _FIX_W,
            lambda *args: _weights_solution(*args) / _weights_solution(*args).sum(),
        ),
        _Mistake(
            "your weights are rescaled to have mean 1 over the given x; the exercise asks for "
            "the density ratio itself, unscaled. " + _FIX_W,
            lambda *args: _weights_solution(*args) / _weights_solution(*args).mean(),
        ),
        _Mistake(
            "you subtracted the densities (p_test - p_train); the weight is their ratio. "
            + _FIX_W,
            lambda x, mt, st, me, se: ref.normal_pdf(x, me, se) - ref.normal_pdf(x, mt, st),
        ),
    ),
)


def _weights_cases() -> list[_Case]:
    """Inputs ``x`` ``(N,)`` with the two normals' parameters: different stds (so the
    normalizing constants matter), a test distribution equal to the training one (all
    weights 1), and far tails where both densities underflow to 0 in float64 but the ratio
    is moderate."""
    rng = np.random.default_rng(7)
    tails = np.array([-60.0, -45.0, 0.0, 1.0, 45.0, 60.0])
    specs = [
        ("typical: test narrower and shifted", rng.normal(1.0, 0.6, 12), 1.0, 0.6, 2.0, 0.3),
        ("test wider than train", rng.normal(0.0, 1.0, 9), 0.0, 1.0, -0.5, 2.0),
        ("same distribution (every weight is 1)", rng.normal(3.0, 2.0, 7), 3.0, 2.0, 3.0, 2.0),
        ("far tails, |x| up to 60 (both densities underflow)", tails, 0.0, 1.0, 0.05, 1.0),
        ("far tails, different stds", np.array([-80.0, -2.0, 0.5, 3.0, 80.0]), 0.0, 2.0, 1.0, 1.9),
        ("a single input, N=1", np.array([0.7]), 0.0, 1.0, 1.0, 0.5),
    ]
    return [
        _Case(name, {"x": x, "mean_train": mt, "std_train": st, "mean_test": me, "std_test": se})
        for name, x, mt, st, me, se in specs
    ]


def importance_weights(fn: Callable[..., Any]) -> bool:
    """Check the reader's importance weights for a shift between two normal distributions.

    ``fn(x, mean_train, std_train, mean_test, std_test)`` takes inputs ``x`` of shape
    ``(N,)`` and the parameters (floats) of the training density ``N(mean_train,
    std_train^2)`` and the test density ``N(mean_test, std_test^2)``; it returns ``w`` of
    shape ``(N,)``, the density ratio ``p_test(x) / p_train(x)``, finite even where both
    densities underflow in float64.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_WEIGHTS, fn, _weights_cases())


