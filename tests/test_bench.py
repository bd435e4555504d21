"""bnlib.bench: the optimized NumPy BN equals the reference; the harness measures sanely."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bnlib import bench
from bnlib import reference as ref


@given(
    shape=st.sampled_from([(4, 3), (5, 2, 7), (2, 3, 4, 5), (3, 2, 2, 3, 2)]),
    offset=st.sampled_from([0.0, 5.0, -50.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fast_numpy_equals_reference_in_float64(shape, offset, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(offset, 2.0, size=shape)
    gamma, beta = rng.normal(size=shape[1]), rng.normal(size=shape[1])
    dy = rng.normal(size=shape)
    y, cache = ref.batchnorm_forward(x, gamma, beta)
    y_fast, cache_fast = ref.batchnorm_forward_fast(x, gamma, beta)
    np.testing.assert_allclose(y_fast, y, rtol=1e-10, atol=1e-10)
    for fast, slow in zip(ref.batchnorm_backward_fast(dy, cache_fast),
                          ref.batchnorm_backward(dy, cache)):
        np.testing.assert_allclose(fast, slow, rtol=1e-8, atol=1e-8)


def test_fast_numpy_keeps_float32_and_its_accuracy():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(16, 8, 6, 6)) + 3.0).astype(np.float32)
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    y_fast, _ = ref.batchnorm_forward_fast(x, g, b)
    y64, _ = ref.batchnorm_forward(x.astype(np.float64), g.astype(np.float64), b.astype(np.float64))
    assert y_fast.dtype == np.float32
    np.testing.assert_allclose(y_fast, y64, atol=1e-5)


def test_fast_numpy_does_not_modify_its_input():
    x = np.random.default_rng(1).normal(size=(4, 3, 2, 2))
    before = x.copy()
    ref.batchnorm_forward_fast(x, np.ones(3), np.zeros(3))
    np.testing.assert_array_equal(x, before)


def test_run_reports_every_implementation_with_bandwidth_and_ratios():
    rows = bench.run([(4, 8, 6, 6)], torch.device("cpu"), repeats=2)
    impls = {r.impl for r in rows}
    assert {"torch native", "bnlib autograd.Function", "NumPy optimized",
            "NumPy reference (teaching)"} <= impls
    assert {r.layout for r in rows} == {"NCHW", "channels_last"}
    for r in rows:
        assert r.median_ms > 0 and r.gb_per_s > 0 and r.fraction_of_copy > 0
        if r.impl == "torch native":
            assert r.ratio_to_native == pytest.approx(1.0)
    assert {r.which for r in rows} == {"forward", "backward", "both"}
    numel_bytes = 4 * 8 * 6 * 6 * 4
    for which, passes in (("forward", 3), ("backward", 5), ("both", 8)):
        r = next(r for r in rows if r.impl == "torch native" and r.which == which)
        assert r.gb_per_s == pytest.approx(passes * numel_bytes / (r.median_ms / 1e3) / 1e9)


def test_every_implementation_computes_batchnorm():
    # The harness must time BN, not something cheaper: every forward equals F.batch_norm,
    # and every backward (alone, twice, and after a forward) gives autograd's gradients of
    # F.batch_norm for the same upstream gradient dy.
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    for name, impl in bench.implementations(torch.device("cpu"), compiled=False).items():
        state = impl["setup"](x)
        y = torch.as_tensor(impl["forward"](state))
        xr = x.double().requires_grad_(True)
        w, b = torch.ones(3, dtype=torch.float64, requires_grad=True), torch.zeros(
            3, dtype=torch.float64, requires_grad=True)
        expected = torch.nn.functional.batch_norm(xr, None, None, w, b, training=True)
        torch.testing.assert_close(y.double(), expected.detach(), atol=1e-5, rtol=1e-5, msg=name)
        dy = torch.as_tensor(state["dy"]).double()
        want = torch.autograd.grad(expected, (xr, w, b), dy)
        for step in ("backward", "backward", "both"):
            got = impl[step](state)
            for g, e, what in zip(got, want, ("dx", "dgamma", "dbeta"), strict=True):
                torch.testing.assert_close(torch.as_tensor(g).double(), e, atol=1e-4,
                                           rtol=1e-4, msg=f"{name} {step} {what}")


def test_record_refuses_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as e:
        bench.main(["--record"])
    assert e.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def test_recorded_gpu_results_are_read_back_or_none(tmp_path, monkeypatch):
    shipped = bench.recorded_gpu_results()  # the file committed with bnlib, if any
    if shipped is not None:
        assert shipped["environment"]["device"].startswith("cuda")
        assert {"torch", "cuda", "date"} <= set(shipped["environment"])
        assert any(r["impl"] == "torch native" for r in shipped["results"])
    monkeypatch.setattr(bench, "RECORDED_GPU", tmp_path / "gpu.json")
    assert bench.recorded_gpu_results() is None
    run = {"environment": {"device": "cuda: test"}, "results": [{"impl": "torch native"}]}
    (tmp_path / "gpu.json").write_text(json.dumps(run))
    assert bench.recorded_gpu_results() == run


def test_main_writes_json_with_provenance(tmp_path, capsys, monkeypatch):
    real_run = bench.run
    monkeypatch.setattr(bench, "run", lambda shapes, device, **kw: real_run(
        [(2, 4, 4, 4)], device, repeats=2, layouts=("NCHW",)))
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"device", "torch", "threads", "date"} <= set(data["environment"])
    assert data["results"] and "vs native" in capsys.readouterr().out


@pytest.mark.gpu
def test_cuda_table_has_cudnn_off_triton_and_records(tmp_path, monkeypatch):
    real_run = bench.run
    monkeypatch.setattr(bench, "RECORDED_GPU", tmp_path / "gpu.json")
    monkeypatch.setattr(bench, "run", lambda shapes, device, **kw: real_run(
        [(4, 8, 6, 6)], device, repeats=2, dtype=kw.get("dtype", torch.float32)))
    assert bench.main(["--quick", "--record", "--json", str(tmp_path / "r.json")]) == 0
    data = bench.recorded_gpu_results()
    impls = {r["impl"] for r in data["results"]}
    assert {"torch native", "torch native, cuDNN off", "bnlib autograd.Function"} <= impls
    assert ("bnlib Triton (fused)" in impls) == bench.triton_available()
    assert data["environment"]["device"].startswith("cuda") and data["environment"]["cudnn"]
    x = torch.randn(4, 3, 5, 5, device="cuda") * 2 + 1
    expected = torch.nn.functional.batch_norm(x, None, None, training=True)
    for name, impl in bench.implementations(torch.device("cuda"), compiled=False).items():
        y = impl["forward"](impl["setup"](x))
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5, msg=name)
