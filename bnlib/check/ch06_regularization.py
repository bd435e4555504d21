"""Chapter 6, BN as a regularizer: its exercise checkers and their catalogues of mistakes.

Public checkers: :func:`dropout_forward`, :func:`dropout_backward`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bnlib.check._core import (
    _call,
    _Case,
    _compare,
    _Exercise,
    _Failed,
    _Mistake,
    _outputs,
    _unpack,
    _verdict,
)
from bnlib.check._i18n import _

# --------------------------------------------------------------------------- dropout
# Dropout's output is random, so it cannot be compared with a right answer entry by entry.
# Its checker tests statistics and structure instead, on seeded generators: evaluation is the
# identity; in training every entry is either 0 or x / (1 - p); the zeros make up a fraction
# p (to many binomial standard deviations); masks differ across rows and across calls; and
# the same seed gives the same output (the mask comes from the ``rng`` argument).

_DROPOUT_FRACTION_TOL = 0.04  # >= 6 binomial standard deviations on the sizes used below
_DROPOUT_RTOL = 1e-5  # kept values are x / (1 - p) up to float32 rounding


def _dropout_inputs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Float64 values with magnitudes in [0.5, 2] and random signs: no zeros, so a zero in
    the output is a dropped entry, and no two scalings of ``x`` look alike."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def _dropout_run(fn: Callable[..., Any], x: np.ndarray, p: float, training: bool,
                 seed: int, name: str) -> np.ndarray:
    """The reader's ``y`` for one call, with a fresh ``default_rng(seed)``; shape checked."""
    case = _Case(name, {"x": x, "p": p, "training": training,
                        "rng": np.random.default_rng(seed)})
    try:
        (y,) = _unpack(_call(fn, case), ("y",))
    except _Failed as failure:
        raise _Failed(str(failure), case.name) from None
    if y.shape != x.shape:
        raise _Failed(_(
            "y has shape {shape} but x has shape {x_shape}, on {case}: dropout keeps the shape "
            "(a mask of x's shape, multiplied entry by entry)."
        ).format(shape=y.shape, x_shape=x.shape, case=case.describe()), case.name)
    if not np.all(np.isfinite(y)):
        raise _Failed(_("y contains NaN or inf on {case}.").format(case=case.describe()),
                      case.name)
    return y


def _dropout_eval_problem(x: np.ndarray, y: np.ndarray, p: float) -> str | None:
    if np.allclose(y, x, rtol=_DROPOUT_RTOL, atol=0):
        return None
    if np.allclose(y, (1 - p) * x, rtol=_DROPOUT_RTOL, atol=0):
        return _("in evaluation you multiplied x by (1 - p): that is the original dropout, "
                 "which does not rescale in training. Inverted dropout already divided the "
                 "kept units by (1 - p) in training, so evaluation returns x unchanged.")
    if np.allclose(y, x / (1 - p), rtol=_DROPOUT_RTOL, atol=0):
        return _("in evaluation you divided x by (1 - p): the rescaling belongs to training "
                 "only; with training=False return x unchanged.")
    if np.mean(y == 0) > 0.01:
        return _("you drop units in evaluation too (training=False gave zeros): at test time "
                 "every unit is used, so return x unchanged when training is False.")
    return _("with training=False y should equal x (inverted dropout needs no rescaling in "
             "evaluation); the largest difference is {difference:.3g}.").format(
        difference=np.max(np.abs(y - x)))


def _dropout_train_problem(x: np.ndarray, y: np.ndarray, p: float) -> str | None:
    kept = y != 0
    frac = 1.0 - kept.mean()  # the fraction of zeros
    ratio = y[kept] / x[kept]

    def scaled_by(c: float) -> bool:
        return ratio.size > 0 and bool(np.allclose(ratio, c, rtol=_DROPOUT_RTOL, atol=0))

    near = lambda f: abs(frac - f) < _DROPOUT_FRACTION_TOL  # noqa: E731
    if not near(p) and near(1 - p):
        if scaled_by(1 / p) or scaled_by(1.0):
            return _("with p={p}, a fraction {frac:.3f} of the entries is zero, not p: you read "
                     "p as the probability to KEEP a unit. In this book (and PyTorch) p is the "
                     "probability to DROP one: keep with probability 1 - p and scale the kept "
                     "units by 1 / (1 - p).").format(p=p, frac=frac)
        return _("with p={p}, a fraction {frac:.3f} of the entries is zero, about 1 - p: your "
                 "mask keeps a unit when the uniform number is below p "
                 "(`rng.random(x.shape) < p`), which keeps a fraction p. Keep it when "
                 "`rng.random(x.shape) >= p`, so that a fraction p is dropped.").format(
            p=p, frac=frac)
    if scaled_by(1 / (1 - p)):
        pass
    elif scaled_by(1.0):
        return _("the kept units are not rescaled: multiply them by 1 / (1 - p) in training "
                 "(inverted dropout), so that E[y] = x and evaluation needs no rescaling.")
    elif scaled_by(1 - p):
        return _("you multiplied the kept units by (1 - p); inverted dropout DIVIDES them by "
                 "(1 - p), so that the expected output equals x.")
    elif scaled_by(1 / p):
        return _("you divided the kept units by p; divide by the keep probability 1 - p, so "
                 "that the expected output equals x.")
    else:
        return _("every entry of y should be either 0 (dropped) or x / (1 - p) (kept); the "
                 "kept entries are x times values from {low:.4g} to {high:.4g} (expected "
                 "{scale:.4g}).").format(low=ratio.min(), high=ratio.max(), scale=1 / (1 - p))
    rows = kept.reshape(len(kept), -1)
    if len(rows) > 1 and np.all(rows == rows[0]):
        return _("every example in the batch has the same mask: one mask shared across the "
                 "batch. Draw a mask of x's full shape, `rng.random(x.shape)`, not one of "
                 "shape (D,) broadcast over the rows.")
    if np.all(rows.all(axis=1) | ~rows.any(axis=1)):
        return _("you drop whole examples (every row is kept or zeroed as a whole): draw one "
                 "number per entry, `rng.random(x.shape)`, not one per row.")
    if not near(p):
        return _("with p={p}, a fraction {frac:.3f} of the entries is zero, expected about p: "
                 "drop each entry independently with probability p, e.g. "
                 "`keep = rng.random(x.shape) >= p`.").format(p=p, frac=frac)
    return None


def dropout_forward(fn: Callable[..., Any]) -> bool:
    """Check the reader's inverted dropout.

    ``fn(x, p, training, rng)`` takes ``x`` of any shape (``(N, D)`` here, and one 3-D case),
    the drop probability ``p`` in [0, 1), a bool and a ``numpy.random.Generator``; it
    returns ``y`` of ``x``'s shape: in training each entry is 0 with probability ``p``,
    independently, else ``x / (1 - p)``, the mask drawn from ``rng``; in evaluation ``y = x``.

    Random outputs are checked by statistics and structure with seeded generators (see the
    comment above). Returns ``True`` (and prints one line) when every check passes,
    ``False`` while ``fn`` is the untouched ``NotImplementedError`` stub; raises
    ``AssertionError`` naming the likely mistake otherwise.
    """

    def run() -> str:
        checks = 0
        for p, shape, seed in ((0.2, (400, 30), 1), (0.7, (300, 40), 2), (0.5, (60, 10, 8), 3)):
            x = _dropout_inputs(shape, seed)
            name = f"p={p}, x of shape {shape}"
            y = _dropout_run(fn, x, p, False, seed, f"evaluation, {name}")
            if problem := _dropout_eval_problem(x, y, p):
                raise _Failed(problem, f"evaluation, {name}")
            y = _dropout_run(fn, x, p, True, seed, f"training, {name}")
            if problem := _dropout_train_problem(x, y, p):
                raise _Failed(_("{problem} (case: {case})").format(
                    problem=problem, case=f"training, {name}"), f"training, {name}")
            checks += 2
        x = _dropout_inputs((200, 20), 4)
        y = _dropout_run(fn, x, 0.0, True, 4, "training, p=0")
        if not np.allclose(y, x, rtol=_DROPOUT_RTOL, atol=0):
            raise _Failed(_("with p=0 nothing should be dropped or rescaled (y = x), but y "
                            "differs from x."), "training, p=0")
        case = _Case("two calls", {"x": x, "p": 0.5, "training": True,
                                   "rng": np.random.default_rng(5)})
        first, second = (_unpack(_call(fn, case), ("y",))[0] for _call_number in range(2))
        if np.array_equal(first != 0, second != 0):
            raise _Failed(_("two calls with the same generator gave the same mask: the mask "
                            "must be new on every call. Draw it from the `rng` argument each "
                            "time; do not create a generator with a fixed seed inside your "
                            "function."), case.name)
        again = [_dropout_run(fn, x, 0.5, True, 6, "same seed") for _call_number in range(2)]
        if not np.array_equal(again[0], again[1]):
            raise _Failed(_("two fresh generators with the same seed gave different masks: "
                            "your mask does not come from the `rng` argument (np.random.* or "
                            "torch's global generator?). Draw it with `rng.random(x.shape)`, so "
                            "runs are reproducible."), "same seed")
        return _("all {n} checks pass").format(n=checks + 3)

    return _verdict("dropout_forward", run)


# --------------------------------------------------------------------------- dropout backward


def _dropout_backward_variant(
    factor: str = "divide", mask: str = "keep"
) -> Callable[..., np.ndarray]:
    """``dx`` from ``(dy, keep, p)`` with the scale or the mask changed: the right one and
    mistakes."""

    def solution(dy: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
        masks = {"keep": lambda: keep, "inverted": lambda: ~keep,
                 "none": lambda: np.ones_like(keep),
                 "fresh": lambda: np.random.default_rng(0).random(dy.shape) >= p}
        scale = {"divide": 1.0 / (1.0 - p), "multiply": 1.0 - p, "none": 1.0}[factor]
        return dy * masks[mask]() * scale

    return solution


_FRESH_MASK = (
    "the zeros of dx are not where the forward dropped units: you drew a new mask in the "
    "backward. A dropped unit did not affect the output, so its gradient is 0 and a kept "
    "one's is not; the backward must reuse the forward's mask `keep` (the forward saves it "
    "for the backward), never draw another."
)

_DROPOUT_BACKWARD = _Exercise(
    name="dropout_backward",
    outputs=("dx",),
    solution=_dropout_backward_variant(),
    formula="dx = dy * keep / (1 - p): the forward's own mask and the forward's scale",
    mistakes=(
        _Mistake(
            "you forgot the scale: the forward divided the kept units by (1 - p), so their "
            "gradient is divided by (1 - p) too (y = x * keep / (1 - p) gives "
            "dy/dx = keep / (1 - p)).",
            _dropout_backward_variant(factor="none"),
        ),
        _Mistake(
            "you multiplied by (1 - p): inverted dropout DIVIDES the kept units by (1 - p) in "
            "the forward, and the backward applies the same factor.",
            _dropout_backward_variant(factor="multiply"),
        ),
        _Mistake(
            "your dx passes the gradient to every unit: a dropped unit had no effect on the "
            "output, so its gradient is 0. Multiply by the mask `keep`.",
            _dropout_backward_variant(mask="none"),
        ),
        _Mistake(
            "your mask is inverted: the gradient flows to the units the forward KEPT (where "
            "`keep` is True) and is 0 where it dropped them.",
            _dropout_backward_variant(mask="inverted"),
        ),
        _Mistake(_FRESH_MASK, _dropout_backward_variant(mask="fresh")),
    ),
)


def _dropout_backward_cases() -> list[_Case]:
    """Upstream gradients without zeros (so a zero in dx is a dropped unit) and masks drawn
    at several p, one 3-D; p=0 keeps everything."""
    rng = np.random.default_rng(7)
    cases = []
    for name, shape, p in (("p=0.5, dy of shape (40, 12)", (40, 12), 0.5),
                           ("p=0.2, dy of shape (30, 7)", (30, 7), 0.2),
                           ("p=0.8, a 3-D dy (6, 5, 4)", (6, 5, 4), 0.8),
                           ("p=0, nothing dropped", (10, 3), 0.0)):
        dy = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        cases.append(_Case(name, {"dy": dy, "keep": rng.random(shape) >= p, "p": p}))
    return cases


def _mask_problem(dx: np.ndarray, keep: np.ndarray) -> bool:
    """True when dx's zeros follow another mask: some kept units get 0 and some dropped
    ones do not, but not all of them (that is the inverted mask, named by the catalogue)."""
    if dx.shape != keep.shape:
        return False
    zero = dx == 0
    return bool(zero[keep].any() and not zero[~keep].all() and not zero[keep].all())


def dropout_backward(fn: Callable[..., Any]) -> bool:
    """Check the reader's backward pass of inverted dropout.

    ``fn(dy, keep, p)`` takes the upstream gradient ``dy`` (any shape), the forward's bool
    mask ``keep`` of the same shape (``True`` where the unit was kept) and the drop
    probability ``p``; it returns ``dx = dy * keep / (1 - p)``, of ``dy``'s shape.

    A reader who draws a new mask inside ``fn`` gets a random ``dx``; that shows as zeros in
    the wrong places and is named before the comparison with the right ``dx``. Returns
    ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is the
    untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    cases = _dropout_backward_cases()

    def run() -> str:
        for case in cases:
            (dx,) = _outputs(_DROPOUT_BACKWARD, fn, case)
            if _mask_problem(dx, case.args["keep"]):
                raise _Failed(_(_FRESH_MASK), case.name)
        return _compare(_DROPOUT_BACKWARD, fn, cases)

    return _verdict(_DROPOUT_BACKWARD.name, run)
