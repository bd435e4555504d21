"""Time each chapter notebook and measure its peak memory; print a table.

Usage: ``python tests/notebook_budget.py [--cores 2] [notebook ...]`` (``make budget``).
Each notebook runs top to bottom in a fresh kernel, in its own child process pinned to
``--cores`` CPUs, the way CI's 2-core machine runs it. The budget (GUIDE section 4) is 90 s
and 2.5 GB per notebook; the exit status is 1 if any notebook is over it. This is a tool
to read, not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S, BUDGET_MB = 90.0, 2500.0


def run_one(path: Path) -> None:
    """Child mode: execute ``path`` with nbclient and print JSON (seconds, kernel peak MB)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    # The kernel is a child of this process; once it has exited and been reaped, its peak
    # resident set size is in RUSAGE_CHILDREN (kilobytes on Linux).
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))


def measure(path: Path, cores: int | None) -> dict:
    def pin() -> None:
        if cores:
            os.sched_setaffinity(0, set(range(min(cores, os.cpu_count() or 1))))

    out = subprocess.run([sys.executable, __file__, "--one", str(path)], capture_output=True,
                         text=True, preexec_fn=pin, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--cores", type=int, default=2, help="CPUs to pin to (0: no pinning)")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args.one)
        return 0
    notebooks = args.notebooks or sorted((ROOT / "book").glob("*.ipynb"))
    print(f"{'notebook':<32} {'seconds':>8} {'peak MB':>8}  verdict  (budget {BUDGET_S:.0f} s, "
          f"{BUDGET_MB:.0f} MB, {args.cores or 'all'} cores)")
    over = False
    for nb in notebooks:
        r = measure(nb, args.cores)
        if "error" in r:
            print(f"{nb.name:<32} {'-':>8} {'-':>8}  FAILED: {r['error']}")
            over = True
            continue
        ok = r["seconds"] <= BUDGET_S and r["peak_mb"] <= BUDGET_MB
        over |= not ok
        print(f"{nb.name:<32} {r['seconds']:8.1f} {r['peak_mb']:8.0f}  {'ok' if ok else 'OVER'}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
