"""The batch-size chapter's additions to bnlib, each against an independent oracle.

* ``reference.group_norm`` / ``layer_norm`` against ``torch.nn.functional`` (fp64, 1e-10);
* ``GhostBatchNorm`` with one ghost batch, ``BatchRenorm`` with ``r_max=1, d_max=0`` against
  ``BatchNorm`` (outputs, gradients, running buffers); renorm's ``r``/``d`` against NumPy;
* ``SyncBatchNorm`` in 2 and 3 CPU processes (gloo) against ``BatchNorm`` on the whole batch;
* ``models`` with ``norm="gn"``/``"ln"``; ``fit(shuffle=False)``;
* ``check.group_norm`` against the right answer and eight wrong implementations.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import bnlib.check
from bnlib import models
from bnlib import reference as R
from bnlib.models import cnn, mlp
from bnlib.torch_bn import BatchNorm
from bnlib.train import fit
from bnlib.variants import BatchRenorm, GhostBatchNorm, SyncBatchNorm

TOL = dict(rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- group / layer norm


@st.composite
def gn_inputs(draw):
    n = draw(st.integers(1, 4))
    g = draw(st.integers(1, 4))
    c = g * draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = draw(st.sampled_from([0.0, 50.0])) + rng.standard_normal((n, c, *spatial))
    assume(x[0].size > g)  # torch refuses groups of a single value
    return x, g, rng.uniform(0.5, 2, c), rng.uniform(-1, 1, c), draw(st.sampled_from([1e-5, 0.1]))


@given(gn_inputs())
def test_group_norm_matches_torch(args):
    x, g, gamma, beta, eps = args
    want = F.group_norm(torch.from_numpy(x), g, torch.from_numpy(gamma), torch.from_numpy(beta),
                        eps).numpy()
    np.testing.assert_allclose(R.group_norm(x, g, gamma, beta, eps), want, **TOL)


@given(gn_inputs())
def test_layer_norm_normalizes_each_sample_over_all_non_batch_axes(args):
    x, _, gamma, beta, eps = args
    got = R.layer_norm(x, gamma, beta, eps)
    t = torch.from_numpy(x)
    x_hat = F.layer_norm(t, t.shape[1:], eps=eps).numpy()  # no affine: per-channel below
    shape = (1, -1) + (1,) * (x.ndim - 2)
    np.testing.assert_allclose(got, gamma.reshape(shape) * x_hat + beta.reshape(shape), **TOL)


def test_group_norm_rejects_bad_groups():
    with pytest.raises(ValueError, match="cannot be split"):
        R.group_norm(np.zeros((2, 6, 3)), 4, np.ones(6), np.zeros(6))


# --------------------------------------------------------------------------- models


def test_models_gn_and_ln():
    gn = [m for m in cnn((8, 16), norm="gn") if isinstance(m, torch.nn.GroupNorm)]
    ln = [m for m in mlp([4, 6, 3], norm="ln") if isinstance(m, torch.nn.GroupNorm)]
    assert [m.num_groups for m in gn] == [4, 4] and [m.num_groups for m in ln] == [1]
    assert cnn((6,), norm="gn")[2].num_groups == 3  # 4 does not divide 6
    assert cnn((8,), norm="gn")[1].bias is not None  # GN does not cancel a per-channel bias
    assert cnn((8,), norm="bn")[1].bias is None  # unchanged for BN
    x = torch.randn(1, 28, 28)  # a batch of one trains fine with GN/LN
    assert cnn((8, 16), norm="ln").train()(x).shape == (1, 10)


def test_fit_without_shuffle_takes_batches_in_order():
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2))
    hook = model[1].register_forward_pre_hook(lambda m, a: seen.append(a[0][:, 0].tolist()))
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    fit(model, x, torch.zeros(6, dtype=torch.long), steps=4, batch_size=3, shuffle=False,
        progress=False, device=torch.device("cpu"))
    hook.remove()
    assert seen == [[0, 2, 4], [6, 8, 10], [0, 2, 4], [6, 8, 10]]


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam),
                                           ("adagrad", torch.optim.Adagrad)])
def test_fit_takes_the_optimizer_it_is_told(name, cls):
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    ours, theirs = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    theirs.load_state_dict(ours.state_dict())
    fit(ours, x, y, steps=3, batch_size=8, lr=0.05, optimizer=name, shuffle=False,
        progress=False, device=torch.device("cpu"))
    opt = cls(theirs.parameters(), lr=0.05)
    for _ in range(3):  # the whole set is one batch, so every step sees the same data
        opt.zero_grad()
        torch.nn.functional.cross_entropy(theirs(x), y).backward()
        opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_fit_refuses_an_unknown_optimizer_and_momentum_outside_sgd():
    model, x, y = torch.nn.Linear(2, 2), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        fit(model, x, y, steps=1, optimizer="rmsprop", progress=False)
    with pytest.raises(ValueError, match="momentum is an argument of SGD only"):
        fit(model, x, y, steps=1, optimizer="adam", momentum=0.9, progress=False)


# --------------------------------------------------------------------------- ghost BN, renorm


def run(layer: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, steps: int = 3):
    """Train-mode steps, then one eval step: outputs, grads, buffers."""
    out = []
    for _ in range(steps):
        xx = x.clone().requires_grad_(True)
        y = layer.train()(xx)
        (y * dy).sum().backward()
        out += [y.detach(), xx.grad, layer.weight.grad.clone(), layer.bias.grad.clone()]
        layer.weight.grad = layer.bias.grad = None
        x = x * 1.1 + 0.3
    out.append(layer.eval()(x).detach())
    out += [b.clone() for b in layer.buffers()]
    return out


def assert_all_close(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, **TOL)


@given(st.integers(2, 6), st.integers(1, 3), st.integers(0, 2), st.integers(0, 999))
def test_ghost_with_one_ghost_batch_is_batchnorm(n, c, n_spatial, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, c) + (3,) * n_spatial
    x = 2 + 3 * torch.randn(shape, generator=gen, dtype=torch.float64)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    for ghost in (n, n + 3):
        assert_all_close(run(GhostBatchNorm(c, ghost, dtype=torch.float64), x, dy),
                         run(BatchNorm(c, dtype=torch.float64), x, dy))


def test_ghost_normalizes_each_chunk_on_its_own():
    x = torch.randn(10, 3, 4, dtype=torch.float64)
    ghost = GhostBatchNorm(3, 4, dtype=torch.float64)
    plain = BatchNorm(3, dtype=torch.float64)
    y = ghost(x)
    for chunk, y_chunk in zip(x.split(4), y.split(4)):
        torch.testing.assert_close(y_chunk, plain(chunk), **TOL)  # sequential running updates too
    assert_all_close(list(ghost.buffers()), list(plain.buffers()))
    assert "ghost_batch_size=4" in repr(ghost)
    with pytest.raises(ValueError, match="more than 1 value"):  # last chunk of one example
        before = ghost.running_mean.clone()
        ghost(torch.randn(9, 3, 1, dtype=torch.float64))
    torch.testing.assert_close(ghost.running_mean, before)


@given(st.integers(2, 6), st.integers(1, 3), st.integers(0, 2), st.integers(0, 999))
def test_renorm_without_correction_is_batchnorm(n, c, n_spatial, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, c) + (3,) * n_spatial
    x = 2 + 3 * torch.randn(shape, generator=gen, dtype=torch.float64)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    assert_all_close(run(BatchRenorm(c, r_max=1.0, d_max=0.0, dtype=torch.float64), x, dy),
                     run(BatchNorm(c, dtype=torch.float64), x, dy))


def test_renorm_r_d_and_output_against_numpy():
    rng = np.random.default_rng(3)
    x = 5 + 4 * rng.standard_normal((6, 3, 5))
    layer = BatchRenorm(3, r_max=1.5, d_max=0.5, dtype=torch.float64)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.0, 4.9, 10.0]))
        layer.running_var.copy_(torch.tensor([1.0, 16.0, 100.0]))
        layer.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        layer.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    mu_run, var_run = layer.running_mean.numpy().copy(), layer.running_var.numpy().copy()
    mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    sigma_b, sigma = np.sqrt(var + 1e-5), np.sqrt(var_run + 1e-5)
    r = np.clip(sigma_b / sigma, 1 / 1.5, 1.5)
    d = np.clip((mean - mu_run) / sigma, -0.5, 0.5)
    r_t, d_t = layer.correction(torch.from_numpy(x))
    np.testing.assert_allclose(r_t.numpy(), r, **TOL)
    np.testing.assert_allclose(d_t.numpy(), d, **TOL)
    assert r[0] == 1.5 and d[0] == 0.5 and 1 / 1.5 < r[1] < 1.5  # clipped and unclipped cases
    x_hat = (x - mean[None, :, None]) / sigma_b[None, :, None] * r[None, :, None] + d[None, :, None]
    want = np.array([1.0, 2.0, 0.5])[None, :, None] * x_hat + np.array([0.0, -1, 1])[None, :, None]
    xt = torch.from_numpy(x).requires_grad_(True)
    y = layer(xt)
    np.testing.assert_allclose(y.detach().numpy(), want, **TOL)
    # running stats: BN's rule with the unbiased variance
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.9 * mu_run + 0.1 * mean, **TOL)
    np.testing.assert_allclose(layer.running_var.numpy(),
                               0.9 * var_run + 0.1 * var * 30 / 29, **TOL)
    # gradients treat r and d as constants: autograd through the formula with detached r, d
    dy = torch.from_numpy(rng.standard_normal(x.shape))
    (y * dy).sum().backward()
    x2 = torch.from_numpy(x).requires_grad_(True)
    w = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    m2, v2 = x2.mean(dim=(0, 2), keepdim=True), x2.var(dim=(0, 2), correction=0, keepdim=True)
    rr, dd = torch.from_numpy(r)[None, :, None], torch.from_numpy(d)[None, :, None]
    y2 = w[None, :, None] * ((x2 - m2) / torch.sqrt(v2 + 1e-5) * rr + dd)
    (y2 * dy).sum().backward()
    torch.testing.assert_close(xt.grad, x2.grad, **TOL)
    torch.testing.assert_close(layer.weight.grad, w.grad, **TOL)
    assert set(layer.state_dict()) == {"weight", "bias", "running_mean", "running_var",
                                       "num_batches_tracked"}


def test_renorm_eval_equals_unclipped_train_output():
    x = torch.randn(8, 2, dtype=torch.float64)
    layer = BatchRenorm(2, r_max=100.0, d_max=100.0, momentum=0.0, dtype=torch.float64)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.3, -0.2]))
        layer.running_var.copy_(torch.tensor([1.5, 0.7]))
    torch.testing.assert_close(layer.train()(x), layer.eval()(x), **TOL)


# --------------------------------------------------------------------------- SyncBN


def test_syncbn_without_process_group_is_batchnorm():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    dy = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)
    assert_all_close(run(SyncBatchNorm(3, dtype=torch.float64), x, dy),
                     run(BatchNorm(3, dtype=torch.float64), x, dy))
    assert set(SyncBatchNorm(3).state_dict()) == set(torch.nn.BatchNorm1d(3).state_dict())


@pytest.mark.parametrize("sizes", [[3, 5], [1, 4, 2]])
def test_syncbn_across_processes_equals_batchnorm_on_the_whole_batch(sizes):
    from bnlib.distributed import sync_batchnorm_run

    x, dy, results = sync_batchnorm_run(sizes, shape=(3, 5), seed=1)
    bn = BatchNorm(3, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 3, dtype=torch.float64))
        bn.bias.copy_(torch.linspace(-1.0, 1.0, 3, dtype=torch.float64))
    xx = x.clone().requires_grad_(True)
    y = bn(xx)
    (y * dy).sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in results]), y.detach(), **TOL)
    torch.testing.assert_close(torch.cat([r["dx"] for r in results]), xx.grad, **TOL)
    torch.testing.assert_close(sum(r["dweight"] for r in results), bn.weight.grad, **TOL)
    torch.testing.assert_close(sum(r["dbias"] for r in results), bn.bias.grad, **TOL)
    for r in results:
        for k, v in bn.state_dict().items():
            if k not in ("weight", "bias"):
                torch.testing.assert_close(r["state"][k], v, **TOL)
    # every process alone would see different statistics: the sync matters
    alone = BatchNorm(3, dtype=torch.float64)(x[: sizes[0]]) if sizes[0] > 1 else None
    if alone is not None:
        assert not torch.allclose(alone, y[: sizes[0]].detach())


# --------------------------------------------------------------------------- the checker


def _gn_right(x, num_groups, gamma, beta, eps):
    n, c = x.shape[:2]
    v = x.reshape(n, num_groups, -1)
    m = v.mean(axis=-1, keepdims=True)
    s = np.sqrt(((v - m) ** 2).mean(axis=-1, keepdims=True) + eps)
    return gamma[None, :, None, None] * ((v - m) / s).reshape(x.shape) + beta[None, :, None, None]


def _gn_with(x, num_groups, gamma, beta, eps, *, axes=(2, 3), strided=False, ddof=0,
             eps_out=False, affine=True, groups=None):
    n, c = x.shape[:2]
    g = groups(c, num_groups) if groups else num_groups
    f = x.reshape(n, c, -1)
    v = f.reshape(n, c // g, g, -1).swapaxes(1, 2) if strided else f.reshape(n, g, c // g, -1)
    m = v.mean(axis=axes, keepdims=True)
    var = v.var(axis=axes, ddof=ddof, keepdims=True)
    h = (v - m) / ((np.sqrt(var) + eps) if eps_out else np.sqrt(var + eps))
    h = (h.swapaxes(1, 2) if strided else h).reshape(x.shape)
    return gamma[None, :, None, None] * h + beta[None, :, None, None] if affine else h


WRONG_GN = {
    "over the batch too": lambda *a: _gn_with(*a, axes=(0, 2, 3)),
    "per channel (instance norm)": lambda *a: _gn_with(*a, groups=lambda c, g: c),
    "with a stride": lambda *a: _gn_with(*a, strided=True),
    "per position": lambda *a: _gn_with(*a, axes=(2,)),
    "unbiased variance": lambda *a: _gn_with(*a, ddof=1),
    "eps added outside": lambda *a: _gn_with(*a, eps_out=True),
    "without gamma and beta": lambda *a: _gn_with(*a, affine=False),
    "a single group (layer norm)": lambda *a: _gn_with(*a, groups=lambda c, g: 1),
}


def test_group_norm_checker_accepts_right(capsys):
    assert bnlib.check.group_norm(_gn_right)
    assert "all 6 cases pass" in capsys.readouterr().out


def test_group_norm_checker_stub(capsys):
    def stub(x, num_groups, gamma, beta, eps):
        raise NotImplementedError

    assert bnlib.check.group_norm(stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(WRONG_GN))
def test_group_norm_checker_names_the_mistake(hint):
    with pytest.raises(AssertionError, match="group_norm: .*" + hint.replace("(", r"\(")
                       .replace(")", r"\)")):
        bnlib.check.group_norm(WRONG_GN[hint])


def test_group_norm_checker_in_place_and_shape():
    def in_place(x, num_groups, gamma, beta, eps):
        y = _gn_right(x, num_groups, gamma, beta, eps)
        x -= 1
        return y

    with pytest.raises(AssertionError, match="in place"):
        bnlib.check.group_norm(in_place)
    with pytest.raises(AssertionError, match="shape"):
        bnlib.check.group_norm(lambda *a: _gn_right(*a).reshape(a[0].shape[0], -1))
    assert copy.copy(bnlib.check.__all__).count("group_norm") == 1


def test_replace_layers_swaps_only_the_chosen_kind_and_shares_the_rest():
    model = models.mlp([6, 5, 3], norm="bn")
    ghost = models.replace_layers(model, BatchNorm, lambda bn: GhostBatchNorm(bn.num_features, 2))
    kinds = [type(layer) for layer in ghost]
    assert GhostBatchNorm in kinds and BatchNorm not in kinds
    assert len(ghost) == len(model)
    assert all(a is b for a, b in zip(model, ghost) if not isinstance(a, BatchNorm))
