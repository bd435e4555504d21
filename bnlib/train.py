"""One training loop for every chapter: seeded, lean, with a progress bar and a history.

The data live on the device as tensors and mini-batches are drawn by indexing, so a
small model trains thousands of steps a minute on a laptop CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnlib.runtime import device as default_device
from bnlib.runtime import generator
from bnlib.runtime import progress as progress_bar


@dataclass
class History:
    """What :func:`fit` records. ``eval_steps`` index ``test_acc``; ``train_loss`` is per step."""

    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)

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


@torch.no_grad()
def evaluate_in_train_mode(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> float:
    """Accuracy of ``model`` run in train mode, as when ``model.eval()`` was forgotten.

    ``x`` ``(N, ...)`` and ``y`` ``(N,)`` are cut, in the order given, into consecutive
    batches of ``batch_size``; every BN layer normalizes each batch with that batch's own
    statistics. A copy of ``model`` runs, so its running statistics and mode stay as they
    were. A batch with a single example raises PyTorch's "more than 1 value per channel".
    """
    twin = copy.deepcopy(model).train()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (twin(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
    return correct / len(x)


OPTIMIZERS = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}


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
    shuffle: bool = True,
    optimizer: str = "sgd",
    before_step: Callable[[nn.Module], None] | None = None,
    warmup_steps: int = 0,
) -> History:
    """Train ``model`` with SGD (or AdaGrad, or Adam) and cross-entropy for ``steps`` mini-batches.

    Batches are drawn without replacement from a seeded permutation of ``x_train``
    ``(N, ...)``/``y_train`` ``(N,)``, reshuffled each epoch (``shuffle=False``: taken in
    the given order, epoch after epoch, e.g. for deliberately non-i.i.d. batches). Every
    ``eval_every`` steps (and after the last) the test accuracy is recorded when test data
    are given. ``on_step(step, model, history)`` runs after each update (for recording
    activations and the like). The batch order is seeded with ``shift_seed(seed)``
    (:func:`bnlib.runtime.generator`); the initial weights are whatever ``model`` holds.

    ``optimizer`` is ``"sgd"`` (``torch.optim.SGD``, with ``momentum``), ``"adagrad"`` or
    ``"adam"`` (``torch.optim.Adagrad`` and ``torch.optim.Adam`` with their default
    settings besides ``lr`` and ``weight_decay``; ``momentum`` must then be 0).

    ``before_step(model)`` runs between ``backward()`` and the optimizer's step, when the
    gradients are in ``.grad`` (e.g. to clip them). ``warmup_steps = k > 0`` raises the
    learning rate linearly over the first ``k`` steps, ``lr * step / k`` at step
    ``step <= k``, then keeps ``lr``.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be non-negative, got {warmup_steps}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}")
    if optimizer != "sgd" and momentum:
        raise ValueError(f"momentum is an argument of SGD only; {optimizer} has its own")
    dev = device or default_device()
    model.to(dev).train()
    xt, yt = as_tensor(x_train, dev), as_tensor(y_train, dev)
    has_test = x_test is not None and y_test is not None
    if has_test:
        xv, yv = as_tensor(x_test, dev), as_tensor(y_test, dev)
    extra = {"momentum": momentum} if optimizer == "sgd" else {}
    opt = OPTIMIZERS[optimizer](model.parameters(), lr=lr, weight_decay=weight_decay, **extra)
    loss_fn = nn.CrossEntropyLoss()
    gen = generator(seed)
    n = len(xt)

    def new_order() -> torch.Tensor:
        return torch.randperm(n, generator=gen) if shuffle else torch.arange(n)

    order, pos = new_order(), 0
    hist = History()
    steps_range = range(1, steps + 1)
    for step in progress_bar(steps_range, desc) if progress else steps_range:
        if pos + batch_size > n:
            order, pos = new_order(), 0
        idx = order[pos : pos + batch_size].to(dev)
        pos += batch_size
        if warmup_steps:
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, step / warmup_steps)
        loss = loss_fn(model(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if before_step is not None:
            before_step(model)
        opt.step()
        hist.train_loss.append(loss.item())
        if on_step is not None:
            on_step(step, model, hist)
        if has_test and (step % eval_every == 0 or step == steps):
            hist.eval_steps.append(step)
            hist.test_acc.append(evaluate(model, xv, yv))
    return hist


# --------------------------------------------------------------------------- looking inside
# Diagnostics of the covariate-shift chapter (and the paper reproduction): what a layer sees
# during training, how saturated it is, how gradients behave. None of them changes the model,
# its BN buffers, its ``.grad`` fields or the RNG stream the training run draws from.


def saturation_fraction(
    a: np.ndarray | torch.Tensor, low: float = 0.05, high: float = 0.95
) -> float:
    """The fraction of all entries of ``a`` (any shape) strictly below ``low`` or above ``high``.

    For sigmoid outputs ``a`` ``(N, D)`` the defaults count a unit as saturated on a sample
    when its output is within 0.05 of 0 or 1, where the sigmoid's slope is below 0.048.
    """
    a = torch.as_tensor(a)
    return ((a < low) | (a > high)).double().mean().item()


@contextmanager
def side_effect_free(model: nn.Module) -> Iterator[None]:
    """Run diagnostics on ``model`` and undo what they change: buffers and the RNG streams.

    BN's running statistics (every buffer) are restored on exit, and the global CPU (and
    current CUDA) RNG state too, so a noise layer's draws inside do not alter training.
    """
    saved = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(saved[name])


def _weight_names(model: nn.Module) -> list[str]:
    """Names of the weight matrices and kernels (``dim >= 2``): one per linear or conv layer."""
    return [name for name, p in model.named_parameters() if p.dim() >= 2]


def grad_norms(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor,
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
) -> dict[str, float]:
    """The L2 norm of the loss gradient for each weight matrix, first layer first.

    ``x`` ``(N, ...)`` and ``y`` ``(N,)`` are one batch; the model keeps its mode (a model in
    training mode normalizes with the batch's statistics). Keys are parameter names such as
    ``"1.weight"``. Side-effect free: ``.grad`` fields are not touched (``autograd.grad``).
    """
    names = _weight_names(model)
    params = dict(model.named_parameters())
    with side_effect_free(model):
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, [params[n] for n in names])
    return {n: g.norm().item() for n, g in zip(names, grads)}


class ActivationRecorder:
    """Record what chosen layers see during training, on a fixed probe batch, every k steps.

    ``modules`` maps labels to modules of the model (e.g. its sigmoids). At each recording,
    the model runs on ``x_probe`` ``(P, ...)`` in its current mode (training mode: BN uses
    the probe's batch statistics) and the recorder keeps, per label, about the module's
    *input* ``(P, D)`` (a conv input ``(P, C, H, W)`` counts its ``C`` channels as the units,
    each with ``P*H*W`` values):

    * ``quantiles[label]``: the ``q`` percentiles of every unit, one ``(len(q), D)`` array
      per recording;
    * ``values[label]``: the raw values of the units listed in ``units``, one
      ``(values per unit, len(units))`` array per recording (for plots of whole
      distributions, e.g. :func:`bnlib.plots.percentile_band`);

    and about its *output*, ``saturation[label]``: :func:`saturation_fraction` with ``low``
    and ``high``. ``grad_norms`` holds :func:`grad_norms` on ``(x_probe, y_probe)``, one dict
    per recording, and ``steps`` the steps recorded. Use it as ``fit(..., on_step=recorder)``
    (it records when ``step % every == 0``) and call ``recorder.record(0, model)`` before
    training for the starting point. Recording is side-effect free (:func:`side_effect_free`).
    """

    def __init__(
        self, modules: dict[str, nn.Module], x_probe: torch.Tensor, y_probe: torch.Tensor,
        every: int = 10, q: Sequence[float] = (15, 50, 85), units: Sequence[int] = (0,),
        low: float = 0.05, high: float = 0.95,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be positive, got {every}")
        self.x_probe, self.y_probe, self.every = x_probe, y_probe, every
        self.q, self.units = torch.tensor(q, dtype=torch.float64) / 100, list(units)
        self.low, self.high = low, high
        self.steps: list[int] = []
        self.quantiles: dict[str, list[np.ndarray]] = {label: [] for label in modules}
        self.values: dict[str, list[np.ndarray]] = {label: [] for label in modules}
        self.saturation: dict[str, list[float]] = {label: [] for label in modules}
        self.grad_norms: list[dict[str, float]] = []
        self._armed = False
        self._seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = [m.register_forward_hook(self._hook(label)) for label, m in modules.items()]

    def _hook(self, label: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self._armed:
                self._seen[label] = (inputs[0].detach(), output.detach())
        return hook

    def record(self, step: int, model: nn.Module) -> None:
        """Run the probe batch through ``model`` now and store the statistics as ``step``."""
        self._armed, self._seen = True, {}
        try:
            norms = grad_norms(model, self.x_probe, self.y_probe)
        finally:
            self._armed = False
        missing = [label for label in self.quantiles if label not in self._seen]
        if missing:
            raise RuntimeError(f"modules {missing} did not run in the model's forward pass")
        for label, (inp, out) in self._seen.items():
            units = inp.transpose(0, 1).reshape(inp.shape[1], -1).double()  # (D, values)
            quantiles = torch.quantile(units, self.q.to(units.device), dim=1)
            self.quantiles[label].append(quantiles.cpu().numpy())
            self.values[label].append(units[self.units].T.float().cpu().numpy())
            self.saturation[label].append(saturation_fraction(out, self.low, self.high))
        self.grad_norms.append(norms)
        self.steps.append(step)
        self._seen = {}

    def __call__(self, step: int, model: nn.Module, history: History | None = None) -> None:
        """The ``on_step`` hook of :func:`fit`: record every ``every`` steps."""
        if step % self.every == 0:
            self.record(step, model)

    def quantile_array(self, label: str) -> np.ndarray:
        """All recordings of ``label`` stacked: ``(len(steps), len(q), D)``."""
        return np.stack(self.quantiles[label])

    def value_array(self, label: str, unit: int) -> np.ndarray:
        """The raw input values of ``unit`` (one of ``units``): ``(len(steps), values)``."""
        return np.stack(self.values[label])[:, :, self.units.index(unit)]

    def grad_norm_array(self) -> np.ndarray:
        """Gradient norms ``(len(steps), number of weight matrices)``, first layer first."""
        return np.array([list(d.values()) for d in self.grad_norms])

    def remove(self) -> None:
        """Detach the hooks (the recordings stay)."""
        for h in self._handles:
            h.remove()
        self._handles = []


def median_drift_and_jitter(quantiles: np.ndarray, median: int = 1) -> tuple[np.ndarray, ...]:
    """How far each unit's median moved over training, and how much it wandered on the way.

    ``quantiles`` ``(recordings, len(q), units)`` is :meth:`ActivationRecorder.quantile_array`;
    ``median`` indexes the 50th percentile in ``q`` (1 for the default ``q``). Returns two
    ``(units,)`` arrays: the *drift* ``|m(T) - m(0)|`` from the first recording to the last
    and the *jitter* ``mean_t |m(t+1) - m(t)|`` between consecutive recordings.
    """
    m = quantiles[:, median, :]
    return np.abs(m[-1] - m[0]), np.abs(np.diff(m, axis=0)).mean(axis=0)


def drift_to_the_end(quantiles: np.ndarray) -> np.ndarray:
    """``max_t |x_q(t) - x_q(T)|`` averaged over the percentiles ``q``: how far each unit's
    distribution ever was from where it ended. ``(recordings, len(q), units) -> (units,)``."""
    return np.abs(quantiles - quantiles[-1]).max(axis=0).mean(axis=0)


def _rng_state() -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global CPU RNG state and, with a GPU, the current CUDA device's."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    return torch.random.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.random.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def gradient_shift(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
) -> tuple[float, float]:
    """Internal covariate shift as Santurkar et al. (2018) measure it, for one layer.

    ``G`` is the gradient of the loss on the batch ``x`` ``(N, ...)``, ``y`` ``(N,)`` with
    respect to ``layer.weight``; ``G'`` is the same gradient after every parameter *before*
    ``layer.weight`` (in ``model.parameters()`` order, the forward order of a
    ``nn.Sequential``) took the SGD step ``p -= lr * grad`` on that batch, while the layer
    itself and everything after it stayed put. Returns ``(||G - G'||, cos(G, G'))``.

    Both gradients see the same random draws (noise layers) and the model keeps its mode;
    ``model`` is not changed (the step is taken on a copy).
    """
    names = [n for n, _ in model.named_parameters()]
    target = next((n for n, p in model.named_parameters() if p is layer.weight), None)
    if target is None:
        raise ValueError("layer.weight is not a parameter of model")
    k = names.index(target)
    twin = copy.deepcopy(model)
    params = list(twin.parameters())
    rng = _rng_state()
    with side_effect_free(twin):
        grads = torch.autograd.grad(loss_fn(twin(x), y), params)
        with torch.no_grad():
            for p, g in zip(params[:k], grads[:k]):
                p -= lr * g
        _set_rng_state(rng)  # the same noise draws as the first pass
        (shifted,) = torch.autograd.grad(loss_fn(twin(x), y), [params[k]])
    g0, g1 = grads[k], shifted
    return (g0 - g1).norm().item(), F.cosine_similarity(g0.reshape(1, -1), g1.reshape(1, -1)).item()


@dataclass
class GradientWalk:
    """The loss and gradient along ``w - eta * g`` from one point ``w`` (see :func:`gradient_walk`).

    ``loss`` ``(S,)`` at each step size ``step_sizes`` ``(S,)``; ``grad_change`` ``(S,)`` is
    ``||grad L(w - eta g) - g||``; ``loss0`` and ``grad_norm`` are ``L(w)`` and ``||g||``.
    """

    step_sizes: np.ndarray
    loss: np.ndarray
    grad_change: np.ndarray
    loss0: float
    grad_norm: float

    @property
    def loss_range(self) -> float:
        """How much the loss varies along the walk: max minus min, ``L(w)`` included."""
        values = np.append(self.loss, self.loss0)
        return float(values.max() - values.min())

    @property
    def beta_smoothness(self) -> float:
        """Effective beta-smoothness: ``max ||grad change|| / ||distance moved||``."""
        return float(np.max(self.grad_change / (self.step_sizes * self.grad_norm)))


def gradient_walk(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, step_sizes: Sequence[float],
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
) -> GradientWalk:
    """Walk from the current parameters ``w`` along the negative gradient (Santurkar et al.).

    With ``g`` the gradient of the loss on the batch ``x`` ``(N, ...)``, ``y`` ``(N,)`` over
    all parameters, evaluate the loss and its gradient at ``w - eta * g`` for each ``eta`` in
    ``step_sizes``: a smooth landscape changes little along the walk. Every evaluation sees the
    same random draws and the same batch; ``model`` is not changed (the walk runs on a copy).
    """
    twin = copy.deepcopy(model)
    params = list(twin.parameters())
    start = [p.detach().clone() for p in params]
    rng = _rng_state()
    losses, changes = [], []
    with side_effect_free(twin):
        loss0 = loss_fn(twin(x), y)
        g = [t.detach() for t in torch.autograd.grad(loss0, params)]
        for eta in step_sizes:
            with torch.no_grad():
                for p, w, gi in zip(params, start, g):
                    p.copy_(w - eta * gi)
            _set_rng_state(rng)
            loss = loss_fn(twin(x), y)
            grads = torch.autograd.grad(loss, params)
            losses.append(loss.item())
            changes.append((_flat(grads) - _flat(g)).norm().item())
    return GradientWalk(np.asarray(step_sizes, dtype=float), np.array(losses), np.array(changes),
                        loss0.item(), _flat(g).norm().item())
