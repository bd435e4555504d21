"""bnlib.torch_bn and bnlib.reference proven equal to torch.nn.BatchNorm1d/2d/3d.

Property tests draw shapes, dtypes and every constructor option; each example runs a few
training steps and one evaluation step through three implementations side by side and
compares outputs, the gradients of x, weight and bias, and every running buffer. In
float64 bnlib must match PyTorch to 1e-10; in float32 it must be within 1e-5 of the float64
result, or at least as accurate as PyTorch's own float32 kernel on ill-conditioned batches.
"""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnlib import reference as R
from bnlib.torch_bn import BatchNorm, BatchNormFunction

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def torch_reference(ndim: int, c: int, **kw) -> torch.nn.Module:
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d,
           4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[ndim]
    return cls(c, **kw)


@st.composite
def configs(draw):
    ndim = draw(st.integers(2, 5))
    c = draw(st.integers(1, 4))
    n = draw(st.integers(2, 6))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim - 2, max_size=ndim - 2)))
    return dict(
        shape=(n, c, *spatial),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        momentum=draw(st.sampled_from([0.1, 0.0, 0.5, 1.0, None])),
        affine=draw(st.booleans()),
        track=draw(st.booleans()),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])),
        steps=draw(st.integers(1, 3)),
        scale=draw(st.sampled_from([1e-2, 1.0, 30.0])),
        # The offset is in units of the spread: BN's conditioning depends on their ratio.
        offset=draw(st.sampled_from([0.0, 3.0, -20.0])),
        # Memory layouts of x and of the incoming gradient: the fast per-channel sums
        # take a different path for each (see bnlib.torch_bn.channel_matrix).
        layout=draw(st.sampled_from(LAYOUTS)),
        dy_layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


LAYOUTS = ("contiguous", "channels_last", "strided")


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` in another memory layout (channels-last needs 4-D or 5-D)."""
    if layout == "channels_last" and t.dim() in (4, 5):
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    if layout == "strided":  # a permuted-strides view: neither contiguous nor channels-last
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    return t


def _close(actual, expected, dtype, what):
    a = torch.as_tensor(actual, dtype=torch.float64)
    e = torch.as_tensor(expected, dtype=torch.float64)
    scale = max(1.0, e.abs().max().item())  # gradients can be large for tiny variances
    tol = TOL[dtype]
    torch.testing.assert_close(a / scale, e / scale, **tol, msg=lambda m: f"{what}: {m}")


def _as_accurate(ours, theirs, truth, what):
    """float32: ``ours`` is within 1e-5 of the float64 ``truth``, or no further from it than
    twice PyTorch's own float32 result is (ill-conditioned batches lose digits in both)."""
    truth = torch.as_tensor(truth, dtype=torch.float64)
    scale = max(1.0, truth.abs().max().item())
    err = (torch.as_tensor(ours, dtype=torch.float64) - truth).abs().max().item() / scale
    err_torch = (torch.as_tensor(theirs, dtype=torch.float64) - truth).abs().max().item() / scale
    assert err <= max(1e-5, 2 * err_torch), (
        f"{what}: error {err:.3g} vs float64 truth; PyTorch's float32 error is {err_torch:.3g}"
    )


@given(configs())
def test_three_implementations_agree(cfg):
    g = torch.Generator().manual_seed(cfg["seed"])
    dtype, shape = cfg["dtype"], cfg["shape"]
    kw = dict(eps=cfg["eps"], momentum=cfg["momentum"], affine=cfg["affine"],
              track_running_stats=cfg["track"])
    ref = torch_reference(len(shape), shape[1], **kw).to(dtype)
    if cfg["affine"]:
        with torch.no_grad():
            ref.weight.copy_(torch.randn(shape[1], generator=g, dtype=dtype))
            ref.bias.copy_(torch.randn(shape[1], generator=g, dtype=dtype))
    ours = BatchNorm(shape[1], **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    ref64 = copy.deepcopy(ref).double()  # the NumPy reference computes in float64
    npy = R.BatchNorm(shape[1], **kw)
    if cfg["affine"]:
        npy.gamma = ref.weight.detach().double().numpy()
        npy.beta = ref.bias.detach().double().numpy()

    for step in range(cfg["steps"] + 1):
        training = step < cfg["steps"]
        for m in (ref, ours, ref64, npy):
            m.train(training)
        x = (torch.randn(shape, generator=g, dtype=dtype) + cfg["offset"]) * cfg["scale"]
        dy = torch.randn(shape, generator=g, dtype=dtype)
        outs = {}
        for name, m in (("torch", ref), ("bnlib", ours), ("torch64", ref64)):
            if name == "torch64":
                x, dy = x.double(), dy.double()
            xi = in_layout(x.clone(), cfg["layout"]).requires_grad_(True)
            if cfg["affine"]:
                m.zero_grad(set_to_none=True)
            y = m(xi)
            y.backward(in_layout(dy, cfg["dy_layout"]))
            if name == "bnlib" and xi.dim() in (4, 5) and cfg["layout"] == "channels_last":
                fmt = torch.channels_last if xi.dim() == 4 else torch.channels_last_3d
                assert y.is_contiguous(memory_format=fmt), "y lost the input's memory layout"
            outs[name] = (y.detach(), xi.grad,
                          m.weight.grad if cfg["affine"] else None,
                          m.bias.grad if cfg["affine"] else None)
        y_np = npy(x.double().numpy())
        dx_np = npy.backward(dy.double().numpy())
        outs["numpy"] = (y_np, dx_np, npy.dgamma, npy.dbeta)
        names = ("y", "dx", "dweight", "dbias")
        for what, a, t, t64 in zip(names, outs["bnlib"], outs["torch"], outs["torch64"]):
            if t is None:
                continue
            label = f"bnlib {what} (step {step}, training={training})"
            if dtype == torch.float64:
                _close(a, t, dtype, label)
            else:
                _as_accurate(a, t, t64, label)
        for what, a, t64 in zip(names, outs["numpy"], outs["torch64"]):
            if t64 is not None:
                _close(a, t64, torch.float64, f"numpy {what} (step {step}, training={training})")
        if cfg["track"]:
            for buf in ("running_mean", "running_var"):
                if dtype == torch.float64:
                    _close(getattr(ours, buf), getattr(ref, buf), dtype, f"bnlib {buf}")
                else:
                    _as_accurate(getattr(ours, buf), getattr(ref, buf), getattr(ref64, buf),
                                 f"bnlib {buf}")
                _close(getattr(npy, buf), getattr(ref64, buf), torch.float64, f"numpy {buf}")
            assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()
            assert npy.num_batches_tracked == ref.num_batches_tracked.item()
        else:
            assert ours.running_mean is None and npy.running_mean is None


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 3, 2), (2, 2, 2, 2, 3)])
def test_gradcheck_hand_written_backward(shape, layout):
    x = in_layout(torch.randn(shape, dtype=torch.float64), layout).requires_grad_(True)
    w = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape[1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: BatchNormFunction.apply(*a, 1e-5)[0], (x, w, b))


def test_gradcheck_module_in_eval_mode():
    bn = BatchNorm(3).double()
    bn(torch.randn(8, 3, dtype=torch.float64))
    bn.eval()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bn, (x,))


def test_backward_does_not_trace_the_forward_ops():
    """The hand-written Function is the only node autograd sees in training mode."""
    bn = BatchNorm(3)
    y = bn(torch.randn(5, 3, requires_grad=True))
    assert type(y.grad_fn).__name__ == "BatchNormFunctionBackward"


@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
def test_state_dict_moves_both_ways(ndim):
    c = 4
    ref = torch_reference(ndim, c)
    ours = BatchNorm(c)
    assert list(ref.state_dict()) == list(ours.state_dict())
    x = torch.randn((3, c) + (2,) * (ndim - 2)) * 3 + 1
    ref(x)
    ours.load_state_dict(ref.state_dict())
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v)
    ours(x * 2)
    ref2 = torch_reference(ndim, c)
    ref2.load_state_dict(ours.state_dict())
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(ref2.state_dict()[k], v)
    ref2.eval(), ours.eval()
    torch.testing.assert_close(ref2(x), ours(x))


def test_bias_false_matches_torch():
    ref = torch.nn.BatchNorm1d(3, bias=False)
    ours = BatchNorm(3, bias=False)
    assert ours.bias is None and list(ref.state_dict()) == list(ours.state_dict())
    x = torch.randn(6, 3)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_keeps_float32_statistics(dtype):
    torch.manual_seed(0)
    x32 = torch.randn(16, 3, 4, 4) * 2 + 1
    ours = BatchNorm(3)
    exact = BatchNorm(3)
    x = x32.to(dtype).requires_grad_(True)
    y = ours(x)
    assert y.dtype == dtype
    assert ours.running_mean.dtype == torch.float32 and ours.running_var.dtype == torch.float32
    y_exact = exact(x.detach().float())
    torch.testing.assert_close(y.float(), y_exact, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(ours.running_var, exact.running_var, atol=1e-6, rtol=1e-6)
    y.float().sum().backward()
    assert x.grad.dtype == dtype and ours.weight.grad.dtype == torch.float32


def test_large_offset_float32_normalizes_to_unit_std():
    x = torch.randn(512, 3, generator=torch.Generator().manual_seed(1)) + 1e4
    y = BatchNorm(3)(x)
    torch.testing.assert_close(y.std(dim=0, unbiased=False), torch.ones(3), atol=1e-2, rtol=0)


BAD_INPUTS = [
    ("one value per channel", torch.randn(1, 3), ValueError, "more than 1 value per channel"),
    ("one value per channel, 4-D", torch.randn(1, 3, 1, 1), ValueError, "more than 1 value"),
    ("channel mismatch", torch.randn(4, 5), ValueError, "expected 3 channels"),
    ("1-D input", torch.randn(3), ValueError, "2-D to 5-D"),
    ("6-D input", torch.randn(2, 3, 1, 1, 1, 2), ValueError, "2-D to 5-D"),
    ("integer dtype", torch.ones(4, 3, dtype=torch.long), TypeError, "floating-point"),
    ("not a tensor", np.ones((4, 3)), TypeError, "torch.Tensor"),
]


@pytest.mark.parametrize("label,x,exc,msg", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gives_clear_error_and_leaves_state_untouched(label, x, exc, msg):
    bn = BatchNorm(3)
    bn(torch.randn(8, 3) * 2 + 1)
    before = copy.deepcopy(bn.state_dict())
    with pytest.raises(exc, match=msg):
        bn(x)
    for k, v in bn.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


NP_BAD_INPUTS = [
    ("one value per channel", np.ones((1, 3)), ValueError, "more than 1 value per channel"),
    ("channel mismatch", np.ones((4, 5)), ValueError, "expected 3 channels"),
    ("1-D input", np.ones(3), ValueError, "2-D input|shape \\(N, C\\)"),
    ("integer dtype", np.ones((4, 3), dtype=np.int64), TypeError, "floating-point"),
    ("empty batch", np.ones((0, 3)), ValueError, "non-empty batch"),
    ("not an array", [[1.0, 2.0, 3.0]] * 2, TypeError, "NumPy array"),
]


@pytest.mark.parametrize("label,x,exc,msg", NP_BAD_INPUTS, ids=[b[0] for b in NP_BAD_INPUTS])
def test_reference_bad_input_gives_clear_error_and_leaves_state_untouched(label, x, exc, msg):
    bn = R.BatchNorm(3)
    bn(np.random.default_rng(0).normal(size=(8, 3)))
    before = (bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked)
    with pytest.raises(exc, match=msg):
        bn(x)
    np.testing.assert_array_equal(bn.running_mean, before[0])
    np.testing.assert_array_equal(bn.running_var, before[1])
    assert bn.num_batches_tracked == before[2]


def test_single_value_per_channel_is_fine_in_eval():
    bn = BatchNorm(3)
    bn(torch.randn(8, 3))
    bn.eval()
    assert bn(torch.randn(1, 3)).shape == (1, 3)


@pytest.mark.gpu
@given(configs())
def test_cuda_matches_cpu(cfg):
    g = torch.Generator().manual_seed(cfg["seed"])
    shape, dtype = cfg["shape"], cfg["dtype"]
    kw = dict(eps=cfg["eps"], momentum=cfg["momentum"], affine=cfg["affine"],
              track_running_stats=cfg["track"])
    cpu, gpu = BatchNorm(shape[1], **kw).to(dtype), BatchNorm(shape[1], **kw).to(dtype).cuda()
    ref = torch_reference(len(shape), shape[1], **kw).to(dtype).cuda()
    for _ in range(cfg["steps"]):
        x = (torch.randn(shape, generator=g, dtype=dtype) + cfg["offset"]) * cfg["scale"]
        xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
        xr = x.cuda().requires_grad_()
        cpu(xc).sum().backward()
        gpu(xg).sum().backward()
        ref(xr).sum().backward()
        _close(xg.grad.cpu(), xc.grad, dtype, "cuda vs cpu dx")
        _close(xg.grad.cpu(), xr.grad.cpu(), dtype, "cuda vs torch cuda dx")
    if cfg["track"]:
        _close(gpu.running_var.cpu(), cpu.running_var, dtype, "running_var")
        _close(gpu.running_var.cpu(), ref.running_var.cpu(), dtype, "running_var vs torch")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_matches_cudnn(dtype):
    x = (torch.randn(32, 8, 16, 16, device="cuda") * 3 + 2).to(dtype)
    ours, ref = BatchNorm(8).cuda(), torch.nn.BatchNorm2d(8).cuda()
    torch.testing.assert_close(ours(x).float(), ref(x).float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-3, rtol=1e-3)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile needs a C++ compiler on CPU (apt-get install g++)")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compiled_function_matches_float64_truth(layout):
    # Under torch.compile, channel_dot takes its fusable branch: test that path too.
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(7)
    x = in_layout(torch.randn(4, 3, 5, 6, generator=g) * 3 + 10, layout).requires_grad_(True)
    w, b = torch.randn(3, generator=g), torch.randn(3, generator=g)
    w.requires_grad_(True)
    b.requires_grad_(True)
    dy = in_layout(torch.randn(4, 3, 5, 6, generator=g), layout)
    compiled = torch.compile(lambda *a: BatchNormFunction.apply(*a, 1e-5), dynamic=False)
    y, mean, var = compiled(x, w, b)
    grads = torch.autograd.grad(y, (x, w, b), dy)
    x64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    y64 = torch.nn.functional.batch_norm(x64, None, None, w64, b64, training=True)
    grads64 = torch.autograd.grad(y64, (x64, w64, b64), dy.double())
    _close(y, y64, torch.float32, "compiled y")
    _close(mean, x64.mean((0, 2, 3)), torch.float32, "compiled mean")
    _close(var, x64.var((0, 2, 3), correction=0), torch.float32, "compiled var")
    for what, a, e in zip(("dx", "dweight", "dbias"), grads, grads64):
        _close(a, e, torch.float32, f"compiled {what}")
