"""bnlib's BatchNorm against PyTorch's own module tests: the inputs of ``module_db``.

The torch wheel ships the inputs its test suite feeds ``nn.BatchNorm1d/2d/3d``
(``torch.testing._internal.common_modules.module_db``: constructor arguments, input
tensors, an empty batch, and the inputs that must raise). We use them as an independent
oracle: each input goes through torch's module and through bnlib's :class:`BatchNorm`
built with the same arguments and state, in float32 and float64, training and eval, with
contiguous, non-contiguous and channels-last input, and we compare the output, its memory
layout, the gradients of the input, weight and bias, and every buffer. Every error input
must raise what torch raises (and leave bnlib's layer unchanged), and every float64 input
must pass ``gradgradcheck``.

Importing ``common_modules`` changes global state (it loads its own hypothesis profile and
locks ``torch.backends`` flags), so the inputs are drawn in a subprocess and handed over in
a file; nothing of torch's test machinery is imported here.
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from bnlib.torch_bn import BatchNorm

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODULES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
DTYPES = (torch.float32, torch.float64)
LAYOUTS = ("contiguous", "noncontiguous", "channels_last")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}  # of each tensor's largest value (or 1)

EXTRACT = textwrap.dedent("""
    import sys
    import torch
    from torch.testing._internal.common_modules import module_db

    torch.manual_seed(0)
    names = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d"}
    data = {"cases": [], "errors": []}
    for info in module_db:
        name = info.module_cls.__name__
        if name not in names:
            continue
        for dtype in (torch.float32, torch.float64):
            for training in (True, False):
                kw = dict(device="cpu", dtype=dtype, requires_grad=True, training=training)
                for mi in info.module_inputs_func(info, **kw):
                    data["cases"].append(dict(
                        module=name, dtype=dtype, training=training, desc=mi.desc,
                        args=mi.constructor_input.args, kwargs=mi.constructor_input.kwargs,
                        inputs=[t.detach() for t in mi.forward_input.args],
                        forward_kwargs=mi.forward_input.kwargs))
                for e in info.module_error_inputs_func(info, **kw):
                    mi = e.module_error_input
                    data["errors"].append(dict(
                        module=name, dtype=dtype, training=training,
                        args=mi.constructor_input.args, kwargs=mi.constructor_input.kwargs,
                        inputs=[t.detach() for t in mi.forward_input.args],
                        error_on=e.error_on.name, error_type=e.error_type.__name__,
                        error_regex=e.error_regex))
    torch.save(data, sys.argv[1])
""")


@pytest.fixture(scope="module")
def module_db_inputs(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("module_db") / "inputs.pt"
    subprocess.run([sys.executable, "-c", EXTRACT, str(path)], check=True)
    data = torch.load(path)
    found = {c["module"] for c in data["cases"]}
    assert found == set(MODULES), f"module_db has inputs for {found}"
    return data


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` in a strided view over a buffer twice its size, NaN in between:
    a kernel that reads memory it should not gives NaN."""
    buffer = t.new_full((*t.shape, 2), math.nan)
    buffer[..., 1] = t
    return buffer[..., 1]


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "noncontiguous":
        return noncontiguous(t)
    if layout == "channels_last":
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    return t.clone()


def randomize_state(m: torch.nn.Module, gen: torch.Generator) -> None:
    """Parameters and running statistics away from their defaults, so all of them matter."""
    c = m.num_features
    with torch.no_grad():
        if m.weight is not None:
            m.weight.copy_(0.5 + torch.rand(c, generator=gen))
        if m.bias is not None:
            m.bias.copy_(torch.randn(c, generator=gen))
        if m.running_mean is not None:
            m.running_mean.copy_(torch.randn(c, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
            m.num_batches_tracked.fill_(int(torch.randint(0, 5, (), generator=gen)))


def assert_close(actual, expected, dtype, what) -> int:
    """Compare two tensors (or two ``None``) as the test's tolerance says; returns 1."""
    if expected is None:
        assert actual is None, f"{what}: torch has none, bnlib has one"
        return 1
    assert actual is not None, f"{what}: bnlib has none"
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    if not expected.is_floating_point():
        assert torch.equal(actual, expected), f"{what}: {actual} != {expected}"
        return 1
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    tol = TOL[dtype]
    torch.testing.assert_close(actual / scale, expected / scale, rtol=tol, atol=tol,
                               msg=lambda m: f"{what}: {m}")
    return 1


def run_case(case: dict, layout: str, gen: torch.Generator) -> int:
    """One module_db input through torch's module and bnlib's; returns the comparisons made."""
    dtype = case["dtype"]
    theirs = getattr(torch.nn, case["module"])(*case["args"], **case["kwargs"]).to(dtype)
    randomize_state(theirs, gen)
    ours = BatchNorm(*case["args"], **case["kwargs"]).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    theirs.train(case["training"]), ours.train(case["training"])
    (x,) = case["inputs"]
    compared = 0
    for step in range(2):  # a second step: the running statistics build on the first
        x_step = x if step == 0 else 0.5 * x + 1.0
        dy = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
        results = []
        for m in (theirs, ours):
            m.zero_grad(set_to_none=True)
            xi = in_layout(x_step, layout).requires_grad_(True)
            y = m(xi, **case["forward_kwargs"])
            y.backward(in_layout(dy, layout))
            results.append((y.detach(), xi.grad, m))
        (y_t, dx_t, _), (y_o, dx_o, _) = results
        what = f"{case['module']} {case['desc'] or 'default'} step {step}"
        compared += assert_close(y_o, y_t, dtype, f"{what} output")
        compared += assert_close(dx_o, dx_t, dtype, f"{what} input gradient")
        if x.dim() in (4, 5) and layout == "channels_last":
            fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
            assert y_o.is_contiguous(memory_format=fmt) == y_t.is_contiguous(memory_format=fmt)
            compared += 1
        for name in ("weight", "bias"):
            g_t, g_o = getattr(theirs, name), getattr(ours, name)
            compared += assert_close(None if g_o is None else g_o.grad,
                                     None if g_t is None else g_t.grad, dtype, f"{what} d{name}")
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            compared += assert_close(getattr(ours, name), getattr(theirs, name), dtype,
                                     f"{what} {name}")
    return compared


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("module", MODULES)
def test_module_db_inputs_match_torch(module_db_inputs, module, dtype, training, layout):
    cases = [c for c in module_db_inputs["cases"]
             if (c["module"], c["dtype"], c["training"]) == (module, dtype, training)]
    if layout == "channels_last":  # defined for 4-D and 5-D input only, as in torch's tests
        cases = [c for c in cases if c["inputs"][0].dim() in (4, 5)]
        if not cases:
            pytest.skip(f"{module} takes 2-D and 3-D input; channels-last needs 4-D or 5-D")
    assert cases
    assert any(c["inputs"][0].numel() == 0 for c in cases), "module_db has an empty batch"
    gen = torch.Generator().manual_seed(0)
    compared = sum(run_case(c, layout, gen) for c in cases)
    assert compared >= 10 * len(cases)


def outcome(m: torch.nn.Module, x: torch.Tensor):
    try:
        return m(x)
    except Exception as e:
        return e


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_db_error_inputs_raise_as_in_torch(module_db_inputs, training):
    """Each error input raises in bnlib exactly when torch raises, with the same type and a
    message matching module_db's pattern; bnlib's layer is left as it was."""
    errors = [e for e in module_db_inputs["errors"] if e["training"] == training]
    assert {e["module"] for e in errors} == set(MODULES)
    for err in errors:
        what = f"{err['module']} {err['args']} {err['kwargs']}"
        assert err["error_on"] == "FORWARD_ERROR", what  # BN has no construction errors
        theirs = getattr(torch.nn, err["module"])(*err["args"], **err["kwargs"])
        ours = BatchNorm(*err["args"], **err["kwargs"])
        # module_db raises on a fresh module, in training mode; in eval torch only refuses
        # eps < 0. bnlib must do what torch does in both modes.
        theirs.train(training), ours.train(training)
        before = copy.deepcopy(ours.state_dict())
        (x,) = err["inputs"]
        got_t, got_o = outcome(theirs, x.to(err["dtype"])), outcome(ours, x.to(err["dtype"]))
        if training:
            assert type(got_t).__name__ == err["error_type"], f"the oracle: {what}"
        if isinstance(got_t, Exception):
            assert type(got_o) is type(got_t), f"{what}: torch raised {got_t!r}, bnlib {got_o!r}"
            if re.search(err["error_regex"], str(got_t)):
                assert re.search(err["error_regex"], str(got_o)), f"{what}: {got_o}"
            for k, v in ours.state_dict().items():
                assert torch.equal(v, before[k]), f"{what}: {k} changed by a refused call"
        else:
            assert not isinstance(got_o, Exception), f"{what}: bnlib raised {got_o!r}"
            torch.testing.assert_close(got_o, got_t)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("module", MODULES)
def test_module_db_inputs_pass_gradgradcheck(module_db_inputs, module, training):
    """Second derivatives through x, weight and bias, as torch's test_modules checks them."""
    cases = [c for c in module_db_inputs["cases"] if c["module"] == module
             and c["dtype"] == torch.float64 and c["training"] == training]
    gen = torch.Generator().manual_seed(1)
    for case in cases:
        bn = BatchNorm(*case["args"], **case["kwargs"]).double()
        randomize_state(bn, gen)
        bn.train(training)
        names = [n for n, _ in bn.named_parameters()]
        params = [p.detach().clone().requires_grad_(True) for p in bn.parameters()]
        x = case["inputs"][0].clone().requires_grad_(True)

        def f(x, *params, bn=bn, names=names):
            return torch.func.functional_call(bn, dict(zip(names, params)), (x,))

        assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True), case["desc"]
