"""Where code runs and how it is seeded: the first cell of every chapter calls these.

Every random draw in the book goes through the seeds below, and every seed through
:func:`shift_seed`. Setting the environment variable ``BNLIB_SEED_OFFSET`` to an integer
``k`` therefore changes every draw of every chapter at once (the data subsets, the initial
weights, the batch order, the noise), which is how CI checks that a chapter's claims hold
for other draws than the default one (``make test-seeds``). ``k = 0``, the default, leaves
every seed as written.
"""

from __future__ import annotations

import os
import platform
import random
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

SEED_OFFSET_ENV = "BNLIB_SEED_OFFSET"
PROGRESS_ENV = "BNLIB_PROGRESS"  # "bar" (default), "summary" (the book's build) or "off"
T = TypeVar("T")
SEED_STRIDE = 1000  # offset k adds 1000 k: chapters use seeds below 1000, so no two collide


def device() -> torch.device:
    """CUDA when a GPU is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_offset() -> int:
    """The integer in ``$BNLIB_SEED_OFFSET`` (0 when unset); a clear error when it is not one."""
    raw = os.environ.get(SEED_OFFSET_ENV, "").strip()
    if not raw:
        return 0
    try:
        offset = int(raw)
    except ValueError:
        raise ValueError(f"{SEED_OFFSET_ENV} must be an integer, got {raw!r}") from None
    if offset < 0:
        raise ValueError(f"{SEED_OFFSET_ENV} must be non-negative, got {offset}")
    return offset


def shift_seed(seed: int) -> int:
    """``seed`` moved by the seed offset: ``seed + 1000 * offset`` (unchanged at offset 0)."""
    if seed < 0:
        raise ValueError(f"seeds must be non-negative, got {seed}")
    return seed + SEED_STRIDE * seed_offset()


def seed_everything(seed: int = 0) -> np.random.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); return a fresh NumPy ``Generator``.

    The seed used is :func:`shift_seed` of ``seed``.
    """
    seed = shift_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (for code that still uses the legacy global RNG)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def rng(seed: int) -> np.random.Generator:
    """A NumPy ``Generator`` of its own, seeded with :func:`shift_seed` of ``seed``."""
    return np.random.default_rng(shift_seed(seed))


def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` of its own, seeded with :func:`shift_seed` of ``seed``.

    For a stream of draws that must not depend on anything else drawn (e.g. the same
    batches for every network of a comparison). Draw on the CPU and move the result.
    """
    return torch.Generator().manual_seed(shift_seed(seed))


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` and show how far the loop got, as ``$BNLIB_PROGRESS`` says.

    ``"bar"`` (the default): tqdm's live bar, a widget in Jupyter. ``"summary"``: no bar, one
    line once the loop is done, e.g. ``plain: 2000 steps in 5.1 s``; the book's build uses it,
    because a page is written when the run ends and a widget saved then shows "0%".
    ``"off"``: nothing.
    """
    mode = os.environ.get(PROGRESS_ENV, "bar").strip() or "bar"
    if mode not in ("bar", "summary", "off"):
        raise ValueError(f"{PROGRESS_ENV} must be bar, summary or off, got {mode!r}")
    if mode == "bar":
        yield from tqdm(items, desc=desc, total=total, mininterval=1.0)
        return
    start, count = time.perf_counter(), 0
    for item in items:
        yield item
        count += 1
    if mode == "summary":
        print(f"{desc}: {count} steps in {time.perf_counter() - start:.1f} s")


def versions() -> str:
    """One line naming the versions, the device, PyTorch's CPU threads and the seed offset."""
    offset = seed_offset()
    return (
        f"Python {platform.python_version()}, NumPy {np.__version__}, "
        f"PyTorch {torch.__version__}, device: {device()}, "
        f"CPU threads: {torch.get_num_threads()}"
        + (f", seed offset: {offset}" if offset else "")
    )
