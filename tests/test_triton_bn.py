"""bnlib.triton_bn against PyTorch: in Triton's interpreter on CPU, compiled on a GPU.

Ground truth is ``F.batch_norm(training=True)`` and autograd in float64 on the same
(already rounded) input. Without CUDA the kernels run in Triton's interpreter, so every
case is small (a few hundred to a few thousand elements) and runs with tiny tiles, which
makes each one span several tiles, chunks and channel blocks, with ragged last ones.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

triton = pytest.importorskip("triton")


def import_triton_bn():
    """Import ``bnlib.triton_bn``, in Triton's interpreter when there is no CUDA.

    Triton reads ``TRITON_INTERPRET`` when a kernel is *decorated* (``triton.jit``), not when
    ``triton`` is imported, so setting it just for this import is enough even if another
    test imported triton first; the variable is restored afterwards so nothing else in the
    pytest process is interpreted. If the module was imported earlier without the
    interpreter, it is reloaded under it.
    """
    if torch.cuda.is_available():
        return importlib.import_module("bnlib.triton_bn")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        module = importlib.import_module("bnlib.triton_bn")
        if not module.INTERPRETED:
            module = importlib.reload(module)
    assert module.INTERPRETED, "triton.knobs.runtime.interpret is forced off; cannot test on CPU"
    return module


tbn = import_triton_bn()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-5

# (rtol, and atol as a fraction of max(1, largest expected value)) per dtype, for the outputs
# y and dx (rounded to the input dtype) and for the statistics and parameter gradients
# (kept in float32, float64 for float64). float32 is ~1e-5 from float64 truth; float16 and
# bfloat16 outputs carry their own rounding, 2^-11 and 2^-8 relative, so they get ~4 ulps,
# while their statistics, computed in float32 from the exactly representable inputs, stay
# near float32 accuracy (1e-5: sums of a few hundred products).
TOL = {
    torch.float64: {"out": 1e-10, "stats": 1e-10},
    torch.float32: {"out": 1e-5, "stats": 1e-5},
    torch.float16: {"out": 2e-3, "stats": 1e-5},
    torch.bfloat16: {"out": 1.6e-2, "stats": 1e-5},
}


@pytest.fixture(autouse=True)
def small_tiles(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny tiles and few programs, so small inputs still cover every tiling path."""
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(tbn, "TILE", 64)
        monkeypatch.setattr(tbn, "BLOCK_C_MAX", 4)
        monkeypatch.setattr(tbn, "PROGRAMS", 8)


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` ``(N, C, *spatial)`` with the same values in memory layout ``layout``:

    ``contiguous``; ``channels_last`` (channel dim innermost; for 2-D the same as
    contiguous); ``transposed`` (last two dims swapped in memory: column-major for 2-D,
    channels-last for 3-D, permuted spatial dims for 4-D and 5-D); ``strided`` (every other
    element of a tensor twice as long in the last dim: not dense); ``expanded`` (``t[:1]``
    broadcast over the batch, stride 0; meant for ``dy``).
    """
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "expanded":
        return t[:1].expand(t.shape)
    raise ValueError(layout)


def make_case(shape: tuple[int, ...], x_layout: str, dy_layout: str, dtype: torch.dtype,
              seed: int = 0, offset: float = 3.0, std: float = 2.0) -> tuple[torch.Tensor, ...]:
    """Seeded ``(x, dy, weight, bias)``: ``x ~ offset + std N(0, 1)``, ``dy ~ N(0, 1)``;
    ``weight``, ``bias`` ``(C,)`` in float32 (float64 for float64 ``x``), as a
    mixed-precision model keeps them."""
    gen = torch.Generator().manual_seed(seed)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    x = offset + std * torch.randn(shape, generator=gen, dtype=torch.float64)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight = 0.5 + torch.rand(shape[1], generator=gen, dtype=torch.float64)
    bias = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    x, dy = (in_layout(t.to(DEVICE, dtype), lay) for t, lay in ((x, x_layout), (dy, dy_layout)))
    return x, dy, weight.to(DEVICE, pdtype), bias.to(DEVICE, pdtype)


def triton_run(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """y, mean, var, dx, dweight, dbias from :class:`TritonBatchNormFunction` and autograd."""
    x, weight, bias = (t.detach().requires_grad_(True) for t in (x, weight, bias))
    y, mean, var = tbn.TritonBatchNormFunction.apply(x, weight, bias, EPS)
    y.backward(dy)
    return {"y": y, "mean": mean, "var": var, "dx": x.grad, "dweight": weight.grad,
            "dbias": bias.grad}


def pytorch_run(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """The same quantities from ``F.batch_norm`` and autograd, computed in ``dtype``."""
    x, weight, bias = (t.detach().to(dtype).requires_grad_(True) for t in (x, weight, bias))
    y = F.batch_norm(x, None, None, weight, bias, training=True, eps=EPS)
    y.backward(dy.to(dtype))
    var, mean = torch.var_mean(x.detach(), dim=[0, *range(2, x.dim())], correction=0)
    return {"y": y.detach(), "mean": mean, "var": var, "dx": x.grad, "dweight": weight.grad,
            "dbias": bias.grad}


def truth(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor,
          bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """Ground truth: :func:`pytorch_run` in float64 on the same (rounded) values."""
    return pytorch_run(x, dy, weight, bias, torch.float64)


def assert_matches(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run both and compare every output within :data:`TOL`; returns the Triton outputs."""
    got, want = triton_run(x, dy, weight, bias), truth(x, dy, weight, bias)
    tol = TOL[x.dtype]
    assert got["y"].dtype == got["dx"].dtype == x.dtype
    assert got["mean"].dtype == got["var"].dtype == tbn.stats_dtype(x)
    assert got["dweight"].dtype == got["dbias"].dtype == weight.dtype
    for name, expected in want.items():
        t = tol["out"] if name in ("y", "dx") else tol["stats"]
        torch.testing.assert_close(
            got[name].double(), expected, rtol=t,
            atol=t * max(1.0, float(expected.abs().max())), msg=lambda m, name=name: f"{name}: {m}",
        )
    return got


# Shapes with ragged tiles, chunks and channel blocks (see test_cases_cover_the_tiling).
CASES = [
    ((37, 6), "contiguous", "contiguous"),
    ((37, 6), "transposed", "contiguous"),  # column-major 2-D
    ((9, 5, 13), "contiguous", "channels_last"),
    ((3, 6, 5, 7), "contiguous", "contiguous"),
    ((3, 6, 5, 7), "channels_last", "channels_last"),
    ((3, 6, 5, 7), "channels_last", "contiguous"),  # what autograd may hand back
    ((3, 6, 5, 7), "contiguous", "expanded"),
    ((3, 6, 5, 7), "transposed", "contiguous"),  # permuted spatial dims: copied first
    ((3, 6, 5, 7), "strided", "strided"),
    ((2, 6, 3, 4, 5), "contiguous", "contiguous"),
    ((2, 6, 3, 4, 5), "channels_last", "transposed"),
]


def test_cases_cover_the_tiling() -> None:
    """The cases hit several chunks, a ragged last channel block and ragged tiles."""
    cases = [make_case(s, xl, dl, torch.float32)[:2] for s, xl, dl in CASES]
    plans = [tbn.plan(*map(tbn.flattenable, x_dy)) for x_dy in cases]
    assert any(p.grid[1] > 1 for p in plans), "no case splits channels into chunks"
    assert any(p.C % p.block_c for p in plans), "no ragged last channel block"
    assert any(p.block_c > 1 for p in plans) and any(p.block_c == 1 for p in plans)
    assert any(p.n_tiles % p.tiles_per_chunk for p in plans), "no ragged last chunk"
    assert any(p.L % p.block_l or p.N % p.block_n for p in plans), "no ragged tile"
    assert any(p.N == 1 for p in plans) and any(p.N > 1 for p in plans)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("shape", "x_layout", "dy_layout"), CASES)
def test_matches_pytorch(shape: tuple[int, ...], x_layout: str, dy_layout: str,
                         dtype: torch.dtype) -> None:
    x, dy, weight, bias = make_case(shape, x_layout, dy_layout, dtype)
    got = assert_matches(x, dy, weight, bias)
    if x_layout in ("contiguous", "channels_last"):  # dense: output keeps x's layout
        assert got["y"].stride() == x.stride()
        assert got["dx"].stride() == x.stride()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_half_precision_keeps_float32_statistics(dtype: torch.dtype, layout: str) -> None:
    assert_matches(*make_case((3, 6, 5, 7), layout, layout, dtype))


def test_large_offset_is_stable_in_float32() -> None:
    """mean 1e4, std 1: E[x^2] - E[x]^2 in float32 is off by units; Chan's merge is not.

    The variance is good to float32 accuracy. Everything that depends on the mean inherits
    its rounding to float32 (an ulp of 1e4 is ~1e-3): ``dweight = inv_std * sum(dy * (x -
    mean))`` is off by about ``ulp * sum(dy)``. So those are held to PyTorch's own float32
    kernel: at most twice its error (plus 1e-5 of the scale) against float64 truth.
    """
    x, dy, weight, bias = make_case((4, 3, 8, 8), "contiguous", "contiguous", torch.float32,
                                    offset=1e4, std=1.0)
    got, want = triton_run(x, dy, weight, bias), truth(x, dy, weight, bias)
    native = pytorch_run(x, dy, weight, bias, torch.float32)
    dims = [0, 2, 3]
    naive = (x * x).mean(dims) - x.mean(dims).square()
    assert (naive.double() - want["var"]).abs().max() > 0.5, "the naive formula should fail here"
    torch.testing.assert_close(got["var"].double(), want["var"], rtol=1e-5, atol=0)
    torch.testing.assert_close(got["mean"].double(), want["mean"], rtol=0, atol=1e-3)
    for name in ("y", "dx", "dweight", "dbias"):
        error = (got[name].double() - want[name]).abs().max()
        native_error = (native[name].double() - want[name]).abs().max()
        assert error <= 2 * native_error + 1e-5 * want[name].abs().max(), (name, error)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_float64(layout: str) -> None:
    x, _, weight, bias = make_case((2, 2, 2, 3), layout, layout, torch.float64)
    inputs = tuple(t.detach().requires_grad_(True) for t in (x, weight, bias))
    assert torch.autograd.gradcheck(
        lambda *a: tbn.TritonBatchNormFunction.apply(*a, EPS)[0], inputs
    )


LAYOUTS = ["contiguous", "channels_last", "transposed", "strided"]


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, ...]:
    """``(N, C, *spatial)``, 2-D to 5-D, with more than one value per channel."""
    spatial = draw(st.lists(st.integers(1, 4), max_size=3))
    n, c = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    assume(n * math.prod(spatial) > 1)
    return (n, c, *spatial)


@settings(max_examples=20, deadline=None)
@given(
    shape=shapes(),
    x_layout=st.sampled_from(LAYOUTS),
    dy_layout=st.sampled_from([*LAYOUTS, "expanded"]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_layouts(shape: tuple[int, ...], x_layout: str, dy_layout: str,
                                   seed: int) -> None:
    assert_matches(*make_case(shape, x_layout, dy_layout, torch.float64, seed))


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every kernel launch fail the test."""

    class NoLaunch:
        def __getitem__(self, grid: object) -> None:
            raise AssertionError("a kernel was launched for bad input")

    for name in ("_stats_kernel", "_normalize_kernel", "_grad_sums_kernel",
                 "_grad_input_kernel"):
        monkeypatch.setattr(tbn, name, NoLaunch())


@pytest.mark.usefixtures("no_launch")
@pytest.mark.parametrize(
    ("shape", "dtype", "c_params", "error", "match"),
    [
        ((4, 3, 5), torch.int64, 3, TypeError, "floating-point"),
        ((4, 3, 5), torch.float32, 4, ValueError, "expected 4 channels"),
        ((12,), torch.float32, 12, ValueError, "2-D to 5-D"),
        ((1, 3), torch.float32, 3, ValueError, "more than 1 value per channel"),
        ((0, 3, 2), torch.float32, 3, ValueError, "non-empty batch"),
    ],
)
def test_bad_input_fails_before_launch(shape: tuple[int, ...], dtype: torch.dtype,
                                       c_params: int, error: type, match: str) -> None:
    x = torch.ones(shape, dtype=dtype, device=DEVICE)
    weight = torch.ones(c_params, device=DEVICE)
    with pytest.raises(error, match=match):
        tbn.batch_norm_forward(x, weight, torch.zeros_like(weight), EPS)


@pytest.mark.usefixtures("no_launch")
def test_bad_parameters_and_dy_fail_before_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.ones(4, 3, 5, device=DEVICE)
    weight = torch.ones(3, device=DEVICE)
    with pytest.raises(ValueError, match=r"bias of shape \(3,\)"):
        tbn.batch_norm_forward(x, weight, torch.zeros(3, 1, device=DEVICE), EPS)
    with pytest.raises(ValueError, match="dy of shape"):
        tbn.batch_norm_backward(x[:2], x, weight, weight, weight)
    with pytest.raises(ValueError, match="dy of shape"):
        tbn.batch_norm_backward(x.long(), x, weight, weight, weight)
    monkeypatch.setattr(tbn, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        tbn.batch_norm_forward(x.cpu(), weight.cpu(), weight.cpu(), EPS)


def test_second_derivative_raises_instead_of_being_wrong() -> None:
    """The kernels are opaque to autograd, so the Function is differentiable once: a
    gradient penalty through it must raise, not silently treat the statistics as constants."""
    x = torch.randn(4, 3, 2, 2, device=DEVICE, requires_grad=True)
    weight, bias = torch.ones(3, device=DEVICE), torch.zeros(3, device=DEVICE)
    y = tbn.TritonBatchNormFunction.apply(x, weight, bias, EPS)[0]
    head = torch.randn(3, 1, 1, device=DEVICE, requires_grad=True)  # a layer after BN
    (g,) = torch.autograd.grad((y * head).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.square().sum().backward()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_batch_on_gpu(dtype: torch.dtype, layout: str) -> None:
    """A ResNet-sized activation with the default tiles, compiled for the GPU."""
    assert tbn.available(torch.empty(1, device="cuda"))
    x, dy, weight, bias = make_case((256, 64, 56, 56), layout, layout, dtype)
    assert_matches(x, dy, weight, bias)
