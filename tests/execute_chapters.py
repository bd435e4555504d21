"""Execute every chapter once, fail on any error, and keep the outputs for the book build.

Usage: ``python tests/execute_chapters.py [--jobs 2] [notebook ...]`` (``make test`` runs it).

Each chapter runs top to bottom in a fresh kernel, as the book build would run it; a cell
that raises (a failed ``assert`` behind a claim, say) fails the run, with the cell and its
traceback. The executed notebooks go into Jupyter Book's execution cache
(``_build/.jupyter_cache``, the one ``make book`` reads), so the build that follows
executes nothing again: CI runs every chapter once at the default seeds. A chapter whose
code has not changed since it was cached is not run again either. Progress bars are
``BNLIB_PROGRESS=summary``, as the built pages show them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "_build" / ".jupyter_cache"
TIMEOUT = 300  # seconds per cell, as _config.yml's execute.timeout


def execute(path: Path) -> tuple[str, str | None, float]:
    """Run ``path``; return the executed notebook's JSON, the error (if any) and seconds."""
    from jupyter_cache.executors.utils import single_nb_execution

    nb = nbformat.read(path, as_version=4)
    result = single_nb_execution(nb, cwd=str(path.parent), timeout=TIMEOUT, allow_errors=False,
                                 meta_override=True)
    error = result.exc_string if result.err is not None else None
    return nbformat.writes(nb), error, result.time


def main() -> int:
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--jobs", type=int, default=2, help="chapters run at a time")
    args = ap.parse_args()
    os.environ["BNLIB_PROGRESS"] = "summary"  # the kernels inherit it
    cache = get_cache(str(CACHE))
    paths = [p.resolve() for p in args.notebooks] or sorted((ROOT / "book").glob("*.ipynb"))
    todo = []
    for path in paths:
        try:
            cache.match_cache_notebook(nbformat.read(path, as_version=4))
            print(f"{path.name}: unchanged since it last ran, outputs cached", flush=True)
        except KeyError:
            todo.append(path)
    failed = []
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for path, (text, error, seconds) in zip(todo, pool.map(execute, todo)):
            if error is not None:
                failed.append(path.name)
                print(f"{path.name}: FAILED after {seconds:.1f} s\n{error}", flush=True)
                continue
            cache.cache_notebook_bundle(
                CacheBundleIn(nbformat.reads(text, as_version=4), str(path),
                              data={"execution_seconds": seconds}),
                check_validity=False, overwrite=True)
            print(f"{path.name}: ran in {seconds:.1f} s, outputs cached", flush=True)
    print(f"{len(todo)} chapter(s) run in {time.perf_counter() - start:.0f} s; "
          f"{len(failed)} failed {failed if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
