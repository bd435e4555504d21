"""Normalization without the batch: layers whose statistics never look across examples.

* :func:`rms_norm_forward` and :func:`rms_norm_backward`: RMS normalization (Zhang &
  Sennrich, 2019) in NumPy, the from-scratch reference, a CS231n-style pair.
* :class:`RMSNorm`: the same in PyTorch, a twin of ``torch.nn.RMSNorm`` written with
  ordinary tensor operations (autograd differentiates it, twice if asked).
* :func:`standardize_weight` and :class:`WSConv2d`: weight standardization (Qiao et al.,
  2019), which normalizes the *weights* of each output channel instead of the activations.
* :class:`ScaledWSConv2d` and :func:`relu_gain`: scaled weight standardization for
  normalizer-free ResNets (Brock et al., ICLR 2021), which keeps the signal's variance
  constant from layer to layer at initialization.
* :func:`adaptive_grad_clip_` and :func:`unitwise_norm`: adaptive gradient clipping (Brock
  et al., 2021, NFNets), which bounds each unit's gradient relative to its weights' size.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

Cache = dict[str, Any]


# --------------------------------------------------------------------------- RMSNorm, NumPy


def rms_norm_forward(
    x: np.ndarray, weight: np.ndarray, eps: float
) -> tuple[np.ndarray, Cache]:
    """RMS normalization over the last axis: no mean subtracted, only the scale divided out.

    Inputs:
        x: ``(..., D)`` floating array; every row (last axis) is normalized on its own.
        weight: ``(D,)`` per-feature scale.
        eps: added to the mean square inside the square root.
    Returns:
        y: same shape as ``x``, ``x / sqrt(mean(x**2, axis=-1) + eps) * weight``.
        cache: what :func:`rms_norm_backward` needs.
    """
    if np.shape(weight) != x.shape[-1:]:
        raise ValueError(f"expected weight of shape {x.shape[-1:]}, got {np.shape(weight)}")
    inv_rms = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)
    x_hat = x * inv_rms
    return x_hat * weight, {"x_hat": x_hat, "inv_rms": inv_rms, "weight": weight}


def rms_norm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray]:
    """The backward pass of :func:`rms_norm_forward`, in closed form.

    With ``r = 1 / sqrt(mean(x**2) + eps)`` per row, ``x_hat = x * r``, ``D`` features and
    ``g = dy * weight``, the chain rule through ``dr/dx_j = -r**3 * x_j / D`` gives

        dx = r * (g - x_hat * mean(g * x_hat))    (mean over the last axis, per row)
        dweight = sum(dy * x_hat)                 (sum over every axis but the last)

    Unlike BN's there is no ``mean(g)`` term: nothing was subtracted in the forward pass.

    Inputs:
        dy: upstream gradient, same shape as ``x``.
        cache: from :func:`rms_norm_forward`.
    Returns:
        dx: same shape as ``x``; dweight: ``(D,)``.
    """
    x_hat, inv_rms, weight = cache["x_hat"], cache["inv_rms"], cache["weight"]
    if dy.shape != x_hat.shape:
        raise ValueError(f"expected dy of shape {x_hat.shape}, got {dy.shape}")
    g = dy * weight
    dx = inv_rms * (g - x_hat * np.mean(g * x_hat, axis=-1, keepdims=True))
    dweight = np.sum(dy * x_hat, axis=tuple(range(dy.ndim - 1)))
    return dx, dweight


# --------------------------------------------------------------------------- RMSNorm, PyTorch


class RMSNorm(nn.Module):
    r"""RMS normalization over the trailing dimensions; ``torch.nn.RMSNorm``'s twin.

    .. math:: y = \frac{x}{\sqrt{\mathrm{mean}(x^2) + \epsilon}} \odot \gamma

    Args:
        normalized_shape: an int ``D`` (normalize over the last dimension, of size ``D``) or
            a tuple (normalize over that many trailing dimensions, which must match it).
        eps: added to the mean square inside the square root; ``None`` (the default) uses
            the machine epsilon of the dtype the statistics are computed in, as torch does:
            ``torch.finfo(x.dtype).eps`` for float32 and float64 input, float32's for half
            and bfloat16 input (which is computed in float32 and cast back).
        elementwise_affine: learn ``weight`` of shape ``normalized_shape`` (ones);
            otherwise ``weight`` is ``None``.
        device, dtype: where and in which dtype ``weight`` is created.

    Shape: input ``(*, *normalized_shape)``; output the same.
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...] | list[int] | torch.Size,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(
                torch.empty(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set ``weight`` back to ones (nothing to do without it)."""
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.normalized_shape)
        if x.dim() < d or tuple(x.shape[-d:]) != self.normalized_shape:
            raise ValueError(
                f"RMSNorm expected input whose trailing shape is normalized_shape "
                f"{self.normalized_shape}, got input of shape {tuple(x.shape)}"
            )
        compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        xs = x.to(compute_dtype)
        eps = torch.finfo(compute_dtype).eps if self.eps is None else self.eps
        dims = tuple(range(-d, 0))
        y = xs * torch.rsqrt(xs.square().mean(dim=dims, keepdim=True) + eps)
        if self.weight is not None:
            y = y * self.weight
        return y.to(x.dtype)


# --------------------------------------------------------------------------- weight standardization


def standardize_weight(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Weight standardization (Qiao et al., 2019): each output channel to mean 0, variance 1.

    ``weight`` ``(C_out, *rest)``, e.g. a conv's ``(C_out, C_in / groups, kH, kW)`` or a
    linear layer's ``(C_out, C_in)``. Each slice ``W_i = weight[i]`` becomes
    ``(W_i - mean(W_i)) / sqrt(var(W_i) + eps)`` with the biased variance over all its
    entries. Returns a new tensor of ``weight``'s shape, differentiable with respect to
    ``weight``. Its variance is exactly ``var / (var + eps)``, so close to 1 only when the
    raw weights' variance is well above ``eps`` (mind this with large fan-ins, whose
    default initial variance ``1 / (3 fan_in)`` is small).
    """
    if weight.dim() < 2:
        raise ValueError(f"expected a weight (C_out, *rest) of 2 or more dims, got shape "
                         f"{tuple(weight.shape)}")
    dims = tuple(range(1, weight.dim()))
    var, mean = torch.var_mean(weight, dim=dims, correction=0, keepdim=True)
    return (weight - mean) * torch.rsqrt(var + eps)


class WSConv2d(nn.Conv2d):
    """A ``nn.Conv2d`` that convolves with :func:`standardize_weight` of its weight.

    Same constructor, parameters and shapes as ``nn.Conv2d``, plus the keyword ``eps`` of
    :func:`standardize_weight`. The raw ``weight`` is the parameter that is learned; only
    its standardized version touches the input, so the output does not change when an
    output channel's raw weights are shifted or scaled (up to ``eps``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        """The weight the convolution uses, ``(C_out, C_in / groups, kH, kW)``."""
        return standardize_weight(self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


def relu_gain() -> float:
    """``sqrt(2 / (1 - 1/pi))``: the gain that makes ReLU variance-preserving.

    For ``z ~ N(0, 1)``, ``relu(z)`` has ``E[relu(z)^2] = 1/2`` and mean ``1/sqrt(2 pi)``,
    so variance ``(1 - 1/pi) / 2``; scaled by this gain its variance is 1 again (Brock et
    al., 2021, the ``gamma`` of :class:`ScaledWSConv2d`).
    """
    return math.sqrt(2.0 / (1.0 - 1.0 / math.pi))


class ScaledWSConv2d(WSConv2d):
    r"""Scaled weight standardization for normalizer-free ResNets (Brock et al., ICLR 2021).

    The convolution uses, for each output channel ``i`` with ``N = fan_in``
    (``C_in / groups * kH * kW``) raw weights of mean ``mu_i`` and biased variance
    ``var_i``,

    .. math:: \hat W_i = \gamma \, g_i \, \frac{W_i - \mu_i}{\sqrt{\max(N \, \mathrm{var}_i,
              \epsilon)}}

    i.e. ``gamma * gain * (W - mean) / (std * sqrt(fan_in))``, with ``eps`` guarding only
    (nearly) constant channels, as in Brock et al.'s code. So each output channel has mean 0
    and, unless ``fan_in * var_i < eps``, ``sum(W_hat_i**2) = gamma**2 * gain_i**2``
    exactly (the raw weights' scale and initialization do not matter): for inputs of
    variance ``v``, independent across the fan-in, the pre-activation has variance
    ``gamma**2 gain**2 v`` whatever the inputs' common mean. ``gamma=relu_gain()``, for a
    conv whose output goes through a ReLU, keeps the variance of the ReLU's output constant
    from layer to layer at initialization.

    Args: those of ``nn.Conv2d`` (and so of :class:`WSConv2d`, whose ``forward`` it uses
    with its own :meth:`standardized_weight`), plus (keyword only)
        gamma: fixed gain of the nonlinearity that follows (not learned; default 1). For a
            ReLU, ``relu(gamma * z) = gamma * relu(z)``, so this is the paper's scaled
            activation; for other nonlinearities Brock et al.'s code scales their output.
        eps: lower bound of ``fan_in * var`` (default ``1e-4``, Brock et al.'s).

    Parameters: ``weight`` and ``bias`` as in ``nn.Conv2d``, and ``gain`` ``(C_out,)``,
    learned, initialized to ones.
    """

    def __init__(self, *args: Any, gamma: float = 1.0, eps: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(*args, eps=eps, **kwargs)
        self.gamma = gamma
        w = self.weight
        self.gain = nn.Parameter(torch.ones(w.shape[0], device=w.device, dtype=w.dtype))

    def reset_parameters(self) -> None:
        """``nn.Conv2d``'s initialization of ``weight`` and ``bias``; ``gain`` to ones."""
        super().reset_parameters()
        if getattr(self, "gain", None) is not None:  # nn.Conv2d.__init__ calls this before
            nn.init.ones_(self.gain)

    def standardized_weight(self) -> torch.Tensor:
        """The weight the convolution uses, ``W_hat`` ``(C_out, C_in / groups, kH, kW)``."""
        w = self.weight
        fan_in = w[0].numel()
        var, mean = torch.var_mean(w, dim=(1, 2, 3), correction=0, keepdim=True)
        scale = torch.rsqrt(torch.clamp(fan_in * var, min=self.eps))
        return (w - mean) * scale * (self.gamma * self.gain.view(-1, 1, 1, 1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}"


# --------------------------------------------------------------------------- gradient clipping


def unitwise_norm(t: torch.Tensor) -> torch.Tensor:
    """The Frobenius norm of each unit of a parameter (or gradient) ``t``.

    A unit is one output row or output channel, ``t[i]``: the norm is over every dim but 0,
    shape ``(C_out, 1, ...)`` (broadcasts against ``t``). A 0-D or 1-D tensor (a bias, a
    gain) is one unit: its whole-vector norm, shape ``()``.
    """
    if t.dim() <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


@torch.no_grad()
def adaptive_grad_clip_(
    parameters: torch.Tensor | Iterable[torch.Tensor], clip: float = 0.01, eps: float = 1e-3
) -> None:
    """Adaptive gradient clipping (Brock et al., 2021, "High-Performance Large-Scale Image
    Recognition Without Normalization"), in place.

    For every unit ``i`` (see :func:`unitwise_norm`: each output row or channel ``W_i``;
    a bias or any other 0-D or 1-D parameter is one unit, as in the paper's code) whose
    gradient is too large relative to its weight,

        ||G_i|| / max(||W_i||, eps) > clip,   G_i <- G_i * clip * max(||W_i||, eps) / ||G_i||

    so afterwards ``||G_i|| / max(||W_i||, eps) <= clip`` everywhere; units under the
    threshold are left exactly as they were. ``eps`` keeps weights initialized at zero from
    freezing. Parameters whose ``grad`` is ``None`` are skipped. The paper does not clip the
    final linear layer: leave it out of ``parameters``. (A transposed convolution's weight
    is ``(C_in, C_out, ...)``: its dim 0 is not the output.) Call between ``backward()``
    and the optimizer's ``step()``.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    if not clip > 0 or not eps > 0:
        raise ValueError(f"clip and eps must be positive, got clip={clip}, eps={eps}")
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = clip * unitwise_norm(p).clamp_min(eps)
        # At most 1, and exactly 1 (so multiplying changes nothing) when the unit is under
        # the threshold, a zero gradient included (max_norm / 0 = inf).
        scale = (max_norm / unitwise_norm(p.grad)).clamp(max=1.0)
        p.grad.mul_(scale)
