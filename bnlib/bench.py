"""The benchmark harness behind `make bench` and the chapter on making BN fast.

BN moves data and does little arithmetic, so its speed limit is memory bandwidth. Every
timing is therefore also reported as an *effective bandwidth* under a stated byte model,
next to the measured copy bandwidth of the same machine, and as a ratio to PyTorch's
native kernel.

Byte model (bytes that must cross the memory bus, ``n`` elements of ``s`` bytes):

* training forward: read ``x`` for the statistics, read ``x`` again and write ``y`` to
  normalize: **3 passes**, ``3 n s`` bytes;
* backward: read ``dy`` and ``x`` for the two per-channel sums, read both again and write
  ``dx``: **5 passes**, ``5 n s`` bytes;
* copy: read and write once, ``2 n s`` bytes.

Each implementation is timed for the forward pass, the backward pass alone (from a
forward done beforehand) and both together. On CUDA the table adds cuDNN switched off,
bnlib's fused Triton kernel (:mod:`bnlib.triton_bn`, when triton is installed), and
bfloat16 input.

Usage: ``python -m bnlib.bench [--quick] [--compile] [--threads N] [--json PATH]
[--record]`` (``make bench``). ``--record`` (GPU only) also stores the run in
:data:`RECORDED_GPU`, which ships with bnlib so that the chapter can show it on machines
without a GPU. Run it on an otherwise idle machine: on a busy CPU, PyTorch's worker threads
wait for each other and timings become meaningless.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bnlib import reference as ref
from bnlib.runtime import device as default_device
from bnlib.torch_bn import BatchNormFunction

PASSES = {"forward": 3, "backward": 5, "both": 8}


# --------------------------------------------------------------------------- timing


@dataclass
class Result:
    """One measured (implementation, shape, pass) cell of the benchmark table."""

    impl: str
    shape: tuple[int, ...]
    layout: str
    dtype: str
    which: str  # "forward", "backward" or "both"
    median_ms: float
    gb_per_s: float
    fraction_of_copy: float
    ratio_to_native: float | None = None


def time_median(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall time of ``fn()`` in seconds, after two warm-up calls."""
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(numel: int, device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Measured copy bandwidth in GB/s for ``numel`` elements (bytes read plus written)."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    sec = time_median(lambda: dst.copy_(src), repeats, synchronizer(device))
    return 2 * numel * src.element_size() / sec / 1e9


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits until ``device`` has finished its queued work (a no-op on CPU):
    call it before reading a clock, or a GPU timing measures only the launch."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _torch_impl(fn: Callable) -> dict[str, Callable]:
    """Timing callables for ``fn(x, weight, bias) -> y``, a BN in training mode."""

    def setup(x: torch.Tensor) -> dict:
        c = x.shape[1]
        s = {"x": x.detach().requires_grad_(True), "dy": torch.randn_like(x),
             "w": torch.ones(c, device=x.device, requires_grad=True),
             "b": torch.zeros(c, device=x.device, requires_grad=True)}
        s["y"] = fn(s["x"], s["w"], s["b"])  # kept, so "backward" can be timed alone
        return s

    def backward(s: dict) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(s["y"], (s["x"], s["w"], s["b"]), s["dy"], retain_graph=True)

    def both(s: dict) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(fn(s["x"], s["w"], s["b"]), (s["x"], s["w"], s["b"]), s["dy"])

    return {"setup": setup, "forward": lambda s: fn(s["x"], s["w"], s["b"]).detach(),
            "backward": backward, "both": both}


def _numpy_impl(fwd: Callable, bwd: Callable) -> dict[str, Callable]:
    """Timing callables for a NumPy ``fwd(x, gamma, beta) -> (y, cache)`` and its ``bwd``."""

    def setup(x: torch.Tensor) -> dict:
        xn = x.detach().contiguous().numpy()
        c = xn.shape[1]
        s = {"x": xn, "g": np.ones(c, xn.dtype), "b": np.zeros(c, xn.dtype),
             "dy": np.random.default_rng(0).standard_normal(xn.shape).astype(xn.dtype)}
        s["cache"] = fwd(s["x"], s["g"], s["b"])[1]
        return s

    def both(s: dict) -> tuple[np.ndarray, ...]:
        return bwd(s["dy"], fwd(s["x"], s["g"], s["b"])[1])

    return {"setup": setup, "forward": lambda s: fwd(s["x"], s["g"], s["b"])[0],
            "backward": lambda s: bwd(s["dy"], s["cache"]), "both": both}


def native(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PyTorch's own BN kernel (on CUDA it dispatches to cuDNN where cuDNN is enabled)."""
    return F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)


def native_without_cudnn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PyTorch's own CUDA kernel with cuDNN switched off (the backward follows the forward)."""
    with torch.backends.cudnn.flags(enabled=False):
        return native(x, w, b)


def bnlib_function(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bnlib's op-by-op ``autograd.Function`` with the hand-derived backward."""
    return BatchNormFunction.apply(x, w, b, 1e-5)[0]


def triton_available() -> bool:
    """Whether the fused Triton kernel can run here: triton installed and a CUDA device."""
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def implementations(device: torch.device, compiled: bool) -> dict[str, dict[str, Callable]]:
    """For each implementation, ``setup(x) -> state`` and ``forward``/``backward``/``both``.

    Every implementation gets the same tensor ``x`` and must compute BN in training mode
    with batch statistics (weight 1, bias 0); ``backward`` returns ``(dx, dgamma, dbeta)``
    for the upstream gradient ``state["dy"]`` from a forward done in ``setup``; ``both``
    does forward and backward and returns the same.
    """
    impls = {"torch native": _torch_impl(native),
             "bnlib autograd.Function": _torch_impl(bnlib_function)}
    if device.type == "cuda":
        impls["torch native, cuDNN off"] = _torch_impl(native_without_cudnn)
        if triton_available():
            from bnlib.triton_bn import TritonBatchNormFunction

            impls["bnlib Triton (fused)"] = _torch_impl(
                lambda x, w, b: TritonBatchNormFunction.apply(x, w, b, 1e-5)[0])
    if compiled:
        impls["torch.compile(native)"] = _torch_impl(torch.compile(native, dynamic=False))
        impls["torch.compile(bnlib)"] = _torch_impl(torch.compile(bnlib_function,
                                                                  dynamic=False))
    if device.type == "cpu":
        impls["NumPy reference (teaching)"] = _numpy_impl(ref.batchnorm_forward,
                                                          ref.batchnorm_backward)
        impls["NumPy optimized"] = _numpy_impl(ref.batchnorm_forward_fast,
                                               ref.batchnorm_backward_fast)
    return impls


WHICH = ("forward", "backward", "both")


def run(
    shapes: list[tuple[int, ...]],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    layouts: tuple[str, ...] = ("NCHW", "channels_last"),
    repeats: int = 10,
    compiled: bool = False,
) -> list[Result]:
    """Time every implementation on every shape and layout; return the table's rows."""
    rows: list[Result] = []
    for shape in shapes:
        numel = int(np.prod(shape))
        copy_gbs = copy_bandwidth(numel, device, dtype, repeats)
        for layout in layouts:
            if layout == "channels_last" and len(shape) != 4:
                continue
            x = torch.randn(shape, device=device).to(dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            native_ms: dict[str, float] = {}
            for name, impl in implementations(device, compiled).items():
                if name.startswith("NumPy") and (layout != "NCHW" or dtype != torch.float32):
                    continue
                state = impl["setup"](x)
                for which in WHICH:
                    step = impl[which]
                    sec = time_median(lambda step=step, state=state: step(state), repeats,
                                      synchronizer(device))
                    gbs = PASSES[which] * numel * x.element_size() / sec / 1e9
                    if name == "torch native":
                        native_ms[which] = sec * 1e3
                    rows.append(Result(
                        impl=name, shape=tuple(shape), layout=layout,
                        dtype=str(dtype).removeprefix("torch."), which=which,
                        median_ms=sec * 1e3, gb_per_s=gbs, fraction_of_copy=gbs / copy_gbs,
                        ratio_to_native=(sec * 1e3 / native_ms[which]) if which in native_ms
                        else None,
                    ))
                del state
    return rows


def environment(device: torch.device) -> dict:
    """Device, versions, threads and date: the provenance stored with every result."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    env = {
        "device": f"{device.type}: {name or platform.machine()}",
        "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        if triton_available():
            import triton

            env["triton"] = triton.__version__
    return env


RECORDED_GPU = Path(__file__).with_name("results") / "gpu.json"
"""Where ``python -m bnlib.bench --record`` stores a GPU run; shipped with bnlib, so the
chapter can show recorded GPU numbers on machines without one."""


def recorded_gpu_results() -> dict | None:
    """The recorded GPU run (``{"environment": ..., "results": [...]}``), or None if none."""
    return json.loads(RECORDED_GPU.read_text()) if RECORDED_GPU.exists() else None


def format_table(rows: list[Result]) -> str:
    """The rows as a fixed-width text table."""
    head = (f"{'implementation':<28} {'shape':<18} {'layout':<13} {'dtype':<8} {'pass':<8} "
            f"{'ms':>8} {'GB/s':>7} {'of copy':>8} {'vs native':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.ratio_to_native:.2f}x" if r.ratio_to_native is not None else "-"
        lines.append(f"{r.impl:<28} {str(r.shape):<18} {r.layout:<13} {r.dtype:<8} {r.which:<8} "
                     f"{r.median_ms:8.3f} {r.gb_per_s:7.1f} {r.fraction_of_copy:8.0%} {ratio:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark BN implementations (bnlib.bench).")
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    ap.add_argument("--compile", action="store_true", help="include torch.compile (slow start)")
    ap.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")
    ap.add_argument("--json", type=Path, default=Path("_build/bench/results.json"))
    ap.add_argument("--record", action="store_true",
                    help=f"on a GPU, also store the results as {RECORDED_GPU} (commit it)")
    args = ap.parse_args(argv)
    device = default_device()
    if args.record and device.type != "cuda":
        ap.error("--record stores GPU results, and no CUDA device is available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [torch.float32]
    if args.quick:
        shapes, repeats = [(8, 16, 16, 16), (16, 32, 28, 28)], 5
    elif device.type == "cuda":
        shapes, repeats = [(32, 64, 56, 56), (256, 64, 56, 56)], 20
        dtypes.append(torch.bfloat16)
    else:
        shapes, repeats = [(8, 16, 16, 16), (32, 64, 56, 56)], 10
    env = environment(device)
    rows = [r for dtype in dtypes
            for r in run(shapes, device, dtype=dtype, repeats=repeats, compiled=args.compile)]
    print(f"{env['device']}, torch {env['torch']}, {env['threads']} CPU threads, {env['date']}")
    print("Byte model: forward 3 passes, backward 5, forward+backward 8 over the tensor.")
    print(format_table(rows))
    text = json.dumps({"environment": env, "results": [asdict(r) for r in rows]}, indent=1)
    for path in [args.json] + ([RECORDED_GPU] if args.record else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
