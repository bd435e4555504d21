"""Regularization chapter: ``reference.dropout_forward`` and the ``dropout_forward`` checker.

Oracles: the expectations of inverted dropout (zero fraction p, kept values x / (1 - p),
E[y] = x, Var[y] = x^2 p / (1 - p)) and the same statistics of ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnlib import check
from bnlib import reference as ref

# --------------------------------------------------------------------------- dropout_forward


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics_match_theory_and_torch(p):
    n = 200_000
    x = np.full(n, 1.5)
    y = ref.dropout_forward(x, p, True, np.random.default_rng(0))
    yt = F.dropout(torch.full((n,), 1.5, dtype=torch.float64), p, training=True).numpy()
    tol = 5 * np.sqrt(p * (1 - p) / n)  # five binomial standard deviations
    for out in (y, yt):
        assert abs(np.mean(out == 0) - p) < tol
        np.testing.assert_allclose(np.unique(out[out != 0]), [1.5 / (1 - p)], rtol=1e-12)
        assert abs(out.mean() - 1.5) < 5 * 1.5 * np.sqrt(p / (1 - p) / n)
        assert abs(out.var() / (1.5**2 * p / (1 - p)) - 1) < 0.05
    assert abs(np.mean(y == 0) - np.mean(yt == 0)) < 2 * tol


def test_dropout_eval_is_identity_like_torch():
    x = np.random.default_rng(1).normal(size=(7, 5))
    y = ref.dropout_forward(x, 0.5, False, np.random.default_rng(0))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(F.dropout(torch.from_numpy(x), 0.5, training=False).numpy(), x)


def test_dropout_mask_is_per_entry_seeded_and_new_each_call():
    x = np.ones((50, 40))
    a = ref.dropout_forward(x, 0.5, True, np.random.default_rng(3))
    b = ref.dropout_forward(x, 0.5, True, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)  # the mask comes from rng alone
    rng = np.random.default_rng(3)
    c, d = ref.dropout_forward(x, 0.5, True, rng), ref.dropout_forward(x, 0.5, True, rng)
    assert not np.array_equal(c, d)
    assert len({tuple(row) for row in (a != 0)}) > 45  # rows have their own masks


def test_dropout_keeps_dtype_and_input_and_p_zero_is_identity():
    x = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    before = x.copy()
    y = ref.dropout_forward(x, 0.3, True, np.random.default_rng(0))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(ref.dropout_forward(x, 0.0, True, np.random.default_rng(0)), x)


def test_ensemble_of_masks_through_a_linear_layer_is_eval_output():
    """Through a linear map the average over masks is exactly the eval-mode output."""
    rng = np.random.default_rng(4)
    x, w = rng.normal(size=(3, 20)), rng.normal(size=(20, 2))
    masks = [ref.dropout_forward(x, 0.4, True, rng) @ w for _ in range(20_000)]
    np.testing.assert_allclose(np.mean(masks, axis=0), x @ w, atol=0.1)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match="p must be in"):
        ref.dropout_forward(np.ones(3), p, True, np.random.default_rng(0))


def test_dropout_mask_is_the_forwards_mask():
    x = np.random.default_rng(1).normal(size=(30, 8))
    keep = ref.dropout_mask(x.shape, 0.3, np.random.default_rng(5))
    y = ref.dropout_forward(x, 0.3, True, np.random.default_rng(5))
    np.testing.assert_array_equal(y, x * keep / 0.7)
    assert keep.dtype == bool


@pytest.mark.parametrize("p", [0.0, 0.25, 0.6])
def test_dropout_backward_matches_numeric_gradient_and_autograd(p):
    rng = np.random.default_rng(11)
    x, dy = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    keep = ref.dropout_mask(x.shape, p, rng)
    dx = ref.dropout_backward(dy, keep, p)
    numeric = ref.numeric_gradient(lambda: x * keep / (1 - p), x, dy)
    assert ref.relative_error(dx, numeric) < 1e-8
    xt = torch.tensor(x, requires_grad=True)
    (torch.tensor(dy) * (xt * torch.tensor(keep) / (1 - p))).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12)
    assert np.all(dx[~keep] == 0)


def test_dropout_backward_rejects_a_mask_of_another_shape_and_bad_p():
    with pytest.raises(ValueError, match="keep has shape"):
        ref.dropout_backward(np.ones((3, 2)), np.ones((2, 3), bool), 0.5)
    with pytest.raises(ValueError, match="p must be in"):
        ref.dropout_backward(np.ones(3), np.ones(3, bool), 1.0)


def _backward_fresh_mask(dy, keep, p):  # a reader who draws a new mask in the backward
    return dy * (np.random.default_rng().random(dy.shape) >= p) / (1 - p)


def _backward_from_dy(dy, keep, p):  # a reader who forgot the mask
    return dy / (1 - p)


def test_backward_checker_accepts_the_reference_and_names_the_usual_mistakes(capsys):
    assert check.dropout_backward(ref.dropout_backward) is True
    with pytest.raises(AssertionError, match="you drew a new mask in the backward"):
        check.dropout_backward(_backward_fresh_mask)
    with pytest.raises(AssertionError, match="passes the gradient to every unit"):
        check.dropout_backward(_backward_from_dy)
    with pytest.raises(AssertionError, match="forgot the scale"):
        check.dropout_backward(lambda dy, keep, p: dy * keep)


def test_backward_checker_reports_an_untouched_stub(capsys):
    def stub(dy, keep, p):
        raise NotImplementedError

    assert check.dropout_backward(stub) is False
    assert "not done yet" in capsys.readouterr().out


# --------------------------------------------------------------------------- the checker
# Wrong implementations written independently of bnlib, each with the hint it must get.


def _right_loop(x, p, training, rng):
    """Right, written differently: a binomial mask and torch-free NumPy."""
    if not training:
        return x
    mask = rng.binomial(1, 1 - p, size=x.shape)
    return x * mask / (1 - p)


def _right_torch(x, p, training, rng):
    """Right, returning a float32 torch tensor."""
    mask = torch.from_numpy(rng.random(x.shape) >= p) if training else None
    t = torch.from_numpy(x).float()
    return t * mask / (1 - p) if training else t


def _no_rescale(x, p, training, rng):
    return x * (rng.random(x.shape) >= p) if training else x


def _drop_in_eval(x, p, training, rng):
    return x * (rng.random(x.shape) >= p) / (1 - p)


def _p_is_keep(x, p, training, rng):
    return x * (rng.random(x.shape) < p) / p if training else x


def _shared_mask(x, p, training, rng):
    return x * (rng.random(x.shape[1:]) >= p) / (1 - p) if training else x


def _seed_style_eval_scaling(x, p, training, rng):
    return x * (rng.random(x.shape) >= p) / (1 - p) if training else x * (1 - p)


def _fixed_mask(x, p, training, rng):
    if not training:
        return x
    return x * (np.random.default_rng(0).random(x.shape) >= p) / (1 - p)


def _threshold_wrong_way(x, p, training, rng):
    return x * (rng.random(x.shape) < p) / (1 - p) if training else x


def _global_rng(x, p, training, rng):
    return x * (np.random.random(x.shape) >= p) / (1 - p) if training else x  # noqa: NPY002


def _whole_rows(x, p, training, rng):
    if not training:
        return x
    keep = rng.random((x.shape[0],) + (1,) * (x.ndim - 1)) >= p
    return x * keep / (1 - p)


def _times_keep_prob(x, p, training, rng):
    return x * (rng.random(x.shape) >= p) * (1 - p) if training else x


def _divide_by_p(x, p, training, rng):
    return x * (rng.random(x.shape) >= p) / p if training else x


def _eval_divides(x, p, training, rng):
    return x * (rng.random(x.shape) >= p) / (1 - p) if training else x / (1 - p)


def _in_place(x, p, training, rng):
    if training:
        x *= (rng.random(x.shape) >= p) / (1 - p)
    return x


def _fixed_half(x, p, training, rng):
    return x * (rng.random(x.shape) >= 0.5) / (1 - p) if training else x


def _two_d_only(x, p, training, rng):
    return x * (rng.random((x.shape[0], x.shape[1])) >= p) / (1 - p) if training else x


WRONG = [
    (_no_rescale, "not rescaled"),
    (_drop_in_eval, "drop units in evaluation"),
    (_p_is_keep, "probability to KEEP"),
    (_shared_mask, "one mask shared across the batch"),
    (_seed_style_eval_scaling, "multiplied x by (1 - p)"),
    (_fixed_mask, "same mask"),
    (_threshold_wrong_way, "below p"),
    (_global_rng, "does not come from the `rng` argument"),
    (_whole_rows, "drop whole examples"),
    (_times_keep_prob, "DIVIDES them by"),
    (_divide_by_p, "divided the kept units by p"),
    (_eval_divides, "in evaluation you divided"),
    (_in_place, "changed its input `x` in place"),
    (_fixed_half, "expected about p"),
    (_two_d_only, "shape"),
]


@pytest.mark.parametrize("fn", [ref.dropout_forward, _right_loop, _right_torch])
def test_checker_accepts_right_answers(fn, capsys):
    assert check.dropout_forward(fn) is True
    assert "pass" in capsys.readouterr().out


def test_checker_reports_an_untouched_stub(capsys):
    def stub(x, p, training, rng):
        raise NotImplementedError

    assert check.dropout_forward(stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize("fn, hint", WRONG, ids=[f.__name__ for f, _ in WRONG])
def test_checker_names_the_mistake(fn, hint):
    with pytest.raises(AssertionError, match="dropout_forward") as err:
        check.dropout_forward(fn)
    assert hint in str(err.value), str(err.value)


def test_checker_reports_exceptions_and_none():
    def crashes(x, p, training, rng):
        return x @ x

    def returns_none(x, p, training, rng):
        x * 2

    with pytest.raises(AssertionError, match="raised ValueError"):
        check.dropout_forward(crashes)
    with pytest.raises(AssertionError, match="returned None"):
        check.dropout_forward(returns_none)


# --------------------------------------------------------------------------- plots.value_scatter


def test_value_scatter_shares_one_colour_scale():
    import matplotlib

    matplotlib.use("Agg")
    from bnlib import plots

    fig, ax = plots.subplots()
    points = {"a": np.array([[0.0, 1.0], [1.0, 2.0]]), "b": np.array([[2.0, 0.0]])}
    plots.value_scatter(ax, points, {"a": np.array([0.1, 0.5]), "b": np.array([0.9])},
                        xlabel="x", ylabel="y", value_label="accuracy")
    first, second = ax.collections[:2]
    assert first.norm.vmin == second.norm.vmin == 0.1
    assert first.norm.vmax == second.norm.vmax == 0.9
    assert ax.get_xlabel() == "x" and len(fig.axes) == 2  # the plot and its colour bar
    matplotlib.pyplot.close(fig)
