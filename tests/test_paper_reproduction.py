"""The paper-reproduction chapter's checker: ``inference_bn`` (Algorithm 2 of Ioffe and
Szegedy, 2015), tested against the right answer, PyTorch as an oracle, and a catalogue of
wrong implementations written here independently of the checker's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnlib import check, models, train


def right(x, gamma, beta, batch_means, batch_vars, m, eps):
    mean_pop = np.mean(batch_means, axis=0)
    var_pop = np.mean(batch_vars, axis=0) * m / (m - 1)
    return gamma * (x - mean_pop) / np.sqrt(var_pop + eps) + beta


def test_right_answer_passes(capsys):
    assert check.inference_bn(right) is True
    assert "all" in capsys.readouterr().out


def test_stub_is_not_done_yet(capsys):
    def stub(x, gamma, beta, batch_means, batch_vars, m, eps):
        raise NotImplementedError

    assert check.inference_bn(stub) is False
    assert "not done yet" in capsys.readouterr().out


def test_right_answer_matches_torch_cumulative_running_statistics():
    """``momentum=None`` makes PyTorch's buffers the equal-weight average of the batch means
    and of the unbiased batch variances: exactly Algorithm 2's population statistics."""
    torch.manual_seed(0)
    k, m, d = 7, 12, 5
    bn = nn.BatchNorm1d(d, momentum=None).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    batches = 3.0 * torch.randn(k, m, d, dtype=torch.float64) + 2.0
    for b in batches:
        bn(b)
    x = torch.randn(9, d, dtype=torch.float64)
    want = bn.eval()(x).detach().numpy()
    got = right(x.numpy(), bn.weight.detach().numpy(), bn.bias.detach().numpy(),
                batches.mean(1).numpy(), batches.var(1, correction=0).numpy(), m, bn.eps)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# Wrong implementations, each written out in full, with a piece of the hint it must get.


def biased(x, gamma, beta, batch_means, batch_vars, m, eps):
    var = batch_vars.mean(0)
    return gamma * (x - batch_means.mean(0)) / np.sqrt(var + eps) + beta


def upside_down(x, gamma, beta, batch_means, batch_vars, m, eps):
    var = batch_vars.mean(0) * (m - 1) / m
    return gamma * (x - batch_means.mean(0)) / np.sqrt(var + eps) + beta


def wrong_m(x, gamma, beta, batch_means, batch_vars, m, eps):
    n = len(x)
    var = batch_vars.mean(0) * n / (n - 1)
    return gamma * (x - batch_means.mean(0)) / np.sqrt(var + eps) + beta


def own_statistics(x, gamma, beta, batch_means, batch_vars, m, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + beta


def last_batch(x, gamma, beta, batch_means, batch_vars, m, eps):
    var = batch_vars[-1] * m / (m - 1)
    return gamma * (x - batch_means[-1]) / np.sqrt(var + eps) + beta


def moving_average(x, gamma, beta, batch_means, batch_vars, m, eps):
    mean, var = np.zeros(x.shape[1]), np.ones(x.shape[1])
    for bm, bv in zip(batch_means, batch_vars):
        mean = mean + 0.1 * (bm - mean)
        var = var + 0.1 * (bv * m / (m - 1) - var)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


def variance_of_means(x, gamma, beta, batch_means, batch_vars, m, eps):
    var = np.var(batch_means, axis=0, ddof=1)
    return gamma * (x - batch_means.mean(0)) / np.sqrt(var + eps) + beta


def averaged_stds(x, gamma, beta, batch_means, batch_vars, m, eps):
    std = np.sqrt(batch_vars).mean(0)
    return gamma * (x - batch_means.mean(0)) / np.sqrt(std**2 * m / (m - 1) + eps) + beta


def wrong_axis(x, gamma, beta, batch_means, batch_vars, m, eps):
    var = batch_vars.mean(1) * m / (m - 1)
    return gamma * (x - batch_means.mean(1)) / np.sqrt(var + eps) + beta


def eps_outside(x, gamma, beta, batch_means, batch_vars, m, eps):
    var = batch_vars.mean(0) * m / (m - 1)
    return gamma * (x - batch_means.mean(0)) / (np.sqrt(var) + eps) + beta


def divide_by_variance(x, gamma, beta, batch_means, batch_vars, m, eps):
    var = batch_vars.mean(0) * m / (m - 1)
    return gamma * (x - batch_means.mean(0)) / (var + eps) + beta


def no_gamma(x, gamma, beta, batch_means, batch_vars, m, eps):
    var = batch_vars.mean(0) * m / (m - 1)
    return (x - batch_means.mean(0)) / np.sqrt(var + eps) + beta


def no_beta(x, gamma, beta, batch_means, batch_vars, m, eps):
    var = batch_vars.mean(0) * m / (m - 1)
    return gamma * (x - batch_means.mean(0)) / np.sqrt(var + eps)


def in_place(x, gamma, beta, batch_means, batch_vars, m, eps):
    batch_vars *= m / (m - 1)
    return gamma * (x - batch_means.mean(0)) / np.sqrt(batch_vars.mean(0) + eps) + beta


MISTAKES = [
    (biased, "m / (m - 1)"),
    (upside_down, "upside down"),
    (wrong_m, "argument `m`"),
    (own_statistics, "its own statistics"),
    (last_batch, "last training batch"),
    (moving_average, "exponential moving average"),
    (variance_of_means, "variance of the batch means"),
    (averaged_stds, "standard deviations"),
    (wrong_axis, "axis 1"),
    (eps_outside, "inside the square root"),
    (divide_by_variance, "divided by the variance"),
    (no_gamma, "not scaled by gamma"),
    (no_beta, "not shifted by beta"),
    (in_place, "in place"),
]


@pytest.mark.parametrize(("fn", "hint"), MISTAKES, ids=[f.__name__ for f, _ in MISTAKES])
def test_mistake_is_named(fn, hint):
    with pytest.raises(AssertionError, match="inference_bn") as err:
        check.inference_bn(fn)
    assert hint in str(err.value)


def test_wrong_shape_is_reported():
    def transposed(x, gamma, beta, batch_means, batch_vars, m, eps):
        return right(x, gamma, beta, batch_means, batch_vars, m, eps).T

    with pytest.raises(AssertionError, match="shape"):
        check.inference_bn(transposed)


# --------------------------------------------------------------------------- init_normal_


@pytest.mark.parametrize("std", [1e-3, 1.0, 10.0])
def test_init_normal_sets_weight_scale_and_zero_biases(std):
    torch.manual_seed(0)
    model = models.init_normal_(models.mlp([784, 300, 200, 10], "sigmoid"), std)
    for layer in model:
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().double()
            assert abs(w.std().item() / std - 1) < 0.02  # 2000+ draws per matrix
            assert abs(w.mean().item()) < 0.02 * std
            assert torch.all(layer.bias == 0)


def test_init_normal_leaves_bn_parameters_and_is_seeded():
    torch.manual_seed(1)
    a = models.init_normal_(models.mlp([20, 8, 3], "sigmoid", norm="torch.nn"), 0.5)
    torch.manual_seed(1)
    b = models.init_normal_(models.mlp([20, 8, 3], "sigmoid", norm="torch.nn"), 0.5)
    bn = [m for m in a if isinstance(m, nn.BatchNorm1d)][0]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="positive"):
        models.init_normal_(a, 0.0)


def test_unknown_mistake_quotes_the_formula():
    def off_by_a_bit(x, gamma, beta, batch_means, batch_vars, m, eps):
        return 1.01 * right(x, gamma, beta, batch_means, batch_vars, m, eps)

    with pytest.raises(AssertionError, match="the right formula"):
        check.inference_bn(off_by_a_bit)


def test_drift_to_the_end_by_hand():
    # 3 recordings, 2 percentiles, 1 unit: |x - x(T)| peaks at 3 (first q) and 1 (second q)
    q = np.array([[[3.0], [1.0]], [[1.0], [2.0]], [[0.0], [2.0]]])
    np.testing.assert_array_equal(train.drift_to_the_end(q), [2.0])
