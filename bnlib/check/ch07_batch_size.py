"""Chapter 7, batch size: its exercise checkers and their catalogues of mistakes.

Public checkers: :func:`group_norm`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bnlib import reference as ref
from bnlib.check._core import (
    _Case,
    _check,
    _Exercise,
    _Mistake,
)

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


