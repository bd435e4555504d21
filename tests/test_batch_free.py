"""bnlib.batch_free against independent oracles: torch.nn.RMSNorm, F.rms_norm, numeric
gradients, F.conv2d with hand-standardized weights, and a plain-loop AGC; and the chapter's
checkers, ``check.rms_norm`` and ``check.ws_conv2d``, against right answers and wrong ones
written here. Also the chapter's other additions: the residual blocks of ``bnlib.residual``
(SkipInit and Fixup are the identity at initialization, Fixup's factor, the NF block's
variance), the padded-sequence task and Transformer of ``bnlib.sequence`` (no dependence on
batch partners or padding without BN), and ``fit``'s ``warmup_steps`` and ``before_step``."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checking import failure
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from bnlib import check, seed_everything
from bnlib import reference as R
from bnlib.batch_free import (
    RMSNorm,
    ScaledWSConv2d,
    WSConv2d,
    adaptive_grad_clip_,
    relu_gain,
    rms_norm_backward,
    rms_norm_forward,
    standardize_weight,
)
from bnlib.residual import KINDS, FixupBlock, NFBlock, ResidualCNN, SkipInitBlock, fixup_scale
from bnlib.sequence import PAD, TinyTransformer, padded_sequences
from bnlib.train import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


# --------------------------------------------------------------------------- RMSNorm vs torch


@st.composite
def rms_configs(draw):
    trailing = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=2)))
    leading = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    as_int = len(trailing) == 1 and draw(st.booleans())
    return dict(
        normalized_shape=trailing[0] if as_int else trailing,
        shape=leading + trailing,
        eps=draw(st.sampled_from([None, 1e-5, 0.1])),
        affine=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        scale=draw(st.sampled_from([1e-3, 1.0, 100.0])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=25, deadline=None)
@given(rms_configs())
def test_rms_norm_matches_torch(cfg):
    """Outputs and the gradients of x and weight equal torch.nn.RMSNorm's."""
    g = torch.Generator().manual_seed(cfg["seed"])
    kw = dict(eps=cfg["eps"], elementwise_affine=cfg["affine"], dtype=cfg["dtype"])
    ours, theirs = RMSNorm(cfg["normalized_shape"], **kw), torch.nn.RMSNorm(
        cfg["normalized_shape"], **kw)
    if cfg["affine"]:
        with torch.no_grad():
            ours.weight.copy_(torch.randn(ours.weight.shape, generator=g, dtype=cfg["dtype"]))
            theirs.weight.copy_(ours.weight)
    x = cfg["scale"] * torch.randn(cfg["shape"], generator=g, dtype=cfg["dtype"])
    dy = torch.randn(cfg["shape"], generator=g, dtype=cfg["dtype"])
    results = []
    for layer in (ours, theirs):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(dy)
        results.append((y, xi.grad, None if layer.weight is None else layer.weight.grad))
    tol = TOL[cfg["dtype"]]
    for a, b in zip(*results):
        if b is None:
            assert a is None
        else:
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, **tol)


def test_rms_norm_module_contract():
    """Parameters, reset_parameters, repr and state_dict as torch.nn.RMSNorm's."""
    for args in [(4,), ((2, 3), 1e-3), ((5,), None, False)]:
        ours, theirs = RMSNorm(*args), torch.nn.RMSNorm(*args)
        assert ours.extra_repr() == theirs.extra_repr()
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    layer = RMSNorm((2, 3), dtype=torch.float64)
    assert torch.equal(layer.weight, torch.ones(2, 3, dtype=torch.float64))
    with torch.no_grad():
        layer.weight.mul_(3.0)
    layer.reset_parameters()
    assert torch.equal(layer.weight, torch.ones(2, 3, dtype=torch.float64))
    assert RMSNorm(3, elementwise_affine=False).weight is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rms_norm_default_eps_is_torchs(dtype):
    """eps=None: where eps dominates the mean square, the machine epsilon of the computation
    dtype (float32's for bfloat16), bit for bit as an explicit eps, and as torch."""
    g = torch.Generator().manual_seed(1)
    x = (1e-5 * torch.randn(3, 8, generator=g, dtype=torch.float64)).to(dtype)
    compute = torch.float32 if dtype == torch.bfloat16 else dtype
    y = RMSNorm(8, dtype=dtype)(x)
    torch.testing.assert_close(y, RMSNorm(8, eps=torch.finfo(compute).eps, dtype=dtype)(x),
                               rtol=0, atol=0)
    torch.testing.assert_close(y, torch.nn.RMSNorm(8, dtype=dtype)(x))


def test_rms_norm_gradcheck_and_gradgradcheck():
    g = torch.Generator().manual_seed(2)
    layer = RMSNorm((3, 4), eps=1e-3, dtype=torch.float64)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def f(x, w):
        return functional_call(layer, {"weight": w}, (x,))

    assert gradcheck(f, (x, w))
    assert gradgradcheck(f, (x, w))


def test_rms_norm_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4,\).*\(2, 5\)"):
        RMSNorm(4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4,\)"):
        RMSNorm((3, 4))(torch.randn(4))


# --------------------------------------------------------------------------- RMSNorm, NumPy


def _rms_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(0.5, 2.0, size=shape), rng.normal(1.0, 0.5, size=shape[-1]),
            rng.normal(size=shape))


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 6)])
@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_rms_norm_numpy_forward_matches_torch(shape, eps):
    x, w, _ = _rms_inputs(shape, seed=3)
    y, _ = rms_norm_forward(x, w, eps)
    expected = F.rms_norm(torch.from_numpy(x), (shape[-1],), torch.from_numpy(w), eps)
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 2, 3)])
def test_rms_norm_numpy_backward_matches_numeric_gradient(shape):
    x, w, dy = _rms_inputs(shape, seed=4)
    eps = 1e-3
    dx, dw = rms_norm_backward(dy, rms_norm_forward(x, w, eps)[1])

    def f():
        return rms_norm_forward(x, w, eps)[0]

    assert R.relative_error(dx, R.numeric_gradient(f, x, dy, h=1e-5)) < 1e-7
    assert R.relative_error(dw, R.numeric_gradient(f, w, dy, h=1e-5)) < 1e-7


def test_rms_norm_numpy_backward_matches_autograd():
    x, w, dy = _rms_inputs((4, 3, 6), seed=5)
    dx, dw = rms_norm_backward(dy, rms_norm_forward(x, w, 1e-4)[1])
    xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    F.rms_norm(xt, (6,), wt, 1e-4).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- weight standardization


def _hand_standardized(w: np.ndarray, eps: float) -> np.ndarray:
    rows = w.reshape(w.shape[0], -1)
    mean = rows.mean(axis=1, keepdims=True)
    var = ((rows - mean) ** 2).mean(axis=1, keepdims=True)
    return ((rows - mean) / np.sqrt(var + eps)).reshape(w.shape)


@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (5, 7)])
def test_standardize_weight_moments(shape):
    """Per output channel: mean 0 and biased variance exactly var / (var + eps), so ~1."""
    rng = np.random.default_rng(6)
    w = torch.from_numpy(rng.normal(2.0, 0.5, size=shape))
    eps = 1e-5
    ws = standardize_weight(w, eps).reshape(shape[0], -1)
    var = w.reshape(shape[0], -1).var(dim=1, correction=0)
    torch.testing.assert_close(ws.mean(dim=1), torch.zeros_like(var), rtol=0, atol=1e-13)
    torch.testing.assert_close(ws.var(dim=1, correction=0), var / (var + eps),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(ws.var(dim=1, correction=0), torch.ones_like(var),
                               rtol=1e-3, atol=0)


def test_standardize_weight_rejects_a_vector():
    with pytest.raises(ValueError, match=r"\(5,\)"):
        standardize_weight(torch.randn(5))


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1, bias=False),
                                dict(padding=1, groups=2, padding_mode="reflect", eps=1e-3)])
def test_wsconv2d_equals_conv2d_with_hand_standardized_weight(kw):
    seed_everything(7)
    conv = WSConv2d(4, 6, 3, dtype=torch.float64, **kw)
    x = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    w = torch.from_numpy(_hand_standardized(conv.weight.detach().numpy(), conv.eps))
    if conv.padding_mode == "reflect":
        expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, conv.bias,
                            groups=conv.groups)
    else:
        expected = F.conv2d(x, w, conv.bias, conv.stride, conv.padding, groups=conv.groups)
    torch.testing.assert_close(conv(x), expected, rtol=1e-12, atol=1e-12)


def test_wsconv2d_gradients_reach_the_raw_weight():
    seed_everything(8)
    conv = WSConv2d(2, 3, 2, dtype=torch.float64)
    params = {k: p.detach().clone().requires_grad_() for k, p in conv.named_parameters()}
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def f(x, weight, bias):
        return functional_call(conv, {"weight": weight, "bias": bias}, (x,))

    assert gradcheck(f, (x, params["weight"], params["bias"]))


def test_standardize_weight_gradient_is_orthogonal_to_offset_and_scale():
    """With eps = 0 the output does not change when a channel's weights are shifted or
    scaled, so the raw weight's gradient has zero sum and zero dot product with it."""
    g = torch.Generator().manual_seed(9)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    (standardize_weight(w, eps=0.0) * torch.randn(w.shape, generator=g,
                                                  dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(w.grad.sum(dim=(1, 2, 3)), torch.zeros(4, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close((w.grad * w).sum(dim=(1, 2, 3)),
                               torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- scaled WS (NF-ResNets)


def test_relu_gain_makes_relu_variance_one():
    assert relu_gain() == math.sqrt(2.0 / (1.0 - 1.0 / math.pi))
    z = np.random.default_rng(10).normal(size=1_000_000)
    assert abs((relu_gain() * np.maximum(z, 0.0)).var() - 1.0) < 0.01


def test_scaled_ws_effective_weight():
    """Each output channel: mean 0 and sum(W_hat**2) == gamma**2 * gain**2 exactly; a
    constant channel (fan_in * var < eps) gives zeros, not a division by zero."""
    seed_everything(11)
    conv = ScaledWSConv2d(6, 4, 3, groups=2, gamma=relu_gain(), dtype=torch.float64)
    assert torch.equal(conv.gain, torch.ones(4, dtype=torch.float64))
    with torch.no_grad():
        conv.gain.uniform_(0.5, 2.0)
        conv.weight[3] = 0.3
    w = conv.standardized_weight().detach()
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.zeros(4, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    expected = relu_gain() ** 2 * conv.gain.detach()[:3] ** 2
    torch.testing.assert_close(w[:3].square().sum(dim=(1, 2, 3)), expected, rtol=1e-13, atol=0)
    assert w[3].abs().max() < 1e-12
    conv.reset_parameters()
    assert torch.equal(conv.gain, torch.ones(4, dtype=torch.float64))


def test_scaled_ws_conv_forward_and_gradients():
    seed_everything(12)
    conv = ScaledWSConv2d(2, 3, 2, padding=1, gamma=1.7, dtype=torch.float64)
    with torch.no_grad():
        conv.gain.uniform_(0.5, 2.0)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    w = conv.weight.detach().numpy()
    hand = _hand_standardized(w, 0.0) / math.sqrt(w[0].size)  # fan_in * var >> eps here
    hand = torch.from_numpy(hand) * 1.7 * conv.gain.detach().view(-1, 1, 1, 1)
    torch.testing.assert_close(conv(x), F.conv2d(x, hand, conv.bias, padding=1),
                               rtol=1e-12, atol=1e-12)
    params = {k: p.detach().clone().requires_grad_() for k, p in conv.named_parameters()}

    def f(x, weight, bias, gain):
        return functional_call(conv, {"weight": weight, "bias": bias, "gain": gain}, (x,))

    assert gradcheck(f, (x.requires_grad_(), params["weight"], params["bias"], params["gain"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scaled_ws_relu_stack_preserves_the_signal(seed):
    """relu(conv(x)) with gamma = relu_gain(), 8 layers of 64 channels, N(0, 1) input: the
    ReLU outputs keep variance 1 and second moment 1 / (1 - 1/pi) ~ 1.467 at every layer.
    Measured with this code for seeds 0-9 (circular padding, so that borders lose nothing):
    variances 0.969-1.073, second moments 1.418-1.578, at most 7.5% off; tolerance 15%.
    Zero padding loses signal at the borders of a 16x16 map (variance ~0.75 after 8
    layers), hence circular. Without gamma (gamma = 1) each layer multiplies the variance
    by (1 - 1/pi) / 2 ~ 0.34, so after 8 layers it is below 1e-3."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(8, 64, 16, 16, generator=g)
    for gamma in (relu_gain(), 1.0):
        x = x0
        with torch.no_grad():
            for _ in range(8):
                conv = ScaledWSConv2d(64, 64, 3, padding=1, padding_mode="circular",
                                      gamma=gamma, bias=False)
                conv.weight.normal_(generator=g)  # He-normal up to scale, which WS removes
                x = torch.relu(conv(x))
                if gamma != 1.0:
                    assert abs(x.var(dim=(0, 2, 3)).mean().item() - 1.0) < 0.15
                    assert abs(x.square().mean().item() * (1 - 1 / math.pi) - 1.0) < 0.15
        if gamma == 1.0:
            assert x.var(dim=(0, 2, 3)).mean().item() < 1e-3


# --------------------------------------------------------------------------- adaptive clipping


def _loop_agc(weight: np.ndarray, grad: np.ndarray, clip: float, eps: float) -> np.ndarray:
    """AGC written out unit by unit: each row of a matrix or conv kernel, a vector whole."""
    units = [...] if weight.ndim <= 1 else range(weight.shape[0])
    out = grad.copy()
    for i in units:
        w_norm = max(np.sqrt(np.sum(weight[i] ** 2)), eps)
        g_norm = np.sqrt(np.sum(grad[i] ** 2))
        if g_norm / w_norm > clip:
            out[i] = grad[i] * (clip * w_norm / g_norm)
    return out


def _params_with_grads(seed: int) -> list[torch.nn.Parameter]:
    """A linear weight, a conv weight, a bias and a scalar; gradients from tiny to huge per
    unit, one all-zero weight row (eps decides) and one all-zero gradient row."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in [(6, 4), (5, 3, 3, 3), (7,), ()]:
        p = torch.nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))
        exponent = torch.randint(-4, 1, shape[:1] + (1,) * (len(shape) - 1), generator=g)
        p.grad = torch.randn(shape, generator=g, dtype=torch.float64) * 10.0 ** exponent
        params.append(p)
    with torch.no_grad():
        params[0][1] = 0.0
    params[0].grad[2] = 0.0
    return params


def test_agc_bounds_every_unit_and_leaves_the_rest_alone():
    params = _params_with_grads(13)
    before = [p.grad.clone() for p in params]
    no_grad = torch.nn.Parameter(torch.randn(3, 3))
    clip, eps = 0.01, 1e-3
    adaptive_grad_clip_([*params, no_grad], clip=clip, eps=eps)
    assert no_grad.grad is None
    clipped = untouched = 0
    for p, g0 in zip(params, before):
        units = [p] if p.dim() <= 1 else list(p)
        for i, w in enumerate(units):
            g, g_old = (p.grad, g0) if p.dim() <= 1 else (p.grad[i], g0[i])
            ratio = g.norm().item() / max(w.norm().item(), eps)
            assert ratio <= clip * (1 + 1e-12)
            if g_old.norm().item() / max(w.norm().item(), eps) <= clip:
                assert torch.equal(g, g_old)
                untouched += 1
            else:
                assert ratio == pytest.approx(clip, rel=1e-12)
                clipped += 1
    assert clipped >= 3 and untouched >= 3  # both branches were exercised


@pytest.mark.parametrize("clip", [0.01, 0.1])
def test_agc_matches_a_plain_loop(clip):
    params = _params_with_grads(14)
    expected = [_loop_agc(p.detach().numpy(), p.grad.numpy(), clip, 1e-3) for p in params]
    adaptive_grad_clip_(iter(params), clip=clip)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=1e-13, atol=0)


def test_agc_takes_a_single_tensor_and_rejects_bad_arguments():
    p = torch.nn.Parameter(torch.ones(2, 2))
    p.grad = torch.full((2, 2), 10.0)
    adaptive_grad_clip_(p, clip=0.5)
    torch.testing.assert_close(p.grad.norm(dim=1), 0.5 * p.detach().norm(dim=1))
    with pytest.raises(ValueError, match="positive"):
        adaptive_grad_clip_([p], clip=0.0)


# --------------------------------------------------------------------------- the checkers
# Right answers and wrong ones written here, independently of the catalogues in
# bnlib.check, the way a reader would write them; each wrong one is paired with a piece of
# the hint it must get.


def _rms_right(x, weight, eps):
    mean_square = (x * x).sum(axis=-1, keepdims=True) / x.shape[-1]
    return weight * x / np.sqrt(mean_square + eps)


def _ms(x, axis=-1):
    return (x**2).mean(axis, keepdims=True)


WRONG_RMS = {
    "mean subtracted first": lambda x, w, eps: w * (x - x.mean(-1, keepdims=True)) / np.sqrt(
        x.var(-1, keepdims=True) + eps),
    "without the mean subtracted": lambda x, w, eps: w * x / np.sqrt(
        x.var(-1, keepdims=True) + eps),
    "over the batch (axis 0)": lambda x, w, eps: w * x / np.sqrt((x**2).mean(0) + eps),
    "eps added outside": lambda x, w, eps: w * x / (np.sqrt(_ms(x)) + eps),
    "*sum* of squares": lambda x, w, eps: w * x / np.sqrt((x**2).sum(-1, keepdims=True) + eps),
    "without the weight": lambda x, w, eps: x / np.sqrt(_ms(x) + eps),
    "over the whole tensor": lambda x, w, eps: w * x / np.sqrt(np.mean(x**2) + eps),
}


def test_rms_norm_checker_accepts_right(capsys):
    assert check.rms_norm(_rms_right) is True
    assert "rms_norm: all 6 cases pass" in capsys.readouterr().out
    assert check.rms_norm(lambda x, w, eps: (_rms_right(x, w, eps), {"cache": None}))


def test_rms_norm_checker_stub(capsys):
    def stub(x, weight, eps):
        raise NotImplementedError

    assert check.rms_norm(stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(WRONG_RMS))
def test_rms_norm_checker_names_the_mistake(hint):
    assert hint in failure(check.rms_norm, WRONG_RMS[hint])


def test_rms_norm_checker_without_eps_and_in_place():
    message = failure(check.rms_norm, lambda x, w, eps: w * x / np.sqrt(_ms(x)))
    assert "No mistake this checker knows matches" in message

    def in_place(x, weight, eps):
        x /= np.sqrt(_ms(x) + eps)
        return x * weight

    assert "in place" in failure(check.rms_norm, in_place)


def _ws_right(x, weight, bias, eps):
    """With torch, as the chapter suggests: a tensor comes back."""
    rows = weight.reshape(len(weight), -1)
    centered = rows - rows.mean(axis=1, keepdims=True)
    w_hat = centered / np.sqrt((centered**2).mean(axis=1, keepdims=True) + eps)
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(w_hat.reshape(weight.shape)),
                    torch.from_numpy(bias))


def _ws_torch(x, weight, bias, eps, dims=(1, 2, 3), unbiased=False, eps_out=False,
              center=True, with_bias=True):
    w = torch.from_numpy(weight)
    std = w.var(dim=dims, unbiased=unbiased, keepdim=True).sqrt()
    scale = std + eps if eps_out else torch.sqrt(std**2 + eps)
    w_hat = ((w - w.mean(dim=dims, keepdim=True)) if center else w) / scale
    return F.conv2d(torch.from_numpy(x), w_hat, torch.from_numpy(bias) if with_bias else None)


WRONG_WS = {
    "per (output, input) channel pair": lambda *a: _ws_torch(*a, dims=(2, 3)),
    "over the whole weight tensor": lambda *a: _ws_torch(*a, dims=(0, 1, 2, 3)),
    "over the output channels (axis 0)": lambda *a: _ws_torch(*a, dims=(0,)),
    "unbiased variance (ddof=1)": lambda *a: _ws_torch(*a, unbiased=True),  # torch's default
    "eps added outside": lambda *a: _ws_torch(*a, eps_out=True),
    "but not centered": lambda *a: _ws_torch(*a, center=False),
    "without its bias": lambda *a: _ws_torch(*a, with_bias=False),
    "with the raw weight": lambda x, w, b, eps: F.conv2d(torch.from_numpy(x),
                                                         torch.from_numpy(w),
                                                         torch.from_numpy(b)),
}


def test_ws_conv2d_checker_accepts_right(capsys):
    assert check.ws_conv2d(_ws_right) is True
    assert "ws_conv2d: all 6 cases pass" in capsys.readouterr().out


def test_ws_conv2d_checker_stub(capsys):
    def stub(x, weight, bias, eps):
        raise NotImplementedError

    assert check.ws_conv2d(stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(WRONG_WS))
def test_ws_conv2d_checker_names_the_mistake(hint):
    assert hint in failure(check.ws_conv2d, WRONG_WS[hint])


def test_ws_conv2d_checker_names_a_wrong_shape():
    message = failure(check.ws_conv2d, lambda x, w, b, eps: F.conv2d(
        torch.from_numpy(x), standardize_weight(torch.from_numpy(w), eps),
        torch.from_numpy(b), padding=1))
    assert "y has shape (2, 4, 6, 5) instead of (2, 4, 4, 3)" in message


# --------------------------------------------------------------------------- residual blocks


def test_skipinit_block_is_exactly_the_identity_at_init():
    seed_everything(0)
    block = SkipInitBlock(8)
    x = torch.randn(3, 8, 6, 5)
    assert torch.equal(block(x), x)
    (block(x) ** 2).sum().backward()
    assert block.alpha.grad.abs() > 0  # alpha learns at once


@pytest.mark.parametrize("blocks, m, expected", [(1, 2, 1.0), (4, 2, 0.5), (16, 2, 0.25),
                                                 (64, 3, 64 ** -0.25), (8, 4, 2 ** -0.5)])
def test_fixup_scale(blocks, m, expected):
    assert math.isclose(fixup_scale(blocks, m), expected, rel_tol=1e-12)


def test_fixup_scale_rejects_bad_arguments():
    with pytest.raises(ValueError):
        fixup_scale(0)
    with pytest.raises(ValueError):
        fixup_scale(4, 1)


def test_fixup_block_init():
    seed_everything(0)
    width, blocks = 64, 9
    block = FixupBlock(width, blocks)
    x = torch.randn(2, width, 5, 5)
    assert torch.equal(block(x), x)  # conv2 = 0, biases 0: the identity
    assert torch.count_nonzero(block.conv2.weight) == 0
    # conv1 ~ N(0, 2 / fan_in) times 1/sqrt(9): n = 36 864 draws estimate the std to a
    # relative standard error of 1/sqrt(2n) = 0.37 %; allow 5 of them
    n, fan_in = block.conv1.weight.numel(), width * 9
    std = block.conv1.weight.std().item()
    assert abs(std / (math.sqrt(2 / fan_in) / 3) - 1) < 5 / math.sqrt(2 * n)
    (block(x) ** 2).sum().backward()
    assert block.conv2.weight.grad.abs().sum() > 0


def test_nf_block_variance_grows_by_alpha_squared():
    """Input of variance beta**2, i.i.d.: the output's variance is beta**2 + alpha**2.

    Averaged over 60 independent blocks (weights and inputs); the interior positions only
    (zero padding shrinks the border's variance). The tolerance is 4 standard errors of
    that mean, estimated from the 60 draws (about 0.2 % of the variance each). What the
    derivation neglects (pre-activations that are not exactly Gaussian, and correlated
    across the second conv's fan-in) moved the mean by less than 2 standard errors in
    every draw we tried.
    """
    seed_everything(0)
    beta, alpha, width, draws = 1.5, 1.0, 32, 60
    variances = []
    with torch.no_grad():
        for _ in range(draws):
            block = NFBlock(width, beta=beta, alpha=alpha)
            y = block(beta * torch.randn(4, width, 20, 20))
            variances.append(y[:, :, 2:-2, 2:-2].var().item())
    v = np.array(variances)
    se = v.std(ddof=1) / math.sqrt(draws)
    assert abs(v.mean() - (beta**2 + alpha**2)) < 4 * se


def test_residual_cnn_shapes_and_identity_blocks():
    seed_everything(0)
    x = torch.randn(5, 14, 14)
    for kind in KINDS:
        model = ResidualCNN(kind, depth=3, width=8)
        assert model(x).shape == (5, 10)
        stream = model.stream(x)
        assert len(stream) == 4 and stream[0].shape == (5, 8, 7, 7)
        if kind in ("skipinit", "fixup"):
            assert all(torch.equal(s, stream[0]) for s in stream)
    nf = ResidualCNN("nf", depth=4, alpha=0.5)
    assert [b.beta for b in nf.blocks] == pytest.approx([1.0, 1.25**0.5, 1.5**0.5, 1.75**0.5])
    with pytest.raises(ValueError):
        ResidualCNN("gn", depth=2)


# --------------------------------------------------------------------------- sequences


def test_padded_sequences():
    tokens, labels, lengths = padded_sequences(200, vocab=20, min_len=3, max_len=9,
                                               num_topics=5, seed=0)
    assert tokens.shape == (200, 9) and labels.shape == lengths.shape == (200,)
    assert lengths.min() >= 3 and lengths.max() <= 9 and set(labels) <= set(range(5))
    for row, n in zip(tokens, lengths):
        assert (row[:n] != PAD).all() and (row[n:] == PAD).all() and row.max() < 20
    again = padded_sequences(200, vocab=20, min_len=3, max_len=9, num_topics=5, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (tokens, labels, lengths)))


@pytest.mark.parametrize("norm", ["ln", "rms"])
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_transformer_ignores_partners_and_padding_without_bn(norm, placement):
    tokens, _, _ = padded_sequences(40, vocab=16, max_len=10, seed=1)
    seed_everything(0)
    model = TinyTransformer(16, 4, norm=norm, placement=placement).train()
    x = torch.as_tensor(tokens)
    with torch.no_grad():
        alone = model(x[:1])
        together = model(x[:8])[:1]
        padded = model(F.pad(x[:8], (0, 7), value=PAD))[:1]
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_transformer_with_bn_depends_on_padding():
    tokens, _, _ = padded_sequences(40, vocab=16, max_len=10, seed=1)
    seed_everything(0)
    model = TinyTransformer(16, 4, norm="bn").train()
    x = torch.as_tensor(tokens[:8])
    with torch.no_grad():
        assert (model(F.pad(x, (0, 7), value=PAD)) - model(x)).abs().max() > 1e-3


# --------------------------------------------------------------------------- fit's additions


def test_fit_warmup_raises_the_learning_rate_linearly():
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ours, theirs = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    theirs.load_state_dict(ours.state_dict())
    fit(ours, x, y, steps=5, batch_size=8, lr=0.3, warmup_steps=3, shuffle=False,
        progress=False, device=torch.device("cpu"))
    opt = torch.optim.SGD(theirs.parameters(), lr=0.3)
    for step in range(1, 6):  # the whole set is one batch
        opt.param_groups[0]["lr"] = 0.3 * min(1.0, step / 3)
        opt.zero_grad()
        F.cross_entropy(theirs(x), y).backward()
        opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    ours.eval()
    with pytest.raises(ValueError, match="warmup_steps"):
        fit(ours, x, y, steps=1, warmup_steps=-1, progress=False)
    assert not ours.training  # refused before the model was touched


def test_fit_before_step_sees_the_gradients_before_the_update():
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])
    model = torch.nn.Linear(3, 2)
    start = copy.deepcopy(model.state_dict())
    seen = []

    def zero_grads(m):
        seen.append(all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()))
        for p in m.parameters():
            p.grad.zero_()

    fit(model, x, y, steps=3, batch_size=6, lr=0.5, progress=False, before_step=zero_grads,
        device=torch.device("cpu"))
    assert seen == [True, True, True]
    for name, p in model.state_dict().items():  # zeroed gradients: plain SGD moves nothing
        assert torch.equal(p, start[name])
