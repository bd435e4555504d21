"""Chapter 11, BN under distribution shift: its exercise checkers and their catalogues of
mistakes.

Public checkers: :func:`adabn_statistics`, :func:`tent_entropy`, :func:`tent_parameters`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnlib import shift
from bnlib.check._core import (
    Outputs,
    _Case,
    _check,
    _compare,
    _Exercise,
    _Failed,
    _kind,
    _Mistake,
    _NotDone,
    _raised,
    _returned_none,
    _verdict,
)
from bnlib.check._i18n import _
from bnlib.torch_bn import BatchNorm

# --------------------------------------------------------------------------- AdaBN by hand


def _adabn_solution(batches: np.ndarray) -> Outputs:
    """What a fresh torch BN layer with ``momentum=None`` holds after seeing every batch."""
    layer = nn.BatchNorm1d if batches.ndim == 3 else nn.BatchNorm2d
    bn = layer(batches.shape[2], momentum=None, dtype=torch.float64).train()
    with torch.no_grad():
        for batch in batches:
            bn(torch.from_numpy(batch))
    return bn.running_mean.numpy(), bn.running_var.numpy()


def _ema(stats: np.ndarray, start: float, momentum: float = 0.1) -> np.ndarray:
    """PyTorch's exponential moving average of ``stats`` ``(K, ...)``, from ``start``."""
    running = np.full(stats.shape[1:], start)
    for s in stats:
        running = (1.0 - momentum) * running + momentum * s
    return running


# How the K per-batch statistics, means and variances ``(K, C)``, become the buffers.
_COMBINE: dict[str, Callable[[np.ndarray, np.ndarray], Outputs]] = {
    "average": lambda means, variances: (means.mean(axis=0), variances.mean(axis=0)),
    "ema": lambda means, variances: (_ema(means, 0.0), _ema(variances, 1.0)),
    "last": lambda means, variances: (means[-1], variances[-1]),
    "spread of means": lambda means, variances: (means.mean(axis=0), means.var(axis=0)),
}


def _adabn_variant(
    *,
    per: str = "channel",  # "channel" (BN's), "example" (over the channels), "position"
    correction: Callable[[int, int], float] = lambda n, m: n / (n - 1),
    combine: str = "average",  # a key of _COMBINE
    pooled: bool = False,
) -> Callable[[np.ndarray], Outputs]:
    """AdaBN's buffers, right by default; each argument swaps in one wrong step.

    ``correction(n, m)`` multiplies the biased variance of ``n`` values from a batch of
    ``m`` examples; ``pooled`` takes the statistics of all ``K * m`` examples as one batch.
    """

    def batch_stats(batch: np.ndarray) -> Outputs:  # (m, C, *spatial) -> two (C,)
        axes = {"channel": (0, *range(2, batch.ndim)), "example": tuple(range(1, batch.ndim)),
                "position": (0,)}[per]
        n = int(np.prod([batch.shape[a] for a in axes]))
        return batch.mean(axis=axes), batch.var(axis=axes) * correction(n, batch.shape[0])

    def solution(batches: np.ndarray) -> Outputs:
        if pooled:
            return batch_stats(batches.reshape(-1, *batches.shape[2:]))
        means, variances = (np.stack(s) for s in zip(*map(batch_stats, batches)))
        return _COMBINE[combine](means, variances)

    return solution


_ADABN_FIX = (
    "for each batch, per channel, the mean and the unbiased variance (`ddof=1`) over its "
    "m (times H * W) values; running_mean = the mean of the K batch means, running_var = "
    "the mean of the K batch variances"
)

_ADABN = _Exercise(
    name="adabn_statistics",
    outputs=("running_mean", "running_var"),
    solution=_adabn_solution,
    formula=_ADABN_FIX + " (a cumulative average: BN with momentum=None).",
    mistakes=(
        _Mistake(
            "running_var averages the biased batch variances (dividing by the number of "
            "values n): BN's buffer holds unbiased ones, `var(..., ddof=1)`, dividing by "
            "n - 1, because it estimates the variance of the population the batches come "
            "from. (Normalizing a batch in training uses the biased one.)",
            _adabn_variant(correction=lambda n, m: 1.0),
        ),
        _Mistake(
            "running_var is the variance of all K * m values pooled together. BN's buffer "
            "is the mean of the K per-batch variances: every training step normalizes with "
            "its own batch's statistics, and the buffer averages those. The pooled variance "
            "adds how far the batch means spread around their average (law of total "
            "variance, for biased variances: pooled = mean of the within-batch variances "
            "+ variance of the batch means), a spread no batch "
            "ever normalized with; in a drifting stream it is large.",
            _adabn_variant(pooled=True),
        ),
        _Mistake(
            "running_var is the biased variance of all K * m values pooled together: two "
            "slips. BN's buffer is the mean of the K per-batch variances, each unbiased "
            "(`ddof=1`): every training step normalizes with its own batch's statistics, "
            "and the buffer averages those; the pooled variance adds the spread of the "
            "batch means around their average, which no batch ever normalized with.",
            _adabn_variant(pooled=True, correction=lambda n, m: 1.0),
        ),
        _Mistake(
            "your buffers match PyTorch's default momentum=0.1, an exponential moving "
            "average starting from 0 (mean) and 1 (variance): it weighs the last batches "
            "most and keeps part of the starting values. AdaBN recomputes the statistics "
            "with momentum=None, a cumulative average in which every batch counts the "
            "same: " + _ADABN_FIX + ".",
            _adabn_variant(combine="ema"),
        ),
        _Mistake(
            "your buffers are the statistics of the last batch only: average the batch "
            "means and the batch variances over all K batches.",
            _adabn_variant(combine="last"),
        ),
        _Mistake(
            "your statistics are per example (over the channels, one value per example of "
            "a batch), as layer norm takes them; BN's are per channel, over the examples of "
            "a batch (and its positions): `batch.mean(axis=0)` for (m, C), "
            "`batch.mean(axis=(0, 2, 3))` for (m, C, H, W).",
            _adabn_variant(per="example"),
        ),
        _Mistake(
            "your statistics for (K, m, C, H, W) batches are per position, shape (C, H, W): "
            "BN2d averages each channel over the examples AND the positions, "
            "`axis=(0, 2, 3)` of each batch, shape (C,).",
            _adabn_variant(per="position"),
        ),
        _Mistake(
            "for (K, m, C, H, W) batches your unbiased factor is m / (m - 1), with m the "
            "batch size; a channel's variance runs over n = m * H * W values, so the factor "
            "is n / (n - 1) (`var(axis=(0, 2, 3), ddof=1)` does it).",
            _adabn_variant(correction=lambda n, m: m / (m - 1)),
        ),
        _Mistake(
            "running_var is the variance of the batch means (how much the batches' means "
            "differ); BN's buffer is the mean of the batch variances, the spread of the "
            "values inside each batch averaged over the batches.",
            _adabn_variant(combine="spread of means"),
        ),
    ),
)


def _adabn_cases() -> list[_Case]:
    """Channels with their own means and scales; ``m != C`` everywhere, so per-example
    statistics have the wrong shape and a named hint."""
    rng = np.random.default_rng(13)
    specs = [  # (name, shape (K, m, C, *spatial), loc, drift between batches)
        ("4 batches of 8 examples, 3 features", (4, 8, 3), 0.0, 0.0),
        ("a drifting stream: every batch has its own mean", (5, 6, 4), 0.5, 3.0),
        ("a BN2d layer's input, (K, m, C, H, W)", (3, 4, 2, 3, 5), -1.0, 0.5),
        ("large offset, |mean| ~ 1e3", (4, 5, 3), 1e3, 0.2),
        ("batches of 2 (the unbiased factor is 2)", (6, 2, 3), 0.0, 0.5),
        ("more channels than examples, C=7, m=3", (3, 3, 7), 2.0, 1.0),
    ]
    cases = []
    for name, shape, loc, drift in specs:
        k, _, c = shape[:3]
        channel = (1, c) + (1,) * (len(shape) - 3)  # broadcasts over (m, C, *spatial)
        mean = loc + rng.uniform(-1.0, 1.0, channel) + drift * rng.standard_normal((k, *channel))
        scale = rng.uniform(0.5, 2.0, channel)
        cases.append(_Case(name, {"batches": mean + scale * rng.standard_normal(shape)}))
    return cases


def adabn_statistics(fn: Callable[..., Any]) -> bool:
    """Check the reader's AdaBN by hand: the running statistics of one BN layer.

    ``fn(batches)`` takes ``batches`` of shape ``(K, m, C)`` (K target batches of m examples
    of a BN1d layer's input) or ``(K, m, C, H, W)`` (a BN2d layer's); it returns
    ``(running_mean, running_var)``, both ``(C,)``: what :func:`bnlib.shift.adabn` leaves in
    the layer's buffers (a fresh BN with ``momentum=None`` fed each batch in train mode),
    the mean over the batches of the per-channel batch means and of the unbiased
    (``ddof=1``) per-channel batch variances.

    Returns ``True`` (and prints one line) when every case passes, ``False`` while ``fn`` is
    the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the likely
    mistake otherwise.
    """
    return _check(_ADABN, fn, _adabn_cases())


# --------------------------------------------------------------------------- TENT's loss


def _log_softmax(z: np.ndarray, axis: int) -> np.ndarray:
    """``z - logsumexp(z)`` along ``axis``, with the max subtracted: finite for finite ``z``."""
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _entropies(p: np.ndarray, log_p: np.ndarray) -> np.ndarray:
    """The entropy in nats of each row of ``p`` ``(N, K)``: ``(N,)``."""
    return -(p * log_p).sum(axis=1)


def _entropy_variant(
    *,
    axis: int = 1,  # the axis the softmax normalizes
    per_example: Callable[[np.ndarray, np.ndarray], np.ndarray] = _entropies,
    reduce: Callable[[np.ndarray], Any] = np.mean,
) -> Callable[[np.ndarray], np.ndarray]:
    """TENT's loss from ``p`` and ``log p``, right by default; each argument swaps in one
    wrong step. Computed stably, so a mistake is named on every case."""

    def solution(logits: np.ndarray) -> np.ndarray:
        log_p = _log_softmax(logits, axis)
        return np.asarray(reduce(per_example(np.exp(log_p), log_p)))

    return solution


def _marginal_entropy(logits: np.ndarray) -> np.ndarray:
    """The entropy of the mean prediction over the batch, ``H(mean_i p_i)``."""
    log_p = _log_softmax(logits, 1)
    top = log_p.max(axis=0)
    log_mean = top + np.log(np.exp(log_p - top).mean(axis=0))  # log of mean_i p_i, (K,)
    return np.asarray(-(np.exp(log_mean) * log_mean).sum())


_HUGE_LOGITS = "huge logits ~1e3 (the right H is finite)"
_ENTROPY_FIX = "`H = -(p * log_p).sum(axis=1).mean()`"

_ENTROPY = _Exercise(
    name="tent_entropy",
    outputs=("H",),
    solution=lambda logits: shift.entropy(torch.from_numpy(logits)),
    formula="`log_p = z - logsumexp(z, axis=1)` (the row's max subtracted first), "
    "`p = np.exp(log_p)`, " + _ENTROPY_FIX + ".",
    mistakes=(
        _Mistake(
            "your H is the sum over the batch of the examples' entropies: TENT's loss is "
            "their mean, " + _ENTROPY_FIX + ", so the size of a step does not grow with "
            "the batch size.",
            _entropy_variant(reduce=np.sum),
        ),
        _Mistake(
            "you returned one entropy per example, shape (N,): TENT's loss is one number, "
            "their mean over the batch, " + _ENTROPY_FIX + ".",
            _entropy_variant(reduce=lambda h: h),
        ),
        _Mistake(
            "your H is in bits (log base 2): use the natural log, `np.log`, so H is in nats "
            "(uniform predictions over K classes give log K = ln K).",
            _entropy_variant(per_example=lambda p, log_p: _entropies(p, log_p) / np.log(2)),
        ),
        _Mistake(
            "your H is the negative of the entropy: H = -sum_k p_k log p_k; every log p_k "
            "is <= 0, so with the minus sign H >= 0.",
            _entropy_variant(per_example=lambda p, log_p: -_entropies(p, log_p)),
        ),
        _Mistake(
            "your softmax normalizes over the batch (axis 0): each example's probabilities "
            "run over its K classes, `axis=1`, so every row of p sums to 1.",
            _entropy_variant(axis=0),
        ),
        _Mistake(
            "your H is the entropy of the mean prediction over the batch, H(mean_i p_i): "
            "that is the diversity term some methods add (e.g. SHOT, to keep the batch's "
            "predictions spread over the classes), not TENT's loss, which averages the "
            "entropies of the examples' own predictions: " + _ENTROPY_FIX + ".",
            _marginal_entropy,
        ),
        _Mistake(
            "you averaged -p_k log p_k over the classes: the entropy sums over them, "
            "`-(p * log_p).sum(axis=1)`, then TENT averages over the batch.",
            _entropy_variant(per_example=lambda p, log_p: -(p * log_p).mean(axis=1)),
        ),
        _Mistake(
            "your H is the cross-entropy against the predicted class (a pseudo-label loss, "
            "-log p of the argmax): the entropy weighs every class's -log p_k by its "
            "probability p_k, " + _ENTROPY_FIX + ".",
            _entropy_variant(per_example=lambda p, log_p: -log_p.max(axis=1)),
        ),
    ),
    case_hints={_HUGE_LOGITS: (
        "right on every case but the one with huge logits (~1e3), where your H is NaN, inf "
        "or wrong: without the max subtracted `np.exp(1000.0)` overflows to inf, and "
        "`np.log(p)` is -inf where p underflows to 0 (then 0 * -inf = NaN). Compute the "
        "log-probabilities directly: `m = z.max(axis=1, keepdims=True)`, `log_p = z - m - "
        "np.log(np.exp(z - m).sum(axis=1, keepdims=True))` (z - logsumexp(z)), then "
        "`p = np.exp(log_p)`: p * log_p is then 0, not NaN, where p underflows.")},
)


def _entropy_cases() -> list[_Case]:
    rng = np.random.default_rng(14)
    huge = rng.standard_normal((4, 5))
    huge[1] += 1e3  # overflows np.exp unless the max is subtracted
    huge[2] = [1e3, 2.0, -1e3, 999.0, 0.5]  # p of -1e3 underflows to 0 even then
    specs = [
        ("typical: 8 examples, 5 classes", 2.0 * rng.standard_normal((8, 5))),
        ("confident rows (one logit far above the others)",
         rng.standard_normal((6, 4)) + 15.0 * np.eye(4)[rng.integers(0, 4, 6)]),
        (_HUGE_LOGITS, huge),
        ("a single example, N=1", rng.standard_normal((1, 6))),
        ("two classes, K=2", 3.0 * rng.standard_normal((7, 2))),
        ("uniform logits (H = log K)", np.full((4, 10), 3.0)),
    ]
    return [_Case(name, {"logits": logits}) for name, logits in specs]


def tent_entropy(fn: Callable[..., Any]) -> bool:
    """Check the reader's TENT loss: the mean entropy of the predictions.

    ``fn(logits)`` takes ``logits`` of shape ``(N, K)`` (N examples, K classes); it returns
    ``H``, a number (a float, a 0-d array or a 0-d tensor): the mean over the batch of the
    Shannon entropy in nats of ``softmax(logits)`` along the classes,
    ``-(p * log p).sum(axis=1).mean()``, finite even for huge logits.

    The cases without huge logits run first, so a wrong formula is named even when it also
    overflows on them. Returns ``True`` (and prints one line) when every case passes,
    ``False`` while ``fn`` is the untouched ``NotImplementedError`` stub; raises
    ``AssertionError`` naming the likely mistake otherwise.
    """
    cases = _entropy_cases()

    def run() -> str:
        _compare(_ENTROPY, fn, [case for case in cases if case.name != _HUGE_LOGITS])
        return _compare(_ENTROPY, fn, cases)

    return _verdict(_ENTROPY.name, run)


# --------------------------------------------------------------------------- TENT's parameters
# The reader's answer is a list of tensors, not an array, so this checker compares sets:
# each list becomes the set of the names (``model.named_parameters()`` and
# ``named_buffers()``) of the tensors it holds, on three models built here; the catalogue's
# entries take a model and return a list, like the reader's function.


def _tent_variant(
    kinds: type | tuple[type, ...] = _BatchNorm, names: tuple[str, ...] = ("weight", "bias")
) -> Callable[[nn.Module], list[torch.Tensor]]:
    """The tensors ``names`` of every module of the types ``kinds``, in model order."""

    def solution(model: nn.Module) -> list[torch.Tensor]:
        return [getattr(m, name) for m in model.modules() if isinstance(m, kinds)
                for name in names]

    return solution


def _last_layer(model: nn.Module) -> list[torch.Tensor]:
    """The parameters of the last module that has parameters of its own."""
    owners = [m for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    return list(owners[-1].parameters(recurse=False))


_TENT_FIX = (
    "`[p for m in model.modules() if isinstance(m, _BatchNorm) for p in (m.weight, m.bias)]`"
)

_BUFFERS = (
    "your list holds BN's buffers (running_mean, running_var or num_batches_tracked): "
    "buffers are not Parameters, they get no gradient, so no optimizer can update them. "
    "TENT normalizes with the test batch's own statistics and learns the affine "
    "`m.weight` and `m.bias` of every BN layer."
)

_TENT = _Exercise(
    name="tent_parameters",
    outputs=("parameters",),
    solution=shift.tent_parameters,
    formula="the weight and the bias of every BN layer, the book's BatchNorm included (all "
    "subclass torch.nn.modules.batchnorm._BatchNorm), and nothing else: " + _TENT_FIX + ".",
    mistakes=(
        _Mistake(
            "your list holds every parameter of the model: TENT adapts the BN layers' "
            "weight and bias only, a tiny fraction of the model, and keeps every other "
            "parameter as training left it; updating all of them on unlabelled test "
            "batches costs more and risks collapse (entropy minimization alone can push "
            "every prediction onto a few classes).",
            lambda model: list(model.parameters()),
        ),
        _Mistake(
            "your list holds the affine parameters of every normalization layer, LayerNorm's "
            "included: TENT adapts the BN layers only, the layers it switches to the test "
            "batch's statistics; a LayerNorm normalizes each example on its own and stays "
            "as trained.",
            _tent_variant((_BatchNorm, nn.LayerNorm, nn.GroupNorm)),
        ),
        _Mistake(
            "your list holds the BN weights (the scales, gamma) but not the biases: TENT "
            "adapts both, `(m.weight, m.bias)` of every BN layer.",
            _tent_variant(names=("weight",)),
        ),
        _Mistake(
            "your list holds the BN biases (the shifts, beta) but not the weights: TENT "
            "adapts both, `(m.weight, m.bias)` of every BN layer.",
            _tent_variant(names=("bias",)),
        ),
        _Mistake(_BUFFERS, _tent_variant(names=("running_mean", "running_var"))),
        _Mistake(
            "your list holds the parameters of the last layer only (the classifier head): "
            "TENT adapts the weight and bias of every BN layer, and nothing else.",
            _last_layer,
        ),
        _Mistake(
            "your list misses the book's own BatchNorm (bnlib.torch_bn.BatchNorm): testing "
            "for torch's concrete classes, nn.BatchNorm1d/2d/3d, leaves out every other BN "
            "layer. Test for their common base class, `isinstance(m, _BatchNorm)` (from "
            "torch.nn.modules.batchnorm), which the book's BatchNorm subclasses too.",
            _tent_variant((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)),
        ),
    ),
)


def _tent_models() -> list[tuple[str, nn.Module]]:
    """Three small models, built with a seeded generator that leaves torch's global one as
    it was; each call builds new ones, so no run sees another's changes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return [
            ("a small CNN (Conv2d, BatchNorm2d, ReLU, Linear)", nn.Sequential(
                nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))),
            ("an MLP with a BatchNorm1d and a LayerNorm", nn.Sequential(
                nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(),
                nn.Linear(8, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))),
            ("an MLP with the book's BatchNorm (bnlib.torch_bn.BatchNorm)", nn.Sequential(
                nn.Linear(5, 4), BatchNorm(4), nn.ReLU(), nn.Linear(4, 2))),
        ]


def _tent_call(fn: Callable[..., Any], name: str, model: nn.Module) -> Any:
    """``fn(model)``, a returned iterator made a list; the stub and errors as in ``_call``."""
    try:
        result = fn(model)
        return list(result) if isinstance(result, Iterator) else result
    except NotImplementedError:
        raise _NotDone from None
    except Exception as exc:
        raise _Failed(_raised(exc, name), name) from None


def _selection(result: Any, name: str, model: nn.Module) -> frozenset[str]:
    """The names of the model's tensors in ``result``; anything but a list of them fails."""
    if result is None:
        raise _Failed(_returned_none("params"), name)
    if isinstance(result, (set, frozenset)):
        raise _Failed(_("your function returned a set: torch's optimizers refuse sets, whose "
                        "order changes from run to run; return a list."), name)
    if isinstance(result, torch.Tensor) or not isinstance(result, (list, tuple)):
        raise _Failed(_("expected a list of parameters, but your function returned "
                        "{kind}.").format(kind=_kind(result)), name)
    own = {id(t): n for n, t in itertools.chain(model.named_parameters(),
                                                model.named_buffers())}
    chosen = []
    for item in result:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            raise _Failed(_("your list holds (name, parameter) pairs, as `named_parameters()` "
                            "gives them: return the parameters themselves."), name)
        if id(item) not in own:
            raise _Failed(_(
                "your list holds {kind} that is not one of the model's tensors, on {model}: "
                "return the model's own Parameter objects (`m.weight`, `m.bias`), not copies "
                "(`.clone()`, `.detach()`, `.data`) or new tensors, so that the optimizer "
                "updates the model."
            ).format(kind=_kind(item), model=name), name)
        chosen.append(own[id(item)])
    if len(set(chosen)) < len(chosen):
        twice = sorted({n for n in chosen if chosen.count(n) > 1})
        raise _Failed(_("your list holds {tensors} more than once, on {model}: list each "
                        "parameter once.").format(tensors=", ".join(twice), model=name), name)
    return frozenset(chosen)


def _describe_selection(name: str, got: frozenset[str], want: frozenset[str],
                        model: nn.Module) -> str:
    """'on <name> your list lacks 1.bias (BatchNorm2d) and also holds 4.weight (LayerNorm).':
    how ``got`` differs from ``want``."""

    def labels(names: frozenset[str]) -> str:
        return ", ".join(f"{n} ({type(model.get_submodule(n.rpartition('.')[0])).__name__})"
                         for n in sorted(names))

    lacks, extra = want - got, got - want
    if lacks and extra:
        message = _("on {model} your list lacks {lacks} and also holds {extra}.")
    elif lacks:
        message = _("on {model} your list lacks {lacks}.")
    else:
        message = _("on {model} your list also holds {extra}.")
    return message.format(model=name, lacks=labels(lacks), extra=labels(extra))


def _tent_compare(fn: Callable[..., Any]) -> str:
    """What :func:`tent_parameters` runs: "all n models pass", or :class:`_Failed`."""
    models = _tent_models()

    def selections(solution: Callable[..., Any]) -> list[frozenset[str]]:
        return [_selection(solution(model), name, model) for name, model in models]

    want = selections(_TENT.solution)
    got = [_selection(_tent_call(fn, name, model), name, model) for name, model in models]
    if got == want:
        return _("all {n} models pass").format(n=len(models))
    (name, model), g, w = next(t for t in zip(models, got, want) if t[1] != t[2])
    buffers = [{n for n, _tensor in m.named_buffers()} for _name, m in models]
    if any(s & b for s, b in zip(got, buffers)):  # however many, with parameters or not
        raise _Failed(_(_BUFFERS), name)
    hint = next((m.hint for m in _TENT.mistakes if selections(m.solution) == got), None)
    if hint is not None:
        raise _Failed(_(hint), name)
    raise _Failed(_describe_selection(name, g, w, model) + " " + _(
        "No mistake this checker knows matches; the right choice: {formula}"
    ).format(formula=_(_TENT.formula)), name)


def tent_parameters(fn: Callable[..., Any]) -> bool:
    """Check the reader's choice of the parameters TENT adapts (Wang et al., 2021).

    ``fn(model)`` takes a ``torch.nn.Module`` and returns a list of its parameters (any
    order; a tuple or an iterator is fine): the ``weight`` and ``bias`` of every BN layer
    (every ``torch.nn.modules.batchnorm._BatchNorm``, the book's ``BatchNorm`` included) and
    nothing else, each once, the very ``nn.Parameter`` objects of the model. It runs on
    three models built here: a CNN with ``BatchNorm2d``, an MLP with ``BatchNorm1d`` and a
    ``LayerNorm``, and an MLP with ``bnlib.torch_bn.BatchNorm``.

    Returns ``True`` (and prints one line) when every model passes, ``False`` while ``fn``
    is the untouched ``NotImplementedError`` stub; raises ``AssertionError`` naming the
    likely mistake otherwise.
    """
    return _verdict(_TENT.name, lambda: _tent_compare(fn))
