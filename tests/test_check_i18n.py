"""The checkers speak Korean when ``BNLIB_LANG=ko`` and English otherwise (``bnlib.check._i18n``).

The Korean catalog, ``bnlib/locale/ko/LC_MESSAGES/bnlib.po``, must translate every message a
reader can see (``messages()``: the literals passed to ``_()`` and every catalogue's hints,
formula and case hints), keep each one's ``{placeholders}`` and code spans, hold nothing
obsolete, and be compiled into the committed ``bnlib.mo``; the checkers must then print and
raise Korean, grading mode included, and English byte for byte without the variable.
"""

from __future__ import annotations

import gettext
import io
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from checking import failure

from bnlib import check
from bnlib.check import _i18n
from bnlib.check._core import GRADING_ENV, catalogues
from bnlib.check._i18n import LANG_ENV, PO_PATH, messages

HANGUL = re.compile("[\uac00-\ud7a3]")
PLACEHOLDER = re.compile(r"\{[^{}]*\}")
CODE_SPAN = re.compile(r"`[^`]*`")
MESSAGES = messages()
FORWARD = catalogues()["batchnorm_forward"]
WRONG = FORWARD.mistakes[0]  # statistics over axis 1, a solution with the reader's signature
NOT_DONE_EN = ("batchnorm_forward: not done yet — replace the NotImplementedError stub, then "
               "run this cell again.\n")


def stub(x, gamma, beta, eps):
    raise NotImplementedError


def returns_none(x, gamma, beta, eps):
    return None


@pytest.fixture(scope="module")
def po():
    with PO_PATH.open("rb") as f:
        return read_po(f)


@pytest.fixture(autouse=True)
def english_unless_told(monkeypatch):
    """Every test starts as a reader's kernel does: no choice made, BNLIB_LANG unset,
    grading off; and leaves no choice behind."""
    monkeypatch.delenv(LANG_ENV, raising=False)
    monkeypatch.delenv(GRADING_ENV, raising=False)
    check.set_language(None)
    yield
    check.set_language(None)


# --------------------------------------------------------------------------- the catalog


def test_messages_holds_the_literals_and_the_catalogues_once_each():
    assert len(MESSAGES) == len(set(MESSAGES)) and messages() == MESSAGES
    assert "all {n} cases pass" in MESSAGES  # a literal passed to _() in _core.py
    assert "all {n} models pass" in MESSAGES  # ... and in a chapter's module
    for ex in catalogues().values():
        assert {m.hint for m in ex.mistakes} | {ex.formula} | set(ex.case_hints.values()) \
            <= set(MESSAGES), ex.name


def test_every_message_has_a_korean_translation_that_keeps_its_code(po):
    problems = []
    for msgid in MESSAGES:
        entry = po.get(msgid)
        text = entry.string if entry is not None else ""
        if not text:
            problems.append("untranslated")
        elif entry.fuzzy:
            problems.append("fuzzy")
        elif not HANGUL.search(text):
            problems.append("no Hangul")
        elif set(PLACEHOLDER.findall(text)) != set(PLACEHOLDER.findall(msgid)) or Counter(
                c for c in text if c in "{}") != Counter(c for c in msgid if c in "{}"):
            problems.append(f"placeholders {sorted(set(PLACEHOLDER.findall(text)))}")
        elif Counter(CODE_SPAN.findall(text)) != Counter(CODE_SPAN.findall(msgid)):
            problems.append(f"code spans {sorted(CODE_SPAN.findall(text))}")
        else:
            continue
        problems[-1] += f": {msgid!r} -> {text!r}"
    assert not problems, "\n".join(problems)


def test_the_po_has_no_obsolete_entries(po):
    wanted = set(MESSAGES)
    assert [m.id for m in po if m.id and m.id not in wanted] == []
    assert not po.obsolete


def test_update_keeps_translations_and_drops_obsolete_entries(tmp_path):
    # the committed .po is exactly what `python -m bnlib.check._i18n update` writes
    copy = tmp_path / "bnlib.po"
    shutil.copy(PO_PATH, copy)
    with copy.open("a", encoding="utf-8") as f:
        f.write('\nmsgid "a message no checker shows any more"\nmsgstr "더는 쓰지 않는 메시지"\n')
    _i18n.update(copy)
    assert copy.read_text(encoding="utf-8") == PO_PATH.read_text(encoding="utf-8"), (
        "the .po is out of date: run `python -m bnlib.check._i18n update`, translate, compile")


def test_the_committed_mo_is_compiled_from_the_po(po):
    fresh = io.BytesIO()
    write_mo(fresh, po)
    fresh.seek(0)
    with PO_PATH.with_suffix(".mo").open("rb") as f:
        committed = gettext.GNUTranslations(f)

    def messages_of(translations: gettext.GNUTranslations) -> dict[str, str]:
        return {k: v for k, v in translations._catalog.items() if k}  # "" is the header

    assert messages_of(committed) == messages_of(gettext.GNUTranslations(fresh))
    assert len(messages_of(committed)) == len(MESSAGES)


def test_the_catalog_ships_with_the_package():
    # in [tool.setuptools.package-data]: pip installs bnlib from git, with no compiler step
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert '"locale/*/LC_MESSAGES/*.mo"' in pyproject


# --------------------------------------------------------------------------- the checkers


def test_a_korean_notebook_gets_korean_messages(monkeypatch, capsys, po):
    monkeypatch.setenv(LANG_ENV, "ko")  # after import: the language is read at every message
    assert check.language() == "ko"
    assert check.batchnorm_forward(stub) is False
    assert capsys.readouterr().out.startswith("batchnorm_forward: 아직 풀지 않았다 — ")
    assert check.batchnorm_forward(FORWARD.solution) is True
    assert capsys.readouterr().out == "batchnorm_forward: 7개 케이스 모두 통과 ✓\n"
    assert po[WRONG.hint].string and po[WRONG.hint].string != WRONG.hint
    assert failure(check.batchnorm_forward, WRONG.solution) == (
        f"batchnorm_forward: {po[WRONG.hint].string}")
    # a message built from values: a template filled after translation
    assert failure(check.batchnorm_forward, returns_none) == (
        "batchnorm_forward: 함수가 None을 반환했다. `return y`를 빠뜨렸는가?")
    assert check.results()["batchnorm_forward"] == {"status": "fail", "case": "typical batch"}


def test_without_the_variable_the_messages_are_todays_english(monkeypatch, capsys):
    for unset in (None, ""):
        if unset is not None:
            monkeypatch.setenv(LANG_ENV, unset)
        assert check.language() == "en"
        assert check.batchnorm_forward(stub) is False
        assert capsys.readouterr().out == NOT_DONE_EN
        assert check.batchnorm_forward(FORWARD.solution) is True
        assert capsys.readouterr().out == "batchnorm_forward: all 7 cases pass ✓\n"
        assert failure(check.batchnorm_forward, WRONG.solution) == (
            f"batchnorm_forward: {WRONG.hint}")
        assert failure(check.batchnorm_forward, returns_none) == (
            "batchnorm_forward: your function returned None: did you forget `return y`?")


def test_grading_mode_in_korean(monkeypatch):
    monkeypatch.setenv(LANG_ENV, "ko")
    monkeypatch.setenv(GRADING_ENV, "1")
    assert failure(check.batchnorm_forward, WRONG.solution) == (
        "batchnorm_forward: 케이스 'typical batch'에서 실패 (채점 모드: 힌트 없음)")
    assert check.results()["batchnorm_forward"] == {"status": "fail", "case": "typical batch"}


def test_set_language_overrides_the_variable_until_reset(monkeypatch, capsys):
    monkeypatch.setenv(LANG_ENV, "ko")
    check.set_language("en")
    assert check.language() == "en"
    check.batchnorm_forward(stub)
    assert capsys.readouterr().out == NOT_DONE_EN
    check.set_language(None)  # the variable decides again
    assert check.language() == "ko"
    monkeypatch.delenv(LANG_ENV)
    check.set_language("ko")
    assert check.language() == "ko"
    assert _i18n._("a message without a translation") == "a message without a translation"


def test_an_unsupported_language_is_refused_clearly(monkeypatch):
    with pytest.raises(ValueError, match=r"set_language: unsupported language 'xx'; .*'en' and "
                                         r"'ko'"):
        check.set_language("xx")
    assert check.language() == "en"  # the refused choice left nothing behind
    monkeypatch.setenv(LANG_ENV, "xx")
    with pytest.raises(ValueError, match=r"BNLIB_LANG: unsupported language 'xx'; .*'en' and "
                                         r"'ko'"):
        check.language()
    with pytest.raises(ValueError, match="BNLIB_LANG"):
        check.batchnorm_forward(stub)
