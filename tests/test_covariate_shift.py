"""What the covariate-shift chapter adds to bnlib, proven against independent oracles.

* ``bnlib.train``: saturation, the side-effect-free probes (gradient norms, the activation
  recorder), Santurkar et al.'s gradient shift and the walk along the gradient;
* ``bnlib.variants.NoisyShift`` and ``bnlib.models.insert_after``;
* the checkers ``bnlib.check.saturation_fraction`` and ``bnlib.check.importance_weights``,
  against right answers and a catalogue of wrong ones written here the way readers would.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from bnlib import check, models, train
from bnlib import reference as ref
from bnlib.torch_bn import BatchNorm, normalize_batch
from bnlib.variants import NoisyShift

# --------------------------------------------------------------------------- helpers


def small_net(norm: str | None = "bn", noisy: bool = False, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = models.mlp([6, 5, 4, 3], activation="sigmoid", norm=norm)
    if noisy:
        net = models.insert_after(net, BatchNorm, lambda bn: NoisyShift(bn.num_features))
    return net.double()


def batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- saturation


def test_saturation_fraction_counts_strictly_outside_both_thresholds():
    a = np.array([[0.0, 0.05, 0.5], [0.95, 0.96, 0.04]])
    assert train.saturation_fraction(a) == pytest.approx(3 / 6)  # 0.0, 0.96, 0.04
    assert train.saturation_fraction(torch.tensor(a), low=0.3, high=0.6) == pytest.approx(5 / 6)


@pytest.mark.parametrize("seed", range(3))
def test_saturation_fraction_matches_a_loop(seed):
    a = np.random.default_rng(seed).uniform(size=(7, 9))
    loop = sum(v < 0.1 or v > 0.8 for v in a.ravel()) / a.size
    assert train.saturation_fraction(a, 0.1, 0.8) == pytest.approx(loop)


# --------------------------------------------------------------------------- side effects


def test_side_effect_free_restores_buffers_and_rng():
    net = small_net(noisy=True).train()
    x, _ = batch()
    before = state(net)
    torch.manual_seed(3)
    expected_next = torch.rand(3)
    torch.manual_seed(3)
    with train.side_effect_free(net):
        net(x)  # updates the running statistics and draws noise
        assert not same_state(before, state(net))
    assert same_state(before, state(net))
    assert torch.equal(torch.rand(3), expected_next)


def test_grad_norms_match_backward_and_leave_grad_untouched():
    net = small_net(norm="bn").train()
    x, y = batch()
    norms = train.grad_norms(net, x, y)
    assert all(p.grad is None for p in net.parameters())
    oracle = copy.deepcopy(net)
    nn.functional.cross_entropy(oracle(x), y).backward()
    expected = {n: p.grad.norm().item() for n, p in oracle.named_parameters() if p.dim() == 2}
    assert list(norms) == list(expected) == ["1.weight", "4.weight", "7.weight"]
    for name in expected:
        assert norms[name] == pytest.approx(expected[name], rel=1e-12)


# --------------------------------------------------------------------------- recorder


def sigmoids(net: nn.Sequential) -> dict[str, nn.Module]:
    return {f"layer {i}": m for i, m in enumerate(m for m in net if isinstance(m, nn.Sigmoid))}


def test_recorder_statistics_match_numpy():
    net = small_net(norm="bn").train()
    x, y = batch(40)
    seen = {}
    net[3].register_forward_hook(lambda m, i, o: seen.update(inp=i[0].detach(), out=o.detach()))
    rec = train.ActivationRecorder(sigmoids(net), x, y, every=1, q=(10, 50, 90), units=(0, 2))
    rec.record(0, net)
    inp, out = seen["inp"].numpy(), seen["out"].numpy()
    np.testing.assert_allclose(rec.quantiles["layer 0"][0],
                               np.percentile(inp, [10, 50, 90], axis=0), rtol=1e-12)
    np.testing.assert_array_equal(rec.value_array("layer 0", 2), inp[None, :, 2].astype(np.float32))
    assert rec.saturation["layer 0"] == [pytest.approx(np.mean((out < 0.05) | (out > 0.95)))]
    assert rec.grad_norms == [train.grad_norms(net, x, y)]
    assert rec.quantile_array("layer 1").shape == (1, 3, 4)
    assert rec.grad_norm_array().shape == (1, 3)


def test_recorder_counts_conv_channels_as_units():
    torch.manual_seed(0)
    net = models.cnn(channels=(3,), activation="sigmoid", norm="bn").double()
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    seen = {}
    act = next(m for m in net if isinstance(m, nn.Sigmoid))
    act.register_forward_hook(lambda m, i, o: seen.update(inp=i[0].detach()))
    rec = train.ActivationRecorder({"conv": act}, x, torch.zeros(4, dtype=torch.long), units=(1,))
    rec.record(0, net)
    per_channel = seen["inp"].transpose(0, 1).reshape(3, -1).numpy()
    np.testing.assert_allclose(rec.quantiles["conv"][0],
                               np.percentile(per_channel, [15, 50, 85], axis=1), rtol=1e-12)
    assert rec.value_array("conv", 1).shape == (1, 4 * 28 * 28)


@pytest.mark.parametrize("noisy", [False, True])
def test_recording_does_not_change_training(noisy):
    x, y = batch(64)
    runs = []
    for record in (False, True):
        net = small_net(noisy=noisy)
        torch.manual_seed(5)
        rec = train.ActivationRecorder(sigmoids(net), x[:20], y[:20], every=3)
        hist = train.fit(net, x, y, steps=10, batch_size=16, lr=0.5, device=torch.device("cpu"),
                         on_step=rec if record else None, progress=False)
        runs.append((state(net), hist.train_loss, rec.steps))
    assert same_state(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert runs[0][2] == [] and runs[1][2] == [3, 6, 9]


def test_recorder_complains_about_a_module_outside_the_model():
    net = small_net()
    x, y = batch()
    rec = train.ActivationRecorder({"stranger": nn.Sigmoid()}, x, y)
    with pytest.raises(RuntimeError, match="did not run"):
        rec.record(0, net)
    rec.remove()
    with pytest.raises(ValueError, match="every"):
        train.ActivationRecorder({}, x, y, every=0)


# --------------------------------------------------------------------------- gradient shift


def manual_gradient_shift(net: nn.Sequential, k: int, x, y, lr: float) -> tuple[float, float]:
    """Oracle: flatten all parameters, step the first ``k`` tensors by hand, re-differentiate."""
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    names = [n for n, _ in net.named_parameters()]

    def loss_at(values):
        buffers = {n: b.clone() for n, b in net.named_buffers()}  # BN may update copies only
        out = torch.func.functional_call(net, {**dict(zip(names, values)), **buffers}, (x,))
        return nn.functional.cross_entropy(out, y)

    grads = torch.autograd.grad(loss_at(params), params)
    moved = [(p - lr * g).detach() if i < k else p for i, (p, g) in enumerate(zip(params, grads))]
    moved[k] = moved[k].detach().requires_grad_(True)
    (after,) = torch.autograd.grad(loss_at(moved), [moved[k]])
    g0 = grads[k]
    return (g0 - after).norm().item(), (g0 * after).sum().item() / (g0.norm() * after.norm()).item()


@pytest.mark.parametrize("norm, training", [(None, True), ("bn", True), ("bn", False)])
def test_gradient_shift_matches_a_manual_computation(norm, training):
    net = small_net(norm=norm).train(training)
    x, y = batch()
    layer = [m for m in net if isinstance(m, nn.Linear)][2]
    k = [n for n, _ in net.named_parameters()].index(
        next(n for n, p in net.named_parameters() if p is layer.weight))
    before = state(net)
    got = train.gradient_shift(net, layer, x, y, lr=0.7)
    want = manual_gradient_shift(net, k, x, y, lr=0.7)
    assert got == pytest.approx(want, rel=1e-9)
    assert got[0] > 1e-4
    assert same_state(before, state(net))


def test_gradient_shift_of_the_first_layer_is_zero():
    net = small_net(noisy=True).train()  # noise: both passes must see the same draws
    x, y = batch()
    shift, cos = train.gradient_shift(net, net[1], x, y, lr=1.0)
    assert shift == 0.0 and cos == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not a parameter"):
        train.gradient_shift(net, nn.Linear(2, 2), x, y, lr=1.0)


# --------------------------------------------------------------------------- gradient walk


def test_gradient_walk_on_a_quadratic_matches_closed_form():
    """Least squares: L(w) = mean((Xw - t)^2), gradient g = 2/N X^T(Xw - t), Hessian H = 2/N X^T X.

    Along w - eta g the gradient changes by exactly eta * H g, so the effective beta-smoothness
    is ||H g|| / ||g||, at most the largest eigenvalue of H.
    """
    torch.manual_seed(0)
    n, d = 30, 4
    X, t = torch.randn(n, d, dtype=torch.float64), torch.randn(n, 1, dtype=torch.float64)
    net = nn.Linear(d, 1, bias=False).double()
    w = net.weight.detach().reshape(d, 1).clone()
    etas = [0.01, 0.05, 0.2]
    walk = train.gradient_walk(net, X, t, etas, loss_fn=nn.functional.mse_loss)
    H = 2 / n * X.T @ X
    g = 2 / n * X.T @ (X @ w - t)
    for i, eta in enumerate(etas):
        w_eta = w - eta * g
        assert walk.loss[i] == pytest.approx(((X @ w_eta - t) ** 2).mean().item(), rel=1e-10)
        assert walk.grad_change[i] == pytest.approx(eta * (H @ g).norm().item(), rel=1e-10)
    assert walk.loss0 == pytest.approx(((X @ w - t) ** 2).mean().item(), rel=1e-12)
    assert walk.grad_norm == pytest.approx(g.norm().item(), rel=1e-12)
    assert walk.beta_smoothness == pytest.approx(((H @ g).norm() / g.norm()).item(), rel=1e-9)
    assert walk.beta_smoothness <= torch.linalg.eigvalsh(H).max().item() * (1 + 1e-12)
    losses = np.append(walk.loss, walk.loss0)
    assert walk.loss_range == pytest.approx(losses.max() - losses.min())
    assert torch.equal(net.weight.detach().reshape(d, 1), w)


def test_gradient_walk_sees_the_same_noise_at_every_point():
    net = small_net(noisy=True).train()
    x, y = batch()
    before = state(net)
    walk = train.gradient_walk(net, x, y, [1e-12])
    assert walk.grad_change[0] < 1e-9 * walk.grad_norm  # a tiny step: the same gradient
    assert abs(walk.loss[0] - walk.loss0) < 1e-9
    assert same_state(before, state(net))


# --------------------------------------------------------------------------- NoisyShift


def test_noisy_shift_is_a_per_channel_affine_map_redrawn_every_call():
    torch.manual_seed(0)
    layer = NoisyShift(3, mean_std=1.0, scale_std=0.5).train()
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64)
    y1, y2 = layer(x), layer(x)
    for y in (y1, y2):
        # y = s x + m per channel: the same (s, m) for every sample and position
        s = (y[:, :, 1:, :] - y[:, :, :1, :]) / (x[:, :, 1:, :] - x[:, :, :1, :])
        s_c = s.transpose(0, 1).reshape(3, -1)
        assert torch.allclose(s_c, s_c[:, :1].expand_as(s_c), rtol=1e-9)
        assert (s_c > 0).all()
        m = y - s_c[:, 0].reshape(1, 3, 1, 1) * x
        assert torch.allclose(m, m[:1, :, :1, :1].expand_as(m), atol=1e-12)
    assert not torch.allclose(y1, y2)
    assert torch.equal(layer.eval()(x), x)


def test_noisy_shift_draws_have_the_stated_spread():
    torch.manual_seed(0)
    layer = NoisyShift(2000, mean_std=0.7, scale_std=0.3).train()
    x = torch.stack([torch.zeros(2000), torch.ones(2000)])  # row 0 gives m, row 1 gives s + m
    y = layer(x)
    m, s = y[0], y[1] - y[0]
    assert m.mean().abs() < 0.05 and m.std().item() == pytest.approx(0.7, rel=0.05)
    assert s.log().mean().abs() < 0.03 and s.log().std().item() == pytest.approx(0.3, rel=0.05)


def test_batchnorm_after_noisy_shift_removes_the_noise():
    """BN divides a per-channel affine map out: a shift before BN is invisible after it."""
    torch.manual_seed(0)
    x = torch.randn(32, 4, dtype=torch.float64)
    noisy = NoisyShift(4, mean_std=2.0, scale_std=0.5)
    exact = normalize_batch(noisy(x), eps=0.0)  # eps = 0: the layer (as torch) refuses it
    assert torch.allclose(exact, normalize_batch(x, eps=0.0), atol=1e-10)


def test_noisy_shift_rejects_bad_settings_and_shapes():
    with pytest.raises(ValueError, match=">= 0"):
        NoisyShift(3, mean_std=-1.0)
    with pytest.raises(ValueError, match=r"\(N, 3"):
        NoisyShift(3)(torch.randn(4, 2))
    assert "mean_std=1.0" in repr(NoisyShift(3))


def test_insert_after_shares_the_layers():
    torch.manual_seed(0)
    net = models.mlp([5, 4, 4, 2], activation="relu", norm="bn")
    noisy = models.insert_after(net, BatchNorm, lambda bn: NoisyShift(bn.num_features))
    kinds = [type(m).__name__ for m in noisy]
    assert kinds == ["Flatten", "Linear", "BatchNorm", "NoisyShift", "ReLU",
                     "Linear", "BatchNorm", "NoisyShift", "ReLU", "Linear"]
    assert noisy[1] is net[1] and noisy[6] is net[5]
    x = torch.randn(7, 5)
    assert torch.allclose(noisy.eval()(x), net.eval()(x))


# --------------------------------------------------------------------------- checker: saturation
# Written independently of bnlib.check's catalogue, the way a reader might.


def sat_right(a, low, high):
    saturated = np.logical_or(a < low, a > high)
    return saturated.sum() / saturated.size


def sat_right_torch(a, low, high):
    t = torch.as_tensor(a)
    return ((t < low) | (t > high)).float().mean()


def sat_stub(a, low, high):
    raise NotImplementedError


def sat_low_only(a, low, high):
    return np.mean(a < low)


def sat_high_only(a, low, high):
    return float((a > high).mean())


def sat_non_strict(a, low, high):
    return np.mean((a <= low) | (a >= high))


def sat_percent(a, low, high):
    return 100.0 * np.mean((a < low) | (a > high))


def sat_count(a, low, high):
    return np.count_nonzero((a < low) | (a > high))


def sat_unsaturated(a, low, high):
    return np.mean((a >= low) & (a <= high))


def sat_per_unit(a, low, high):
    return ((a < low) | (a > high)).mean(axis=0)


def sat_per_sample(a, low, high):
    return ((a < low) | (a > high)).mean(axis=1)


def sat_and(a, low, high):
    return np.mean((a < low) & (a > high))


def sat_sigmoid_again(a, low, high):
    out = 1 / (1 + np.exp(-a))
    return np.mean((out < low) | (out > high))


def sat_mean_first(a, low, high):
    m = a.mean(axis=0)
    return np.mean((m < low) | (m > high))


def sat_hard_coded(a, low, high):
    return np.mean((a < 0.05) | (a > 0.95))


def sat_symmetric(a, low, high):
    return np.mean(np.abs(a - 0.5) > high - 0.5)


def sat_in_place(a, low, high):
    a[a > high] = 1.0
    return np.mean((a < low) | (a > high))


SATURATION_MISTAKES = [
    (sat_low_only, "only the entries below `low`"),
    (sat_high_only, "only the entries above `high`"),
    (sat_non_strict, "not strict"),
    (sat_percent, "percentage"),
    (sat_count, "number of saturated entries"),
    (sat_unsaturated, "NOT saturated"),
    (sat_per_unit, "one fraction per unit"),
    (sat_per_sample, "one fraction per sample"),
    (sat_and, "`&` (and)"),
    (sat_sigmoid_again, "already holds sigmoid *outputs*"),
    (sat_mean_first, "averaged each unit over the batch first"),
    (sat_hard_coded, "ignores the `low` and `high` arguments"),
    (sat_symmetric, "symmetric thresholds"),
    (sat_in_place, "changed its input `a` in place"),
]


@pytest.mark.parametrize("fn", [sat_right, sat_right_torch], ids=lambda f: f.__name__)
def test_saturation_checker_accepts_right_answers(fn, capsys):
    assert check.saturation_fraction(fn) is True
    assert "all 6 cases pass" in capsys.readouterr().out


def test_saturation_checker_stub_is_not_done_yet(capsys):
    assert check.saturation_fraction(sat_stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("fn, hint", SATURATION_MISTAKES, ids=lambda v: getattr(v, "__name__", ""))
def test_saturation_checker_names_the_mistake(fn: Callable, hint: str):
    with pytest.raises(AssertionError) as info:
        check.saturation_fraction(fn)
    assert hint in str(info.value)


def test_saturation_checker_reports_an_unknown_mistake_with_the_formula():
    with pytest.raises(AssertionError, match="No mistake this checker knows") as info:
        check.saturation_fraction(lambda a, low, high: np.mean(a > 0.5))
    assert "((a < low) | (a > high)).mean()" in str(info.value)


# --------------------------------------------------------------------------- checker: weights


def _normal_logpdf(x, mean, std):
    return -((x - mean) ** 2) / (2 * std**2) - math.log(std * math.sqrt(2 * math.pi))


def w_right(x, mean_train, std_train, mean_test, std_test):
    return np.exp(_normal_logpdf(x, mean_test, std_test) - _normal_logpdf(x, mean_train, std_train))


def w_right_closed_form(x, mt, st, me, se):
    # log w = log(st/se) - (x-me)^2/(2 se^2) + (x-mt)^2/(2 st^2), expanded differently
    return (st / se) * np.exp(((x - mt) ** 2 * se**2 - (x - me) ** 2 * st**2) / (2 * st**2 * se**2))


def w_stub(x, mean_train, std_train, mean_test, std_test):
    raise NotImplementedError


def _pdf(x, mean, std):
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))


def w_inverted(x, mt, st, me, se):
    return np.exp(_normal_logpdf(x, mt, st) - _normal_logpdf(x, me, se))


def w_no_constant(x, mt, st, me, se):
    return np.exp((x - mt) ** 2 / (2 * st**2) - (x - me) ** 2 / (2 * se**2))


def w_log(x, mt, st, me, se):
    return _normal_logpdf(x, me, se) - _normal_logpdf(x, mt, st)


def w_no_half(x, mt, st, me, se):
    return np.exp(-((x - me) ** 2) / se**2 - np.log(se) + (x - mt) ** 2 / st**2 + np.log(st))


def w_std_as_variance(x, mt, st, me, se):
    def logpdf(v, m, var):
        return -((v - m) ** 2) / (2 * var) - 0.5 * np.log(2 * np.pi * var)
    return np.exp(logpdf(x, me, se) - logpdf(x, mt, st))


def w_swapped_stds(x, mt, st, me, se):
    return np.exp(_normal_logpdf(x, me, st) - _normal_logpdf(x, mt, se))


def w_naive_ratio(x, mt, st, me, se):
    return _pdf(x, me, se) / _pdf(x, mt, st)


def w_sum_to_one(x, mt, st, me, se):
    w = w_right(x, mt, st, me, se)
    return w / np.sum(w)


def w_mean_one(x, mt, st, me, se):
    w = w_right(x, mt, st, me, se)
    return w / w.mean()


def w_difference(x, mt, st, me, se):
    return _pdf(x, me, se) - _pdf(x, mt, st)


WEIGHT_MISTAKES = [
    (w_inverted, "upside down"),
    (w_no_constant, "factor std_train / std_test"),
    (w_log, "log of the ratio"),
    (w_no_half, "lacks the 1/2"),
    (w_std_as_variance, "std where the variance belongs"),
    (w_swapped_stds, "wrong way round"),
    (w_naive_ratio, "underflow"),
    (w_sum_to_one, "sum to 1"),
    (w_mean_one, "mean 1"),
    (w_difference, "subtracted the densities"),
]


@pytest.mark.parametrize("fn", [w_right, w_right_closed_form], ids=lambda f: f.__name__)
def test_weights_checker_accepts_right_answers(fn, capsys):
    assert check.importance_weights(fn) is True
    assert "all 6 cases pass" in capsys.readouterr().out


def test_weights_checker_stub_is_not_done_yet(capsys):
    assert check.importance_weights(w_stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("fn, hint", WEIGHT_MISTAKES, ids=lambda v: getattr(v, "__name__", ""))
def test_weights_checker_names_the_mistake(fn: Callable, hint: str):
    with pytest.raises(AssertionError) as info:
        check.importance_weights(fn)
    assert hint in str(info.value)



# --------------------------------------------------------------------------- shared helpers


def test_sigmoid_and_normal_densities_match_torch():
    z = np.linspace(-30, 30, 101)
    np.testing.assert_allclose(ref.sigmoid(z), torch.sigmoid(torch.tensor(z)).numpy(),
                               rtol=1e-12, atol=1e-300)
    normal = torch.distributions.Normal(torch.tensor(1.5, dtype=torch.float64),
                                        torch.tensor(0.7, dtype=torch.float64))
    x = np.linspace(-3, 6, 37)
    log_p = normal.log_prob(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ref.log_normal_pdf(x, 1.5, 0.7), log_p, rtol=1e-12)
    np.testing.assert_allclose(ref.normal_pdf(x, 1.5, 0.7), np.exp(log_p), rtol=1e-12)
    assert np.isfinite(ref.log_normal_pdf(np.array([1e3]), 0.0, 1.0)).all()  # no underflow


def test_median_drift_and_jitter_by_hand():
    # 3 recordings, percentiles (15, 50, 85), 2 units; medians 0 -> 2 -> 1 and 5 -> 5 -> 5
    q = np.zeros((3, 3, 2))
    q[:, 1, 0], q[:, 1, 1] = [0.0, 2.0, 1.0], [5.0, 5.0, 5.0]
    drift, jitter = train.median_drift_and_jitter(q)
    np.testing.assert_array_equal(drift, [1.0, 0.0])
    np.testing.assert_array_equal(jitter, [1.5, 0.0])
