"""What the CNN chapter adds to bnlib: spatial BN facts, BN folding, and two checkers.

Folding is checked against two independent oracles: running the conv and the BN layer one
after the other in eval mode, and PyTorch's own ``torch.nn.utils.fusion.fuse_conv_bn_eval``.
The checkers' wrong implementations below are written here, the way a reader might write
them, independently of the catalogues inside ``bnlib.check``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from checking import failure
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bnlib import check, models
from bnlib import reference as ref
from bnlib.inference import fold_bn_into_conv, fold_model
from bnlib.torch_bn import BatchNorm

# --------------------------------------------------------------------------- spatial BN


@given(
    n=st.integers(1, 4), c=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(2, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_spatial_bn_is_the_1d_bn_on_channels_last_rows(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, (n, c, h, w))
    gamma, beta = rng.uniform(0.5, 2, c), rng.uniform(-1, 1, c)
    y, cache = ref.batchnorm_forward(x, gamma, beta)
    rows = x.transpose(0, 2, 3, 1).reshape(-1, c)
    y_rows, cache_rows = ref.batchnorm_forward(rows, gamma, beta)
    np.testing.assert_allclose(y, y_rows.reshape(n, h, w, c).transpose(0, 3, 1, 2), atol=1e-12)
    np.testing.assert_allclose(cache["var"], cache_rows["var"], rtol=1e-12)


def test_spatial_bn_commutes_with_shifting_one_image_and_per_activation_bn_does_not():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 6, 6)) + rng.normal(size=(1, 1, 6, 6))  # position-dependent
    gamma, beta = rng.uniform(0.5, 2, 3), rng.uniform(-1, 1, 3)
    moved = x.copy()
    moved[0] = np.roll(x[0], (2, 1), axis=(1, 2))  # a circular shift of image 0 only

    def spatial(a):
        return ref.batchnorm_forward(a, gamma, beta)[0]

    def per_activation(a):
        g, b = np.repeat(gamma, 36), np.repeat(beta, 36)
        return ref.batchnorm_forward(a.reshape(8, -1), g, b)[0].reshape(a.shape)

    y, y_moved = spatial(x), spatial(moved)
    np.testing.assert_allclose(y_moved[0], np.roll(y[0], (2, 1), axis=(1, 2)), atol=1e-12)
    np.testing.assert_allclose(y_moved[1:], y[1:], atol=1e-12)
    y, y_moved = per_activation(x), per_activation(moved)
    assert np.abs(y_moved[0] - np.roll(y[0], (2, 1), axis=(1, 2))).max() > 0.1
    assert np.abs(y_moved[1:] - y[1:]).max() > 0.1


def test_conv_bias_before_bn_gets_no_gradient():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3, bias=True).double(), BatchNorm(3).double()
    x = torch.randn(4, 2, 7, 7, dtype=torch.float64)
    loss = (bn(conv(x)) * torch.randn(4, 3, 5, 5, dtype=torch.float64)).sum()
    loss.backward()
    assert conv.bias.grad.abs().max() < 1e-12 * conv.weight.grad.abs().max()


# --------------------------------------------------------------------------- folding


def _trained_bn(bn: nn.Module, c: int, dtype: torch.dtype, seed: int) -> nn.Module:
    """``bn`` with non-trivial affine parameters and running statistics, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.copy_(torch.rand(c, generator=g, dtype=dtype) * 2 - 0.5)
        if bn.bias is not None:
            bn.bias.copy_(torch.randn(c, generator=g, dtype=dtype))
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=dtype) * 3)
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=dtype) * 4 + 1e-3)
    return bn.eval()


@st.composite
def conv_bn_pairs(draw):
    dims = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    conv = conv_cls(
        c_in, c_out, kernel_size=draw(st.integers(1, 3)), stride=draw(st.integers(1, 2)),
        padding=draw(st.integers(0, 1)), dilation=draw(st.integers(1, 2)), groups=groups,
        bias=draw(st.booleans()), dtype=dtype,
    )
    affine = draw(st.booleans())
    if draw(st.booleans()):
        bn = BatchNorm(c_out, eps=draw(st.sampled_from([1e-5, 1e-3])), affine=affine, dtype=dtype)
    else:
        bn_cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        bn = bn_cls(c_out, affine=affine, dtype=dtype)
    bn = _trained_bn(bn, c_out, dtype, seed)
    x = torch.randn(2, c_in, *[7] * dims, dtype=dtype)
    return conv.eval(), bn, x


@given(conv_bn_pairs())
def test_folded_conv_equals_conv_then_bn_and_torch_fusion(pair):
    conv, bn, x = pair
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[x.dtype]
    before = copy.deepcopy((conv.state_dict(), bn.state_dict()))
    folded = fold_bn_into_conv(conv, bn)
    with torch.no_grad():
        want = bn(conv(x))
        got = folded(x)
        oracle = fuse_conv_bn_eval(conv, bn)(x)
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got / scale, want / scale, rtol=tol, atol=tol)
    torch.testing.assert_close(got / scale, oracle / scale, rtol=tol, atol=tol)
    assert folded.weight.dtype == conv.weight.dtype and folded.bias is not None
    assert (folded.stride, folded.padding, folded.groups) == (conv.stride, conv.padding,
                                                              conv.groups)
    for old, new in zip(before, (conv.state_dict(), bn.state_dict())):  # inputs untouched
        assert all(torch.equal(old[k], new[k]) for k in old)


def test_numpy_fold_matches_float64_conv_then_bn():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    gamma, beta = rng.uniform(-2, 2, 4), rng.normal(size=4)
    mean, var, eps = rng.normal(size=4) * 5, rng.uniform(1e-4, 3, 4), 1e-3
    x = torch.tensor(rng.normal(size=(2, 3, 6, 6)))
    z = torch.nn.functional.conv2d(x, torch.tensor(w), torch.tensor(b)).numpy()
    want = gamma[:, None, None] * (z - mean[:, None, None]) / np.sqrt(var[:, None, None] + eps)
    want += beta[:, None, None]
    w2, b2 = ref.fold_batchnorm(w, b, gamma, beta, mean, var, eps)
    got = torch.nn.functional.conv2d(x, torch.tensor(w2), torch.tensor(b2)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_numpy_fold_defaults_and_linear_weights():
    rng = np.random.default_rng(1)
    w, mean, var = rng.normal(size=(3, 5)), rng.normal(size=3), rng.uniform(0.5, 2, 3)
    w2, b2 = ref.fold_batchnorm(w, None, None, None, mean, var, eps=0.0)
    np.testing.assert_allclose(w2, w / np.sqrt(var)[:, None])
    np.testing.assert_allclose(b2, -mean / np.sqrt(var))
    with pytest.raises(ValueError, match="running_var of shape"):
        ref.fold_batchnorm(w, None, None, None, mean, var[:2])


def _trained_cnn(norm: str, placement: str = "before") -> nn.Sequential:
    torch.manual_seed(0)
    model = models.cnn((4, 6), norm=norm, placement=placement)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        x, y = torch.rand(16, 28, 28), torch.randint(0, 10, (16,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("norm", ["bn", "torch.nn"])
def test_fold_model_equals_the_model_in_eval_mode(norm):
    model = _trained_cnn(norm)
    state = copy.deepcopy(model.state_dict())
    folded = fold_model(model)
    x = torch.rand(8, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    bn_types = (BatchNorm, nn.BatchNorm2d)
    assert not any(isinstance(m, bn_types) for m in folded.modules())
    assert sum(isinstance(m, nn.Identity) for m in folded) == 2  # indices kept
    assert len(folded) == len(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # untouched


def test_fold_model_keeps_bn_that_does_not_follow_a_conv():
    model = _trained_cnn("bn", placement="after")  # conv -> relu -> BN: nothing to fold
    folded = fold_model(model)
    assert sum(isinstance(m, BatchNorm) for m in folded.modules()) == 2
    x = torch.rand(4, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


def test_fold_model_folds_nested_sequentials():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(2, 3, 3), _trained_bn(nn.BatchNorm2d(3), 3, torch.float32, 1))
    model = nn.Sequential(inner, nn.ReLU()).eval()
    folded = fold_model(model)
    assert isinstance(folded[0][1], nn.Identity)
    x = torch.randn(2, 2, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_folding_refuses_training_mode_and_missing_running_stats():
    model = _trained_cnn("bn").train()
    with pytest.raises(ValueError, match=r"training mode \(layer '2'\).*model.eval\(\)"):
        fold_model(model)
    with pytest.raises(ValueError, match="training mode"):
        fold_bn_into_conv(model[1], model[2])
    no_stats = nn.BatchNorm2d(4, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="without running statistics"):
        fold_bn_into_conv(nn.Conv2d(1, 4, 3), no_stats)
    with pytest.raises(ValueError, match="4 output channels but the BN layer normalizes 5"):
        fold_bn_into_conv(nn.Conv2d(1, 4, 3), BatchNorm(5).eval())
    with pytest.raises(TypeError, match="transposed"):
        fold_bn_into_conv(nn.ConvTranspose2d(4, 4, 3), BatchNorm(4).eval())
    with pytest.raises(TypeError, match="got LayerNorm"):
        fold_bn_into_conv(nn.Conv2d(1, 4, 3), nn.LayerNorm(4))


# --------------------------------------------------------------------------- checker: spatial BN


def sp_right(x, gamma, beta, eps):
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    g, b = gamma[None, :, None, None], beta[None, :, None, None]
    return g * (x - mean) / np.sqrt(var + eps) + b


def sp_right_via_rows(x, gamma, beta, eps):
    n, c, h, w = x.shape
    rows = np.moveaxis(x, 1, -1).reshape(-1, c)
    y = (rows - rows.mean(0)) / np.sqrt(rows.var(0) + eps) * gamma + beta
    return np.moveaxis(y.reshape(n, h, w, c), -1, 1)


def sp_right_torch(x, gamma, beta, eps):
    return torch.nn.functional.batch_norm(
        torch.tensor(x), None, None, torch.tensor(gamma), torch.tensor(beta), True, 0.0, eps
    )


def sp_stub(x, gamma, beta, eps):
    raise NotImplementedError


def _sp_axes(axes):
    def fn(x, gamma, beta, eps):
        mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        return gamma[:, None, None] * (x - mean) / np.sqrt(var + eps) + beta[:, None, None]
    return fn


def sp_batchnorm1d_on_flat(x, gamma, beta, eps):
    flat = x.reshape(len(x), -1)
    y = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + eps)
    return gamma.reshape(1, -1, 1, 1) * y.reshape(x.shape) + beta.reshape(1, -1, 1, 1)


def sp_unbiased(x, gamma, beta, eps):
    m = x.size // x.shape[1]
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).sum(axis=(0, 2, 3), keepdims=True) / (m - 1)
    return gamma[:, None, None] * (x - mean) / np.sqrt(var + eps) + beta[:, None, None]


def sp_gamma_last_axis(x, gamma, beta, eps):
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    return gamma * ((x - mean) / np.sqrt(var + eps)) + beta


def sp_plain_reshape(x, gamma, beta, eps):
    rows = x.reshape(-1, x.shape[1])
    y = gamma * (rows - rows.mean(0)) / np.sqrt(rows.var(0) + eps) + beta
    return y.reshape(x.shape)


def sp_no_eps(x, gamma, beta, eps):
    return sp_right(x, gamma, beta, 0.0)


SPATIAL_MISTAKES = [
    (sp_batchnorm1d_on_flat, "per-activation statistics"),
    (_sp_axes(0), "per-activation statistics"),
    (_sp_axes((0, 1)), "per position, over the batch and the channels"),
    (_sp_axes((2, 3)), "instance normalization"),
    (_sp_axes((1, 2, 3)), "layer normalization"),
    (_sp_axes(None), "one scalar mean and variance"),
    (sp_unbiased, "unbiased variance"),
    (sp_gamma_last_axis, "applied along the last axis (W)"),
    (sp_plain_reshape, "straight to (-1, C)"),
    (sp_no_eps, "eps is missing"),
]


# --------------------------------------------------------------------------- checker: folding


def fold_right(weight, bias, gamma, beta, running_mean, running_var, eps):
    inv_std = 1.0 / np.sqrt(running_var + eps)
    new_weight = np.einsum("oihw,o->oihw", weight, gamma * inv_std)
    new_bias = gamma * inv_std * (bias - running_mean) + beta
    return new_weight, new_bias


def fold_right_torch(weight, bias, gamma, beta, running_mean, running_var, eps):
    t = [torch.tensor(a) for a in (weight, bias, running_mean, running_var, gamma, beta)]
    w, b = torch.nn.utils.fusion.fuse_conv_bn_weights(t[0], t[1], t[2], t[3], eps, t[4], t[5])
    return w.detach(), b.detach()


def fold_stub(weight, bias, gamma, beta, running_mean, running_var, eps):
    raise NotImplementedError


def _fold_with(weight_fn, bias_fn):
    def fn(weight, bias, gamma, beta, running_mean, running_var, eps):
        return (weight_fn(weight, gamma, running_var, eps),
                bias_fn(bias, gamma, beta, running_mean, running_var, eps))
    return fn


def _w_right(w, gamma, var, eps):
    return w * (gamma / np.sqrt(var + eps))[:, None, None, None]


def _b_right(b, gamma, beta, mean, var, eps):
    return (b - mean) * gamma / np.sqrt(var + eps) + beta


FOLD_MISTAKES = [
    (_fold_with(lambda w, g, v, e: w * (g / np.sqrt(v + e))[None, :, None, None], _b_right),
     "scales the input channels"),
    (_fold_with(lambda w, g, v, e: w * (g / (v + e))[:, None, None, None],
                lambda b, g, bt, m, v, e: (b - m) * g / (v + e) + bt),
     "square root is missing"),
    (_fold_with(lambda w, g, v, e: w * (g * np.sqrt(v + e))[:, None, None, None],
                lambda b, g, bt, m, v, e: (b - m) * g * np.sqrt(v + e) + bt),
     "multiplied by the standard deviation"),
    (_fold_with(lambda w, g, v, e: _w_right(w, g, v, 0.0),
                lambda b, g, bt, m, v, e: _b_right(b, g, bt, m, v, 0.0)),
     "eps is missing"),
    (_fold_with(_w_right, lambda b, g, bt, m, v, e: b - m + bt), "the bias is not scaled"),
    (_fold_with(_w_right, lambda b, g, bt, m, v, e: b * g / np.sqrt(v + e) + bt),
     "running mean is not subtracted"),
    (_fold_with(_w_right, lambda b, g, bt, m, v, e: (b - m) * g / np.sqrt(v + e)),
     "beta is missing"),
    (_fold_with(_w_right, lambda b, g, bt, m, v, e: bt - m * g / np.sqrt(v + e)),
     "conv's own bias is lost"),
    (_fold_with(lambda w, g, v, e: w, _b_right), "the weight is not scaled"),
    (_fold_with(lambda w, g, v, e: w / np.sqrt(v + e)[:, None, None, None],
                lambda b, g, bt, m, v, e: (b - m) / np.sqrt(v + e) + bt),
     "gamma is missing"),
]


# --------------------------------------------------------------------------- checker contract

CHECKERS = {
    "spatial": (check.spatial_batchnorm_forward, [sp_right, sp_right_via_rows, sp_right_torch],
                sp_stub),
    "fold": (check.fold_bn_into_conv, [fold_right, fold_right_torch, ref.fold_batchnorm],
             fold_stub),
}


@pytest.mark.parametrize("which", CHECKERS)
def test_right_answers_pass(which, capsys):
    checker, rights, _ = CHECKERS[which]
    for right in rights:
        assert checker(right) is True
    out = capsys.readouterr().out
    assert out.count("cases pass ✓") == len(rights) and checker.__name__ in out


@pytest.mark.parametrize("which", CHECKERS)
def test_stub_is_not_done_yet(which, capsys):
    checker, _, stub = CHECKERS[which]
    assert checker(stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("fn, hint", SPATIAL_MISTAKES, ids=[h for _, h in SPATIAL_MISTAKES])
def test_spatial_mistake_is_named(fn, hint):
    message = failure(check.spatial_batchnorm_forward, fn)
    assert hint in message
    assert "No mistake this checker knows" not in message


@pytest.mark.parametrize("fn, hint", FOLD_MISTAKES, ids=[h for _, h in FOLD_MISTAKES])
def test_fold_mistake_is_named(fn, hint):
    message = failure(check.fold_bn_into_conv, fn)
    assert hint in message
    assert "No mistake this checker knows" not in message


def test_fold_mistake_in_one_output_names_that_output():
    def two_mistakes(weight, bias, gamma, beta, running_mean, running_var, eps):
        new_weight, _ = fold_right(weight, bias, gamma, beta, running_mean, running_var, eps)
        return weight, new_weight[:, 0, 0, 0] * 0 + beta  # weight unscaled, bias = beta

    message = failure(check.fold_bn_into_conv, two_mistakes)
    assert "new_weight: the weight is not scaled" in message
    assert "new_bias is wrong" in message


# --------------------------------------------------------------------------- figures


def test_shared_statistics_draws_the_mask_as_an_n_by_c_grid():
    import matplotlib

    matplotlib.use("Agg")
    from bnlib import plots

    mask = np.zeros((3, 2, 4, 5), dtype=bool)
    mask[:, 0, 1, 2] = True
    fig, ax = plots.subplots()
    plots.shared_statistics(ax, mask, "per activation")
    (image,) = ax.get_images()
    canvas = np.ma.filled(image.get_array().astype(float), np.nan)
    assert canvas.shape == (3 * 5 - 1, 2 * 6 - 1)  # N x C blocks of H x W, 1-pixel gaps
    assert np.nansum(canvas) == mask.sum()
    assert canvas[1, 2] == 1 and canvas[5 + 1, 2] == 1 and canvas[1, 6 + 2] == 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["channel 1", "channel 2"]
    assert ax.get_title() == "per activation"
    matplotlib.pyplot.close(fig)


def test_channel_boxplots_draws_one_box_per_channel_over_all_its_values():
    import matplotlib

    matplotlib.use("Agg")
    from bnlib import plots

    x = np.random.default_rng(0).normal(size=(4, 3, 5, 5)) * np.array([1, 2, 3])[:, None, None]
    fig, ax = plots.subplots()
    plots.channel_boxplots(ax, x, ylabel="value")
    boxes = [p for p in ax.patches]
    assert len(boxes) == 3
    medians = [line.get_ydata()[0] for line in ax.lines if len(set(line.get_xdata())) == 2
               and line.get_ydata()[0] == line.get_ydata()[1]]
    for c in range(3):
        assert np.isclose(np.median(x[:, c]), medians, atol=1e-12).any()
    assert ax.get_xlabel() == "channel"
    matplotlib.pyplot.close(fig)


@pytest.mark.gpu
def test_fold_model_on_cuda_matches_the_cpu_fold():
    model = _trained_cnn("bn")
    on_cpu = fold_model(model)
    on_gpu = fold_model(copy.deepcopy(model).cuda())
    for a, b in zip(on_cpu.state_dict().values(), on_gpu.state_dict().values()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-6, atol=1e-7)
    x = torch.rand(8, 28, 28)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.testing.assert_close(on_gpu(x.cuda()).cpu(), model(x), rtol=1e-5, atol=1e-5)
