"""Distribution shift: the corruptions, fingerprints, AdaBN and TENT of ``bnlib.shift``.

Oracles: the blur as a direct 2-D convolution (``torch.nn.functional.conv2d`` with the outer
product of a 1-D Gaussian kernel built here, reflect padding), the noise redrawn from
``np.random.default_rng``, SHA-256 over bytes assembled here, BN statistics and entropies
computed by hand in float64, and a forward pass written out with batch statistics. The
chapter's checkers (``check.adabn_statistics``, ``tent_entropy``, ``tent_parameters``) against
right answers and wrong ones written here.
"""

from __future__ import annotations

import copy
import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checking import failure
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnlib import check, shift
from bnlib import torch_bn as tbn

BN_CLASSES = [nn.BatchNorm1d, tbn.BatchNorm]


@pytest.fixture(autouse=True)
def _single_thread_no_offset(one_torch_thread, monkeypatch):
    monkeypatch.delenv("BNLIB_SEED_OFFSET", raising=False)


def images(seed: int, low: float = 0.0, high: float = 1.0, shape=(6, 1, 16, 13)) -> np.ndarray:
    """Random float32 images, uniform in [low, high]; H != W to catch swapped axes."""
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


# --------------------------------------------------------------------------- corruptions


def test_tables_cover_every_kind_and_are_monotone_in_severity():
    assert tuple(shift.SEVERITY_PARAMS) == shift.CORRUPTIONS
    for kind, params in shift.SEVERITY_PARAMS.items():
        assert len(params) == len(shift.SEVERITIES)
        steps = np.diff(params) * (-1 if kind == "contrast" else 1)
        assert np.all(steps > 0), kind
    assert all(0 < c < 1 for c in shift.SEVERITY_PARAMS["contrast"])


@pytest.mark.parametrize("kind", shift.CORRUPTIONS)
@pytest.mark.parametrize("shape", [(5, 1, 16, 13), (5, 16, 13)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_corrupt_keeps_shape_gives_float32_in_range_and_leaves_input(kind, shape, dtype):
    x = images(0, shape=shape).astype(dtype)
    before = x.copy()
    for severity in shift.SEVERITIES:
        out = shift.corrupt(x, kind, severity, seed=3)
        assert out.shape == shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(x, before)


def test_corrupt_gives_the_same_result_for_either_image_layout():
    x = images(1)
    for kind in shift.CORRUPTIONS:
        np.testing.assert_array_equal(
            shift.corrupt(x[:, 0], kind, 4, seed=2), shift.corrupt(x, kind, 4, seed=2)[:, 0]
        )


@pytest.mark.parametrize("kind", shift.CORRUPTIONS)
def test_corrupt_is_deterministic_for_a_seed(kind):
    x = images(2)
    first, again = shift.corrupt(x, kind, 3, seed=7), shift.corrupt(x, kind, 3, seed=7)
    np.testing.assert_array_equal(first, again)
    other = shift.corrupt(x, kind, 3, seed=8)
    if kind == "gaussian_noise":
        assert np.abs(other - first).mean() > 0.05
    else:  # no randomness: the seed does not matter
        np.testing.assert_array_equal(other, first)


@pytest.mark.parametrize("offset", [0, 2])
def test_gaussian_noise_is_the_seeded_normal_draw_scaled_and_clipped(offset, monkeypatch):
    monkeypatch.setenv("BNLIB_SEED_OFFSET", str(offset))
    x = images(3)
    for severity in shift.SEVERITIES:
        std = shift.SEVERITY_PARAMS["gaussian_noise"][severity - 1]
        z = np.random.default_rng(5 + 1000 * offset).standard_normal(x.shape)
        expected = np.clip(x.astype(np.float64) + std * z, 0, 1)
        np.testing.assert_allclose(shift.corrupt(x, "gaussian_noise", severity, 5), expected,
                                   atol=1e-6)


@pytest.mark.parametrize("kind", ["gaussian_noise", "gaussian_blur", "brightness"])
def test_change_from_the_clean_images_grows_with_severity(kind):
    x = images(4)
    change = [np.abs(shift.corrupt(x, kind, s, seed=1) - x).mean() for s in shift.SEVERITIES]
    assert np.all(np.diff(change) > 0), change


def test_contrast_scales_each_image_std_by_the_factor_and_keeps_its_mean():
    x = images(5)
    mean, std = x.mean(axis=(1, 2, 3)), x.std(axis=(1, 2, 3))
    ratios = []
    for severity in shift.SEVERITIES:
        out = shift.corrupt(x, "contrast", severity)
        factor = shift.SEVERITY_PARAMS["contrast"][severity - 1]
        np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), mean, atol=1e-6)
        ratio = out.std(axis=(1, 2, 3)) / std
        np.testing.assert_allclose(ratio, factor, rtol=1e-5)
        ratios.append(ratio)
    assert np.all(np.diff(ratios, axis=0) < 0)


def test_brightness_adds_the_documented_constant_where_nothing_clips():
    x = images(6, high=0.45)  # x + 0.5 stays below 1
    for severity, constant in zip(shift.SEVERITIES, shift.SEVERITY_PARAMS["brightness"]):
        np.testing.assert_allclose(shift.corrupt(x, "brightness", severity), x + constant,
                                   atol=1e-6)
    np.testing.assert_array_equal(shift.corrupt(np.ones((1, 4, 4)), "brightness", 1), 1.0)


def blur_by_direct_convolution(x: np.ndarray, sigma: float) -> np.ndarray:
    """The documented blur as one 2-D convolution with the outer product of the 1-D kernel."""
    r = math.ceil(3 * sigma)
    k = torch.tensor([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(-r, r + 1)],
                     dtype=torch.float64)
    k = k / k.sum()
    padded = F.pad(torch.from_numpy(x).double(), (r, r, r, r), mode="reflect")
    return F.conv2d(padded, torch.outer(k, k)[None, None]).numpy()


@pytest.mark.parametrize("severity", shift.SEVERITIES)
def test_blur_equals_a_direct_2d_convolution_with_reflect_padding(severity):
    x = images(7)
    sigma = shift.SEVERITY_PARAMS["gaussian_blur"][severity - 1]
    np.testing.assert_allclose(shift.corrupt(x, "gaussian_blur", severity),
                               blur_by_direct_convolution(x, sigma), atol=1e-6)
    flat = np.full((2, 1, 16, 13), 0.3)  # kernel sums to 1: a constant image stays constant
    np.testing.assert_allclose(shift.corrupt(flat, "gaussian_blur", severity), 0.3, atol=1e-6)


def test_corrupted_test_sets_hold_every_pair_as_corrupt_makes_it():
    x = images(8, shape=(3, 16, 13))
    sets = shift.corrupted_test_sets(x, seed=4)
    assert list(sets) == [(k, s) for k in shift.CORRUPTIONS for s in shift.SEVERITIES]
    for (kind, severity), out in sets.items():
        np.testing.assert_array_equal(out, shift.corrupt(x, kind, severity, seed=4))
    some = shift.corrupted_test_sets(x, kinds=["contrast"], severities=[2, 5])
    assert list(some) == [("contrast", 2), ("contrast", 5)]
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        shift.corrupted_test_sets(x, kinds=["contrast", "fog"])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "x, match",
    [
        (np.full((2, 1, 4, 4), 1.5), r"\[0, 1\].*1\.5"),
        (np.full((2, 4, 4), -0.1), r"\[0, 1\].*-0\.1"),
        (np.array([[[0.5, np.nan]]]), "NaN"),
        (np.zeros((2, 4, 4), dtype=np.uint8), "float.*uint8"),
        (np.zeros((2, 16)), r"\(N, 1, H, W\) or \(N, H, W\).*\(2, 16\)"),
        (np.zeros((2, 3, 4, 4)), r"\(N, 1, H, W\).*\(2, 3, 4, 4\)"),
        ([[[0.5]]], "NumPy array.*list"),
    ],
)
def test_corrupt_rejects_images_that_are_not_floats_in_0_1(x, match):
    with pytest.raises(ValueError, match=match):
        shift.corrupt(x, "contrast", 1)


@pytest.mark.parametrize(
    "kind, severity, match",
    [("fog", 1, "unknown corruption 'fog'.*gaussian_noise, gaussian_blur, contrast, brightness"),
     ("contrast", 0, r"unknown severity 0.*\(1, 2, 3, 4, 5\)"),
     ("contrast", 6, "unknown severity 6")],
)
def test_corrupt_rejects_unknown_kinds_and_severities(kind, severity, match):
    with pytest.raises(ValueError, match=match):
        shift.corrupt(images(0), kind, severity)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_sha256_of_shape_and_float32_bytes():
    x = images(9, shape=(2, 3, 4))
    expected = hashlib.sha256(b"float32(2, 3, 4)" + x.astype("<f4").tobytes()).hexdigest()
    assert shift.fingerprint(x) == expected
    assert shift.fingerprint(x.copy()) == expected
    assert shift.fingerprint(x.astype(np.float64)) == expected
    t = np.ascontiguousarray(x.transpose(2, 0, 1))  # non-contiguous views count by value
    assert shift.fingerprint(x.transpose(2, 0, 1)) == shift.fingerprint(t)


def test_fingerprint_changes_with_one_value_or_the_shape():
    x = images(10, shape=(2, 3, 4))
    changed = x.copy()
    changed[1, 2, 3] = np.nextafter(changed[1, 2, 3], np.float32(2))
    assert shift.fingerprint(changed) != shift.fingerprint(x)
    reshaped = x.reshape(4, 3, 2)  # same bytes, other shape
    assert reshaped.tobytes() == x.tobytes()
    assert shift.fingerprint(reshaped) != shift.fingerprint(x)


# --------------------------------------------------------------------------- AdaBN


def mlp(bn_class: type[nn.Module], dropout: float = 0.0, affine: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), bn_class(6, affine=affine), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("bn_class", BN_CLASSES)
def test_adabn_sets_the_running_statistics_to_averages_over_target_batches(bn_class):
    torch.manual_seed(0)
    model = mlp(bn_class)
    for _ in range(3):  # some "source" statistics to be replaced
        model(torch.randn(16, 3, 4, dtype=torch.float64))
    model.eval()
    params = {k: p.clone() for k, p in model.named_parameters()}
    target = [(torch.randn(8, 3, 4, dtype=torch.float64) * 2 + 1, torch.zeros(8))
              for _ in range(5)]
    assert shift.adabn(model, target, num_batches=4) == 4
    with torch.no_grad():
        h = [model[1](model[0](x)).numpy() for x, _ in target[:4]]
    bn = model[2]
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([b.mean(0) for b in h], 0),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(),
                               np.mean([b.var(0, ddof=1) for b in h], 0), rtol=1e-10)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p, params[k], rtol=0, atol=0)
    assert not any(m.training for m in model.modules())


# --------------------------------------------------------------------------- entropy


def test_entropy_matches_the_definition_in_float64():
    logits = torch.from_numpy(np.random.default_rng(11).normal(0, 3, (7, 5)))
    z = logits.numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = -(p * np.log(p)).sum(1).mean()
    np.testing.assert_allclose(shift.entropy(logits).item(), expected, rtol=1e-12)
    np.testing.assert_allclose(shift.entropy(logits.float()).item(), expected, rtol=1e-5)


def test_entropy_of_uniform_logits_is_log_k_and_large_logits_give_no_nan():
    for k in (2, 10):
        assert shift.entropy(torch.full((3, k), 7.0)).item() == pytest.approx(math.log(k))
    logits = torch.tensor([[1e4, 0.0, -1e4], [3e38, -3e38, 0.0]], requires_grad=True)
    h = shift.entropy(logits)
    h.backward()
    assert h.item() == 0.0
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        shift.entropy(torch.zeros(4))


# --------------------------------------------------------------------------- TENT


def trained_looking(bn_class: type[nn.Module], dropout: float = 0.5) -> nn.Sequential:
    """The MLP with BN statistics and affine parameters away from their initial values."""
    torch.manual_seed(1)
    model = mlp(bn_class, dropout)
    with torch.no_grad():
        bn = model[2]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(17)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    return model


def test_tent_parameters_are_the_bn_weights_and_biases_in_order():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), tbn.BatchNorm(4))
    assert shift.tent_parameters(model) == [model[1].weight, model[1].bias,
                                            model[3].weight, model[3].bias]
    with pytest.raises(ValueError, match="'2'.*affine=False"):
        shift.tent_parameters(mlp(nn.BatchNorm1d, affine=False))
    with pytest.raises(ValueError, match="no BN layer"):
        shift.tent_parameters(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize("bn_class", BN_CLASSES)
@pytest.mark.parametrize("train_mode", [False, True])
def test_tent_step_changes_only_bn_affine_parameters_and_restores_modes(bn_class, train_mode):
    model = trained_looking(bn_class).train(train_mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(shift.tent_parameters(model), lr=0.1)
    x = torch.randn(16, 3, 4, dtype=torch.float64)
    shift.tent_step(model, x, optimizer)
    after = model.state_dict()
    for name in ("2.weight", "2.bias"):
        assert not torch.equal(after[name], before[name]), name
    for name in before.keys() - {"2.weight", "2.bias"}:  # incl. running stats and the count
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
    assert all(m.training == train_mode for m in model.modules())
    assert model[2].track_running_stats
    assert all(p.grad is None for p in model.parameters())


def test_tent_step_uses_batch_statistics_without_dropout():
    model = trained_looking(nn.BatchNorm1d).eval()
    x = torch.randn(16, 3, 4, dtype=torch.float64)
    with torch.no_grad():  # the forward pass written out: batch statistics, no dropout
        bn = model[2]
        h = model[1](x.flatten(1))
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps)
        logits = model[5](torch.relu(h * bn.weight + bn.bias))
    p = torch.softmax(logits, 1)
    expected = -(p * p.log()).sum(1).mean()
    optimizer = torch.optim.SGD(shift.tent_parameters(model), lr=0.1)
    torch.testing.assert_close(shift.tent_step(model, x, optimizer), expected)


def test_tent_step_is_deterministic_with_dropout_present():
    model = trained_looking(tbn.BatchNorm, dropout=0.5)
    twin = copy.deepcopy(model)
    x = torch.randn(16, 3, 4, dtype=torch.float64)
    results = []
    for seed, net in ((1, model), (2, twin)):  # different RNG states: dropout would differ
        torch.manual_seed(seed)
        optimizer = torch.optim.SGD(shift.tent_parameters(net), lr=0.1)
        results.append((shift.tent_step(net, x, optimizer), net[2].weight.detach().clone()))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_a_few_tent_steps_lower_the_entropy_on_the_batch():
    model = trained_looking(nn.BatchNorm1d).eval()
    x = torch.randn(32, 3, 4, dtype=torch.float64) * 1.5 + 0.5
    optimizer = torch.optim.SGD(shift.tent_parameters(model), lr=0.05)
    losses = [shift.tent_step(model, x, optimizer).item() for _ in range(6)]
    assert np.all(np.diff(losses) < 0), losses


def test_tent_step_rejects_an_optimizer_holding_other_parameters():
    model = trained_looking(nn.BatchNorm1d)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="BN affine parameters only"):
        shift.tent_step(model, torch.randn(4, 3, 4, dtype=torch.float64), optimizer)


# --------------------------------------------------------------------------- the checkers
# Right answers and wrong ones written here, independently of the catalogues in
# bnlib.check, the way a reader would write them; each wrong one is paired with a piece of
# the hint it must get.


def _channel_axes(batch):
    """BN's axes for one batch (m, C, *spatial): all but the channel axis."""
    return (0, *range(2, batch.ndim))


def _adabn_right(batches):
    means = [b.mean(axis=_channel_axes(b)) for b in batches]
    variances = [b.var(axis=_channel_axes(b), ddof=1) for b in batches]
    return sum(means) / len(means), sum(variances) / len(variances)


def _adabn_torch_default_momentum(batches):
    bn = (nn.BatchNorm1d if batches.ndim == 3 else nn.BatchNorm2d)(batches.shape[2]).double()
    for b in batches:
        bn(torch.from_numpy(b))
    return bn.running_mean.detach(), bn.running_var.detach()


def _adabn_pooled(batches, ddof):
    everything = batches.reshape(-1, *batches.shape[2:])
    axes = _channel_axes(everything)
    return everything.mean(axis=axes), everything.var(axis=axes, ddof=ddof)


def _adabn_per_example(batches):
    axes = tuple(range(1, batches.ndim - 1))
    return (np.mean([b.mean(axis=axes) for b in batches], axis=0),
            np.mean([b.var(axis=axes, ddof=1) for b in batches], axis=0))


def _adabn_factor_m(batches):
    m = batches.shape[1]
    mean, _ = _adabn_right(batches)
    return mean, np.mean([b.var(axis=_channel_axes(b)) * m / (m - 1) for b in batches], axis=0)


WRONG_ADABN = {
    "averages the biased batch variances": lambda batches: (
        _adabn_right(batches)[0],
        np.mean([b.var(axis=_channel_axes(b)) for b in batches], axis=0)),
    "the variance of all K * m values pooled together": lambda b: _adabn_pooled(b, ddof=1),
    "the biased variance of all K * m values pooled": lambda b: _adabn_pooled(b, ddof=0),
    "default momentum=0.1": _adabn_torch_default_momentum,
    "the last batch only": lambda batches: (
        batches[-1].mean(axis=_channel_axes(batches[-1])),
        batches[-1].var(axis=_channel_axes(batches[-1]), ddof=1)),
    "per example (over the channels": _adabn_per_example,
    "are per position, shape (C, H, W)": lambda batches: (
        batches.mean(axis=(0, 1)), batches.var(axis=1, ddof=1).mean(axis=0)),
    "unbiased factor is m / (m - 1)": _adabn_factor_m,
    "the variance of the batch means": lambda batches: (
        _adabn_right(batches)[0],
        np.var([b.mean(axis=_channel_axes(b)) for b in batches], axis=0)),
}


def test_adabn_statistics_checker_accepts_right(capsys):
    assert check.adabn_statistics(_adabn_right) is True
    assert "adabn_statistics: all 6 cases pass" in capsys.readouterr().out


def test_adabn_statistics_checker_stub(capsys):
    def stub(batches):
        raise NotImplementedError

    assert check.adabn_statistics(stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(WRONG_ADABN))
def test_adabn_statistics_checker_names_the_mistake(hint):
    assert hint in failure(check.adabn_statistics, WRONG_ADABN[hint])


def test_adabn_statistics_checker_wants_a_pair():
    message = failure(check.adabn_statistics, lambda batches: _adabn_right(batches)[1])
    assert "expected a tuple (running_mean, running_var)" in message


def _softmax_naive(z, axis=1):
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _entropy_right(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-(np.exp(log_p) * log_p).sum(axis=1).mean())


WRONG_ENTROPY = {  # naive softmax, as a first try would be: each is also NaN on huge logits
    "sum over the batch": lambda z: -(_softmax_naive(z) * np.log(_softmax_naive(z))).sum(),
    "one entropy per example": lambda z: -(_softmax_naive(z)
                                           * np.log(_softmax_naive(z))).sum(axis=1),
    "in bits (log base 2)": lambda z: -(_softmax_naive(z) * np.log2(_softmax_naive(z)))
    .sum(axis=1).mean(),
    "the negative of the entropy": lambda z: (_softmax_naive(z) * np.log(_softmax_naive(z)))
    .sum(axis=1).mean(),
    "normalizes over the batch (axis 0)": lambda z: -(
        _softmax_naive(z, axis=0) * np.log(_softmax_naive(z, axis=0))).sum(axis=1).mean(),
    "entropy of the mean prediction": lambda z: -(
        _softmax_naive(z).mean(0) * np.log(_softmax_naive(z).mean(0))).sum(),
    "averaged -p_k log p_k over the classes": lambda z: -(
        _softmax_naive(z) * np.log(_softmax_naive(z))).mean(),
    "cross-entropy against the predicted class": lambda z: -np.log(
        _softmax_naive(z).max(axis=1)).mean(),
}


def test_tent_entropy_checker_accepts_right(capsys):
    assert check.tent_entropy(_entropy_right) is True
    assert "tent_entropy: all 6 cases pass" in capsys.readouterr().out
    by_torch = lambda z: torch.distributions.Categorical(  # noqa: E731
        logits=torch.from_numpy(z)).entropy().mean()
    assert check.tent_entropy(by_torch) is True


def test_tent_entropy_checker_stub(capsys):
    def stub(logits):
        raise NotImplementedError

    assert check.tent_entropy(stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(WRONG_ENTROPY))
def test_tent_entropy_checker_names_the_mistake(hint):
    assert hint in failure(check.tent_entropy, WRONG_ENTROPY[hint])


@pytest.mark.parametrize("subtract_max", [False, True])
def test_tent_entropy_checker_explains_the_overflow_of_a_naive_softmax(subtract_max):
    def naive(logits):
        z = logits - logits.max(axis=1, keepdims=True) if subtract_max else logits
        p = _softmax_naive(z)
        return -(p * np.log(p)).sum(axis=1).mean()

    message = failure(check.tent_entropy, naive)
    assert "right on every case but the one with huge logits" in message
    assert "z - logsumexp(z)" in message


def _tent_right(model):
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    return [m.bias for m in bns] + [m.weight for m in bns]  # any order


WRONG_TENT = {
    "every parameter of the model": lambda model: [p for _, p in model.named_parameters()],
    "LayerNorm's included": lambda model: [
        p for m in model.modules() if isinstance(m, (_BatchNorm, nn.LayerNorm))
        for p in m.parameters()],
    "BN weights (the scales, gamma) but not the biases": lambda model: [
        m.weight for m in model.modules() if isinstance(m, _BatchNorm)],
    "BN biases (the shifts, beta) but not the weights": lambda model: [
        m.bias for m in model.modules() if isinstance(m, _BatchNorm)],
    "buffers are not Parameters": lambda model: [
        b for m in model.modules() if isinstance(m, _BatchNorm) for b in m.buffers()],
    "the last layer only": lambda model: list(model[-1].parameters()),
    "misses the book's own BatchNorm": lambda model: [
        p for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
        for p in m.parameters()],
    "not copies": lambda model: [p.data for p in _tent_right(model)],
    "(name, parameter) pairs": lambda model: list(model.named_parameters()),
    "returned a set": lambda model: set(_tent_right(model)),
    "more than once": lambda model: _tent_right(model) * 2,
}


def test_tent_parameters_checker_accepts_right(capsys):
    assert check.tent_parameters(_tent_right) is True
    assert "tent_parameters: all 3 models pass" in capsys.readouterr().out
    as_generator = lambda model: (p for m in model.modules()  # noqa: E731
                                  if isinstance(m, _BatchNorm) for p in m.parameters())
    assert check.tent_parameters(as_generator) is True


def test_tent_parameters_checker_stub(capsys):
    def stub(model):
        raise NotImplementedError

    assert check.tent_parameters(stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(WRONG_TENT))
def test_tent_parameters_checker_names_the_mistake(hint):
    assert hint in failure(check.tent_parameters, WRONG_TENT[hint])


def test_tent_parameters_checker_lists_what_is_missing_and_extra():
    def with_first_conv(model):
        return _tent_right(model) + [next(model.parameters())]

    message = failure(check.tent_parameters, with_first_conv)
    assert "No mistake this checker knows matches" in message
    assert "your list also holds 0.weight (Conv2d)" in message

    def first_bn_only(model):
        bn = next(m for m in model.modules() if isinstance(m, _BatchNorm))
        return [bn.weight, bn.bias]

    message = failure(check.tent_parameters, first_bn_only)
    assert "your list lacks 4.bias (BatchNorm2d), 4.weight (BatchNorm2d)" in message


def test_tent_parameters_checker_leaves_the_global_generator_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check.tent_parameters(_tent_right)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
