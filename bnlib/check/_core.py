"""The shared core of the exercise checkers: cases, mistakes, diagnosis, verdicts, grading.

See :mod:`bnlib.check` for the contract every checker keeps. A chapter's module defines an
:class:`_Exercise` (a right solution, a catalogue of :class:`_Mistake`, the right formula)
and the :class:`_Case` list its checker runs, and its public checker calls :func:`_check`
(or :func:`_verdict`, for a checker that tests statistics rather than values).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnlib.check._i18n import _

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
        """This case in messages, e.g. ``case 'typical batch' (x of shape (16, 5), eps=1e-05)``."""
        parts = [
            _("{name} of shape {shape}").format(name=k, shape=v.shape)
            + ("" if v.dtype == np.float64 else f" ({v.dtype})")
            if isinstance(v, np.ndarray) else f"{k}={v!r}"
            for k, v in self.args.items()
        ]
        return _("case '{name}' ({inputs})").format(name=self.name, inputs=", ".join(parts))


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

    def __post_init__(self) -> None:
        if self.name in _CATALOGUES:
            raise ValueError(f"two catalogues named {self.name!r}")
        _CATALOGUES[self.name] = self


_CATALOGUES: dict[str, _Exercise] = {}


def catalogues() -> dict[str, _Exercise]:
    """Every checker's catalogue (its right solution and known mistakes), by checker name.

    The contract test goes over all of them: the right solution passes, each mistake is
    caught and gets its own hint.
    """
    return dict(_CATALOGUES)


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
        print(_("{name}: not done yet — replace the NotImplementedError stub, then run this "
                "cell again.").format(name=name))
        return False
    except _Failed as failure:
        _RESULTS[name] = {"status": "fail", "case": failure.case}
        if grading():
            message = (_("{name}: FAILED on case '{case}' (grading mode: no hints)")
                       if failure.case else _("{name}: FAILED (grading mode: no hints)"))
            raise AssertionError(message.format(name=name, case=failure.case)) from None
        raise AssertionError(f"{name}: {failure}") from None
    _RESULTS[name] = {"status": "pass", "case": ""}
    print(f"{name}: {passed} ✓")
    return True


def _check(ex: _Exercise, fn: Callable[..., Any], cases: Sequence[_Case]) -> bool:
    """Run ``fn`` on every case and compare with ``ex.solution``; the body of every checker."""
    return _verdict(ex.name, lambda: _compare(ex, fn, cases))


def _outputs(ex: _Exercise, fn: Callable[..., Any], case: _Case) -> Outputs:
    """The reader's outputs on one case; a failure is tagged with the case's name."""
    try:
        return _unpack(_call(fn, case), ex.outputs)
    except _Failed as failure:
        raise _Failed(str(failure), failure.case or case.name) from None


def _compare(ex: _Exercise, fn: Callable[..., Any], cases: Sequence[_Case]) -> str:
    """What :func:`_check` runs: "all n cases pass", or :class:`_Failed` naming the mistake."""
    got = [_outputs(ex, fn, case) for case in cases]
    want = [_unpack(ex.solution(*case.args.values()), ex.outputs) for case in cases]
    bad = [c for c, g, w in zip(cases, got, want, strict=True)
           if not all(_close(a, b, c) for a, b in zip(g, w, strict=True))]
    if bad:
        raise _Failed(_diagnose(ex, cases, got, want, bad), bad[0].name)
    return _("all {n} cases pass").format(n=len(cases))


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
        raise _Failed(_raised(exc, case.describe()), case.name) from None
    for k, v in case.args.items():
        if isinstance(v, np.ndarray) and not np.array_equal(v, copies[k], equal_nan=True):
            raise _Failed(_(
                "your function changed its input `{name}` in place (with `{name} -= ...`, "
                "`{name} *= ...` or `{name}[...] = ...`), which corrupts the caller's array: "
                "make a new array instead, e.g. `{name} = {name} - ...`."
            ).format(name=k), case.name)
    return result


def _raised(exc: BaseException, on: str) -> str:
    """'your function raised ValueError: ... (in f, line 3: `code`), on <on>.'"""
    return _("your function raised {error}: {message}{where}, on {case}.").format(
        error=type(exc).__name__, message=exc, where=_where(exc), case=on)


def _where(exc: BaseException) -> str:
    """' (in f, line 3: `code`)' for the deepest frame of the reader's code, or ''."""
    frames = traceback.extract_tb(exc.__traceback__)[1:]  # [0] is _call (or the caller) itself
    frames = [f for f in frames if "-packages" not in f.filename]  # skip NumPy, torch, ...
    if not frames:
        return ""
    f = frames[-1]
    where = (_(" (in {function}, line {line}: `{code}`)") if f.line
             else _(" (in {function}, line {line})"))
    return where.format(function=f.name, line=f.lineno, code=f.line)


def _unpack(result: Any, outputs: tuple[str, ...]) -> Outputs:
    """The arrays a function returned, one per name in ``outputs``; wrong types fail.

    A single-output exercise also accepts the CS231n pairing ``(out, cache)``.
    """
    if len(outputs) == 1:
        (name,) = outputs
        if result is None:
            raise _Failed(_returned_none(name))
        if isinstance(result, tuple):
            if len(result) != 2:
                raise _Failed(_(
                    "expected {name} or ({name}, cache), but your function returned a tuple "
                    "of {n} items."
                ).format(name=name, n=len(result)))
            result = result[0]
        return (_as_array(result, name),)
    names = ", ".join(outputs)
    expected = _("a tuple ({names})").format(names=names)
    if result is None:
        raise _Failed(_returned_none(names))
    if not isinstance(result, (tuple, list)):
        raise _Failed(_("expected {expected}, but your function returned {kind}.").format(
            expected=expected, kind=_kind(result)))
    if len(result) != len(outputs):
        raise _Failed(_("expected {expected}, but your function returned {n} items.").format(
            expected=expected, n=len(result)))
    return tuple(_as_array(v, name) for v, name in zip(result, outputs, strict=True))


def _returned_none(names: str) -> str:
    """The message for a function that returned None instead of ``names``."""
    return _("your function returned None: did you forget `return {names}`?").format(
        names=names)


def _as_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a float64 array (NumPy arrays, torch tensors, nested lists, numbers)."""
    if value is None:
        raise _Failed(_("{name} is None: did you forget to compute it?").format(name=name))
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception:
        array = np.asarray(None)
    if array.dtype.kind not in "fiu":
        raise _Failed(_("{name} should be an array of floats, but it is {kind}.").format(
            name=name, kind=_kind(value)))
    return array.astype(np.float64)


def _kind(value: Any) -> str:
    """'an object of type ndarray with shape (4, 3)': what the reader's function returned."""
    shape = getattr(value, "shape", None)
    kind = (_("an object of type {type} with shape {shape}") if shape is not None
            else _("an object of type {type}"))
    return kind.format(type=type(value).__name__, shape=None if shape is None else tuple(shape))


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
            return _(mistake.hint)
    hints = {ex.case_hints.get(c.name) for c in bad}
    if len(hints) == 1 and None not in hints:
        return _(hints.pop())
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
    lines = [  # "dx: hint", or the hint alone when it starts by naming the output
        _(hint) if hint.startswith(tuple(names)) else _(" and ").join(names) + ": " + _(hint)
        for hint, names in explained.items()
    ]
    lines += [_describe_error(ex.outputs[k], [g[k] for g in got], [w[k] for w in want], cases)
              for k in unexplained]
    if unexplained:
        lines.append(_("No mistake this checker knows matches; the right formula: {formula}")
                     .format(formula=_(ex.formula)))
    return "\n".join(lines)


def _describe_error(
    name: str, got: list[np.ndarray], want: list[np.ndarray], cases: Sequence[_Case]
) -> str:
    """The facts about one wrong output: shape, NaN/inf, or the largest error and where."""
    bad = [i for i in range(len(cases)) if not _close(got[i], want[i], cases[i])]
    g, w = got[bad[0]], want[bad[0]]
    where = _("in {n_bad} of {n} cases, first on {case}").format(
        n_bad=len(bad), n=len(cases), case=cases[bad[0]].describe())
    if g.shape != w.shape:
        flipped = _(" (transposed?)") if g.ndim > 1 and g.shape == w.shape[::-1] else ""
        return _("{name} has shape {shape} instead of {expected}{transposed} {where}.").format(
            name=name, shape=g.shape, expected=w.shape, transposed=flipped, where=where)
    if not np.isfinite(g).all():
        i = tuple(np.argwhere(~np.isfinite(g))[0])
        return _(
            "{name} contains {value} {where}: at {name}[{index}], where the right value is "
            "{right:.6g}. NaN or inf usually comes from dividing by zero or taking the square "
            "root of a negative number."
        ).format(name=name, value=g[i], where=where, index=_index(i), right=w[i])
    i = np.unravel_index(np.argmax(np.abs(g - w)), g.shape)
    expected, actual = _distinct(float(w[i]), float(g[i]))
    return _(
        "{name} is wrong {where}. The largest error is at {name}[{index}]: expected "
        "{expected}, got {actual}."
    ).format(name=name, where=where, index=_index(i), expected=expected, actual=actual)


def _distinct(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with the fewest significant digits (at least 6) that tell them apart."""
    for digits in range(6, 18):
        sa, sb = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if sa != sb:
            return sa, sb
    return repr(a), repr(b)


def _index(i: tuple[Any, ...]) -> str:
    return ", ".join(str(int(j)) for j in i)


