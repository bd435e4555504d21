"""Run each chapter notebook in a fresh kernel; report its time, peak memory and failures.

Usage: ``python tests/notebook_budget.py [--cores 2] [--offsets 0-9] [notebook ...]``.

* ``make budget`` times each notebook at the default seeds, pinned to ``--cores`` CPUs the
  way CI's 2-core machine runs it. The budget (README, Contributing) is 90 s and 2.5 GB per
  notebook; the exit status is 1 if any notebook is over it or fails.
* ``--offsets 0-9`` (or ``0,3,7``) runs every notebook once per seed offset
  (``BNLIB_SEED_OFFSET``, see :mod:`bnlib.runtime`) and reports, for each run, every cell
  that raised, with the line that raised: the sweep behind the claim rule (README). A run
  does not stop at its first failing cell, so one sweep shows every fragile claim.
  ``--jobs 2`` runs two notebooks at a time (each on its own core: the chapters use one
  PyTorch thread); ``--json FILE`` writes all results; ``--save DIR`` keeps each executed
  notebook, to compare the numbers a chapter prints across offsets.

This is a tool to read, not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S, BUDGET_MB = 90.0, 2500.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failures(nb) -> list[dict]:
    """Every error output of an executed notebook: cell index, exception and raising line."""
    found = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error":
                continue
            lines = [ANSI.sub("", t) for t in out.get("traceback", [])]
            arrows = [ln.strip() for t in lines for ln in t.splitlines() if "---->" in ln]
            found.append({"cell": i, "error": f"{out['ename']}: {out['evalue']}"[:200],
                          "line": arrows[-1] if arrows else ""})
    return found


def run_one(path: Path, save: Path | None) -> None:
    """Child mode: execute ``path``; print JSON (seconds, kernel peak MB, failures)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    if save is not None:
        nbformat.write(nb, save)
    # The kernel is a child of this process; once it has exited and been reaped, its peak
    # resident set size is in RUSAGE_CHILDREN (kilobytes on Linux).
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "failures": failures(nb)}))


def measure(path: Path, offset: int, cpus: set[int] | None, save_dir: Path | None) -> dict:
    """Run ``path`` at seed ``offset`` in a child process pinned to ``cpus``."""
    env = {**os.environ, "BNLIB_SEED_OFFSET": str(offset)}
    cmd = [sys.executable, __file__, "--one", str(path)]
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        cmd += ["--save-as", str(save_dir / f"{path.stem}.offset{offset}.ipynb")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                         preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"
        return {"seconds": float("nan"), "peak_mb": float("nan"),
                "failures": [{"cell": -1, "error": last, "line": ""}]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_offsets(text: str) -> list[int]:
    """``"0-9"`` -> 0..9, ``"0,3,7"`` -> [0, 3, 7]."""
    offsets: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        offsets += range(int(lo), int(hi or lo) + 1)
    return offsets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--cores", type=int, default=2,
                    help="CPUs each run is pinned to (0: no pinning)")
    ap.add_argument("--offsets", default="0", help="seed offsets, e.g. 0-9 or 0,3,7")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--json", type=Path, help="write every result to this file")
    ap.add_argument("--save", type=Path, help="keep the executed notebooks in this folder")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--save-as", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args.one, args.save_as)
        return 0
    notebooks = args.notebooks or sorted((ROOT / "book").glob("*.ipynb"))
    offsets = parse_offsets(args.offsets)
    ncpu = os.cpu_count() or 1
    # With several jobs, job k gets its own block of cores, round robin.
    blocks = ([{(k * args.cores + i) % ncpu for i in range(args.cores)}
               for k in range(args.jobs)] if args.cores else [None] * args.jobs)
    runs = [(nb, off) for nb in notebooks for off in offsets]
    print(f"{'notebook':<32} {'offset':>6} {'seconds':>8} {'peak MB':>8}  verdict  "
          f"(budget {BUDGET_S:.0f} s, {BUDGET_MB:.0f} MB, {args.cores or 'all'} cores per run, "
          f"{args.jobs} at a time)", flush=True)

    def task(i: int) -> dict:
        nb, off = runs[i]
        r = measure(nb, off, blocks[i % args.jobs], args.save)
        r.update(notebook=nb.name, offset=off)
        within = r["seconds"] <= BUDGET_S and r["peak_mb"] <= BUDGET_MB
        verdict = "FAILED" if r["failures"] else ("ok" if within else "OVER")
        print(f"{nb.name:<32} {off:>6} {r['seconds']:8.1f} {r['peak_mb']:8.0f}  {verdict}",
              flush=True)
        for f in r["failures"]:
            print(f"    cell {f['cell']}: {f['error']}\n      {f['line']}", flush=True)
        return r

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(task, range(len(runs))))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    bad = [r for r in results if r["failures"] or not (
        r["seconds"] <= BUDGET_S and r["peak_mb"] <= BUDGET_MB)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
