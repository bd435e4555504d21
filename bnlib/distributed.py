"""Run :class:`bnlib.variants.SyncBatchNorm` in several CPU processes (gloo), for tests and
the batch-size chapter: no GPU and no cluster needed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bnlib.variants import SyncBatchNorm


def free_port() -> int:
    """A free TCP port on localhost, for a ``torch.distributed`` rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, world: int, port: int, sizes: list[int], shape: tuple[int, ...],
                 seed: int, folder: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(seed)
        x_all = 3.0 + 2.0 * torch.randn(sum(sizes), *shape, generator=gen, dtype=torch.float64)
        dy_all = torch.randn(x_all.shape, generator=gen, dtype=torch.float64)
        start = sum(sizes[:rank])
        x = x_all[start:start + sizes[rank]].clone().requires_grad_(True)
        bn = SyncBatchNorm(shape[0], dtype=torch.float64)
        with torch.no_grad():
            bn.weight.copy_(torch.linspace(0.5, 2.0, shape[0], dtype=torch.float64))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, shape[0], dtype=torch.float64))
        y = bn(x)
        (y * dy_all[start:start + sizes[rank]]).sum().backward()
        torch.save({"y": y.detach(), "dx": x.grad, "dweight": bn.weight.grad,
                    "dbias": bn.bias.grad, "state": bn.state_dict()},
                   os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def sync_batchnorm_run(
    sizes: Sequence[int], shape: tuple[int, ...] = (3, 5), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Run one :class:`SyncBatchNorm` step in ``len(sizes)`` CPU processes (gloo backend).

    Process ``k`` takes rows ``sizes[0] + ... + sizes[k-1]`` onward (``sizes[k]`` of them) of
    a seeded float64 batch ``x`` ``(sum(sizes), *shape)`` (``shape[0]`` channels), runs a
    training-mode forward, and backpropagates the loss ``sum(y * dy)`` for a seeded ``dy``.
    Returns ``(x, dy, results)``; ``results[k]`` holds process ``k``'s ``y``, ``dx``,
    ``dweight``, ``dbias`` and ``state`` (its state_dict afterwards). ``weight`` starts as
    ``linspace(0.5, 2, C)`` and ``bias`` as ``linspace(-1, 1, C)``.
    """
    import tempfile

    import torch.multiprocessing as mp

    sizes = list(sizes)
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_sync_worker, args=(len(sizes), free_port(), sizes, tuple(shape), seed, folder),
                 nprocs=len(sizes), join=True)
        results = [torch.load(f"{folder}/rank{k}.pt") for k in range(len(sizes))]
    gen = torch.Generator().manual_seed(seed)
    x = 3.0 + 2.0 * torch.randn(sum(sizes), *shape, generator=gen, dtype=torch.float64)
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return x, dy, results
