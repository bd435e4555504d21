"""The byte-model checker of the chapter on making BN fast, and the byte model it shares
with ``bnlib.bench``.

The wrong implementations are written here, independently of the catalogue inside
``bnlib.check``, the way a reader might write them; each is paired with a substring the
checker's message must contain.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from bnlib import bench, check
from bnlib import reference as ref


def bytes_right(shape, dtype_bytes, which):
    passes = {"forward": 3, "backward": 5}[which]
    return passes * math.prod(shape) * dtype_bytes


def bytes_stub(shape, dtype_bytes, which):
    raise NotImplementedError


def bytes_no_write(shape, dtype_bytes, which):
    reads = 2 if which == "forward" else 4
    return reads * math.prod(shape) * dtype_bytes


def bytes_read_once(shape, dtype_bytes, which):
    n = math.prod(shape) * dtype_bytes
    return 2 * n if which == "forward" else 3 * n  # x (and dy) once, plus the write


def bytes_bits(shape, dtype_bytes, which):
    return bytes_right(shape, dtype_bytes, which) * 8


def bytes_elements(shape, dtype_bytes, which):
    return bytes_right(shape, 1, which)


def bytes_backward_no_x(shape, dtype_bytes, which):
    n = np.prod(shape) * dtype_bytes
    return 3 * n if which == "forward" else 2 * n + n  # dy twice, dx once


def bytes_n_times_c(shape, dtype_bytes, which):
    n, c = shape[0], shape[1]
    return (3 if which == "forward" else 5) * n * c * dtype_bytes


def bytes_gigabytes(shape, dtype_bytes, which):
    return bytes_right(shape, dtype_bytes, which) / 1e9


def bytes_both(shape, dtype_bytes, which):
    n = math.prod(shape) * dtype_bytes
    return 3 * n if which == "forward" else 3 * n + 5 * n


def bytes_returns_none(shape, dtype_bytes, which):
    bytes_right(shape, dtype_bytes, which)


def test_right_answer_passes(capsys):
    assert check.bn_bytes(bytes_right) is True
    assert "all 6 cases pass" in capsys.readouterr().out


def test_stub_is_not_done(capsys):
    assert check.bn_bytes(bytes_stub) is False
    assert "not done yet" in capsys.readouterr().out


@pytest.mark.parametrize(("wrong", "hint"), [
    (bytes_no_write, "forgetting the write"),
    (bytes_read_once, "only once"),
    (bytes_bits, "bits, not bytes"),
    (bytes_elements, "elements, not bytes"),
    (bytes_backward_no_x, "reading only dy"),
    (bytes_n_times_c, "N * C elements"),
    (bytes_gigabytes, "gigabytes"),
    (bytes_both, "forward plus backward"),
    (bytes_returns_none, "returned None"),
])
def test_mistakes_get_their_hint(wrong: Callable, hint: str):
    with pytest.raises(AssertionError, match="bn_bytes") as err:
        check.bn_bytes(wrong)
    assert hint in str(err.value)


def test_unknown_mistake_quotes_formula():
    with pytest.raises(AssertionError) as err:
        check.bn_bytes(lambda shape, s, which: 7 * math.prod(shape) * s)
    assert "the right formula" in str(err.value)


def test_checker_agrees_with_bench_byte_model():
    # The checker's right answer is the model bnlib.bench divides its timings by: a byte
    # count built from bench.PASSES alone passes every case of the checker.
    def from_bench(shape, dtype_bytes, which):
        passes = bench.PASSES["both"] - bench.PASSES["forward"] if which == "backward" \
            else bench.PASSES[which]
        return passes * math.prod(shape) * dtype_bytes

    assert check.bn_bytes(from_bench) is True


def test_fast_numpy_matches_torch():
    rng = np.random.default_rng(0)
    x = (3.0 + 2.0 * rng.standard_normal((4, 3, 5, 5))).astype(np.float64)
    g, b = rng.uniform(0.5, 2, 3), rng.uniform(-1, 1, 3)
    dy = rng.standard_normal(x.shape)
    y, cache = ref.batchnorm_forward_fast(x, g, b)
    dx, dg, db = ref.batchnorm_backward_fast(dy, cache)
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = torch.tensor(g, requires_grad=True), torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dg, gt.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- plots.roofline


def test_roofline_draws_the_bound_the_balance_and_one_series_per_label():
    import matplotlib

    matplotlib.use("Agg")
    from bnlib import plots

    peak, beta = 40e9, 5e9  # FLOP/s and bytes/s: balance 8 FLOP/byte
    fig, ax = plots.subplots()
    points = {"fused": ([0.35, 0.5], [1.0e9, 2.0e9]), "matmul": (171.0, peak)}
    plots.roofline(ax, peak, beta, points)
    roof, _, fused, matmul = ax.get_lines()  # the roof, the balance line, then the points
    i, gflops = roof.get_data()
    np.testing.assert_allclose(gflops, np.minimum(peak, i * beta) / 1e9)
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert any(t.get_text() == "balance 8" for t in ax.texts)
    np.testing.assert_allclose(fused.get_ydata(), [1.0, 2.0])      # in GFLOP/s
    assert fused.get_linestyle() == "None" and fused.get_marker() != matmul.get_marker()
    assert [t.get_text() for t in ax.get_legend().get_texts()][1:] == ["fused", "matmul"]
    plots.roofline(zoom := plots.subplots()[1], peak, beta, xlim=(0.3, 0.6))
    assert not zoom.texts and len(zoom.get_lines()) == 1  # the balance lies outside the zoom
    matplotlib.pyplot.close("all")
