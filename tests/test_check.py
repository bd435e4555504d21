"""The exercise checkers: right answers pass, stubs are "not done yet", and every typical
mistake gets its own hint.

The wrong implementations below are written here, independently of the catalogues inside
``bnlib.check``, the way a reader might write them; each is paired with a substring that the
checker's message must contain, so a wrong diagnosis fails the test.
"""

from __future__ import annotations

import numpy as np
import pytest
from checking import failure

from bnlib import check
from bnlib import reference as ref
from bnlib.check._core import GRADING_ENV, _distinct

# --------------------------------------------------------------------------- forward pass


def fwd_right(x, gamma, beta, eps):
    mu = x.mean(axis=0)
    centered = x - mu
    var = (centered**2).mean(axis=0)
    return gamma * centered / np.sqrt(var + eps) + beta


def fwd_stub(x, gamma, beta, eps):
    raise NotImplementedError


def fwd_axis1(x, gamma, beta, eps):
    mu = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def fwd_unbiased(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + eps) + beta


def fwd_no_eps(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / x.std(0) + beta


def fwd_eps_outside(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / (x.std(0) + eps) + beta


def fwd_divide_by_var(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / (x.var(0) + eps) + beta


def fwd_sqrt_of_std(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.std(0) + eps) + beta


def fwd_no_affine(x, gamma, beta, eps):
    return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def fwd_no_beta(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def fwd_swapped(x, gamma, beta, eps):
    return beta * (x - x.mean(0)) / np.sqrt(x.var(0) + eps) + gamma


def fwd_not_centered(x, gamma, beta, eps):
    return gamma * x / np.sqrt(x.var(0) + eps) + beta


def fwd_whole_array(x, gamma, beta, eps):
    return gamma * (x - x.mean()) / np.sqrt(x.var() + eps) + beta


def fwd_keras_eps(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3) + beta


def fwd_tiny_eps(x, gamma, beta, eps):
    return gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-8) + beta


FORWARD_MISTAKES = [
    (fwd_axis1, "axis 1 (per sample)"),
    (fwd_unbiased, "unbiased variance"),
    (fwd_no_eps, "eps is missing"),
    (fwd_eps_outside, "outside the square root"),
    (fwd_divide_by_var, "variance instead of the standard deviation"),
    (fwd_sqrt_of_std, "square root of the standard deviation"),
    (fwd_no_affine, "gamma and beta are not applied"),
    (fwd_no_beta, "beta is not added"),
    (fwd_swapped, "gamma and beta are swapped"),
    (fwd_not_centered, "mean is not subtracted"),
    (fwd_whole_array, "whole array"),
    (fwd_keras_eps, "ignores the eps argument and behaves as if eps=0.001"),
    (fwd_tiny_eps, "ignores the eps argument and behaves as if eps=1e-08"),
]


# --------------------------------------------------------------------------- backward pass
# Written the staged way (node by node, as in the book's graph), unlike the checker's
# closed forms, so agreement is not a copy of the same formula.


def _graph(x, eps, ddof=0):
    """The forward nodes: centered input d, std s (with N - ddof in the variance)."""
    d = x - x.mean(axis=0)
    s = np.sqrt((d**2).sum(axis=0) / (len(x) - ddof) + eps)
    return d, s


def bwd_right(dy, x, gamma, eps):
    n = len(x)
    d, s = _graph(x, eps)
    dx_hat = dy * gamma
    dvar = -0.5 * (dx_hat * d).sum(axis=0) / s**3
    dmu = -(dx_hat / s).sum(axis=0)
    dx = dx_hat / s + dvar * 2 * d / n + dmu / n
    return dx, (dy * d / s).sum(axis=0), dy.sum(axis=0)


def bwd_stub(dy, x, gamma, eps):
    raise NotImplementedError


def bwd_stats_constant(dy, x, gamma, eps):
    d, s = _graph(x, eps)
    return dy * gamma / s, (dy * d / s).sum(0), dy.sum(0)


def bwd_no_mean_path(dy, x, gamma, eps):
    n = len(x)
    d, s = _graph(x, eps)
    dx_hat = dy * gamma
    dvar = -0.5 * (dx_hat * d).sum(axis=0) / s**3
    return dx_hat / s + dvar * 2 * d / n, (dy * d / s).sum(0), dy.sum(0)


def bwd_no_var_path(dy, x, gamma, eps):
    n = len(x)
    d, s = _graph(x, eps)
    dx_hat = dy * gamma
    return dx_hat / s - (dx_hat / s).sum(axis=0) / n, (dy * d / s).sum(0), dy.sum(0)


def bwd_no_gamma(dy, x, gamma, eps):
    n = len(x)
    d, s = _graph(x, eps)
    x_hat = d / s
    dx = (n * dy - dy.sum(0) - x_hat * (dy * x_hat).sum(0)) / (n * s)
    return dx, (dy * x_hat).sum(0), dy.sum(0)


def bwd_dgamma_no_x_hat(dy, x, gamma, eps):
    dx, _, dbeta = bwd_right(dy, x, gamma, eps)
    return dx, dy.sum(axis=0), dbeta


def bwd_swapped(dy, x, gamma, eps):
    dx, dgamma, dbeta = bwd_right(dy, x, gamma, eps)
    return dx, dbeta, dgamma


def bwd_axis1(dy, x, gamma, eps):
    dx, _, _ = bwd_right(dy, x, gamma, eps)
    d, s = _graph(x, eps)
    return dx, (dy * d / s).sum(axis=1), dy.sum(axis=1)


def bwd_unbiased(dy, x, gamma, eps):
    n = len(x)
    d, s = _graph(x, eps, ddof=1)
    dx_hat = dy * gamma
    dvar = -0.5 * (dx_hat * d).sum(axis=0) / s**3
    dmu = -(dx_hat / s).sum(axis=0)
    dx = dx_hat / s + dvar * 2 * d / (n - 1) + dmu / n
    return dx, (dy * d / s).sum(axis=0), dy.sum(axis=0)


def bwd_n_minus_1(dy, x, gamma, eps):
    n = len(x)
    d, s = _graph(x, eps)
    x_hat = d / s
    dx = gamma / s / (n - 1) * (n * dy - dy.sum(0) - x_hat * (dy * x_hat).sum(0))
    return dx, (dy * x_hat).sum(0), dy.sum(0)


def bwd_dbeta_mean(dy, x, gamma, eps):
    dx, dgamma, _ = bwd_right(dy, x, gamma, eps)
    return dx, dgamma, dy.mean(axis=0)


def bwd_no_eps(dy, x, gamma, eps):
    return bwd_right(dy, x, gamma, 0.0)


BACKWARD_MISTAKES = [
    (bwd_stats_constant, "as constants"),
    (bwd_no_mean_path, "path through the mean"),
    (bwd_no_var_path, "path through the variance"),
    (bwd_no_gamma, "missing the factor gamma"),
    (bwd_dgamma_no_x_hat, "dgamma forgets x_hat"),
    (bwd_swapped, "dgamma and dbeta are swapped"),
    (bwd_axis1, "axis 1 (per sample)"),
    (bwd_unbiased, "unbiased variance"),
    (bwd_n_minus_1, "divides by N-1"),
    (bwd_dbeta_mean, "dbeta is averaged"),
    (bwd_no_eps, "eps is missing"),
]

CHECKERS = {
    "forward": (check.batchnorm_forward, fwd_right),
    "backward": (check.batchnorm_backward, bwd_right),
}


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("which", CHECKERS)
def test_right_answer_passes(which, capsys):
    checker, right = CHECKERS[which]
    assert checker(right) is True
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "cases pass ✓" in out and checker.__name__ in out


def test_forward_accepts_y_cache_pair_and_torch_tensors(capsys):
    torch = pytest.importorskip("torch")
    assert check.batchnorm_forward(ref.batchnorm_forward) is True

    def with_torch(x, gamma, beta, eps):
        x = torch.tensor(x, requires_grad=True)
        return torch.nn.functional.batch_norm(
            x, None, None, torch.tensor(gamma), torch.tensor(beta), training=True, eps=eps
        )

    assert check.batchnorm_forward(with_torch) is True


@pytest.mark.parametrize("which, stub", [("forward", fwd_stub), ("backward", bwd_stub)])
def test_stub_is_not_done_yet(which, stub, capsys):
    checker, _ = CHECKERS[which]
    assert checker(stub) is False
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "not done yet" in out and "NotImplementedError" in out


@pytest.mark.parametrize("which", CHECKERS)
def test_exception_in_reader_code_is_a_failed_check(which):
    checker, _ = CHECKERS[which]

    def broken(*args):
        return {}["missing key"]

    message = failure(checker, broken)
    assert "your function raised KeyError: 'missing key'" in message
    assert "in broken" in message and "case '" in message


def test_broadcasting_error_names_the_case_and_shapes():
    def no_keepdims(x, gamma, beta, eps):
        return gamma * (x - x.mean(axis=1)) / np.sqrt(x.var(axis=1) + eps) + beta

    message = failure(check.batchnorm_forward, no_keepdims)
    assert "raised ValueError" in message and "x of shape (16, 5)" in message


def test_in_place_mutation_is_caught_even_when_the_output_is_right():
    def centers_in_place(x, gamma, beta, eps):
        x -= x.mean(axis=0)
        return gamma * x / np.sqrt((x**2).mean(axis=0) + eps) + beta

    def scales_dy_in_place(dy, x, gamma, eps):
        dx, dgamma, dbeta = bwd_right(dy.copy(), x, gamma, eps)
        dy *= gamma
        return dx, dgamma, dbeta

    assert "changed its input `x` in place" in failure(check.batchnorm_forward, centers_in_place)
    message = failure(check.batchnorm_backward, scales_dy_in_place)
    assert "changed its input `dy` in place" in message


def test_mutation_does_not_corrupt_later_checks(capsys):
    def scrambles(x, gamma, beta, eps):
        x[:] = 0.0
        gamma[:] = 0.0
        return x

    with pytest.raises(AssertionError):
        check.batchnorm_forward(scrambles)
    assert check.batchnorm_forward(fwd_right) is True


@pytest.mark.parametrize(
    "which, fn, expected",
    [
        ("forward", lambda x, g, b, eps: None, "returned None: did you forget `return y`"),
        ("forward", lambda x, g, b, eps: fwd_right(x, g, b, eps).T, "(transposed?)"),
        ("forward", lambda x, g, b, eps: fwd_right(x, g, b, eps)[0], "(5,) instead of (16, 5)"),
        ("forward", lambda x, g, b, eps: (1, 2, 3), "tuple of 3 items"),
        ("forward", lambda x, g, b, eps: "y", "should be an array of floats"),
        ("backward", lambda dy, x, g, eps: None, "did you forget `return dx, dgamma, dbeta`"),
        ("backward", lambda dy, x, g, eps: bwd_right(dy, x, g, eps)[:2], "returned 2 items"),
        ("backward", lambda dy, x, g, eps: bwd_right(dy, x, g, eps)[0], "type ndarray"),
        ("backward", lambda dy, x, g, eps: (*bwd_right(dy, x, g, eps)[:2], None), "dbeta is None"),
    ],
)
def test_wrong_shape_or_type(which, fn, expected):
    checker, _ = CHECKERS[which]
    assert expected in failure(checker, fn)


def test_nan_without_a_known_cause_gets_its_own_message():
    def nan_somewhere(x, gamma, beta, eps):
        y = fwd_right(x, gamma, beta, eps)
        y[1, 2] = np.nan
        return y

    message = failure(check.batchnorm_forward, nan_somewhere)
    assert "y contains nan" in message and "y[1, 2]" in message


# --------------------------------------------------------------------------- diagnosis


def _ids(catalogue: list) -> list[str]:
    return [fn.__name__ for fn, _ in catalogue]


@pytest.mark.parametrize("fn, hint", FORWARD_MISTAKES, ids=_ids(FORWARD_MISTAKES))
def test_forward_mistake_is_named(fn, hint):
    message = failure(check.batchnorm_forward, fn)
    assert hint in message
    assert "No mistake this checker knows" not in message


@pytest.mark.parametrize("fn, hint", BACKWARD_MISTAKES, ids=_ids(BACKWARD_MISTAKES))
def test_backward_mistake_is_named(fn, hint):
    message = failure(check.batchnorm_backward, fn)
    assert hint in message
    assert "No mistake this checker knows" not in message


def test_two_mistakes_in_different_outputs_are_both_named():
    def two_mistakes(dy, x, gamma, eps):
        dx, _, dbeta = bwd_no_gamma(dy, x, gamma, eps)
        return dx, dy.sum(axis=0), dbeta

    message = failure(check.batchnorm_backward, two_mistakes)
    assert "missing the factor gamma" in message and "dgamma forgets x_hat" in message


@pytest.mark.parametrize("which", CHECKERS)
def test_unknown_mistake_shows_the_largest_error(which):
    checker, right = CHECKERS[which]

    def off_by_a_bit(*args):
        out = right(*args)
        if isinstance(out, tuple):
            return (out[0] + 0.1, *out[1:])
        out = out + 0.1
        if out.shape == (16, 5):  # the first case
            out[3, 2] += 0.5  # its largest error
        return out

    message = failure(checker, off_by_a_bit)
    first, n = ("y", 7) if which == "forward" else ("dx", 6)
    assert f"{first} is wrong in {n} of {n} cases" in message
    assert "No mistake this checker knows matches; the right formula" in message
    assert "The largest error is at" in message and "expected" in message and "got" in message
    if which == "forward":
        assert "y[3, 2]" in message


# --------------------------------------------------------------------------- the one-pass pitfall


def fwd_one_pass(x, gamma, beta, eps):
    mu = x.mean(axis=0)
    var = (x**2).mean(axis=0) - mu**2  # E[x^2] - E[x]^2, in x's own dtype
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def fwd_two_pass_own_dtype(x, gamma, beta, eps):
    mu = x.mean(axis=0)  # float32 on the float32 case, as the one-pass version above
    return gamma * (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=0) + eps) + beta


def test_one_pass_variance_is_caught_on_float32_with_a_large_mean():
    with np.errstate(all="ignore"):
        message = failure(check.batchnorm_forward, fwd_one_pass)
    assert "one-pass variance" in message and "two-pass" in message
    assert "float64 batch" in message  # it says where: right on float64, wrong on float32


def test_two_pass_in_float32_passes(capsys):
    assert check.batchnorm_forward(fwd_two_pass_own_dtype) is True


def test_expected_and_got_are_never_printed_alike():
    # numbers that agree to 6 significant digits are printed with as many as tell them apart
    assert _distinct(1.0000001, 1.0000002) == ("1.0000001", "1.0000002")
    assert _distinct(2.5, 3.5) == ("2.5", "3.5")


# --------------------------------------------------------------------------- grading mode


def test_grading_mode_names_the_case_and_gives_nothing_away(monkeypatch):
    monkeypatch.setenv(GRADING_ENV, "1")
    assert check.grading()
    message = failure(check.batchnorm_forward, fwd_axis1)
    assert message == ("batchnorm_forward: FAILED on case 'typical batch' "
                       "(grading mode: no hints)")
    with np.errstate(all="ignore"):
        message = failure(check.batchnorm_backward, bwd_no_gamma)
    assert "gamma" not in message.split("case")[0] and "expected" not in message


def test_results_record_the_last_verdict_of_each_checker(monkeypatch, capsys):
    monkeypatch.setenv(GRADING_ENV, "0")
    assert not check.grading()
    check.batchnorm_forward(fwd_stub)
    assert check.results()["batchnorm_forward"] == {"status": "not done", "case": ""}
    failure(check.batchnorm_forward, fwd_unbiased)
    assert check.results()["batchnorm_forward"] == {"status": "fail", "case": "typical batch"}
    check.batchnorm_forward(fwd_right)
    assert check.results()["batchnorm_forward"] == {"status": "pass", "case": ""}
    results = check.results()
    results["batchnorm_forward"]["status"] = "tampered"  # a copy: the record is unchanged
    assert check.results()["batchnorm_forward"]["status"] == "pass"


def test_a_crash_in_the_readers_code_names_its_case(monkeypatch):
    monkeypatch.setenv(GRADING_ENV, "1")

    def crash(x, gamma, beta, eps):
        if x.shape[0] == 2:
            raise ZeroDivisionError("oops")
        return fwd_right(x, gamma, beta, eps)

    assert "case 'small batch, N=2'" in failure(check.batchnorm_forward, crash)
