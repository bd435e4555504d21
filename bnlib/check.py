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

**Grading mode.** With the environment variable ``BNLIB_GRADING=1`` (set by
``python -m bnlib.grade``, for an instructor marking submissions) a failing checker still
raises ``AssertionError``, but its message only names the case that fails, without the hint
or the right values: right for an assignment, where self-study wants the fix. Either way,
every checker records its verdict, which :func:`results` returns.

A new checker is an :class:`_Exercise` (its right solution, its mistakes and the right
formula), a function making its :class:`_Case` list, and a public function that calls
:func:`_check`, like :func:`batchnorm_forward` below.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnlib import reference as ref

__all__ = [
    "batchnorm_forward", "batchnorm_backward", "spatial_batchnorm_forward", "fold_bn_into_conv",
    "standardize", "running_stats_update", "saturation_fraction", "importance_weights",
    "inference_transform", "dropout_forward", "group_norm", "bn_bytes", "grading", "results",
]

# Two fp64 implementations that differ only in rounding agree to ~1e-12; the mistakes in the
# catalogues differ from the right answer by more than 1e-6 on at least one case.
RTOL = 1e-6
GRADING_ENV = "BNLIB_GRADING"

Outputs = tuple[np.ndarray, ...]


# --------------------------------------------------------------------------- the shared core


@dataclass(frozen=True)
class _Case:
    """One set of inputs; ``args`` are in the order the reader's function takes them.

    ``rtol`` is the tolerance of this case and ``atol_factor`` times ``rtol`` times the largest
    right value its absolute tolerance: float32 inputs need looser ones than the defaults.
    """

    name: str
    args: dict[str, Any]
    rtol: float = RTOL
    atol_factor: float = 1e-3

    def describe(self) -> str:
        parts = [
            f"{k} of shape {v.shape}" + ("" if v.dtype == np.float64 else f" ({v.dtype})")
            if isinstance(v, np.ndarray) else f"{k}={v!r}"
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
    """What a checker knows: the outputs' names, a right solution, the known mistakes.

    ``case_hints`` maps a case name to the hint for a function that is right on every other
    case and wrong only there (a mistake that shows as rounding, not as a formula).
    """

    name: str
    outputs: tuple[str, ...]  # what the reader's function returns, e.g. ("dx", "dgamma", "dbeta")
    solution: Callable[..., Any]
    mistakes: tuple[_Mistake, ...]
    formula: str  # the right formula, quoted when no known mistake matches
    case_hints: dict[str, str] = field(default_factory=dict)


class _NotDone(Exception):
    """The reader's function still raises ``NotImplementedError``."""


class _Failed(Exception):
    """A failed check; :func:`_verdict` re-raises it as an ``AssertionError``.

    ``case`` names the case that failed, the one thing grading mode reports.
    """

    def __init__(self, message: str, case: str = "") -> None:
        super().__init__(message)
        self.case = case


_RESULTS: dict[str, dict[str, str]] = {}


def grading() -> bool:
    """Whether grading mode is on (``BNLIB_GRADING`` set to anything but ``""`` or ``"0"``)."""
    return os.environ.get(GRADING_ENV, "").strip() not in ("", "0")


def results() -> dict[str, dict[str, str]]:
    """The last verdict of every checker run in this process, by checker name.

    Each is ``{"status": "pass" | "fail" | "not done", "case": ...}``, ``case`` naming the
    failing case (empty when the failure is not tied to one).
    """
    return {name: dict(v) for name, v in _RESULTS.items()}


def _verdict(name: str, run: Callable[[], str]) -> bool:
    """Run one checker's body, record and print its verdict; the end of every checker.

    ``run`` returns what passed (e.g. "all 6 cases pass") or raises :class:`_NotDone` or
    :class:`_Failed`.
    """
    try:
        passed = run()
    except _NotDone:
        _RESULTS[name] = {"status": "not done", "case": ""}
        print(f"{name}: not done yet — replace the NotImplementedError stub, "
              "then run this cell again.")
        return False
    except _Failed as failure:
        _RESULTS[name] = {"status": "fail", "case": failure.case}
        if grading():
            where = f" on case '{failure.case}'" if failure.case else ""
            raise AssertionError(f"{name}: FAILED{where} (grading mode: no hints)") from None
        raise AssertionError(f"{name}: {failure}") from None
    _RESULTS[name] = {"status": "pass", "case": ""}
    print(f"{name}: {passed} ✓")
    return True


def _check(ex: _Exercise, fn: Callable[..., Any], cases: Sequence[_Case]) -> bool:
    """Run ``fn`` on every case and compare with ``ex.solution``; the body of every checker."""

    def run() -> str:
        got = []
        for case in cases:
            try:
                got.append(_unpack(_call(fn, case), ex.outputs))
            except _Failed as failure:
                raise _Failed(str(failure), failure.case or case.name) from None
        want = [_unpack(ex.solution(*case.args.values()), ex.outputs) for case in cases]
        bad = [c for c, g, w in zip(cases, got, want, strict=True)
               if not all(_close(a, b, c) for a, b in zip(g, w, strict=True))]
        if bad:
            raise _Failed(_diagnose(ex, cases, got, want, bad), bad[0].name)
        return f"all {len(cases)} cases pass"

    return _verdict(ex.name, run)


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
            f"on {case.describe()}.", case.name
        ) from None
    for k, v in case.args.items():
        if isinstance(v, np.ndarray) and not np.array_equal(v, copies[k], equal_nan=True):
            raise _Failed(
                f"your function changed its input `{k}` in place (with `{k} -= ...`, "
                f"`{k} *= ...` or `{k}[...] = ...`), which corrupts the caller's array: "
                f"make a new array instead, e.g. `{k} = {k} - ...`.", case.name
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


def _close(got: np.ndarray, want: np.ndarray, case: _Case | None = None) -> bool:
    """Same shape and equal to the case's tolerance (NaN matches NaN, so a wrong variant's
    NaN can match); ``RTOL`` without a case."""
    if got.shape != want.shape:
        return False
    rtol, factor = (case.rtol, case.atol_factor) if case is not None else (RTOL, 1e-3)
    scale = np.max(np.abs(want[np.isfinite(want)]), initial=1.0)
    return bool(np.allclose(got, want, rtol=rtol, atol=rtol * factor * scale, equal_nan=True))


def _agree(a: list[Outputs], b: list[Outputs], k: int, cases: Sequence[_Case]) -> bool:
    """Whether output ``k`` is close in every case of two runs."""
    return all(_close(x[k], y[k], c) for x, y, c in zip(a, b, cases, strict=True))


def _diagnose(
    ex: _Exercise, cases: Sequence[_Case], got: list[Outputs], want: list[Outputs],
    bad: Sequence[_Case],
) -> str:
    """Name the mistake behind wrong outputs: a catalogue entry they match, else the facts.

    First a mistake that matches every output on every case; then a case hint, when the
    only wrong cases have one; failing that, each wrong output on its own (the reader may
    have made one mistake in ``dx`` and another in ``dgamma``).
    """
    with np.errstate(all="ignore"):
        variants = [
            [_unpack(m.solution(*case.args.values()), ex.outputs) for case in cases]
            for m in ex.mistakes
        ]

    outputs = range(len(ex.outputs))
    for mistake, variant in zip(ex.mistakes, variants, strict=True):
        if all(_agree(got, variant, k, cases) for k in outputs):
            return mistake.hint
    hints = {ex.case_hints.get(c.name) for c in bad}
    if len(hints) == 1 and None not in hints:
        return hints.pop()
    explained: dict[str, list[str]] = {}  # hint -> names of the outputs it explains
    unexplained = []
    for k in (k for k in outputs if not _agree(got, want, k, cases)):
        matching = zip(ex.mistakes, variants, strict=True)
        hint = next((m.hint for m, variant in matching if _agree(got, variant, k, cases)),
                    None)
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
    bad = [i for i in range(len(cases)) if not _close(got[i], want[i], cases[i])]
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
    expected, actual = _distinct(float(w[i]), float(g[i]))
    return (
        f"{name} is wrong {where}. The largest error is at {name}[{_index(i)}]: "
        f"expected {expected}, got {actual}."
    )


def _distinct(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with the fewest significant digits (at least 6) that tell them apart."""
    for digits in range(6, 18):
        sa, sb = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if sa != sb:
            return sa, sb
    return repr(a), repr(b)


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
    solution=lambda x_train, x_test: ref.standardize(x_train, x_test),
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
        _Mistake(_FIX_STD, _running_variant(ddof=0, spread=np.sqrt)),
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
            _saturation_variant(before=lambda a: 1.0 / (1.0 + np.exp(-a))),
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
        return 1.0 / (1.0 + np.exp(-(shift + scale * rng.standard_normal((n, d)))))

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


def _log_normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def _normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))


def _log_ratio(x: np.ndarray, mt: float, st: float, me: float, se: float) -> np.ndarray:
    """log p_test(x) - log p_train(x) for train N(mt, st^2) and test N(me, se^2)."""
    return _log_normal_pdf(x, me, se) - _log_normal_pdf(x, mt, st)


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
            lambda x, mt, st, me, se: _normal_pdf(x, me, se) / _normal_pdf(x, mt, st),
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
            lambda x, mt, st, me, se: _normal_pdf(x, me, se) - _normal_pdf(x, mt, st),
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
    name="inference_transform",
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


def inference_transform(fn: Callable[..., Any]) -> bool:
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
        raise _Failed(f"y has shape {y.shape} but x has shape {x.shape}, on {case.describe()}: "
                      "dropout keeps the shape (a mask of x's shape, multiplied entry by entry).",
                      case.name)
    if not np.all(np.isfinite(y)):
        raise _Failed(f"y contains NaN or inf on {case.describe()}.", case.name)
    return y


def _dropout_eval_problem(x: np.ndarray, y: np.ndarray, p: float) -> str | None:
    if np.allclose(y, x, rtol=_DROPOUT_RTOL, atol=0):
        return None
    if np.allclose(y, (1 - p) * x, rtol=_DROPOUT_RTOL, atol=0):
        return ("in evaluation you multiplied x by (1 - p): that is the original dropout, "
                "which does not rescale in training. Inverted dropout already divided the kept "
                "units by (1 - p) in training, so evaluation returns x unchanged.")
    if np.allclose(y, x / (1 - p), rtol=_DROPOUT_RTOL, atol=0):
        return ("in evaluation you divided x by (1 - p): the rescaling belongs to training "
                "only; with training=False return x unchanged.")
    if np.mean(y == 0) > 0.01:
        return ("you drop units in evaluation too (training=False gave zeros): at test time "
                "every unit is used, so return x unchanged when training is False.")
    return ("with training=False y should equal x (inverted dropout needs no rescaling in "
            f"evaluation); the largest difference is {np.max(np.abs(y - x)):.3g}.")


def _dropout_train_problem(x: np.ndarray, y: np.ndarray, p: float) -> str | None:
    kept = y != 0
    frac = 1.0 - kept.mean()  # the fraction of zeros
    ratio = y[kept] / x[kept]

    def scaled_by(c: float) -> bool:
        return ratio.size > 0 and bool(np.allclose(ratio, c, rtol=_DROPOUT_RTOL, atol=0))

    near = lambda f: abs(frac - f) < _DROPOUT_FRACTION_TOL  # noqa: E731
    where = f"with p={p}, a fraction {frac:.3f} of the entries is zero"
    if not near(p) and near(1 - p):
        if scaled_by(1 / p) or scaled_by(1.0):
            return (f"{where}, not p: you read p as the probability to KEEP a unit. In this "
                    "book (and PyTorch) p is the probability to DROP one: keep with "
                    "probability 1 - p and scale the kept units by 1 / (1 - p).")
        return (f"{where}, about 1 - p: your mask keeps a unit when the uniform number is "
                "below p (`rng.random(x.shape) < p`), which keeps a fraction p. Keep it when "
                "`rng.random(x.shape) >= p`, so that a fraction p is dropped.")
    if scaled_by(1 / (1 - p)):
        pass
    elif scaled_by(1.0):
        return ("the kept units are not rescaled: multiply them by 1 / (1 - p) in training "
                "(inverted dropout), so that E[y] = x and evaluation needs no rescaling.")
    elif scaled_by(1 - p):
        return ("you multiplied the kept units by (1 - p); inverted dropout DIVIDES them by "
                "(1 - p), so that the expected output equals x.")
    elif scaled_by(1 / p):
        return ("you divided the kept units by p; divide by the keep probability 1 - p, so "
                "that the expected output equals x.")
    else:
        return ("every entry of y should be either 0 (dropped) or x / (1 - p) (kept); the "
                f"kept entries are x times values from {ratio.min():.4g} to {ratio.max():.4g} "
                f"(expected {1 / (1 - p):.4g}).")
    rows = kept.reshape(len(kept), -1)
    if len(rows) > 1 and np.all(rows == rows[0]):
        return ("every example in the batch has the same mask: one mask shared across the "
                "batch. Draw a mask of x's full shape, `rng.random(x.shape)`, not one of "
                "shape (D,) broadcast over the rows.")
    if np.all(rows.all(axis=1) | ~rows.any(axis=1)):
        return ("you drop whole examples (every row is kept or zeroed as a whole): draw one "
                "number per entry, `rng.random(x.shape)`, not one per row.")
    if not near(p):
        return (f"{where}, expected about p: drop each entry independently with probability "
                "p, e.g. `keep = rng.random(x.shape) >= p`.")
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
                raise _Failed(f"{problem} (case: training, {name})", f"training, {name}")
            checks += 2
        x = _dropout_inputs((200, 20), 4)
        y = _dropout_run(fn, x, 0.0, True, 4, "training, p=0")
        if not np.allclose(y, x, rtol=_DROPOUT_RTOL, atol=0):
            raise _Failed("with p=0 nothing should be dropped or rescaled (y = x), but y "
                          "differs from x.", "training, p=0")
        case = _Case("two calls", {"x": x, "p": 0.5, "training": True,
                                   "rng": np.random.default_rng(5)})
        first, second = (_unpack(_call(fn, case), ("y",))[0] for _ in range(2))
        if np.array_equal(first != 0, second != 0):
            raise _Failed("two calls with the same generator gave the same mask: the mask must "
                          "be new on every call. Draw it from the `rng` argument each time; "
                          "do not create a generator with a fixed seed inside your function.",
                          case.name)
        again = [_dropout_run(fn, x, 0.5, True, 6, "same seed") for _ in range(2)]
        if not np.array_equal(again[0], again[1]):
            raise _Failed("two fresh generators with the same seed gave different masks: your "
                          "mask does not come from the `rng` argument (np.random.* or torch's "
                          "global generator?). Draw it with `rng.random(x.shape)`, so runs are "
                          "reproducible.", "same seed")
        return f"all {checks + 3} checks pass"

    return _verdict("dropout_forward", run)


# --------------------------------------------------------------------------- group norm


def _gn_variant(
    *,
    split: str = "contiguous",  # how channels form groups: "contiguous", "strided", "channel"
    stat_axes: tuple[int, ...] = (2, 3),  # axes of the (N, G, C/G, S) view the stats run over
    ddof: int = 0,
    eps_inside: bool = True,
    affine: bool = True,
    one_group: bool = False,
) -> Callable[..., np.ndarray]:
    """A group-norm forward pass, right by default; each argument swaps in one wrong step."""

    def solution(x: np.ndarray, num_groups: int, gamma: np.ndarray, beta: np.ndarray,
                 eps: float) -> np.ndarray:
        n, c = x.shape[:2]
        g = 1 if one_group else (c if split == "channel" else num_groups)
        flat = x.reshape(n, c, -1)  # (N, C, S)
        if split == "strided":  # channel k joins group k % G
            view = flat.reshape(n, c // g, g, -1).transpose(0, 2, 1, 3)
        else:
            view = flat.reshape(n, g, c // g, -1)  # (N, G, C/G, S)
        mean = view.mean(axis=stat_axes, keepdims=True)
        var = view.var(axis=stat_axes, ddof=ddof, keepdims=True)
        std = np.sqrt(var + eps) if eps_inside else np.sqrt(var) + eps
        x_hat = (view - mean) / std
        if split == "strided":
            x_hat = x_hat.transpose(0, 2, 1, 3)
        x_hat = x_hat.reshape(x.shape)
        if not affine:
            return x_hat
        return ref.per_channel(gamma, x.ndim) * x_hat + ref.per_channel(beta, x.ndim)

    return solution


_GROUP_NORM = _Exercise(
    name="group_norm",
    outputs=("y",),
    solution=lambda x, num_groups, gamma, beta, eps: ref.group_norm(x, num_groups, gamma, beta,
                                                                    eps),
    formula="view x as (N, G, C // G * H * W), normalize each row with its mean and biased "
    "variance, sqrt(var + eps), reshape back to (N, C, H, W), then gamma and beta per channel.",
    mistakes=(
        _Mistake(
            "your output matches statistics taken over the batch too (axis 0 included): group "
            "norm normalizes every sample on its own; average over the group's channels and "
            "positions only, never over samples.",
            _gn_variant(stat_axes=(0, 2, 3)),
        ),
        _Mistake(
            "your output matches one mean and variance per channel (instance norm): group the "
            "channels first, `x.reshape(N, num_groups, -1)`, and average over each group.",
            _gn_variant(split="channel"),
        ),
        _Mistake(
            "your output matches groups of channels taken with a stride (channel k in group "
            "k % num_groups): groups are consecutive channels, `x.reshape(N, num_groups, "
            "C // num_groups, ...)`, not `x.reshape(N, C // num_groups, num_groups, ...)`.",
            _gn_variant(split="strided"),
        ),
        _Mistake(
            "your output matches statistics per position (over the group's channels but not "
            "over H and W): include the spatial axes, one mean per (sample, group).",
            _gn_variant(stat_axes=(2,)),
        ),
        _Mistake(
            "your output matches the unbiased variance (ddof=1): normalize with the biased "
            "variance, dividing by the number of values, `var(..., ddof=0)`.",
            _gn_variant(ddof=1),
        ),
        _Mistake(
            "your output matches eps added outside the square root: use `np.sqrt(var + eps)`, "
            "not `np.sqrt(var) + eps`.",
            _gn_variant(eps_inside=False),
        ),
        _Mistake(
            "your output matches x_hat without gamma and beta: finish with "
            "`gamma[None, :, None, None] * x_hat + beta[None, :, None, None]`.",
            _gn_variant(affine=False),
        ),
        _Mistake(
            "your output matches a single group (layer norm) whatever num_groups is: split "
            "the channels into `num_groups` groups.",
            _gn_variant(one_group=True),
        ),
    ),
)


def _group_norm_cases() -> list[_Case]:
    rng = np.random.default_rng(11)
    specs = [  # (name, shape, num_groups, loc, scale, eps)
        ("typical: 6 channels in 3 groups", (4, 6, 3, 5), 3, 0.0, 1.0, 1e-5),
        ("a batch of 2, 8 channels in 2 groups", (2, 8, 4, 3), 2, 1.0, 2.0, 1e-5),
        ("a batch of 1 (group norm does not need a batch)", (1, 4, 5, 5), 2, -0.5, 1.0, 1e-3),
        ("large offset, |mean| ~ 1e3, 4 groups of 3", (3, 12, 2, 3), 4, 1e3, 0.5, 1e-5),
        ("tiny variance ~1e-8 so eps matters", (3, 6, 3, 2), 3, 0.0, 1e-4, 1e-5),
        ("one group of 4 channels (layer norm)", (5, 4, 2, 2), 1, 2.0, 3.0, 0.1),
    ]
    cases = []
    for name, shape, g, loc, scale, eps in specs:
        c = shape[1]
        channel_loc = loc + rng.uniform(-1.0, 1.0, (1, c, 1, 1))  # channels differ
        x = channel_loc + scale * rng.uniform(0.5, 2.0, (1, c, 1, 1)) * rng.standard_normal(shape)
        gamma, beta = rng.uniform(0.5, 2.0, c), rng.uniform(-1.0, 1.0, c)
        cases.append(_Case(name, {"x": x, "num_groups": g, "gamma": gamma, "beta": beta,
                                  "eps": eps}))
    return cases


def group_norm(fn: Callable[..., Any]) -> bool:
    """Check the reader's group normalization forward pass.

    ``fn(x, num_groups, gamma, beta, eps)`` takes ``x`` of shape ``(N, C, H, W)`` (``C``
    divisible by ``num_groups``), ``gamma`` and ``beta`` of shape ``(C,)``; it returns ``y``
    of shape ``(N, C, H, W)``: each sample's consecutive groups of ``C // num_groups``
    channels normalized over their channels and positions with the biased variance, then
    scaled and shifted per channel (``torch.nn.functional.group_norm``).

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_GROUP_NORM, fn, _group_norm_cases())


# --------------------------------------------------------------------------- bytes moved by BN


_PASSES = {"forward": 3, "backward": 5}  # the byte model of bnlib.bench (reads + writes)


def _bytes_variant(
    forward: float = 3, backward: float = 5, unit: float = 1.0, use_dtype: bool = True,
    spatial: bool = True,
) -> Callable[..., np.ndarray]:
    """The byte count with some passes, units or factors changed: the right one and mistakes."""

    def solution(shape: tuple[int, ...], dtype_bytes: int, which: str) -> np.ndarray:
        numel = int(np.prod(shape if spatial else shape[:2]))
        passes = forward if which == "forward" else backward
        return np.asarray(passes * numel * (dtype_bytes if use_dtype else 1) * unit, float)

    return solution


_BN_BYTES = _Exercise(
    name="bn_bytes",
    outputs=("bytes",),
    solution=_bytes_variant(),
    formula="forward 3 * numel * dtype_bytes (read x twice, write y); backward 5 * numel * "
            "dtype_bytes (read dy and x twice each, write dx)",
    mistakes=(
        _Mistake(
            "your count matches forgetting the write: the output (y forward, dx backward) "
            "also crosses the memory bus, one more pass.",
            _bytes_variant(forward=2, backward=4),
        ),
        _Mistake(
            "your count matches reading x (and dy) only once: the statistics must be known "
            "before any output can be written, so each input is read twice, once to reduce "
            "and once to normalize.",
            _bytes_variant(forward=2, backward=3),
        ),
        _Mistake(
            "your count matches bits, not bytes: dtype_bytes is already in bytes (4 for "
            "float32), do not multiply by 8.",
            _bytes_variant(unit=8.0),
        ),
        _Mistake(
            "your count matches elements, not bytes: multiply the number of elements by "
            "dtype_bytes.",
            _bytes_variant(use_dtype=False),
        ),
        _Mistake(
            "your backward count matches reading only dy: the backward also needs x (for "
            "x_hat) in both the reduction pass and the dx pass, 5 passes in all.",
            _bytes_variant(backward=3),
        ),
        _Mistake(
            "your count matches N * C elements: multiply all dimensions of the shape, the "
            "spatial ones too (`math.prod(shape)`).",
            _bytes_variant(spatial=False),
        ),
        _Mistake(
            "your count matches gigabytes: return bytes, not bytes / 1e9.",
            _bytes_variant(unit=1e-9),
        ),
        _Mistake(
            "your backward count matches forward plus backward (8 passes): count the "
            "backward alone, 5 passes.",
            _bytes_variant(backward=8),
        ),
    ),
)


def _bytes_cases() -> list[_Case]:
    specs = [  # (name, shape, dtype_bytes, which)
        ("float32 forward, NCHW", (8, 16, 16, 16), 4, "forward"),
        ("float32 backward, NCHW", (8, 16, 16, 16), 4, "backward"),
        ("float16 forward, (N, D)", (32, 10), 2, "forward"),
        ("float64 backward, (N, D)", (6, 5), 8, "backward"),
        ("bfloat16 backward, NCHW", (2, 3, 7, 5), 2, "backward"),
        ("float64 forward, NCDHW", (2, 4, 3, 3, 3), 8, "forward"),
    ]
    return [_Case(name, {"shape": shape, "dtype_bytes": s, "which": which})
            for name, shape, s, which in specs]


def bn_bytes(fn: Callable[..., Any]) -> bool:
    """Check the reader's byte model of training-mode BN (the one :mod:`bnlib.bench` uses).

    ``fn(shape, dtype_bytes, which)`` takes a tensor shape ``(N, C, *spatial)``, the bytes
    per element (4 for float32) and ``which`` (``"forward"`` or ``"backward"``); it returns
    the bytes that must cross the memory bus: ``3 * numel * dtype_bytes`` forward (read
    ``x`` twice, write ``y``), ``5 * numel * dtype_bytes`` backward (read ``dy`` and ``x``
    twice, write ``dx``).

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_BN_BYTES, fn, _bytes_cases())
