"""``python -m bnlib.grade``: an instructor grades a submission with a mix of right answers,
catalogued mistakes, untouched stubs and a broken cell, and gets a per-exercise report."""

from __future__ import annotations

import json

import nbformat
import pytest

from bnlib import grade

SETUP = "import numpy as np\nfrom bnlib import check"
RIGHT = '''def standardize(X_train, X_test):
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    return (X_train - mean) / std, (X_test - mean) / std


check.standardize(standardize);'''
WRONG_AXIS = '''def my_batchnorm_forward(x, gamma, beta, eps):
    mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    return gamma * (x - mean) / np.sqrt(var + eps) + beta


check.batchnorm_forward(my_batchnorm_forward);'''
STUB = '''def my_batchnorm_backward(dy, x, gamma, eps):
    raise NotImplementedError


check.batchnorm_backward(my_batchnorm_backward);'''
BROKEN = '''def update(running_mean, running_var, x, momentum):
    return running_mean + undefined_name, running_var


check.running_stats_update(update)
assert check.results()["running_stats_update"]["status"] == "fail"'''
TYPO = "def dropout(x, p, training, rng):\n    return x\n\nchek.dropout_forward(dropout)"


def exercise(label: str, number: str, checker: str) -> dict:
    return {"label": label, "number": number, "title": f"title of {label}",
            "checkers": [checker]}


@pytest.fixture(scope="module")
def submission(tmp_path_factory):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A submission"),
                *(nbformat.v4.new_code_cell(s) for s in (SETUP, RIGHT, WRONG_AXIS, STUB, BROKEN,
                                                          TYPO))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["bnbook"] = {"kind": "student", "generated_from": "book/xx.ipynb", "exercises": [
        exercise("ex-a", "1.1", "standardize"), exercise("ex-b", "3.1", "batchnorm_forward"),
        exercise("ex-c", "3.2", "batchnorm_backward"), exercise("ex-d", "4.1",
                                                                "running_stats_update"),
        exercise("ex-e", "6.1", "dropout_forward"),
        {"label": "ex-prose", "number": "3.3", "title": "prose", "checkers": []},
    ]}
    path = tmp_path_factory.mktemp("grade") / "submission.ipynb"
    nbformat.write(nb, path)
    return path


def test_grading_a_mixed_submission(submission, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert grade.main([str(submission), "--json", str(out)]) == 0
    (report,) = json.loads(out.read_text())
    status = {r["label"]: (r["status"], r["case"]) for r in report["exercises"]}
    assert status == {
        "ex-a": ("pass", ""),
        "ex-b": ("fail", "typical batch"),
        "ex-c": ("not done", ""),
        # a NameError inside the reader's function fails the first case
        "ex-d": ("fail", "fresh buffers (zeros and ones), momentum=0.1"),
        "ex-e": ("not run", ""),  # the cell raised before calling the checker
    }
    assert report["passed"] == 1 and report["graded"] == 5 and report["ran"]
    typo = next(r for r in report["exercises"] if r["label"] == "ex-e")
    assert typo["detail"].startswith("NameError") and "chek" in typo["detail"]
    printed = capsys.readouterr().out
    assert "1 of 5 exercises pass" in printed and "not done" in printed
    # grading mode gives nothing away: no hint text in the report or the table
    assert "axis 0" not in printed and "axis 0" not in out.read_text()


def test_without_metadata_every_checker_call_is_an_exercise():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("check.standardize(f)\ncheck.bn_bytes(g)")]
    assert [e["checkers"] for e in grade.exercises_of(nb)] == [["standardize"], ["bn_bytes"]]


def test_the_table_has_one_row_per_exercise():
    report = {"notebook": "n.ipynb", "passed": 1, "graded": 2, "exercises": [
        {"exercise": "3.1", "status": "pass", "case": "", "detail": "", "title": "forward"},
        {"exercise": "3.2", "status": "fail", "case": "small batch", "detail": "",
         "title": "backward"}]}
    lines = grade.table(report).splitlines()
    assert lines[0] == "n.ipynb: 1 of 2 exercises pass" and len(lines) == 5
    assert lines[-1].split() == ["3.2", "fail", "small", "batch", "backward"]
