"""Running statistics: the EMA update and its two conventions, PreciseBN recalibration, frozen
BN statistics, evaluation in train mode, and the ``running_stats_update`` checker.

Oracles: ``torch.nn.BatchNorm1d``'s own buffers, and statistics computed directly in float64
from the inputs each BN layer receives (captured with forward hooks).
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

from bnlib import check, inference, models, train
from bnlib import reference as ref
from bnlib import torch_bn as tbn

# --------------------------------------------------------------------------- ema_update


@given(
    momentum=st.floats(0.0, 1.0),
    running=st.floats(-10, 10),
    batch=st.floats(-10, 10),
)
def test_pytorch_momentum_m_is_keras_momentum_one_minus_m(momentum, running, batch):
    r, b = np.array([running]), np.array([batch])
    torch_style = ref.ema_update(r, b, momentum)
    keras_style = ref.ema_update(r, b, 1.0 - momentum, convention="keras")
    np.testing.assert_allclose(torch_style, keras_style, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(torch_style, (1 - momentum) * r + momentum * b, atol=1e-12)


def test_ema_update_returns_a_new_array():
    running = np.array([1.0, 2.0])
    out = ref.ema_update(running, np.array([3.0, 5.0]), 0.25)
    np.testing.assert_allclose(out, [1.5, 2.75])
    np.testing.assert_array_equal(running, [1.0, 2.0])


def test_ema_update_keras_default_weighs_the_old_value():
    out = ref.ema_update(np.array([0.0]), np.array([1.0]), 0.99, convention="keras")
    np.testing.assert_allclose(out, [0.01])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"momentum": 1.5}, "momentum"), ({"momentum": -0.1}, "momentum"),
     ({"momentum": 0.1, "convention": "tensorflow"}, "convention")],
)
def test_ema_update_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ref.ema_update(np.zeros(2), np.ones(2), **kwargs)


@pytest.mark.parametrize("momentum", [0.1, 0.01, 0.7])
def test_ema_update_reproduces_torch_running_buffers(momentum):
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4, momentum=momentum, dtype=torch.float64)
    mean, var = np.zeros(4), np.ones(4)
    for _ in range(25):
        x = torch.randn(8, 4, dtype=torch.float64) * 2 + 1
        bn(x)
        xn = x.numpy()
        mean = ref.ema_update(mean, xn.mean(0), momentum)
        var = ref.ema_update(var, xn.var(0, ddof=1), momentum)
    np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-12)


# --------------------------------------------------------------------------- precise_bn


def mixed_mlp() -> nn.Sequential:
    """One bnlib BatchNorm and one torch BatchNorm1d, in float64."""
    return nn.Sequential(
        nn.Linear(6, 5), tbn.BatchNorm(5, momentum=0.3), nn.ReLU(),
        nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3),
    ).double()


def capture_bn_inputs(model: nn.Module, batches: list[torch.Tensor]) -> list[list[np.ndarray]]:
    """The input each BN layer receives, per batch, in train mode (statistics independent)."""
    twin = copy.deepcopy(model).train()
    layers = inference.bn_layers(twin)
    seen: list[list[np.ndarray]] = [[] for _ in layers]
    hooks = [
        bn.register_forward_pre_hook(lambda m, args, i=i: seen[i].append(args[0].numpy().copy()))
        for i, bn in enumerate(layers)
    ]
    with torch.no_grad():
        for x in batches:
            twin(x)
    for h in hooks:
        h.remove()
    return seen


def oracle_stats(inputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of batch means and mean of unbiased batch variances, per channel (axis 1)."""
    means, variances = [], []
    for a in inputs:
        axes = (0, *range(2, a.ndim))
        means.append(a.mean(axis=axes))
        variances.append(a.var(axis=axes, ddof=1))
    return np.mean(means, axis=0), np.mean(variances, axis=0)


def make_batches(n: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1 for _ in range(n)]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_precise_bn_gives_the_mean_batch_mean_and_unbiased_mean_variance():
    torch.manual_seed(0)
    model = mixed_mlp()
    batches = make_batches(12, (10, 6))
    model.train()
    for x in make_batches(5, (10, 6), seed=1):  # give the EMA buffers some history
        model(x)
    inputs = capture_bn_inputs(model, batches)
    assert inference.precise_bn(model, batches) == 12
    for bn, seen in zip(inference.bn_layers(model), inputs, strict=True):
        mean, var = oracle_stats(seen)
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-10)
        assert int(bn.num_batches_tracked) == 12
    # Equal batch sizes: the running mean is the exact mean over every example seen, and the
    # running variance is m/(m-1) times the average batch variance (Algorithm 2).
    first = np.concatenate(inputs[0])
    np.testing.assert_allclose(inference.bn_layers(model)[0].running_mean.numpy(), first.mean(0),
                               rtol=1e-10, atol=1e-12)
    biased = np.mean([a.var(0) for a in inputs[0]], axis=0)
    np.testing.assert_allclose(inference.bn_layers(model)[0].running_var.numpy(), 10 / 9 * biased,
                               rtol=1e-10)


def test_precise_bn_on_a_cnn_uses_per_channel_statistics():
    torch.manual_seed(0)
    model = models.cnn(channels=(3, 4), norm="torch.nn").double()
    batches = make_batches(4, (6, 1, 28, 28))
    inputs = capture_bn_inputs(model, batches)
    inference.precise_bn(model, batches)
    for bn, seen in zip(inference.bn_layers(model), inputs, strict=True):
        mean, var = oracle_stats(seen)
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-9)


def test_precise_bn_leaves_weights_momentum_and_modes_as_they_were():
    torch.manual_seed(0)
    model = mixed_mlp().eval()
    model[4].train()  # a mixed state must survive too
    params = {k: v.clone() for k, v in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    inference.precise_bn(model, make_batches(3, (10, 6)))
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
        assert v.grad is None
    assert [m.training for m in model.modules()] == modes
    assert [bn.momentum for bn in inference.bn_layers(model)] == [0.3, 0.1]


def test_precise_bn_takes_the_first_num_batches_and_accepts_tuples():
    torch.manual_seed(0)
    model = mixed_mlp()
    batches = make_batches(10, (8, 6))
    inputs = capture_bn_inputs(model, batches[:4])
    used = inference.precise_bn(model, ((x, torch.zeros(8)) for x in batches), num_batches=4)
    assert used == 4
    mean, var = oracle_stats(inputs[1])
    np.testing.assert_allclose(inference.bn_layers(model)[1].running_mean.numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(inference.bn_layers(model)[1].running_var.numpy(), var, rtol=1e-10)


@pytest.mark.parametrize(
    "batches, match",
    [([], "no batches"), ([torch.zeros(4, 6).double(), torch.zeros(4, 7).double()], "shape")],
    ids=["empty", "bad batch midway"],
)
def test_precise_bn_failure_leaves_the_running_statistics_untouched(batches, match):
    torch.manual_seed(0)
    model = mixed_mlp().train()
    model(make_batches(1, (10, 6))[0])
    before = state(model)
    with pytest.raises((ValueError, RuntimeError), match=match):
        inference.precise_bn(model, batches)
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [bn.momentum for bn in inference.bn_layers(model)] == [0.3, 0.1]
    assert model.training


def test_precise_bn_rejects_a_model_without_bn_and_a_bad_count():
    with pytest.raises(ValueError, match="no BN layer"):
        inference.precise_bn(nn.Sequential(nn.Linear(2, 2)), [torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="num_batches"):
        inference.precise_bn(mixed_mlp(), make_batches(2, (4, 6)), num_batches=0)


def test_bn_layers_finds_both_kinds_and_skips_untracked():
    model = nn.Sequential(tbn.BatchNorm(3), nn.BatchNorm2d(3), nn.BatchNorm1d(3,
                          track_running_stats=False), nn.LayerNorm(3))
    assert inference.bn_layers(model) == [model[0], model[1]]


# --------------------------------------------------------------------------- frozen_bn_stats


def test_frozen_bn_stats_normalizes_with_running_stats_even_in_train_mode():
    torch.manual_seed(0)
    model = mixed_mlp()
    model.train()
    for x in make_batches(3, (10, 6), seed=1):
        model(x)
    before = state(model)
    x = make_batches(1, (10, 6), seed=2)[0]
    expected = copy.deepcopy(model).eval()(x)
    with inference.frozen_bn_stats(model) as m:
        assert m is model
        model.train()  # what a training loop does
        out = model(x)
        out.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(bn.weight.grad is not None for bn in inference.bn_layers(model))


def test_frozen_bn_stats_restores_modes_and_removes_its_hooks():
    model = mixed_mlp().train()
    with inference.frozen_bn_stats(model):
        model(make_batches(1, (10, 6))[0])
    assert all(bn.training for bn in inference.bn_layers(model))
    assert all(not bn._forward_pre_hooks for bn in inference.bn_layers(model))
    tracked = [int(bn.num_batches_tracked) for bn in inference.bn_layers(model)]
    model(make_batches(1, (10, 6))[0])
    after = [int(bn.num_batches_tracked) for bn in inference.bn_layers(model)]
    assert after == [t + 1 for t in tracked]


def test_frozen_bn_stats_works_with_fit():
    torch.manual_seed(0)
    model = models.mlp([6, 5, 3], norm="bn")
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    y = np.arange(40) % 3
    before = {k: v.clone() for k, v in model.named_buffers()}
    with inference.frozen_bn_stats(model):
        train.fit(model, x, y, steps=5, batch_size=10, progress=False, device=torch.device("cpu"))
    assert all(torch.equal(v, before[k]) for k, v in model.named_buffers())


# --------------------------------------------------------------------------- evaluate_in_train_mode


def test_evaluate_in_train_mode_uses_each_batch_statistics_and_changes_nothing():
    torch.manual_seed(0)
    model = models.mlp([6, 8, 3], norm="torch.nn").eval()
    x = torch.randn(12, 6)
    y = torch.arange(12) % 3
    before = state(model)
    acc = train.evaluate_in_train_mode(model, x, y, batch_size=4)
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training
    # Oracle: a functional forward pass with batch statistics per chunk of 4.
    lin1, bn, lin2 = model[1], model[2], model[4]
    correct = 0
    for i in range(0, 12, 4):
        h = lin1(x[i:i + 4])
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
        correct += (lin2(torch.relu(h)).argmax(1) == y[i:i + 4]).sum().item()
    assert acc == correct / 12


def test_evaluate_in_train_mode_with_one_example_raises_like_pytorch():
    model = models.mlp([6, 8, 3], norm="torch.nn")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        train.evaluate_in_train_mode(model, torch.randn(3, 6), torch.zeros(3), batch_size=1)


# --------------------------------------------------------------------------- the checker
# Written independently of the catalogue in bnlib.check, the way a reader might.


def right(running_mean, running_var, x, momentum):
    n = x.shape[0]
    mu = x.sum(axis=0) / n
    var = ((x - mu) ** 2).sum(axis=0) / (n - 1)
    return (running_mean + momentum * (mu - running_mean),
            running_var + momentum * (var - running_var))


def right_torch(running_mean, running_var, x, momentum):
    """Let torch.nn.BatchNorm1d do it."""
    bn = nn.BatchNorm1d(x.shape[1], momentum=momentum, dtype=torch.float64)
    bn.running_mean.copy_(torch.from_numpy(running_mean))
    bn.running_var.copy_(torch.from_numpy(running_var))
    bn(torch.from_numpy(x))
    return bn.running_mean, bn.running_var


def stub(running_mean, running_var, x, momentum):
    raise NotImplementedError


def keras_convention(running_mean, running_var, x, momentum):
    return (momentum * running_mean + (1 - momentum) * x.mean(0),
            momentum * running_var + (1 - momentum) * x.var(0, ddof=1))


def biased_variance(running_mean, running_var, x, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(0),
            (1 - momentum) * running_var + momentum * np.var(x, axis=0))


def running_std(running_mean, running_var, x, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(0),
            (1 - momentum) * running_var + momentum * x.std(0, ddof=1))


def axis_one(running_mean, running_var, x, momentum):
    return ((1 - momentum) * running_mean + momentum * x.mean(1),
            (1 - momentum) * running_var + momentum * x.var(1, ddof=1))


def in_place(running_mean, running_var, x, momentum):
    running_mean *= 1 - momentum
    running_mean += momentum * x.mean(0)
    running_var *= 1 - momentum
    running_var += momentum * x.var(0, ddof=1)
    return running_mean, running_var


def mean_only(running_mean, running_var, x, momentum):
    return (1 - momentum) * running_mean + momentum * x.mean(0), x.var(0, ddof=1)


def batch_stats_only(running_mean, running_var, x, momentum):
    return x.mean(0), x.var(0, ddof=1)


def swapped(running_mean, running_var, x, momentum):
    new_mean, new_var = right(running_mean, running_var, x, momentum)
    return new_var, new_mean


def var_not_updated(running_mean, running_var, x, momentum):
    return (1 - momentum) * running_mean + momentum * x.mean(0), running_var


def hard_coded_momentum(running_mean, running_var, x, momentum):
    return right(running_mean, running_var, x, 0.1)


def seed_blog_momentum(running_mean, running_var, x, momentum):
    """momentum=0.9 weighing the old value, as in the Korean blog post: PyTorch's 0.1."""
    return keras_convention(running_mean, running_var, x, 0.9)


MISTAKES = [
    (keras_convention, "Keras's convention"),
    (biased_variance, "averages the biased batch variance"),
    (running_std, "not standard deviations"),
    (axis_one, "over axis 1"),
    (in_place, "changed its input `running_mean` in place"),
    (mean_only, "applied to the mean only"),
    (batch_stats_only, "batch statistics themselves"),
    (swapped, "new_mean and new_var are swapped"),
    (var_not_updated, "running_var unchanged"),
    (hard_coded_momentum, "ignores the momentum argument and behaves as if momentum=0.1"),
    (seed_blog_momentum, "ignores the momentum argument and behaves as if momentum=0.1"),
]


@pytest.mark.parametrize("fn", [right, right_torch], ids=["numpy", "torch"])
def test_right_answer_passes(fn, capsys):
    assert check.running_stats_update(fn) is True
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "running_stats_update: all" in out and "✓" in out


def test_stub_is_not_done_yet(capsys):
    assert check.running_stats_update(stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("fn, hint", MISTAKES, ids=[fn.__name__ for fn, _ in MISTAKES])
def test_mistake_is_named(fn, hint):
    message = failure(check.running_stats_update, fn)
    assert hint in message
    assert "No mistake this checker knows" not in message


def test_unknown_mistake_quotes_the_formula():
    def off(running_mean, running_var, x, momentum):
        new_mean, new_var = right(running_mean, running_var, x, momentum)
        return new_mean + 0.5, new_var

    message = failure(check.running_stats_update, off)
    assert "new_mean is wrong in 7 of 7 cases" in message and "ddof=1" in message
