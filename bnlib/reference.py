"""NumPy reference implementation of Batch Normalization.

Everything here follows PyTorch's conventions exactly:

* statistics are taken per channel, the channel being axis 1, over every other axis, so
  ``x`` of shape ``(N, C)`` or ``(N, C, *spatial)`` gives ``C`` means and variances;
* the *biased* variance (divide by ``m``) normalizes, the *unbiased* one (divide by
  ``m - 1``) feeds the running estimate;
* ``running = (1 - momentum) * running + momentum * batch`` with ``momentum=0.1``;
  ``momentum=None`` gives the cumulative average ``1 / num_batches_tracked``;
* ``eps`` is added to the variance inside the square root.

The functions come in CS231n-style pairs: ``*_forward`` returns ``(out, cache)`` and
``*_backward`` takes the upstream gradient and that cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Cache = dict[str, Any]


# --------------------------------------------------------------------------- input checks


def check_input(x: np.ndarray, num_features: int | None = None, training: bool = True) -> None:
    """Raise a clear error for input BN cannot normalize; change nothing.

    ``x`` must be a floating array of shape ``(N, C)`` or ``(N, C, *spatial)``; in training
    every channel needs more than one value, since a single value has no spread.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"expected a NumPy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"expected a floating-point array, got dtype {x.dtype}; convert it first, "
            "e.g. x.astype(np.float64)"
        )
    if x.ndim < 2:
        raise ValueError(
            f"expected input of shape (N, C) or (N, C, *spatial), got {x.ndim}-D input "
            f"of shape {x.shape}"
        )
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(
            f"expected {num_features} channels on axis 1, got input of shape {x.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch, got input of shape {x.shape}")
    values_per_channel = x.size // x.shape[1] if x.shape[1] else 0
    if training and values_per_channel <= 1:
        raise ValueError(
            f"expected more than 1 value per channel when training, got input of shape {x.shape}"
        )


def _check_param(name: str, p: np.ndarray, channels: int) -> None:
    if np.shape(p) != (channels,):
        raise ValueError(f"expected {name} of shape ({channels},), got {np.shape(p)}")


def reduce_axes(x: np.ndarray) -> tuple[int, ...]:
    """The axes BN averages over: every axis but the channel axis 1."""
    return (0,) + tuple(range(2, x.ndim))


def per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a per-channel vector ``(C,)`` to ``(1, C, 1, ...)`` so it broadcasts."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of ``x`` ``(N, C, *spatial)``, two-pass.

    Returns two arrays of shape ``(C,)``. The variance is the mean squared deviation from
    the mean (the second pass), never ``E[x^2] - E[x]^2``, which cancels catastrophically
    when the mean is large compared with the spread.
    """
    axes = reduce_axes(x)
    mean = x.mean(axis=axes)
    var = np.square(x - per_channel(mean, x.ndim)).mean(axis=axes)
    return mean, var


# --------------------------------------------------------------------------- forward / backward


def batchnorm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, Cache]:
    """Training-mode BN forward pass (Algorithm 1 of Ioffe & Szegedy, 2015).

    Inputs:
        x: ``(N, C)`` or ``(N, C, *spatial)`` floating array.
        gamma, beta: ``(C,)`` scale and shift.
        eps: added to the variance inside the square root.
    Returns:
        y: same shape as ``x``, ``gamma * (x - mean) / sqrt(var + eps) + beta``.
        cache: what :func:`batchnorm_backward` needs (also holds ``mean`` and ``var``).
    """
    check_input(x)
    _check_param("gamma", gamma, x.shape[1])
    _check_param("beta", beta, x.shape[1])
    mean, var = batch_stats(x)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - per_channel(mean, x.ndim)) * per_channel(inv_std, x.ndim)
    y = per_channel(gamma, x.ndim) * x_hat + per_channel(beta, x.ndim)
    cache = {
        "x": x, "x_hat": x_hat, "mean": mean, "var": var,
        "inv_std": inv_std, "gamma": gamma, "eps": eps,
    }
    return y, cache


def batchnorm_backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training-mode BN backward pass in closed form.

    With ``m`` values per channel and sums over the reduced axes,

        dx = gamma * inv_std / m * (m * dy - sum(dy) - x_hat * sum(dy * x_hat))

    Inputs:
        dy: upstream gradient, same shape as ``x``.
        cache: from :func:`batchnorm_forward`.
    Returns:
        dx: same shape as ``x``; dgamma, dbeta: ``(C,)``.
    """
    x_hat, inv_std, gamma = cache["x_hat"], cache["inv_std"], cache["gamma"]
    if dy.shape != x_hat.shape:
        raise ValueError(f"expected dy of shape {x_hat.shape}, got {dy.shape}")
    axes = reduce_axes(dy)
    m = dy.size // dy.shape[1]
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    nd = dy.ndim
    dx = per_channel(gamma * inv_std / m, nd) * (
        m * dy - per_channel(dbeta, nd) - x_hat * per_channel(dgamma, nd)
    )
    return dx, dgamma, dbeta


def batchnorm_backward_staged(
    dy: np.ndarray, cache: Cache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same gradients, walked back through the computational graph node by node.

    The forward graph, per channel with ``m`` values::

        mu = mean(x);  d = x - mu;  var = mean(d**2);  s = sqrt(var + eps)
        x_hat = d / s;  y = gamma * x_hat + beta

    Each line below is the chain rule for one node, read bottom to top. Slower and longer
    than :func:`batchnorm_backward`, and equal to it (the tests prove it).
    """
    x, gamma, eps = cache["x"], cache["gamma"], cache["eps"]
    axes, nd = reduce_axes(x), x.ndim
    m = x.size // x.shape[1]
    mu = per_channel(cache["mean"], nd)
    d = x - mu
    var = np.square(d).mean(axis=axes, keepdims=True)
    s = np.sqrt(var + eps)
    x_hat = d / s

    dbeta = dy.sum(axis=axes)                                # y = ... + beta
    dgamma = (dy * x_hat).sum(axis=axes)                     # y = gamma * x_hat + ...
    dx_hat = dy * per_channel(gamma, nd)
    dd = dx_hat / s                                          # x_hat = d / s (through d)
    ds = -(dx_hat * d / s**2).sum(axis=axes, keepdims=True)  # x_hat = d / s (through s)
    dvar = ds / (2.0 * s)                                    # s = sqrt(var + eps)
    dd = dd + dvar * 2.0 * d / m                             # var = mean(d**2)
    dmu = -dd.sum(axis=axes, keepdims=True)                  # d = x - mu (through mu)
    dx = dd + dmu / m                                        # mu = mean(x), d = x - mu
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------- layer with state


class BatchNorm:
    """A BN layer with running statistics, in NumPy; PyTorch's ``BatchNorm1d/2d/3d`` semantics.

    Args:
        num_features: ``C``, the size of axis 1.
        eps: added to the variance inside the square root.
        momentum: weight of the *new* batch in the running averages (PyTorch's convention);
            ``None`` uses a cumulative average over all batches seen.
        affine: learn ``gamma`` (ones) and ``beta`` (zeros); otherwise they stay ``None``.
        track_running_stats: keep ``running_mean`` (zeros), ``running_var`` (ones) and
            ``num_batches_tracked``; otherwise batch statistics are used in eval mode too.

    Shapes: input ``(N, C)`` or ``(N, C, *spatial)``, output the same. ``backward(dy)``
    returns ``dx`` and stores ``dgamma`` and ``dbeta`` (``(C,)``) on the layer.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.gamma = np.ones(num_features) if affine else None
        self.beta = np.zeros(num_features) if affine else None
        self.dgamma: np.ndarray | None = None
        self.dbeta: np.ndarray | None = None
        if track_running_stats:
            self.running_mean: np.ndarray | None = np.zeros(num_features)
            self.running_var: np.ndarray | None = np.ones(num_features)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = None
            self.num_batches_tracked = 0
        self.training = True
        self._cache: Cache | None = None

    def train(self, mode: bool = True) -> BatchNorm:
        self.training = mode
        return self

    def eval(self) -> BatchNorm:
        return self.train(False)

    def _use_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalize ``x`` ``(N, C, *spatial)``; in training also update the running averages."""
        use_batch = self._use_batch_stats()
        check_input(x, self.num_features, training=use_batch)
        gamma = self.gamma if self.affine else np.ones(self.num_features, dtype=x.dtype)
        beta = self.beta if self.affine else np.zeros(self.num_features, dtype=x.dtype)
        if use_batch:
            y, cache = batchnorm_forward(x, gamma, beta, self.eps)
            if self.training and self.track_running_stats:
                self._update_running_stats(cache["mean"], cache["var"], x.size // x.shape[1])
        else:
            inv_std = 1.0 / np.sqrt(self.running_var + self.eps)
            x_hat = (x - per_channel(self.running_mean, x.ndim)) * per_channel(inv_std, x.ndim)
            y = per_channel(gamma, x.ndim) * x_hat + per_channel(beta, x.ndim)
            cache = {"x_hat": x_hat, "inv_std": inv_std, "gamma": gamma}
        cache["batch_stats"] = use_batch
        self._cache = cache
        return y

    __call__ = forward

    def _update_running_stats(self, mean: np.ndarray, var: np.ndarray, m: int) -> None:
        self.num_batches_tracked += 1
        if self.momentum is None:
            factor = 1.0 / self.num_batches_tracked
        else:
            factor = self.momentum
        self.running_mean, self.running_var = running_update(
            self.running_mean, self.running_var, mean, var, m, factor)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Gradient of the last forward call; sets ``self.dgamma`` and ``self.dbeta``."""
        if self._cache is None:
            raise RuntimeError("backward() called before forward()")
        cache = self._cache
        if cache["batch_stats"]:
            dx, dgamma, dbeta = batchnorm_backward(dy, cache)
        else:
            # Fixed statistics: BN is a per-channel affine map, y = a * x + b.
            x_hat, nd = cache["x_hat"], dy.ndim
            axes = reduce_axes(dy)
            dx = dy * per_channel(cache["gamma"] * cache["inv_std"], nd)
            dgamma, dbeta = (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)
        if self.affine:
            self.dgamma, self.dbeta = dgamma, dbeta
        return dx


# --------------------------------------------------------------------------- optimized NumPy
# The same forward and backward written for speed (the making-BN-fast chapter): fewer passes
# over memory and fewer temporaries, checked against the functions above.


def batchnorm_forward_fast(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, tuple]:
    """Training-mode BN forward in NumPy, written for speed; same results as the reference.

    ``x`` ``(N, C, *spatial)``, float32 or float64. The normalization and the affine map
    are folded into one per-channel ``scale`` and ``shift`` (``y = x * scale + shift``),
    computed in place into a single output buffer: two passes over ``x`` after the
    statistics, no ``x_hat`` temporary. Returns ``(y, cache)`` for
    :func:`batchnorm_backward_fast`.
    """
    axes = reduce_axes(x)
    mean = x.mean(axis=axes, dtype=np.float64)
    centered = x - per_channel(mean.astype(x.dtype), x.ndim)
    flat = centered.reshape(x.shape[0], x.shape[1], -1)  # a view for contiguous input
    var = np.einsum("ncl,ncl->c", flat, flat, dtype=np.float64) / (x.size // x.shape[1])
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = (gamma * inv_std).astype(x.dtype)
    np.multiply(centered, per_channel(scale, x.ndim), out=centered)
    centered += per_channel(np.asarray(beta, dtype=x.dtype), x.ndim)
    return centered, (x, mean, inv_std, gamma)


def batchnorm_backward_fast(dy: np.ndarray, cache: tuple) -> tuple[np.ndarray, ...]:
    """The closed-form backward of :func:`batchnorm_forward_fast`, without an ``x_hat`` copy.

    Uses ``sum(dy * x_hat) = inv_std * (sum(dy * x) - mean * sum(dy))`` per channel, so the
    two reductions read ``dy`` and ``x`` once, and one fused pass writes ``dx``.
    Returns ``(dx, dgamma, dbeta)``.
    """
    x, mean, inv_std, gamma = cache
    nd, m = x.ndim, x.size // x.shape[1]
    axes = reduce_axes(x)
    dbeta = dy.sum(axis=axes, dtype=np.float64)
    shape3 = (x.shape[0], x.shape[1], -1)
    dy_x = np.einsum("ncl,ncl->c", dy.reshape(shape3), x.reshape(shape3), dtype=np.float64)
    dgamma = inv_std * (dy_x - mean * dbeta)
    a = gamma * inv_std  # dx = a * (dy - dbeta/m - x_hat * dgamma/m)
    coef_x = (-a * inv_std * dgamma / m).astype(x.dtype)
    const = (a * (inv_std * mean * dgamma - dbeta) / m).astype(x.dtype)
    dx = dy * per_channel(a.astype(x.dtype), nd)
    dx += x * per_channel(coef_x, nd)
    dx += per_channel(const, nd)
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------- running averages

CONVENTIONS = ("pytorch", "keras")


def ema_update(
    running: np.ndarray, batch_value: np.ndarray, momentum: float, convention: str = "pytorch"
) -> np.ndarray:
    """One step of an exponential moving average; returns a new array, ``running`` is kept.

    ``convention="pytorch"`` (the book's default): ``momentum`` weighs the *new* value,
    ``(1 - momentum) * running + momentum * batch_value`` (PyTorch's default 0.1).
    ``convention="keras"``: ``momentum`` weighs the *old* value,
    ``momentum * running + (1 - momentum) * batch_value`` (Keras's default 0.99).
    So PyTorch's ``momentum=m`` is Keras's ``momentum=1 - m``.

    Shapes: ``running`` and ``batch_value`` broadcast together, typically both ``(C,)``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    return _ema(running, batch_value, momentum if convention == "pytorch" else 1.0 - momentum)


def _ema(running: Any, value: Any, new_weight: float) -> Any:
    """``(1 - new_weight) * running + new_weight * value``: the moving average's one formula
    (unchecked, so that ``torch.compile`` can trace a data-dependent weight)."""
    return (1.0 - new_weight) * running + new_weight * value


def running_update(
    running_mean: Any, running_var: Any, mean: Any, var: Any, m: int, factor: float
) -> tuple[Any, Any]:
    """The running statistics after one training batch, as PyTorch updates them.

    ``mean`` and the biased ``var`` are the batch's, over ``m`` values per channel; the
    variance is averaged in unbiased, ``var * m / (m - 1)``. ``factor`` is the new batch's
    weight (``momentum``, or ``1 / num_batches_tracked`` for a cumulative average). Only
    arithmetic: NumPy arrays and torch tensors alike, all ``(C,)``; returns new ones.
    """
    unbiased = var * (m / (m - 1))
    return _ema(running_mean, mean, factor), _ema(running_var, unbiased, factor)


# --------------------------------------------------------------------------- folding for inference


def fold_batchnorm(
    weight: np.ndarray,
    bias: np.ndarray | None,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode BN into the convolution (or linear layer) right before it.

    In eval mode BN is the per-channel affine map ``y = s * (z - running_mean) + beta`` with
    ``s = gamma / sqrt(running_var + eps)``; applied to ``z = conv(x, weight) + bias`` it is
    one convolution with

        new_weight = weight * s  (output channel c scaled by s[c])
        new_bias = (bias - running_mean) * s + beta

    Inputs:
        weight: ``(C_out, C_in, *kernel)`` (a conv) or ``(C_out, C_in)`` (a linear layer).
        bias: ``(C_out,)``, or ``None`` for a layer without bias (taken as zeros).
        gamma, beta: ``(C_out,)``, or ``None`` for BN without them (ones and zeros).
        running_mean, running_var: ``(C_out,)``.
        eps: BN's eps, added to the variance inside the square root.
    Returns:
        new_weight with ``weight``'s shape, new_bias ``(C_out,)``.
    """
    c_out = weight.shape[0]
    gamma = np.ones(c_out) if gamma is None else gamma
    beta = np.zeros(c_out) if beta is None else beta
    bias = np.zeros(c_out) if bias is None else bias
    for name, v in [("bias", bias), ("gamma", gamma), ("beta", beta),
                    ("running_mean", running_mean), ("running_var", running_var)]:
        _check_param(name, v, c_out)
    scale = gamma / np.sqrt(running_var + eps)
    new_weight = weight * scale.reshape((c_out,) + (1,) * (weight.ndim - 1))
    new_bias = (bias - running_mean) * scale + beta
    return new_weight, new_bias


# --------------------------------------------------------------------------- gradient checking


def numeric_gradient(
    f: Callable[[], np.ndarray], x: np.ndarray, dy: np.ndarray, h: float = 1e-5
) -> np.ndarray:
    """Central-difference estimate of ``d sum(f() * dy) / dx``, perturbing ``x`` in place.

    ``f`` takes no arguments and reads ``x`` (so it can close over any array, parameters
    included); ``dy`` has the shape of ``f()``'s output. Each entry of ``x`` is restored
    after it is perturbed. Cost: two calls of ``f`` per entry of ``x``. Error ``O(h^2)``.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        plus = np.sum(f() * dy)
        x[i] = old - h
        minus = np.sum(f() * dy)
        x[i] = old
        grad[i] = (plus - minus) / (2.0 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest elementwise ``|a - b| / max(1e-8, |a| + |b|)``; ~1e-7 or less: agreement in fp64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


# --------------------------------------------------------------------------- small math helpers


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function ``1 / (1 + exp(-z))``, elementwise, for ``z`` of any shape."""
    return 1.0 / (1.0 + np.exp(-z))


def normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The density of ``N(mean, std^2)`` at every entry of ``x`` (any shape)."""
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2.0 * np.pi))


def log_normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``log normal_pdf(x, mean, std)``, computed without underflow far in the tails."""
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2.0 * np.pi)


# --------------------------------------------------------------------------- batch-free norms
# Normalizations whose statistics come from one example, not from the batch (the batch-size
# chapter): each sample is normalized on its own, so batch size does not matter at all.


def group_norm(
    x: np.ndarray, num_groups: int, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> np.ndarray:
    """Group Normalization (Wu & He, 2018), equal to ``torch.nn.functional.group_norm``.

    Inputs:
        x: ``(N, C, *spatial)``; ``C`` must be divisible by ``num_groups``.
        num_groups: ``G``; each sample's channels are split into ``G`` consecutive groups of
            ``C // G``, and each (sample, group) is normalized over its channels and spatial
            positions with the biased variance. ``G = 1`` is layer norm over ``(C, *spatial)``,
            ``G = C`` is instance norm.
        gamma, beta: ``(C,)`` per-channel scale and shift.
    Returns ``y`` with the shape of ``x``.
    """
    if x.ndim < 2:
        raise ValueError(f"expected (N, C, *spatial) input, got shape {x.shape}")
    n, c = x.shape[:2]
    if num_groups < 1 or c % num_groups:
        raise ValueError(f"{c} channels cannot be split into {num_groups} groups")
    _check_param("gamma", gamma, c)
    _check_param("beta", beta, c)
    groups = x.reshape(n, num_groups, -1)  # (N, G, C/G * spatial)
    mean = groups.mean(axis=2, keepdims=True)
    var = np.square(groups - mean).mean(axis=2, keepdims=True)  # two-pass, biased
    x_hat = ((groups - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return per_channel(gamma, x.ndim) * x_hat + per_channel(beta, x.ndim)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Layer Normalization (Ba et al., 2016) as used after conv layers: one group per sample.

    ``x`` ``(N, C, *spatial)`` or ``(N, C)``; each sample is normalized over all its non-batch
    axes, then scaled and shifted per channel by ``gamma``, ``beta`` ``(C,)``. (For ``(N, D)``
    input this is ``torch.nn.LayerNorm(D)``; for feature maps it is ``group_norm`` with
    ``num_groups=1``.)
    """
    return group_norm(x, 1, gamma, beta, eps)


# --------------------------------------------------------------------------- dropout


def dropout_forward(
    x: np.ndarray, p: float, training: bool, rng: np.random.Generator
) -> np.ndarray:
    """Inverted dropout (Srivastava et al., 2014, as PyTorch implements it).

    In training every entry of ``x`` (any shape, e.g. ``(N, D)``) is dropped (set to 0)
    independently with probability ``p``, and every kept entry is scaled by ``1 / (1 - p)``,
    so ``E[y] = x``; the mask is drawn from ``rng``, one uniform number per entry. In
    evaluation (``training=False``) ``x`` is returned unchanged: no rescaling is needed.
    Returns ``y`` of the shape and dtype of ``x``, a new array in training.
    """
    _check_drop_probability(p)
    if not training:
        return x
    return x * dropout_mask(x.shape, p, rng) / (1.0 - p)


def dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator) -> np.ndarray:
    """The keep-mask :func:`dropout_forward` draws: a bool array of ``shape``, each entry
    ``False`` (dropped) with probability ``p``, from one uniform number per entry of ``rng``
    (so the same generator state gives the same mask as the forward)."""
    _check_drop_probability(p)
    return rng.random(shape) >= p  # dropped when the uniform number is below p


def dropout_backward(dy: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
    """The gradient of training-mode inverted dropout, ``y = x * keep / (1 - p)``.

    ``dy`` is the upstream gradient and ``keep`` the forward's mask (:func:`dropout_mask`),
    both of ``x``'s shape. Like ReLU's, the gradient goes through the units the forward kept,
    scaled by the forward's ``1 / (1 - p)``, and is 0 at the dropped ones: ``dx = dy * keep /
    (1 - p)``. The mask must be the forward's own, saved, never drawn again.
    """
    _check_drop_probability(p)
    if keep.shape != dy.shape:
        raise ValueError(f"keep has shape {keep.shape} but dy has shape {dy.shape}")
    return dy * keep / (1.0 - p)


def _check_drop_probability(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
