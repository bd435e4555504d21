"""Where code runs and how it is seeded: the first cell of every chapter calls these."""

from __future__ import annotations

import platform
import random

import numpy as np
import torch


def device() -> torch.device:
    """CUDA when a GPU is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = 0) -> np.random.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); return a fresh NumPy ``Generator``."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (for code that still uses the legacy global RNG)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def versions() -> str:
    """One line naming the versions, the device and PyTorch's CPU threads, for every notebook."""
    return (
        f"Python {platform.python_version()}, NumPy {np.__version__}, "
        f"PyTorch {torch.__version__}, device: {device()}, "
        f"CPU threads: {torch.get_num_threads()}"
    )
