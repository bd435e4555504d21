"""Grade submitted exercise notebooks: ``python -m bnlib.grade submission.ipynb ...``.

Each notebook runs top to bottom in a fresh Jupyter kernel with grading mode on
(``BNLIB_GRADING=1``, see :mod:`bnlib.check`): a failing checker names the failing case and
gives no hint. A cell that fails does not stop the run, so one broken exercise costs only
that exercise. The report lists, per exercise with a checker, one of

* ``pass``: every checker of the exercise passed;
* ``fail``: a checker failed (``case`` names the first failing case);
* ``not done``: the stub still raises ``NotImplementedError``;
* ``not run``: the checker never ran (``detail`` gives the error of its cell, e.g. a
  ``NameError`` or a syntax error);

and prints it as a table; ``--json FILE`` also writes it, machine-readable. The exercises are
the ones the student notebook lists in its metadata (``bnbook.exercises``, written by the
book's build); for any other notebook, every ``check.<name>(...)`` call is one exercise.
Exercises answered in prose have no checker and are left to the instructor. The exit status
is 0 when every notebook ran, 1 otherwise.

Needs ``nbclient`` and ``ipykernel`` (any Jupyter installation has them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from bnlib.check._core import GRADING_ENV

MARK = "BNLIB-GRADES:"
COLLECT = ("import json as _json, bnlib.check as _check\n"
           f"print({MARK!r} + _json.dumps(_check.results()))")
CALL = re.compile(r"\bcheck\.([A-Za-z_]\w*)\(")


def exercises_of(nb: Any) -> list[dict[str, Any]]:
    """The exercises to grade: ``{"label", "number", "title", "checkers"}`` each."""
    listed = nb.metadata.get("bnbook", {}).get("exercises")
    if listed is not None:
        return [e for e in listed if e["checkers"]]
    names: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            names += [n for n in CALL.findall(cell.source) if n not in names]
    return [{"label": n, "number": "", "title": n, "checkers": [n]} for n in names]


def _cell_error(nb: Any, name: str) -> str:
    """The error of the first cell that mentions the checker ``name``, if that cell failed."""
    for cell in nb.cells:
        if cell.cell_type == "code" and re.search(rf"\b{name}\(", cell.source):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    return f"{out['ename']}: {out['evalue']}"[:300]
            return "the checker's cell ran without calling it"
    return "no cell calls the checker"


def grade_notebook(path: Path, timeout: int = 600) -> dict[str, Any]:
    """Run ``path`` in grading mode and return its report (see the module docstring)."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as err:  # pragma: no cover (Jupyter always has them)
        raise SystemExit(f"grading needs nbclient: pip install nbclient ({err})") from None

    nb = nbformat.read(path, as_version=4)
    wanted = exercises_of(nb)
    nb.cells.append(nbformat.v4.new_code_cell(COLLECT))
    previous = os.environ.get(GRADING_ENV)
    os.environ[GRADING_ENV] = "1"  # the kernel inherits it
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if previous is None:
            os.environ.pop(GRADING_ENV, None)
        else:
            os.environ[GRADING_ENV] = previous
    verdicts: dict[str, dict[str, str]] = {}
    for out in nb.cells[-1].get("outputs", []):
        for line in out.get("text", "").splitlines():
            if line.startswith(MARK):
                verdicts = json.loads(line[len(MARK):])
    rows = []
    for ex in wanted:
        status, case, detail = "pass", "", ""
        for name in ex["checkers"]:
            verdict = verdicts.get(name)
            if verdict is None:
                status, detail = "not run", _cell_error(nb, name)
                break
            if verdict["status"] == "fail":
                status, case = "fail", verdict["case"]
                break
            if verdict["status"] == "not done":
                status = "not done"
        rows.append({"exercise": ex["number"] or ex["label"], "label": ex["label"],
                     "title": ex["title"], "status": status, "case": case, "detail": detail})
    passed = sum(r["status"] == "pass" for r in rows)
    return {"notebook": str(path), "ran": bool(verdicts) or not wanted,
            "source": nb.metadata.get("bnbook", {}).get("generated_from", ""),
            "passed": passed, "graded": len(rows), "exercises": rows}


def table(report: dict[str, Any]) -> str:
    """The report as a plain-text table, one exercise a row."""
    head = ("exercise", "status", "failing case or error", "title")
    rows = [(r["exercise"], r["status"], r["case"] or r["detail"], r["title"])
            for r in report["exercises"]]
    widths = [min(48, max(len(str(x)) for x in col)) for col in zip(head, *rows)]

    def line(cells: tuple) -> str:
        return "  ".join(str(c)[:w].ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([f"{report['notebook']}: {report['passed']} of {report['graded']} "
                      "exercises pass", line(head), line(tuple("-" * w for w in widths)),
                      *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bnlib.grade",
                                 description="Grade exercise notebooks with bnlib's checkers.")
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, help="also write the reports to this file")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = ap.parse_args(argv)
    reports = [grade_notebook(p, args.timeout) for p in args.notebooks]
    for report in reports:
        print(table(report), end="\n\n")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1, ensure_ascii=False) + "\n")
    return 0 if all(r["ran"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
