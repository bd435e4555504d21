"""The feature-scaling chapter's library code: the scalers, gradient descent on least squares,
its closed-form step count, and the ``standardize`` exercise checker.

Oracles: numbers worked out by hand, Python's ``statistics`` module (exact rational
arithmetic inside), ``torch.nn.functional.batch_norm``, torch autograd, and plain iteration.
The checker's wrong implementations are written here, independently of its catalogue.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from checking import failure
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bnlib import check, scaling

# --------------------------------------------------------------------------- scalers: by hand


def test_standardize_and_min_max_by_hand():
    x_train = np.array([[1.0, 10.0], [3.0, 30.0]])  # means (2, 20), stds (1, 10)
    x_test = np.array([[2.0, 50.0], [0.0, 20.0]])
    z_train, z_test = scaling.standardize(x_train, x_test)
    np.testing.assert_array_equal(z_train, [[-1.0, -1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(z_test, [[0.0, 3.0], [-2.0, 0.0]])
    m_train, m_test = scaling.min_max_scale(x_train, x_test)
    np.testing.assert_array_equal(m_train, [[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(m_test, [[0.5, 2.0], [-0.5, 0.5]])


def test_without_a_test_set_a_single_array_comes_back():
    x = np.array([[1.0, 4.0], [2.0, 6.0], [6.0, 8.0]])
    assert isinstance(scaling.standardize(x), np.ndarray)
    assert isinstance(scaling.min_max_scale(x), np.ndarray)
    np.testing.assert_array_equal(scaling.min_max_scale(x), [[0.0, 0.0], [0.2, 0.5], [1.0, 1.0]])


def test_eps_goes_inside_the_square_root():
    x = np.array([[0.0], [2.0]])  # mean 1, biased variance 1
    np.testing.assert_allclose(scaling.standardize(x, eps=3.0), [[-0.5], [0.5]], rtol=1e-15)


# --------------------------------------------------------------------------- scalers: oracles

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def tables(draw, min_rows=2):
    """(x_train (N, D), x_test (M, D)) with no constant training feature and large offsets."""
    n = draw(st.integers(min_rows, 12))
    d = draw(st.integers(1, 5))
    m = draw(st.integers(0, 6))
    x_train = draw(hnp.arrays(np.float64, (n, d), elements=finite))
    offset = draw(hnp.arrays(np.float64, (d,), elements=st.sampled_from([0.0, 1e4, -1e6])))
    x_test = draw(hnp.arrays(np.float64, (m, d), elements=finite))
    spread = x_train.max(axis=0) - x_train.min(axis=0)
    # A spread tiny next to the offset would leave the feature constant once offset.
    x_train[0] += np.where(spread < 1e-3 * (1 + np.abs(offset)), 1.0 + 1e-3 * np.abs(offset), 0)
    return x_train + offset, x_test + offset


def _pstats(column: np.ndarray) -> tuple[float, float]:
    values = [float(v) for v in column]
    return statistics.fmean(values), statistics.pstdev(values)


@given(tables())
def test_standardize_matches_the_statistics_module(pair):
    x_train, x_test = pair
    z_train, z_test = scaling.standardize(x_train, x_test)
    for j in range(x_train.shape[1]):
        mean, std = _pstats(x_train[:, j])
        for got, x in ((z_train[:, j], x_train[:, j]), (z_test[:, j], x_test[:, j])):
            want = (x - mean) / std
            np.testing.assert_allclose(got, want, rtol=1e-9,
                                       atol=1e-9 * (1 + np.max(np.abs(want), initial=0)))


@given(tables())
def test_standardized_training_set_has_mean_0_and_std_1(pair):
    z = scaling.standardize(pair[0])
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-9)


@given(tables())
def test_min_max_maps_the_training_range_onto_0_1_in_order(pair):
    x_train, x_test = pair
    m_train, m_test = scaling.min_max_scale(x_train, x_test)
    np.testing.assert_array_equal(m_train.min(axis=0), 0.0)
    np.testing.assert_array_equal(m_train.max(axis=0), 1.0)
    for j in range(x_train.shape[1]):  # order is kept, test values included
        both_x = np.concatenate([x_train[:, j], x_test[:, j]])
        both_m = np.concatenate([m_train[:, j], m_test[:, j]])
        order = np.argsort(both_x, kind="stable")
        assert np.all(np.diff(both_m[order]) >= 0)


@given(tables(), st.floats(0.01, 100), st.floats(-100, 100), st.booleans())
def test_scalers_undo_an_affine_change_of_units(pair, a, b, flip):
    x_train, x_test = pair
    a = -a if flip else a
    z_train, z_test = scaling.standardize(x_train, x_test)
    z2_train, z2_test = scaling.standardize(a * x_train + b, a * x_test + b)
    sign = -1.0 if flip else 1.0
    def close(got, want):
        np.testing.assert_allclose(got, want, rtol=1e-6,
                                   atol=1e-6 * (1 + np.max(np.abs(want), initial=0)))

    close(z2_train, sign * z_train)
    close(z2_test, sign * z_test)
    if not flip:
        m_train, m_test = scaling.min_max_scale(x_train, x_test)
        m2_train, m2_test = scaling.min_max_scale(a * x_train + b, a * x_test + b)
        close(m2_train, m_train)
        close(m2_test, m_test)


@pytest.mark.parametrize("shape", [(2, 1), (5, 3), (40, 7)])
def test_standardize_with_eps_equals_torch_batch_norm_in_training_mode(shape):
    x = np.random.default_rng(0).normal(3.0, 2.0, size=shape)
    expected = torch.nn.functional.batch_norm(
        torch.tensor(x), None, None, training=True, eps=1e-5
    ).numpy()
    np.testing.assert_allclose(scaling.standardize(x, eps=1e-5), expected, rtol=1e-10, atol=1e-12)


def test_statistics_come_from_the_training_set_only():
    rng = np.random.default_rng(1)
    x_train = rng.normal(size=(10, 3))
    z_a, _ = scaling.standardize(x_train, rng.normal(5.0, 1.0, size=(4, 3)))
    z_b, _ = scaling.standardize(x_train, rng.normal(-5.0, 9.0, size=(7, 3)))
    np.testing.assert_array_equal(z_a, z_b)


def test_dtypes_float_kept_integers_become_float64():
    x32 = np.random.default_rng(2).normal(size=(6, 2)).astype(np.float32)
    assert scaling.standardize(x32).dtype == np.float32
    assert scaling.min_max_scale(x32, x32.astype(np.float64))[1].dtype == np.float64
    ints = np.array([[1, 2], [3, 6], [5, 7]])
    assert scaling.standardize(ints).dtype == np.float64
    np.testing.assert_allclose(scaling.min_max_scale(ints), [[0, 0], [0.5, 0.8], [1, 1]])


def test_float32_input_keeps_float32_accuracy_with_a_large_offset():
    # Statistics in float64: float32 data far from 0 still standardize to float32 precision.
    base = np.random.default_rng(3).normal(size=(1000, 2))
    x32 = (1e4 + base).astype(np.float32)
    exact = x32.astype(np.float64)
    expected = (exact - exact.mean(axis=0)) / exact.std(axis=0)
    np.testing.assert_allclose(scaling.standardize(x32), expected, rtol=1e-5, atol=1e-5)


def test_inputs_are_not_changed():
    x_train, x_test = np.array([[1.0, 2.0], [3.0, 5.0]]), np.array([[0.0, 1.0]])
    copies = x_train.copy(), x_test.copy()
    scaling.standardize(x_train, x_test)
    scaling.min_max_scale(x_train, x_test)
    np.testing.assert_array_equal(x_train, copies[0])
    np.testing.assert_array_equal(x_test, copies[1])


# --------------------------------------------------------------------------- scalers: bad input

SCALERS = {"standardize": scaling.standardize, "min_max_scale": scaling.min_max_scale}
GOOD = np.array([[1.0, 2.0], [3.0, 5.0], [4.0, 0.0]])


@pytest.mark.parametrize("scaler", SCALERS.values(), ids=SCALERS.keys())
@pytest.mark.parametrize(
    "x_train, x_test, message",
    [
        (np.arange(4.0), None, "x.reshape(-1, 1)"),
        (np.ones((2, 2, 2)), None, "got 3-D input"),
        (GOOD, np.arange(2.0), "x_test must have shape (N, D)"),
        (GOOD, np.ones((2, 3)), "x_test has 3 features (columns) but x_train has 2"),
        (np.empty((0, 2)), None, "x_train is empty"),
        (np.array([[1.0, np.nan], [2.0, 3.0]]), None, "contains nan at [0, 1]"),
        (GOOD, np.array([[np.inf, 1.0]]), "x_test contains inf at [0, 0]"),
        (np.array([[1.0, 7.0], [2.0, 7.0], [0.0, 7.0]]), None, "feature(s) [1] are constant"),
        (np.array([[1.0, 2.0]]), None, "x_train has a single row"),
    ],
)
def test_bad_input_gets_a_clear_value_error(scaler, x_train, x_test, message):
    with pytest.raises(ValueError) as info:
        scaler(x_train, x_test)
    assert message in str(info.value)


@pytest.mark.parametrize("scaler", SCALERS.values(), ids=SCALERS.keys())
def test_non_numeric_input_is_a_type_error(scaler):
    with pytest.raises(TypeError, match="real numbers"):
        scaler(np.array([["a", "b"], ["c", "d"]]))


def test_negative_eps_is_refused():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        scaling.standardize(GOOD, eps=-1e-5)


def test_constant_feature_with_eps_becomes_exactly_zero():
    x_train = np.array([[1.0, 0.1], [2.0, 0.1], [4.0, 0.1]])  # 0.1 has no exact mean in fp
    z_train, z_test = scaling.standardize(x_train, np.array([[0.0, 0.3]]), eps=1e-4)
    np.testing.assert_array_equal(z_train[:, 1], 0.0)
    np.testing.assert_allclose(z_test[0, 1], (0.3 - 0.1) / np.sqrt(1e-4), rtol=1e-12)


# --------------------------------------------------------------------------- gradient descent


def _torch_gd(x, y, lr, steps, w0):
    """The same descent with torch autograd computing each gradient of the loss itself."""
    xt, yt = torch.tensor(x), torch.tensor(y)
    w = torch.tensor(w0, requires_grad=True)
    path = [w.detach().clone()]
    for _ in range(steps):
        loss = ((xt @ w - yt) ** 2).sum() / (2 * len(x))
        (grad,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w = (w - lr * grad).requires_grad_(True)
        path.append(w.detach().clone())
    return torch.stack(path).numpy()


@pytest.mark.parametrize("n, d, lr", [(20, 2, 0.1), (7, 3, 0.05), (50, 1, 0.3)])
def test_least_squares_gd_follows_the_autograd_gradient(n, d, lr):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=(n, d)), rng.normal(size=n)
    w0 = rng.normal(size=d)
    path = scaling.least_squares_gd(x, y, lr=lr, steps=25, w0=w0)
    assert path.shape == (26, d)
    np.testing.assert_array_equal(path[0], w0)
    np.testing.assert_allclose(path, _torch_gd(x, y, lr, 25, w0), rtol=1e-10, atol=1e-12)


def test_least_squares_gd_reaches_the_least_squares_solution():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=30)
    path = scaling.least_squares_gd(x, y, lr=0.5, steps=400)
    np.testing.assert_allclose(path[-1], np.linalg.lstsq(x, y, rcond=None)[0], rtol=1e-9)


def test_least_squares_gd_starts_at_zero_and_checks_shapes():
    assert np.all(scaling.least_squares_gd(np.ones((3, 2)), np.ones(3), 0.1, 0)[0] == 0)
    with pytest.raises(ValueError, match="expected x of shape"):
        scaling.least_squares_gd(np.ones((3, 2)), np.ones(4), 0.1, 5)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        scaling.least_squares_gd(np.ones((3, 2)), np.ones(3), 0.1, -1)


def test_least_squares_gd_diverges_quietly_above_the_bound():
    x = np.array([[1.0], [-1.0]])  # H = 1, so the bound is lr < 2
    path = scaling.least_squares_gd(x, np.array([1.0, -1.0]), lr=3.0, steps=2000)
    assert not np.isfinite(path[-1]).all()


# --------------------------------------------------------------------------- closed-form steps


def _count_steps(hessian, w0, w_star, lr, tol, limit=100_000):
    """The oracle: iterate e <- (I - lr H) e and count until the gap is below tol."""
    e = np.asarray(w0, dtype=float) - w_star
    gap0 = 0.5 * e @ hessian @ e
    for k in range(limit + 1):
        if 0.5 * e @ hessian @ e <= tol * gap0:
            return k
        e = e - lr * hessian @ e
    return np.inf


@given(
    st.integers(1, 4).flatmap(lambda d: st.tuples(
        hnp.arrays(np.float64, (d, d), elements=st.floats(-1, 1)),
        hnp.arrays(np.float64, (d,), elements=st.floats(0.05, 3)),
        hnp.arrays(np.float64, (d,), elements=st.floats(-2, 2)),
    )),
    st.floats(0.05, 1.9),
    st.sampled_from([1e-2, 1e-6, 1e-10]),
)
def test_closed_form_step_count_matches_iteration(problem, lr_fraction, tol):
    basis, lam, w0 = problem
    q, _ = np.linalg.qr(basis + 3 * np.eye(len(lam)))  # a random orthonormal basis
    hessian = q @ np.diag(lam) @ q.T
    lr = lr_fraction / lam.max()  # below the bound 2 / lambda_max
    w_star = np.zeros(len(lam))
    if 0.5 * w0 @ hessian @ w0 == 0:
        return
    counted = _count_steps(hessian, w0, w_star, lr, tol)
    predicted = scaling.gd_steps_to_converge(hessian, w0, w_star, lr, tol)
    assert abs(predicted - counted) <= 1  # rounding may move the crossing by one step


def test_steps_grow_like_the_condition_number():
    for kappa in (1e2, 1e4, 1e6):
        hessian = np.diag([kappa, 1.0])
        steps = scaling.gd_steps_to_converge(hessian, np.zeros(2), np.array([0.0, 1.0]),
                                         lr=1 / kappa, tol=1e-6)
        approx = kappa / 2 * np.log(1e6)  # (1 - 1/kappa)^(2k) = 1e-6
        assert abs(steps / approx - 1) < 0.01


def test_unstable_learning_rate_never_converges_unless_that_mode_is_already_solved():
    hessian = np.diag([1.0, 100.0])
    lr = 2.01 / 100.0  # above 2 / lambda_max
    assert scaling.gd_steps_to_converge(hessian, np.array([1.0, 1.0]), np.zeros(2), lr) == np.inf
    # No error along the steep axis: nothing there to blow up (in exact arithmetic).
    assert scaling.gd_steps_to_converge(hessian, np.array([1.0, 0.0]), np.zeros(2), lr) == \
        _count_steps(hessian, np.array([1.0, 0.0]), np.zeros(2), lr, 1e-6)


def test_no_steps_needed_at_the_optimum_or_with_a_loose_tolerance():
    hessian = np.diag([1.0, 2.0])
    assert scaling.gd_steps_to_converge(hessian, np.ones(2), np.ones(2), lr=0.1) == 0
    assert scaling.gd_steps_to_converge(hessian, np.zeros(2), np.ones(2), lr=0.1, tol=1.0) == 0


def test_one_step_suffices_when_lr_is_one_over_a_single_eigenvalue():
    hessian = 4.0 * np.eye(3)
    assert scaling.gd_steps_to_converge(hessian, np.ones(3), np.zeros(3), lr=0.25) == 1


# --------------------------------------------------------------------------- the checker
# Readers' versions, right and wrong, written independently of the checker's catalogue.


def z_right(X_train, X_test):
    mu = X_train.mean(axis=0)
    sigma = np.sqrt(((X_train - mu) ** 2).mean(axis=0))
    return (X_train - mu) / sigma, (X_test - mu) / sigma


def z_right_torch(X_train, X_test):
    a, b = torch.tensor(X_train), torch.tensor(X_test)
    mu, sigma = a.mean(dim=0), a.std(dim=0, correction=0)
    return (a - mu) / sigma, (b - mu) / sigma


def z_right_list(X_train, X_test):
    mu, sigma = X_train.mean(0), X_train.std(0)
    return [((X_train - mu) / sigma).tolist(), ((X_test - mu) / sigma).tolist()]


def z_stub(X_train, X_test):
    raise NotImplementedError


def z_test_own_stats(X_train, X_test):
    def z(a):
        return (a - a.mean(axis=0)) / a.std(axis=0)

    return z(X_train), z(X_test)


def z_combined(X_train, X_test):
    everything = np.concatenate([X_train, X_test])
    mu, sigma = everything.mean(axis=0), everything.std(axis=0)
    return (X_train - mu) / sigma, (X_test - mu) / sigma


def z_ddof1(X_train, X_test):
    mu, sigma = X_train.mean(axis=0), X_train.std(axis=0, ddof=1)
    return (X_train - mu) / sigma, (X_test - mu) / sigma


def z_torch_default_std(X_train, X_test):
    a, b = torch.tensor(X_train), torch.tensor(X_test)
    mu, sigma = a.mean(0), a.std(0)  # torch's default is unbiased
    return (a - mu) / sigma, (b - mu) / sigma


def z_axis1(X_train, X_test):
    def z(a):
        return (a - a.mean(axis=1, keepdims=True)) / a.std(axis=1, keepdims=True)

    return z(X_train), z(X_test)


def z_whole_array(X_train, X_test):
    mu, sigma = np.mean(X_train), np.std(X_train)
    return (X_train - mu) / sigma, (X_test - mu) / sigma


def z_min_max(X_train, X_test):
    lo, span = X_train.min(0), X_train.max(0) - X_train.min(0)
    return (X_train - lo) / span, (X_test - lo) / span


def z_no_centering(X_train, X_test):
    sigma = X_train.std(0)
    return X_train / sigma, X_test / sigma


def z_only_centering(X_train, X_test):
    mu = X_train.mean(0)
    return X_train - mu, X_test - mu


def z_by_variance(X_train, X_test):
    mu, var = X_train.mean(0), X_train.var(0)
    return (X_train - mu) / var, (X_test - mu) / var


def z_test_forgotten(X_train, X_test):
    mu, sigma = X_train.mean(0), X_train.std(0)
    return (X_train - mu) / sigma, X_test


def z_naive_variance(X_train, X_test):
    mu = X_train.mean(axis=0)
    sigma = np.sqrt((X_train**2).mean(axis=0) - mu**2)
    return (X_train - mu) / sigma, (X_test - mu) / sigma


def z_bn_eps(X_train, X_test):
    mu, var = X_train.mean(0), X_train.var(0)
    return (X_train - mu) / np.sqrt(var + 1e-5), (X_test - mu) / np.sqrt(var + 1e-5)


STANDARDIZE_MISTAKES = [
    (z_test_own_stats, "test set standardized with its own statistics"),
    (z_combined, "combined set"),
    (z_ddof1, "unbiased std (ddof=1"),
    (z_torch_default_std, "unbiased std (ddof=1"),
    (z_axis1, "axis 1"),
    (z_whole_array, "one scalar mean and std over the whole X_train"),
    (z_min_max, "min-max scaling"),
    (z_no_centering, "the mean is not subtracted"),
    (z_only_centering, "did not divide by the std"),
    (z_by_variance, "divided by the variance instead of the standard deviation"),
    (z_test_forgotten, "Z_test is X_test unchanged"),
    (z_naive_variance, "E[x^2] - E[x]^2"),
    (z_bn_eps, "eps=1e-05 added inside the square root"),
]


@pytest.mark.parametrize("fn", [z_right, z_right_torch, z_right_list],
                         ids=lambda f: f.__name__)
def test_right_answers_pass(fn, capsys):
    assert check.standardize(fn) is True
    out = capsys.readouterr().out
    assert out == "standardize: all 6 cases pass ✓\n"


def test_stub_is_not_done_yet(capsys):
    assert check.standardize(z_stub) is False
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "not done yet" in out


@pytest.mark.parametrize("fn, hint", STANDARDIZE_MISTAKES,
                         ids=[fn.__name__ for fn, _ in STANDARDIZE_MISTAKES])
def test_mistake_is_named(fn, hint):
    message = failure(check.standardize, fn)
    assert message.startswith("standardize: ")
    assert hint in message
    assert "No mistake this checker knows" not in message


def test_leakage_on_a_single_test_example_is_diagnosed_despite_the_nan():
    message = failure(check.standardize, z_test_own_stats)
    assert "undefined for a single test example" in message


def test_broadcasting_error_names_the_case():
    def axis1_without_keepdims(X_train, X_test):
        mu, sigma = X_train.mean(axis=1), X_train.std(axis=1)
        return (X_train - mu) / sigma, (X_test - mu) / sigma

    message = failure(check.standardize, axis1_without_keepdims)
    assert "raised ValueError" in message and "X_train of shape (20, 3)" in message


def test_in_place_change_is_caught():
    def centers_in_place(X_train, X_test):
        mu, sigma = X_train.mean(0), X_train.std(0)
        X_train -= mu
        return X_train / sigma, (X_test - mu) / sigma

    assert "changed its input `X_train` in place" in failure(check.standardize, centers_in_place)


@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda a, b: None, "did you forget `return Z_train, Z_test`"),
        (lambda a, b: z_right(a, b)[0], "expected a tuple (Z_train, Z_test)"),
        (lambda a, b: z_right(a, b)[::-1], "Z_train has shape"),
    ],
)
def test_wrong_return_value(fn, expected):
    assert expected in failure(check.standardize, fn)


def test_unknown_mistake_shows_the_largest_error():
    def off(X_train, X_test):
        z_train, z_test = z_right(X_train, X_test)
        return z_train + 0.01, z_test

    message = failure(check.standardize, off)
    assert "Z_train is wrong in 6 of 6 cases" in message
    assert "No mistake this checker knows matches; the right formula" in message
