"""bnlib.reference: forward/backward against closed forms, numeric gradients and each other."""

from __future__ import annotations

import numpy as np
import pytest

from bnlib import reference as R

SHAPES = [(2, 1), (5, 3), (4, 3, 7), (2, 3, 4, 5), (3, 2, 2, 3, 2)]


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.normal(3.0, 2.0, size=shape)
    return x, rng.normal(1.0, 0.5, size=c), rng.normal(size=c), rng.normal(size=shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_normalizes_each_channel(shape):
    x, _, _, _ = _inputs(shape)
    c = shape[1]
    y, cache = R.batchnorm_forward(x, np.ones(c), np.zeros(c), eps=0.0)
    axes = R.reduce_axes(x)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=axes), 1.0, rtol=1e-12)
    np.testing.assert_allclose(cache["mean"], x.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(cache["var"], x.var(axis=axes), rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_applies_gamma_and_beta_per_channel(shape):
    x, gamma, beta, _ = _inputs(shape)
    y, cache = R.batchnorm_forward(x, gamma, beta, eps=1e-5)
    expected = R.per_channel(gamma, x.ndim) * cache["x_hat"] + R.per_channel(beta, x.ndim)
    np.testing.assert_allclose(y, expected, rtol=1e-13)
    x_hat = (x - R.per_channel(x.mean(axis=R.reduce_axes(x)), x.ndim)) / np.sqrt(
        R.per_channel(x.var(axis=R.reduce_axes(x)), x.ndim) + 1e-5
    )
    np.testing.assert_allclose(cache["x_hat"], x_hat, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
def test_closed_form_backward_matches_numeric_gradient(shape):
    x, gamma, beta, dy = _inputs(shape, seed=1)
    _, cache = R.batchnorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = R.batchnorm_backward(dy, cache)

    def f():
        return R.batchnorm_forward(x, gamma, beta)[0]

    # With N = 2 the true dx is ~1e-5 (it vanishes as eps -> 0), so compare absolutely too.
    np.testing.assert_allclose(dx, R.numeric_gradient(f, x, dy), rtol=1e-6, atol=1e-9)
    assert R.relative_error(dgamma, R.numeric_gradient(f, gamma, dy)) < 1e-7
    assert R.relative_error(dbeta, R.numeric_gradient(f, beta, dy)) < 1e-7


@pytest.mark.parametrize("shape", SHAPES)
def test_staged_backward_equals_closed_form(shape):
    x, gamma, beta, dy = _inputs(shape, seed=2)
    _, cache = R.batchnorm_forward(x, gamma, beta)
    for a, b in zip(R.batchnorm_backward(dy, cache), R.batchnorm_backward_staged(dy, cache)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_dx_sums_to_zero_and_is_orthogonal_to_x_hat():
    # Exact for eps = 0; with eps > 0 the orthogonality is off by a factor eps / var.
    x, gamma, beta, dy = _inputs((16, 4), seed=3)
    _, cache = R.batchnorm_forward(x, gamma, beta, eps=0.0)
    dx, _, _ = R.batchnorm_backward(dy, cache)
    np.testing.assert_allclose(dx.sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose((dx * cache["x_hat"]).sum(axis=0), 0.0, atol=1e-11)


def test_numeric_gradient_restores_its_input():
    x, gamma, beta, dy = _inputs((4, 2), seed=4)
    before = x.copy()
    R.numeric_gradient(lambda: R.batchnorm_forward(x, gamma, beta)[0], x, dy)
    np.testing.assert_array_equal(x, before)


def test_relative_error_detects_difference():
    assert R.relative_error(np.ones(3), np.ones(3)) == 0.0
    assert R.relative_error(np.array([1.0]), np.array([1.1])) > 0.04


def test_two_pass_variance_survives_large_offset_in_float32():
    rng = np.random.default_rng(5)
    x = (1e4 + rng.normal(size=(512, 3))).astype(np.float32)
    y, _ = R.batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32))
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-2)
    naive_var = (x * x).mean(axis=0) - x.mean(axis=0) ** 2  # what the library must not do
    assert np.max(np.abs(naive_var - 1.0)) > 0.1  # the naive formula is badly off here


def test_layer_running_stats_follow_pytorch_convention():
    rng = np.random.default_rng(6)
    layer = R.BatchNorm(3, momentum=0.1)
    batches = [rng.normal(2.0, 3.0, size=(8, 3)) for _ in range(4)]
    mean, var = np.zeros(3), np.ones(3)
    for b in batches:
        layer(b)
        mean = 0.9 * mean + 0.1 * b.mean(axis=0)
        var = 0.9 * var + 0.1 * b.var(axis=0, ddof=1)
    np.testing.assert_allclose(layer.running_mean, mean, rtol=1e-13)
    np.testing.assert_allclose(layer.running_var, var, rtol=1e-13)
    assert layer.num_batches_tracked == 4


def test_layer_cumulative_average_with_momentum_none():
    rng = np.random.default_rng(7)
    layer = R.BatchNorm(2, momentum=None)
    batches = [rng.normal(size=(5, 2)) * (i + 1) for i in range(5)]
    for b in batches:
        layer(b)
    np.testing.assert_allclose(layer.running_mean, np.mean([b.mean(0) for b in batches], 0))
    np.testing.assert_allclose(layer.running_var, np.mean([b.var(0, ddof=1) for b in batches], 0))


def test_layer_eval_uses_running_stats_and_is_independent_of_the_batch():
    rng = np.random.default_rng(8)
    layer = R.BatchNorm(3)
    for _ in range(20):
        layer(rng.normal(1.0, 2.0, size=(16, 3)))
    layer.eval()
    x = rng.normal(size=(6, 3))
    y_all = layer(x)
    y_one = layer(x[:1])
    np.testing.assert_allclose(y_all[:1], y_one, rtol=1e-14)
    expected = (x - layer.running_mean) / np.sqrt(layer.running_var + layer.eps)
    np.testing.assert_allclose(y_all, expected, rtol=1e-13)
    dy = rng.normal(size=x.shape)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, dy / np.sqrt(layer.running_var + layer.eps), rtol=1e-13)


def test_layer_backward_sets_parameter_gradients():
    x, gamma, beta, dy = _inputs((6, 3), seed=9)
    layer = R.BatchNorm(3)
    layer.gamma, layer.beta = gamma, beta
    layer(x)
    dx = layer.backward(dy)
    _, cache = R.batchnorm_forward(x, gamma, beta)
    edx, edg, edb = R.batchnorm_backward(dy, cache)
    np.testing.assert_allclose(dx, edx, rtol=1e-13)
    np.testing.assert_allclose(layer.dgamma, edg, rtol=1e-13)
    np.testing.assert_allclose(layer.dbeta, edb, rtol=1e-13)


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before forward"):
        R.BatchNorm(2).backward(np.ones((2, 2)))


def test_mismatched_parameter_shapes_are_rejected():
    x = np.ones((4, 3)) + np.arange(4)[:, None]
    with pytest.raises(ValueError, match=r"gamma of shape \(3,\)"):
        R.batchnorm_forward(x, np.ones(2), np.zeros(3))
    with pytest.raises(ValueError, match=r"beta of shape \(3,\)"):
        R.batchnorm_forward(x, np.ones(3), np.zeros((3, 1)))


def test_bad_dy_shape_is_rejected():
    x, gamma, beta, _ = _inputs((4, 3))
    _, cache = R.batchnorm_forward(x, gamma, beta)
    with pytest.raises(ValueError, match="dy of shape"):
        R.batchnorm_backward(np.ones((3, 3)), cache)


def test_invalid_momentum_is_rejected():
    with pytest.raises(ValueError, match="momentum"):
        R.BatchNorm(3, momentum=1.5)
