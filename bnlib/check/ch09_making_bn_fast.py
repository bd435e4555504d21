"""Chapter 9, making BN fast: its exercise checkers and their catalogues of mistakes.

Public checkers: :func:`bn_bytes`.
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

# --------------------------------------------------------------------------- bytes moved by BN


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

