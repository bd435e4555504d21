"""What the checker tests share: the message a checker fails with."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def failure(checker: Callable, fn: Callable) -> str:
    """The ``AssertionError`` message ``checker(fn)`` raises (the test fails if it passes)."""
    with pytest.raises(AssertionError) as info, np.errstate(all="ignore"):
        checker(fn)
    return str(info.value)
