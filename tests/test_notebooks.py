"""Rules every chapter notebook follows (README, Contributing), checked on the files themselves.

The notebooks' *execution* is tested elsewhere (`make test` runs every chapter through
tests/execute_chapters.py, `make test-seeds` at shifted seeds); this file checks what
execution cannot: the table of contents, stripped outputs, the setup cell, the sections'
asserts, exercises and wording.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def toc_files(node) -> list[str]:
    """Every ``file:`` entry of ``_toc.yml``, depth first, plus the root."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root"):
                found.append(value)
            else:
                found += toc_files(value)
    elif isinstance(node, list):
        for item in node:
            found += toc_files(item)
    return found


def colab_block(repo_url: str) -> str:
    """The lines every notebook's first code cell must start with.

    On Colab they install bnlib from the repository; anywhere else without bnlib (a fresh
    Jupyter, say) they stop with one message that says exactly what to run.
    """
    return (
        "# Setup. On Colab this installs bnlib, the book's library; elsewhere it must be "
        "installed.\n"
        "import sys\n"
        "\n"
        f'BOOK_REPO = "{repo_url}"\n'
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", '
        'f"bnlib @ git+{BOOK_REPO}"], check=True)\n'
        "try:\n"
        "    import bnlib\n"
        "except ModuleNotFoundError:\n"
        "    raise ModuleNotFoundError(\n"
        '        "This notebook needs bnlib, the book\'s library. Run this in a new cell, then "\n'
        "        f'restart the kernel and run the notebook again: '\n"
        "        f'%pip install \"bnlib @ git+{BOOK_REPO}\"'\n"
        "    ) from None\n"
    )


def first_code_cell(nb_path: Path) -> dict:
    nb = json.loads(nb_path.read_text())
    return next(c for c in nb["cells"] if c["cell_type"] == "code")


def source(cell: dict) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks found in book/"


def test_toc_and_book_folder_agree():
    listed = toc_files(TOC)
    for entry in listed:
        matches = [p for p in (ROOT / f"{entry}.md", ROOT / f"{entry}.ipynb") if p.exists()]
        assert matches, f"_toc.yml lists {entry}, which does not exist"
    stems = {f"book/{p.stem}" for p in NOTEBOOKS}
    assert stems <= set(listed), f"notebooks missing from _toc.yml: {stems - set(listed)}"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(nb_path):
    nb = json.loads(nb_path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"])
             if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{nb_path.name}: cells {dirty} carry outputs; run nbstripout"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_hidden_colab_setup(nb_path):
    cell = first_code_cell(nb_path)
    expected = colab_block(CONFIG["repository"]["url"])
    assert source(cell).startswith(expected), (
        f"{nb_path.name}: the first code cell must start with the Colab setup block for "
        f"{CONFIG['repository']['url']} (the repository named in _config.yml):\n{expected}"
    )
    assert "hide-input" in cell.get("metadata", {}).get("tags", [])


# Sections whose prose reports measurements: each must back them with asserts.
MEASURING_SECTION = re.compile(r"^(Experiment|From scratch|The same with PyTorch)")


def asserts_per_section(nb: dict) -> dict[str, int]:
    """``{"## title": number of assert statements in its code cells}``, in reading order."""
    counts: dict[str, int] = {}
    section = None
    for cell in nb["cells"]:
        text = source(cell)
        if cell["cell_type"] == "markdown":
            for title in re.findall(r"^## (.+)$", text, re.M):
                section = title
                counts.setdefault(section, 0)
        elif section is not None:
            counts[section] += len(re.findall(r"^\s*assert\b", text, re.M))
    return counts


def test_asserts_are_counted_per_section():
    nb = {"cells": [{"cell_type": "markdown", "source": "## Experiment 1: x"},
                    {"cell_type": "code", "source": "y = 1\nassert y == 1\n# assert no"},
                    {"cell_type": "markdown", "source": "## Pitfalls"},
                    {"cell_type": "code", "source": "print('assert')"}]}
    assert asserts_per_section(nb) == {"Experiment 1: x": 1, "Pitfalls": 0}


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_measuring_section_asserts_its_claims(nb_path):
    counts = asserts_per_section(json.loads(nb_path.read_text()))
    measuring = {t: n for t, n in counts.items() if MEASURING_SECTION.match(t)}
    assert any(t.startswith("Experiment") for t in measuring), f"{nb_path.name}: no experiment"
    bare = [t for t, n in measuring.items() if n == 0]
    assert not bare, f"{nb_path.name}: sections that measure but assert nothing: {bare}"


# Ways to seed or draw that bypass bnlib's seed offset (bnlib.runtime): a chapter must use
# bnlib.seed_everything, bnlib.rng, bnlib.generator, fit(seed=...) and data.subset(seed=...).
UNSHIFTED_SEEDING = re.compile(
    r"torch\.(cuda\.)?manual_seed|\.manual_seed\(|np\.random\.(default_rng|seed|RandomState)"
    r"|\brandom\.seed\(|np\.random\.(rand|randn|randint|normal|uniform|choice|permutation)\("
)


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_seed_goes_through_bnlib(nb_path):
    nb = json.loads(nb_path.read_text())
    bypass = [(i, m.group(0)) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
              for m in UNSHIFTED_SEEDING.finditer(source(c))]
    assert not bypass, (
        f"{nb_path.name}: cells seed or draw behind bnlib's back {bypass}; use "
        "bnlib.seed_everything / bnlib.rng / bnlib.generator, so BNLIB_SEED_OFFSET moves them")


def _run_colab_block(monkeypatch, in_colab: bool) -> list[list[str]]:
    calls: list[list[str]] = []
    fake_subprocess = types.SimpleNamespace(run=lambda cmd, check: calls.append(cmd))
    monkeypatch.setitem(sys.modules, "subprocess", fake_subprocess)
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(colab_block(CONFIG["repository"]["url"]), {})  # our own, fixed text
    return calls


def test_colab_block_installs_bnlib_from_the_repository_only_on_colab(monkeypatch):
    assert _run_colab_block(monkeypatch, in_colab=False) == []
    (cmd,) = _run_colab_block(monkeypatch, in_colab=True)
    assert cmd[1:4] == ["-m", "pip", "install"]
    assert cmd[-1] == f"bnlib @ git+{CONFIG['repository']['url']}"


def markdown(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    return "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_states_prerequisites_and_time(nb_path):
    text = markdown(nb_path)
    goals = text.index("## Learning goals")
    after = text[goals:text.index("\n## ", goals + 1)]
    assert "**Prerequisites.**" in after, f"{nb_path.name}: no prerequisites after the goals"
    assert re.search(r"\*\*Time\.\*\* .*Reading: about \d+.*minutes.*Exercises: about", after,
                     re.S), f"{nb_path.name}: no reading and exercise time after the goals"


FIGURE = re.compile(r"subplots\(|plt\.figure\(")


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_has_a_caption_and_alt_text(nb_path):
    # A figure without them is unlabelled for a screen reader, and is rendered outside the
    # <figure> that lets a wide plot scroll on a phone (the browser test's clipping check).
    nb = json.loads(nb_path.read_text())
    bare = [c.get("id") for c in nb["cells"] if c["cell_type"] == "code"
            and FIGURE.search(source(c)) and not (
                c["metadata"].get("mystnb", {}).get("figure", {}).get("caption")
                and c["metadata"].get("mystnb", {}).get("image", {}).get("alt"))]
    assert not bare, f"{nb_path.name}: cells {bare} draw a figure without caption or alt text"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_has_a_difficulty(nb_path):
    text = markdown(nb_path)
    exercises = re.findall(r"```\{exercise\}[^\n]*\n((?::[a-z-]+:[^\n]*\n)*)\n?([^\n]*)", text)
    assert exercises, f"{nb_path.name}: no exercises"
    for _options, first_line in exercises:
        assert re.fullmatch(r"\*\*Difficulty:\*\* (★☆☆ \(warm-up\)|★★☆ \(core\)|★★★ "
                            r"\(challenge\))", first_line.strip()), (nb_path.name, first_line)
    for body in re.findall(r"```\{exercise\}(.*?)```", text, re.S):
        assert body.count("**Difficulty:**") == 1, (nb_path.name, body[:60])


PRODUCTION_WORDS = re.compile(
    r"seed\s+material|seed\s+post|source\s+material|the\s+seeds'|seeds'\s+advice"
    r"|following\s+the\s+seed\b|the\s+seed's|the\s+seed\s+(says|argues|recommends|advises|writes)",
    re.I)


@pytest.mark.parametrize("path", [*NOTEBOOKS, *sorted((ROOT / "book").glob("*.md"))],
                         ids=lambda p: p.name)
def test_no_production_vocabulary(path):
    text = markdown(path) if path.suffix == ".ipynb" else path.read_text()
    found = PRODUCTION_WORDS.search(text)
    assert not found, f"{path.name}: {found[0]!r} means nothing to a reader; name the source"


def test_no_internal_equation_label_in_code_or_prints():
    labels = set()
    for nb_path in NOTEBOOKS:
        labels |= set(re.findall(r"\$\$ *\(([\w-]+)\)", markdown(nb_path)))
    assert labels
    for nb_path in NOTEBOOKS:
        nb = json.loads(nb_path.read_text())
        code = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "code")
        leaked = sorted(label for label in labels if f"({label})" in code)
        assert not leaked, f"{nb_path.name}: readers would see internal labels {leaked}"
