"""Rules every chapter notebook follows (GUIDE section 4), checked on the files themselves.

The notebooks' *execution* is tested by nbval (`make test` runs `pytest --nbval-lax` on
`book/`); this file checks what execution cannot: the table of contents, stripped outputs,
the Colab setup cell and its repository URL.
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
    """The lines every notebook's first code cell must start with."""
    return (
        "# Setup. On Colab, install bnlib from the book's repository "
        "(elsewhere `make` installed it).\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    BOOK_REPO = "{repo_url}"\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", '
        'f"bnlib @ git+{BOOK_REPO}"], check=True)\n'
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
    assert "import bnlib" in source(cell)
    assert "hide-input" in cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_asserts_its_claims(nb_path):
    nb = json.loads(nb_path.read_text())
    code = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "code")
    assert code.count("assert ") >= 3, f"{nb_path.name}: measurable claims need asserts"


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
    exec(colab_block(CONFIG["repository"]["url"]), {})  # noqa: S102 (our own, fixed text)
    return calls


def test_colab_block_installs_bnlib_from_the_repository_only_on_colab(monkeypatch):
    assert _run_colab_block(monkeypatch, in_colab=False) == []
    (cmd,) = _run_colab_block(monkeypatch, in_colab=True)
    assert cmd[1:4] == ["-m", "pip", "install"]
    assert cmd[-1] == f"bnlib @ git+{CONFIG['repository']['url']}"
