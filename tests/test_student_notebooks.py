"""The notebooks a student downloads or opens in Colab (``notebooks/``), and the instructors'.

They are generated from ``book/`` by ``book/_ext/student_notebooks.py`` (``make notebooks``).
These tests check that the committed copies are fresh, that they hold plain Markdown and no
solution, that the solutions notebooks run exactly the chapters' code, and that a student
notebook runs top to bottom with every stub untouched, each checker saying "not done yet".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import student_notebooks as sn  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))
STUDENT = ROOT / "notebooks"
SOLUTIONS = STUDENT / "solutions"
COMMONMARK = MarkdownIt("commonmark")
MYST_LEFTOVERS = re.compile(
    r"\{[a-z][a-z-]*(:[a-z-]+)?\}`"  # a role
    r"|^\s*(`{3,}|:{3,})\{"  # a directive
    r"|^\([\w-]+\)=\s*$"  # a target
    r"|\$\$\s*\([\w-]+\)"  # a labelled equation
    r"|^:[a-z-]+:", re.M)  # a directive option


def markdown_cells(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "markdown"]


def code_sources(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def solution_code(source: nbformat.NotebookNode) -> list[str]:
    """The chapter's code cells that sit between solution-start and solution-end."""
    inside, found = False, []
    for cell in source.cells:
        if cell.cell_type == "code":
            if inside:
                found.append(cell.source)
            continue
        for block in sn.split_blocks(cell.source):
            if isinstance(block, sn.Directive) and block.name == "solution-start":
                inside = True
            elif isinstance(block, sn.Directive) and block.name == "solution-end":
                inside = False
    return found


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


# --------------------------------------------------------------------------- the converter


INDEX = sn.BookIndex(
    base_url="https://example.org/bn/",
    book_title="The BN book",
    equations={"alg-mean": "3.1", "alg-var": "3.2"},
    exercises={"ex-a": "3.1"},
    exercise_titles={"ex-a": "A first exercise"},
    terms={"feature": "term-feature", "mini-batch": "term-mini-batch"},
    titles={"book/notation": "Notation", "book/03_bn_algorithm": "The BN algorithm"},
    citations={"ioffe2015batch": ("Ioffe & Szegedy", "2015", "cite-ioffe2015batch"),
               "he2016deep": ("He et al.", "2016", "cite-he2016deep")},
)


def test_roles_become_plain_markdown():
    text = ("A {term}`features <feature>` of a {term}`mini-batch`, see {eq}`alg-mean` and "
            "{cite:p}`ioffe2015batch,he2016deep`; {cite:t}`ioffe2015batch` in {doc}`notation`, "
            "{numref}`ex-a` and {ref}`ex-a`.")
    out = sn.convert_roles(text, INDEX, "book/03_bn_algorithm")
    assert out == (
        "A [features](https://example.org/bn/book/glossary.html#term-feature) of a "
        "[mini-batch](https://example.org/bn/book/glossary.html#term-mini-batch), see (3.1) "
        "and ([Ioffe & Szegedy, 2015](https://example.org/bn/book/bibliography.html"
        "#cite-ioffe2015batch); [He et al., 2016](https://example.org/bn/book/bibliography.html"
        "#cite-he2016deep)); [Ioffe & Szegedy (2015)](https://example.org/bn/book/"
        "bibliography.html#cite-ioffe2015batch) in [Notation](https://example.org/bn/book/"
        "notation.html), Exercise 3.1 and Exercise 3.1 (A first exercise).")


@pytest.mark.parametrize("text", ["{term}`no such term`", "{eq}`nope`", "{cite:p}`nobody2020`",
                                  "{doc}`missing`", "{numref}`fig-x`", "{sub-ref}`x`"])
def test_unknown_markup_is_an_error_not_a_leftover(text):
    with pytest.raises(sn.GenerationError):
        sn.convert_roles(text, INDEX, "book/03_bn_algorithm")


def test_labelled_display_math_gets_its_number_as_a_tag():
    text = "Mean:\n\n$$\n\\mu = \\frac1m \\sum_i x_i\n$$ (alg-mean)\n\nand more."
    out = sn.convert_math(text, INDEX, "book/03_bn_algorithm")
    assert out == "Mean:\n\n$$\n\\mu = \\frac1m \\sum_i x_i\n\\tag{3.1}\n$$\n\nand more."


def test_labelled_display_math_inside_a_list_item_keeps_its_indent():
    text = "* Mean:\n\n  $$\n  \\mu = 0\n  $$ (alg-mean)\n\n  and more."
    out = sn.convert_math(text, INDEX, "book/03_bn_algorithm")
    assert out == "* Mean:\n\n  $$\n  \\mu = 0\n  \\tag{3.1}\n  $$\n\n  and more."


def test_literalinclude_shows_the_library_source_of_the_object():
    import inspect
    import textwrap

    from bnlib.torch_bn import BatchNormFunction

    path = ROOT / "bnlib" / "torch_bn.py"
    shown = sn.python_object(path, "BatchNormFunction.backward", "book/03_bn_algorithm")
    assert shown == textwrap.dedent(inspect.getsource(BatchNormFunction.backward)).rstrip("\n")
    with pytest.raises(sn.GenerationError, match="no BatchNormFunction.nope"):
        sn.python_object(path, "BatchNormFunction.nope", "book/03_bn_algorithm")


LITERALINCLUDE = re.compile(r"```\{literalinclude\} (\S+)\n:pyobject: (\S+)\n")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_shows_library_code_it_teaches(chapter):
    """Each chapter includes at least one bnlib object's source (so page and library cannot
    drift), and every included object exists."""
    nb = json.loads(chapter.read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    shown = LITERALINCLUDE.findall(text)
    assert shown, f"{chapter.name}: no {{literalinclude}} of library code"
    for path, dotted in shown:
        assert path.startswith("../bnlib/"), (chapter.name, path)
        assert sn.python_object(ROOT / "book" / path, dotted, chapter.stem)


def test_exercises_become_blocks_and_solutions_leave_the_student_notebook():
    source = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# The BN algorithm"),
        nbformat.v4.new_code_cell("import bnlib"),
        nbformat.v4.new_markdown_cell(
            "```{exercise} A first exercise\n:label: ex-a\n\nUse {eq}`alg-var`.\n```"),
        nbformat.v4.new_code_cell("def f():\n    raise NotImplementedError\n\ncheck.thing(f);"),
        nbformat.v4.new_markdown_cell(
            "```{solution-start} ex-a\n:class: dropdown\n```\n\nThe secret is 42:"),
        nbformat.v4.new_code_cell("def f():\n    return 42"),
        nbformat.v4.new_markdown_cell("```{solution-end}\n```\n\n## Summary"),
    ])
    made = sn.generate(source, "book/03_bn_algorithm", INDEX)
    student = "\n".join(c.source for c in made.student.cells)
    assert "> **Exercise 3.1: A first exercise**" in student and "(3.2)" in student
    assert "secret" not in student and "return 42" not in student and "## Summary" in student
    solutions = "\n".join(c.source for c in made.solutions.cells)
    assert "**Solution to Exercise 3.1**" in solutions and "return 42" in solutions
    assert made.exercises == [{"label": "ex-a", "number": "3.1", "title": "A first exercise",
                               "checkers": ["thing"]}]
    assert made.student.metadata["bnbook"]["kind"] == "student"


def test_an_unclosed_solution_is_an_error():
    source = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# T\n\n```{solution-start} ex-a\n```")])
    with pytest.raises(sn.GenerationError, match="solution-end"):
        sn.generate(source, "book/03_bn_algorithm", INDEX)


# --------------------------------------------------------------------------- the committed files


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """The notebooks as `make notebooks` writes them now (a build without execution)."""
    out = tmp_path_factory.mktemp("generated")
    env = {**os.environ, sn.OUT_ENV: str(out / "notebooks")}
    run = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "-W", "-n",
         "--keep-going", "--path-output", str(out / "site")],
        capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_every_chapter_has_a_student_and_a_solutions_notebook():
    for chapter in CHAPTERS:
        assert (STUDENT / chapter.name).is_file(), f"run `make notebooks`: {chapter.name}"
        assert (SOLUTIONS / chapter.name).is_file(), f"run `make notebooks`: {chapter.name}"
    assert {p.name for p in STUDENT.glob("*.ipynb")} == {p.name for p in CHAPTERS}


@pytest.mark.slow
def test_committed_notebooks_are_fresh(regenerated):
    for chapter in CHAPTERS:
        for sub in ("", "solutions"):
            made = (regenerated / "notebooks" / sub / chapter.name).read_text()
            committed = (STUDENT / sub / chapter.name).read_text()
            assert made == committed, (
                f"notebooks/{sub}/{chapter.name} is stale against book/{chapter.name}: "
                "run `make notebooks` and commit the result")


@pytest.mark.slow
def test_links_point_at_anchors_the_book_has(regenerated):
    html = regenerated / "site" / "_build" / "html"
    base = CONFIG["html"]["baseurl"].rstrip("/") + "/"
    links = set()
    for path in [*STUDENT.glob("*.ipynb"), *SOLUTIONS.glob("*.ipynb")]:
        for text in markdown_cells(read(path)):
            links |= set(re.findall(r"\]\((https?://[^)\s]+)\)", text))
    ours = sorted(link for link in links if link.startswith(base))
    assert ours, "the notebooks link to no page of the book"
    for link in ours:
        page, _, anchor = link.removeprefix(base).partition("#")
        target = html / page
        assert target.is_file(), f"{link}: no page {page} in the built book"
        if anchor:
            assert f'id="{anchor}"' in target.read_text(), f"{link}: no anchor #{anchor}"


@pytest.mark.parametrize("kind", ["student", "solutions"])
def test_no_myst_syntax_is_left(kind):
    for path in sorted((STUDENT if kind == "student" else SOLUTIONS).glob("*.ipynb")):
        for i, text in enumerate(markdown_cells(read(path))):
            assert not MYST_LEFTOVERS.search(text), (path.name, i, MYST_LEFTOVERS.search(text))
            # A CommonMark renderer (what Jupyter and Colab use) makes no code block with a
            # MyST directive's info string and leaves no role in the text.
            tokens = COMMONMARK.parse(text)
            fences = [t.info for t in tokens if t.type == "fence"]
            assert not any(f.startswith("{") for f in fences), (path.name, i, fences)
            rendered = COMMONMARK.render(text)
            assert not re.search(r"\{[a-z]+(:[a-z]+)?\}<code>", rendered), (path.name, i)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_no_solution_is_left_for_the_student(chapter):
    source, student = read(chapter), read(STUDENT / chapter.name)
    hidden = solution_code(source)
    left = [code for code in hidden if code in code_sources(student)]
    assert not left, f"{chapter.name}: solution code in the student notebook: {left[:1]}"
    assert not any("Solution to Exercise" in t for t in markdown_cells(student))
    assert student.metadata["bnbook"]["kind"] == "student"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_solutions_notebook_runs_the_chapters_code(chapter):
    # The chapter itself runs in `make test` (tests/execute_chapters.py) and in
    # `make test-seeds`, every solution checked by its checker, so the solutions notebook,
    # whose code cells are the chapter's, passes every checker.
    assert code_sources(read(SOLUTIONS / chapter.name)) == code_sources(read(chapter))


def checker_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code" and re.search(r"\bcheck\.\w+\(", c.source)]


@pytest.mark.shifted
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_student_notebook_runs_with_stubs_untouched(chapter):
    """The exercise notebook runs top to bottom as a student first opens it: no error, and
    every checker says "not done yet". `make test-seeds` runs this at a shifted seed offset
    (``BNLIB_SEED_OFFSET``, which the kernel inherits), so the same run checks every claim of
    the chapter outside the solutions at new seeds."""
    from nbclient import NotebookClient

    nb = read(STUDENT / chapter.name)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(STUDENT)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{chapter.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    cells = checker_cells(nb)
    called = {name for c in cells for name in re.findall(r"\bcheck\.(\w+)\(", c.source)}
    listed = {name for ex in nb.metadata["bnbook"]["exercises"] for name in ex["checkers"]}
    assert called == listed, "every checker call belongs to an exercise"
    for cell in cells:
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert "not done yet" in text, f"{chapter.name}: a checker said {text!r}"


def test_exercise_list_in_the_metadata_is_json():
    for path in STUDENT.glob("*.ipynb"):
        json.dumps(read(path).metadata["bnbook"])
