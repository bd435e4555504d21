"""One training loop for every chapter: seeded, lean, with a progress bar and a history.

The data live on the device as tensors and mini-batches are drawn by indexing, so a
small model trains thousands of steps a minute on a laptop CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from bnlib.runtime import device as default_device


@dataclass
class History:
    """What :func:`fit` records. ``eval_steps`` index ``test_acc``; ``train_loss`` is per step."""

    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    records: dict[str, list] = field(default_factory=dict)

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1]


def as_tensor(a: np.ndarray | torch.Tensor, dev: torch.device) -> torch.Tensor:
    """A NumPy array or tensor on ``dev`` (floats stay float32, labels int64)."""
    return torch.as_tensor(a).to(dev)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Accuracy of ``model`` in eval mode on ``x`` ``(N, ...)``, ``y`` ``(N,)``; keeps the mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(x)


def fit(
    model: nn.Module,
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    *,
    steps: int,
    batch_size: int = 60,
    lr: float = 0.1,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    x_test: np.ndarray | torch.Tensor | None = None,
    y_test: np.ndarray | torch.Tensor | None = None,
    eval_every: int = 100,
    seed: int = 0,
    device: torch.device | None = None,
    on_step: Callable[[int, nn.Module, History], None] | None = None,
    progress: bool = True,
    desc: str = "training",
) -> History:
    """Train ``model`` with SGD and cross-entropy for ``steps`` mini-batches.

    Batches are drawn without replacement from a seeded permutation of ``x_train``
    ``(N, ...)``/``y_train`` ``(N,)``, reshuffled each epoch. Every ``eval_every`` steps (and
    after the last) the test accuracy is recorded when test data are given. ``on_step(step,
    model, history)`` runs after each update (for recording activations and the like).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    dev = device or default_device()
    model.to(dev).train()
    xt, yt = as_tensor(x_train, dev), as_tensor(y_train, dev)
    has_test = x_test is not None and y_test is not None
    if has_test:
        xv, yv = as_tensor(x_test, dev), as_tensor(y_test, dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    n = len(xt)
    order, pos = torch.randperm(n, generator=gen), 0
    hist = History()
    for step in tqdm(range(1, steps + 1), desc=desc, disable=not progress, mininterval=1.0):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch_size].to(dev)
        pos += batch_size
        loss = loss_fn(model(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.train_loss.append(loss.item())
        if on_step is not None:
            on_step(step, model, hist)
        if has_test and (step % eval_every == 0 or step == steps):
            hist.eval_steps.append(step)
            hist.test_acc.append(evaluate(model, xv, yv))
    return hist
