"""The Korean edition keeps step with the English source.

* every catalog under ``locale/ko`` passes ``catalogs.py lint``: the translation keeps each
  message's citations, equations, cross-references, math, code and links, shows the
  glossary's Korean term in each term link, gives the English term at its first use on a
  page, and is written in Hangul;
* every message Sphinx extracts from the English pages today has a translation that is not
  fuzzy, so a changed English sentence fails here until its translation follows (``make
  book`` checks the same again with the figures' captions and alt text, which need the
  executed notebooks);
* the Korean student notebooks are the English ones with Korean Markdown: the same code
  cells, byte for byte, plus the one cell that asks the checkers for Korean;
* one Korean notebook runs from top to bottom, and its checkers speak Korean.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import catalogs  # noqa: E402
import editions  # noqa: E402

HANGUL = re.compile(r"[\uac00-\ud7a3]")
CHAPTERS = sorted(p.name for p in (ROOT / "book").glob("*.ipynb"))
POS = sorted(catalogs.catalog_dir().rglob("*.po"))  # the pages', and the themes' interface


def test_every_page_has_a_korean_catalog():
    pages = {p.stem for p in (ROOT / "book").glob("*.ipynb")} | {
        p.stem for p in (ROOT / "book").glob("*.md")}
    assert {p.stem for p in (catalogs.catalog_dir() / "book").glob("*.po")} == pages


@pytest.mark.parametrize("po", POS, ids=[p.stem for p in POS])
def test_catalog_passes_lint(po):
    problems = catalogs.lint(po)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:15])


def test_lint_catches_broken_translations(tmp_path):
    """The lint is not vacuous: each kind of mistake in a translation is reported."""
    from babel.messages.catalog import Catalog

    catalog = Catalog(locale="ko")
    catalog.add("Learning goals", "")  # untranslated
    catalog.add("Take a {term}`mini-batch` and $x$.",
                "{term}`미니배치 <mini-batch>`(mini-batch)를 받는다.")
    catalog.add("See {eq}`alg-mean` and `np.var`.", "{eq}`alg-mean`과 `np.mean`을 보라.")
    catalog.add("A {term}`feature` again.", "{term}`특징 <feature>`(feature)을 다시.")
    catalog.add("Use the {term}`running mean`.", "{term}`러닝 평균 <running mean>`을 쓴다.")
    catalog.add("Plain English prose here.", "Plain English prose here, untranslated.")
    catalog.add("Fuzzy one.", "퍼지 하나.", flags=["fuzzy"])
    po = tmp_path / "99_test.po"
    catalogs.write(catalog, po)
    found = "\n".join(catalogs.lint(po))
    for expected in ("'Learning goals': untranslated", "math $x$", "code np.var",
                     "should read '특성'", "first use of 'running mean'", "no Hangul",
                     "fuzzy"):
        assert expected in found, f"lint missed: {expected}\n{found}"


def test_every_english_message_is_translated(tmp_path):
    """Extract the English messages now (notebooks not executed: prose, headings, exercises)
    and find each one translated and not fuzzy in the catalogs."""
    config = tmp_path / "_config.yml"
    config.write_text(editions.edition_config("en", execute="off"), encoding="utf-8")
    subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--config",
         str(config), "--path-output", str(tmp_path), "--builder", "custom",
         "--custom-builder", "gettext", "-q"],
        check=True, capture_output=True, cwd=ROOT)
    reports = catalogs.check(tmp_path / "_build" / "gettext")
    assert sum(r.total for r in reports) > 1500, "the extraction found too few messages"
    stale = [f"{r.page}: {m[:90]!r}" for r in reports for m in r.missing + r.fuzzy]
    assert not stale, (f"{len(stale)} English messages without a current translation (run "
                       "`make gettext`, translate, commit):\n" + "\n".join(stale[:15]))


def _code(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code" and c.get("id") != "ko-language"]


@pytest.mark.parametrize("sub", ["", "solutions"])
@pytest.mark.parametrize("name", CHAPTERS)
def test_korean_notebook_is_the_english_one_in_korean(name, sub):
    english = nbformat.read(ROOT / "notebooks" / sub / name, as_version=4)
    korean = nbformat.read(ROOT / "notebooks" / "ko" / sub / name, as_version=4)
    assert _code(korean) == _code(english), "code cells must be the English notebook's"
    switch = [c for c in korean.cells if c.get("id") == "ko-language"]
    assert len(switch) == 1 and 'os.environ["BNLIB_LANG"] = "ko"' in switch[0].source
    assert korean.metadata["bnbook"]["language"] == "ko"
    assert korean.metadata["bnbook"]["kind"] == english.metadata["bnbook"]["kind"]
    english_md = [c for c in korean.cells if c.cell_type == "markdown"
                  and catalogs._WORD.search(catalogs.prose(c.source))
                  and not HANGUL.search(c.source)]
    assert not english_md, f"Markdown left in English: {english_md[0].source[:200]!r}"


@pytest.mark.slow
def test_a_korean_notebook_runs_end_to_end_with_korean_checkers():
    """Chapter 1's Korean exercise notebook, untouched, runs top to bottom; its checkers
    report, in Korean, that the exercises are not done yet."""
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "ko" / "01_feature_scaling.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "book")}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs if o.output_type == "stream")
    from bnlib.check._i18n import _, set_language

    set_language("ko")
    try:
        not_done = _("{name}: not done yet — replace the NotImplementedError stub, then run "
                     "this cell again.").format(name="standardize")
    finally:
        set_language(None)
    assert HANGUL.search(not_done), "the catalog has no Korean 'not done' line"
    assert not_done in printed, f"no Korean 'not done' line in: {printed[-500:]!r}"
