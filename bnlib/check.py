"""Exercise checkers: run the reader's function on inputs made here and say what is wrong.

Every checker keeps one contract (``GUIDE.md`` section 3):

* it builds its own float64, seeded inputs, hard cases included (tiny and zero variance,
  a large offset, ``N != D`` so axis mistakes show, small and larger batches);
* an untouched stub that raises ``NotImplementedError`` prints "not done yet" and returns
  ``False``;
* a wrong answer raises ``AssertionError`` naming the likely mistake and its fix; so do a
  wrong shape or type, NaN or inf, an exception in the reader's code, and an input changed
  in place;
* success prints one short line and returns ``True``.

How the diagnosis works: an exercise is a right solution plus a catalogue of known wrong
solutions (:class:`_Mistake`), all with the reader's signature. When the reader's outputs
differ from the right ones, every wrong solution runs on the same inputs, and the hint of
the one the reader's outputs match is reported; when none matches, the message shows the
largest error, where it is, and the expected and actual values.

A new checker is an :class:`_Exercise` (its right solution, its mistakes and the right
formula), a function making its :class:`_Case` list, and a public function that calls
:func:`_check`, like :func:`batchnorm_forward` below.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnlib import reference as ref

__all__ = ["batchnorm_forward", "batchnorm_backward"]

# Two fp64 implementations that differ only in rounding agree to ~1e-12; the mistakes in the
# catalogues differ from the right answer by more than 1e-6 on at least one case.
RTOL = 1e-6

Outputs = tuple[np.ndarray, ...]


# --------------------------------------------------------------------------- the shared core


@dataclass(frozen=True)
class _Case:
    """One set of inputs; ``args`` are in the order the reader's function takes them."""

    name: str
    args: dict[str, Any]

    def describe(self) -> str:
        parts = [
            f"{k} of shape {v.shape}" if isinstance(v, np.ndarray) else f"{k}={v!r}"
            for k, v in self.args.items()
        ]
        return f"case '{self.name}' ({', '.join(parts)})"


@dataclass(frozen=True)
class _Mistake:
    """A known wrong solution, with the reader's signature, and the hint that fixes it."""

    hint: str
    solution: Callable[..., Any]


@dataclass(frozen=True)
class _Exercise:
    """What a checker knows: the outputs' names, a right solution, the known mistakes."""

    name: str
    outputs: tuple[str, ...]  # what the reader's function returns, e.g. ("dx", "dgamma", "dbeta")
    solution: Callable[..., Any]
    mistakes: tuple[_Mistake, ...]
    formula: str  # the right formula, quoted when no known mistake matches


class _NotDone(Exception):
    """The reader's function still raises ``NotImplementedError``."""


class _Failed(Exception):
    """A failed check; :func:`_check` re-raises its message as an ``AssertionError``."""


def _check(ex: _Exercise, fn: Callable[..., Any], cases: Sequence[_Case]) -> bool:
    """Run ``fn`` on every case and compare with ``ex.solution``; the body of every checker."""
    try:
        got = [_unpack(_call(fn, case), ex.outputs) for case in cases]
        want = [_unpack(ex.solution(*case.args.values()), ex.outputs) for case in cases]
        if not all(_agree(got, want, k) for k in range(len(ex.outputs))):
            raise _Failed(_diagnose(ex, cases, got, want))
    except _NotDone:
        print(
            f"{ex.name}: not done yet — replace the NotImplementedError stub, "
            "then run this cell again."
        )
        return False
    except _Failed as failure:
        raise AssertionError(f"{ex.name}: {failure}") from None
    print(f"{ex.name}: all {len(cases)} cases pass ✓")
    return True


def _call(fn: Callable[..., Any], case: _Case) -> Any:
    """Call the reader's ``fn`` on copies of the case's inputs and return what it returns.

    Turns the stub's ``NotImplementedError`` into :class:`_NotDone`, any other exception and
    any input changed in place into :class:`_Failed`.
    """
    copies = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in case.args.items()}
    try:
        with np.errstate(all="ignore"):  # NaN and inf are diagnosed below, not warned about
            result = fn(*copies.values())
    except NotImplementedError:
        raise _NotDone from None
    except Exception as exc:
        raise _Failed(
            f"your function raised {type(exc).__name__}: {exc}{_where(exc)}, "
            f"on {case.describe()}."
        ) from None
    for k, v in case.args.items():
        if isinstance(v, np.ndarray) and not np.array_equal(v, copies[k], equal_nan=True):
            raise _Failed(
                f"your function changed its input `{k}` in place (with `{k} -= ...`, "
                f"`{k} *= ...` or `{k}[...] = ...`), which corrupts the caller's array: "
                f"make a new array instead, e.g. `{k} = {k} - ...`."
            )
    return result


def _where(exc: BaseException) -> str:
    """' (in f, line 3: `code`)' for the deepest frame of the reader's code, or ''."""
    frames = traceback.extract_tb(exc.__traceback__)[1:]  # [0] is _call itself
    frames = [f for f in frames if "-packages" not in f.filename]  # skip NumPy, torch, ...
    if not frames:
        return ""
    f = frames[-1]
    return f" (in {f.name}, line {f.lineno}" + (f": `{f.line}`)" if f.line else ")")


def _unpack(result: Any, outputs: tuple[str, ...]) -> Outputs:
    """The arrays a function returned, one per name in ``outputs``; wrong types fail.

    A single-output exercise also accepts the CS231n pairing ``(out, cache)``.
    """
    if len(outputs) == 1:
        (name,) = outputs
        if result is None:
            raise _Failed(f"your function returned None: did you forget `return {name}`?")
        if isinstance(result, tuple):
            if len(result) != 2:
                raise _Failed(
                    f"expected {name} or ({name}, cache), but your function returned a "
                    f"tuple of {len(result)} items."
                )
            result = result[0]
        return (_as_array(result, name),)
    names = ", ".join(outputs)
    expected = f"a tuple ({names})"
    if result is None:
        raise _Failed(f"your function returned None: did you forget `return {names}`?")
    if not isinstance(result, (tuple, list)):
        raise _Failed(f"expected {expected}, but your function returned {_kind(result)}.")
    if len(result) != len(outputs):
        raise _Failed(
            f"expected {expected}, but your function returned {len(result)} items."
        )
    return tuple(_as_array(v, name) for v, name in zip(result, outputs, strict=True))


def _as_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a float64 array (NumPy arrays, torch tensors, nested lists, numbers)."""
    if value is None:
        raise _Failed(f"{name} is None: did you forget to compute it?")
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception:
        array = np.asarray(None)
    if array.dtype.kind not in "fiu":
        raise _Failed(f"{name} should be an array of floats, but it is {_kind(value)}.")
    return array.astype(np.float64)


def _kind(value: Any) -> str:
    """'an object of type ndarray with shape (4, 3)': what the reader's function returned."""
    shape = getattr(value, "shape", None)
    with_shape = f" with shape {tuple(shape)}" if shape is not None else ""
    return f"an object of type {type(value).__name__}{with_shape}"


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    """Same shape and equal to ``RTOL`` (NaN matches NaN, so a wrong variant's NaN can match)."""
    if got.shape != want.shape:
        return False
    scale = np.max(np.abs(want[np.isfinite(want)]), initial=1.0)
    return bool(np.allclose(got, want, rtol=RTOL, atol=RTOL * 1e-3 * scale, equal_nan=True))


def _agree(a: list[Outputs], b: list[Outputs], k: int) -> bool:
    """Whether output ``k`` is close in every case of two runs."""
    return all(_close(x[k], y[k]) for x, y in zip(a, b, strict=True))


def _diagnose(
    ex: _Exercise, cases: Sequence[_Case], got: list[Outputs], want: list[Outputs]
) -> str:
    """Name the mistake behind wrong outputs: a catalogue entry they match, else the facts.

    First a mistake that matches every output on every case; failing that, each wrong output
    on its own (the reader may have made one mistake in ``dx`` and another in ``dgamma``).
    """
    with np.errstate(all="ignore"):
        variants = [
            [_unpack(m.solution(*case.args.values()), ex.outputs) for case in cases]
            for m in ex.mistakes
        ]

    outputs = range(len(ex.outputs))
    for mistake, variant in zip(ex.mistakes, variants, strict=True):
        if all(_agree(got, variant, k) for k in outputs):
            return mistake.hint
    explained: dict[str, list[str]] = {}  # hint -> names of the outputs it explains
    unexplained = []
    for k in (k for k in outputs if not _agree(got, want, k)):
        matching = zip(ex.mistakes, variants, strict=True)
        hint = next((m.hint for m, variant in matching if _agree(got, variant, k)), None)
        if hint is None:
            unexplained.append(k)
        else:
            explained.setdefault(hint, []).append(ex.outputs[k])
    lines = [
        hint if hint.startswith(tuple(names)) else f"{' and '.join(names)}: {hint}"
        for hint, names in explained.items()
    ]
    lines += [_describe_error(ex.outputs[k], [g[k] for g in got], [w[k] for w in want], cases)
              for k in unexplained]
    if unexplained:
        lines.append(f"No mistake this checker knows matches; the right formula: {ex.formula}")
    return "\n".join(lines)


def _describe_error(
    name: str, got: list[np.ndarray], want: list[np.ndarray], cases: Sequence[_Case]
) -> str:
    """The facts about one wrong output: shape, NaN/inf, or the largest error and where."""
    bad = [i for i in range(len(cases)) if not _close(got[i], want[i])]
    g, w = got[bad[0]], want[bad[0]]
    where = f"in {len(bad)} of {len(cases)} cases, first on {cases[bad[0]].describe()}"
    if g.shape != w.shape:
        flipped = " (transposed?)" if g.ndim > 1 and g.shape == w.shape[::-1] else ""
        return f"{name} has shape {g.shape} instead of {w.shape}{flipped} {where}."
    if not np.isfinite(g).all():
        i = tuple(np.argwhere(~np.isfinite(g))[0])
        return (
            f"{name} contains {g[i]} {where}: at {name}[{_index(i)}], where the right value "
            f"is {w[i]:.6g}. NaN or inf usually comes from dividing by zero or taking the "
            "square root of a negative number."
        )
    i = np.unravel_index(np.argmax(np.abs(g - w)), g.shape)
    return (
        f"{name} is wrong {where}. The largest error is at {name}[{_index(i)}]: "
        f"expected {w[i]:.6g}, got {g[i]:.6g}."
    )


def _index(i: tuple[Any, ...]) -> str:
    return ", ".join(str(int(j)) for j in i)


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
)


def _forward_cases() -> list[_Case]:
    rng = np.random.default_rng(0)
    cases = []
    for name, x, eps in _bn_batches(rng):
        d = x.shape[1]
        gamma, beta = rng.uniform(0.5, 2.0, d), rng.uniform(-1.0, 1.0, d)
        cases.append(_Case(name, {"x": x, "gamma": gamma, "beta": beta, "eps": eps}))
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
            _UNBIASED,
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
