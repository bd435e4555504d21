"""BN under distribution shift: corrupted test sets, AdaBN and TENT.

:func:`corrupt` builds shifted copies of grey-scale images (Fashion-MNIST) in the spirit of
Hendrycks & Dietterich (2019), with this module's own :data:`SEVERITY_PARAMS`;
:func:`fingerprint` names a generated set, so a chapter can check it built the expected one.
Two ways to adapt a BN network trained on clean data to the shifted test data, without labels:
:func:`adabn` (Li et al., 2016) recomputes the BN statistics on target batches, and
:func:`tent_step` (Wang et al., 2021) takes one step down the mean prediction :func:`entropy`
of a test batch, changing only the BN layers' affine parameters (:func:`tent_parameters`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from bnlib import inference
from bnlib.runtime import rng

# --------------------------------------------------------------------------- corruptions

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "brightness")
SEVERITIES = (1, 2, 3, 4, 5)

# The parameter of each corruption at severities 1..5, each monotone in severity (stronger
# corruption as the severity grows). Chosen for 28 x 28 images in [0, 1]:
SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.05, 0.1, 0.15, 0.2, 0.3),  # std of the added noise (increasing)
    "gaussian_blur": (0.6, 0.9, 1.2, 1.6, 2.0),  # sigma of the kernel, in pixels (increasing)
    "contrast": (0.6, 0.45, 0.3, 0.2, 0.1),  # factor on the deviation from the mean (decreasing)
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # constant added to every pixel (increasing)
}


def corrupt(x: np.ndarray, kind: str, severity: int, seed: int = 0) -> np.ndarray:
    """A corrupted copy of the images ``x``; ``x`` itself is not modified.

    With ``p = SEVERITY_PARAMS[kind][severity - 1]``, each image becomes

    * ``"gaussian_noise"``: ``x + p * z``, ``z`` standard normal drawn from
      ``bnlib.rng(seed)`` (so it follows ``BNLIB_SEED_OFFSET``); one ``seed`` gives the
      same ``z`` at every severity;
    * ``"gaussian_blur"``: ``x`` convolved with the separable Gaussian kernel of sigma ``p``,
      ``k[i] ~ exp(-i**2 / (2 p**2))`` for ``|i| <= ceil(3 p)``, normalized to sum 1, along
      rows then columns, with reflect padding (``d c b | a b c d | c b a``);
    * ``"contrast"``: ``m + p * (x - m)``, ``m`` the image's mean over all its pixels;
    * ``"brightness"``: ``x + p``.

    Args:
        x: ``(N, 1, H, W)`` or ``(N, H, W)`` floats in [0, 1].
        kind: one of :data:`CORRUPTIONS`.
        severity: one of :data:`SEVERITIES`.
        seed: seeds the noise of ``"gaussian_noise"``; the other kinds are deterministic.
    Returns:
        float32 array of ``x``'s shape, clipped to [0, 1].
    """
    _check_images(x)
    p = _param(kind, severity)
    images = np.asarray(x, dtype=np.float64)
    if kind == "gaussian_noise":
        out = images + p * rng(seed).standard_normal(images.shape)
    elif kind == "gaussian_blur":
        kernel = _gaussian_kernel(p)
        out = _convolve_axis(_convolve_axis(images, kernel, axis=-2), kernel, axis=-1)
    elif kind == "contrast":
        m = images.mean(axis=tuple(range(1, images.ndim)), keepdims=True)
        out = m + p * (images - m)
    else:  # brightness
        out = images + p
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def corrupted_test_sets(
    x: np.ndarray,
    kinds: Iterable[str] = CORRUPTIONS,
    severities: Iterable[int] = SEVERITIES,
    seed: int = 0,
) -> dict[tuple[str, int], np.ndarray]:
    """Every ``corrupt(x, kind, severity, seed)``, keyed by ``(kind, severity)``.

    ``x`` is ``(N, 1, H, W)`` or ``(N, H, W)`` floats in [0, 1]; each value has its shape,
    float32. Bad kinds or severities are reported before anything is computed.
    """
    pairs = [(kind, severity) for kind in kinds for severity in severities]
    for kind, severity in pairs:
        _param(kind, severity)
    return {(kind, severity): corrupt(x, kind, severity, seed) for kind, severity in pairs}


def fingerprint(x: np.ndarray) -> str:
    """SHA-256 hex digest naming an array by its shape and its float32 values.

    The digest of the ASCII text ``f"float32{shape}"`` (e.g. ``"float32(10000, 1, 28, 28)"``)
    followed by the values as little-endian float32 in C order; any shape, any real dtype
    (converted to float32 first). Equal arrays give equal digests, on any machine.
    """
    values = np.asarray(x, dtype="<f4")
    digest = hashlib.sha256(f"float32{values.shape}".encode("ascii"))
    digest.update(values.tobytes(order="C"))
    return digest.hexdigest()


def _check_images(x: np.ndarray) -> None:
    """Raise ``ValueError`` naming the problem unless ``x`` is images in [0, 1]."""
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        what = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"images must be a float NumPy array in [0, 1], got {what}")
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[1] != 1):
        raise ValueError(f"images must have shape (N, 1, H, W) or (N, H, W), got {x.shape}")
    if not np.all((x >= 0.0) & (x <= 1.0)):  # also catches NaN
        raise ValueError(
            f"image values must lie in [0, 1], got values in [{np.nanmin(x)}, {np.nanmax(x)}]"
            + (" and NaN" if np.isnan(x).any() else "")
        )


def _param(kind: str, severity: int) -> float:
    """``SEVERITY_PARAMS[kind][severity - 1]``, or ``ValueError`` listing the valid choices."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; choose one of {SEVERITIES}")
    return SEVERITY_PARAMS[kind][SEVERITIES.index(severity)]


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """``(2r + 1,)`` Gaussian weights of ``sigma`` on ``-r..r``, ``r = ceil(3 sigma)``, sum 1."""
    r = int(np.ceil(3 * sigma))
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    return k / k.sum()


def _convolve_axis(images: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """``images`` convolved along ``axis`` with the symmetric odd-length ``kernel``, the axis
    reflect-padded by ``len(kernel) // 2`` on each side so the length stays the same."""
    r, n = len(kernel) // 2, images.shape[axis]
    pad = [(0, 0)] * images.ndim
    pad[axis] = (r, r)
    padded = np.moveaxis(np.pad(images, pad, mode="reflect"), axis, 0)
    out = sum(w * padded[i : i + n] for i, w in enumerate(kernel))
    return np.moveaxis(out, 0, axis)


# --------------------------------------------------------------------------- adaptation


def adabn(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
    num_batches: int | None = None,
) -> int:
    """AdaBN (Li et al., 2016): every BN layer's running statistics from target batches.

    AdaBN replaces the statistics of the source data by those of the target data, with the
    weights frozen: exactly :func:`bnlib.inference.precise_bn` run on target batches, which
    this calls. ``running_mean`` becomes the mean of the batch means, ``running_var`` the
    mean of the unbiased batch variances; no parameter changes. As there, the model runs in
    train mode during the pass (dropout too) and afterwards every module is back in the
    mode it had; call ``model.eval()`` to evaluate with the new statistics.

    Args:
        model: any module holding BN layers with running statistics.
        batches: target inputs ``(N, ...)``, or tuples whose first item is the input (labels
            are not used).
        num_batches: how many batches to use; ``None`` uses them all.
    Returns:
        the number of batches used.
    """
    return inference.precise_bn(model, batches, num_batches)


def tent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters TENT adapts: ``weight`` then ``bias`` of each BN layer, in model order.

    BN layers as :func:`bnlib.inference.bn_layers` finds them (those keeping running
    statistics). ``ValueError`` when there is none, or when one lacks an affine parameter.
    """
    layers = inference.bn_layers(model)
    if not layers:
        raise ValueError("tent_parameters: the model has no BN layer with running statistics")
    names = {module: name for name, module in model.named_modules()}
    params = []
    for bn in layers:
        if bn.weight is None or bn.bias is None:
            raise ValueError(
                f"BN layer '{names[bn]}' has no affine weight and bias for TENT to adapt "
                "(built with affine=False or bias=False)"
            )
        params += [bn.weight, bn.bias]
    return params


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the Shannon entropy, in nats, of ``softmax(logits)``.

    ``H(p) = -sum_k p_k log p_k`` with ``log p`` from ``log_softmax`` and ``0 log 0 = 0``,
    so large logits give no NaN, nor NaN gradients. ``logits``: ``(N, K)``; returns a 0-d
    tensor, differentiable.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, K), got {tuple(logits.shape)}")
    log_p = torch.log_softmax(logits, dim=1)
    log_p = log_p.clamp(min=torch.finfo(log_p.dtype).min)  # 0 * log 0 = 0, not 0 * -inf = NaN
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def tent_step(model: nn.Module, x: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One TENT update (Wang et al., 2021) on the test batch ``x``; returns its entropy.

    During the step every BN layer normalizes with the statistics of ``x`` (train mode)
    and every other module is in eval mode (no dropout). The running statistics are not
    used and not changed (``num_batches_tracked`` included): each BN layer has
    ``track_running_stats`` set to ``False`` for the forward pass, so it neither reads nor
    updates them. Then ``entropy(model(x))`` is backpropagated into the optimizer's
    parameters only, ``optimizer.step()`` and ``optimizer.zero_grad()`` run, and every
    module's mode and every BN layer's ``track_running_stats`` are restored.

    Args:
        model: a network with BN layers (see :func:`tent_parameters`) giving logits ``(N, K)``.
        x: a test batch ``(N, ...)`` on the model's device, ``N > 1``.
        optimizer: holds ``tent_parameters(model)`` and nothing else (TENT adapts only BN's
            affine parameters); it may hold some of them only, but a parameter that is no BN
            layer's weight or bias raises ``ValueError``.
    Returns:
        the mean entropy of the predictions on ``x`` before the step, 0-d, detached.
    """
    layers = inference.bn_layers(model)
    affine = {id(p) for bn in layers for p in (bn.weight, bn.bias) if p is not None}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params or any(id(p) not in affine for p in params):
        raise ValueError("tent_step: the optimizer must hold BN affine parameters only, "
                         "e.g. torch.optim.SGD(tent_parameters(model), lr=...)")
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for bn in layers:
            bn.train()
            bn.track_running_stats = False
        loss = entropy(model(x))
        loss.backward(inputs=[p for p in params if p.requires_grad])
        optimizer.step()
        optimizer.zero_grad()
    finally:
        for bn in layers:
            bn.track_running_stats = True
        for m, mode in modes:
            m.training = mode
    return loss.detach()
