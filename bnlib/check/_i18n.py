"""The checkers' messages in the reader's language: :func:`_`, the language it reads, the catalog.

Every message a reader of a notebook can see goes through ``_()``, which returns its
translation in the current language, or the English message itself (in English, or when the
catalog has no translation). The language is read at every call, not at import:
:func:`set_language` if it was called, else the environment variable ``BNLIB_LANG``
(``"en"`` or ``"ko"``; unset or ``""`` means English). The Korean edition's notebooks set
``os.environ["BNLIB_LANG"] = "ko"`` in a code cell of their own.

Messages built from values are templates with named placeholders, filled after translation:
``_("your function returned None: did you forget `return {name}`?").format(name=name)``.
The catalogues' hints, formulas and case hints are built at import time (some by
concatenation) and translated where they are shown, ``_(mistake.hint)``: the runtime string
is the msgid.

The catalog is the standard library's gettext: ``bnlib/locale/ko/LC_MESSAGES/bnlib.po``, the
source that people review, and ``bnlib.mo`` compiled from it, both committed (an install from
git has no compiler step). After changing a message, from the repository root::

    python -m bnlib.check._i18n update    # rewrite the .po from messages(), keeping translations
    # ... translate the new (empty) entries of the .po ...
    python -m bnlib.check._i18n compile   # write the .mo

Both commands need babel, a development tool only; ``_()`` does not import it.
"""

from __future__ import annotations

import ast
import functools
import gettext
import importlib
import os
import sys
from pathlib import Path

DOMAIN = "bnlib"
LANG_ENV = "BNLIB_LANG"
LANGUAGES = ("en", "ko")  # English, the messages' own language, first
LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
PO_PATH = LOCALE_DIR / "ko" / "LC_MESSAGES" / f"{DOMAIN}.po"

_PO_HEADER = (
    "# Korean translations of the messages of bnlib's exercise checkers (bnlib.check).\n"
    "# Made by `python -m bnlib.check._i18n update`; translate the empty entries, then\n"
    "# `python -m bnlib.check._i18n compile` writes bnlib.mo. Both files are committed."
)

_chosen: str | None = None  # set by set_language; None: the environment decides


def _supported(lang: str, source: str) -> str:
    """``lang`` normalized (``"en"``, ``"ko"``); a ``ValueError`` naming ``source`` otherwise."""
    normalized = lang.strip().lower()
    if normalized not in LANGUAGES:
        raise ValueError(f"{source}: unsupported language {lang!r}; the checkers speak "
                         f"{' and '.join(repr(x) for x in LANGUAGES)}")
    return normalized


def set_language(lang: str | None) -> None:
    """Make the checkers speak ``lang`` (``"en"`` or ``"ko"``); ``None``: ``BNLIB_LANG`` decides
    again."""
    global _chosen
    _chosen = None if lang is None else _supported(lang, "set_language")


def language() -> str:
    """The checkers' language now: :func:`set_language`'s choice, else ``BNLIB_LANG``, else
    ``"en"``."""
    if _chosen is not None:
        return _chosen
    return _supported(os.environ.get(LANG_ENV, "") or "en", LANG_ENV)


@functools.cache
def _translations(lang: str) -> gettext.NullTranslations:
    """The compiled catalog of ``lang``, read once; English needs none."""
    if lang == LANGUAGES[0]:
        return gettext.NullTranslations()
    return gettext.translation(DOMAIN, localedir=LOCALE_DIR, languages=[lang])


def _(message: str) -> str:
    """``message`` in the current language: its translation, or ``message`` itself."""
    return _translations(language()).gettext(message) if message else message


# --------------------------------------------------------------------------- the catalog


def _sources() -> dict[str, list[str]]:
    """Every message to translate, in a stable order, with where it comes from.

    First the string literals passed to ``_()`` in ``bnlib/check/*.py`` (files by name,
    literals in source order), then each catalogue's hints, formula and case hints, in the
    order the catalogues were registered.
    """
    found: dict[str, list[str]] = {}

    def add(message: str, origin: str) -> None:
        origins = found.setdefault(message, [])
        if origin not in origins:
            origins.append(origin)

    for path in sorted(Path(__file__).parent.glob("*.py")):
        calls = [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                 and node.func.id == "_" and node.args
                 and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)]
        for node in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
            add(node.args[0].value, f"bnlib/check/{path.name}")

    importlib.import_module("bnlib.check")  # registers every chapter's catalogues
    from bnlib.check._core import catalogues

    for name, ex in catalogues().items():
        for mistake in ex.mistakes:
            add(mistake.hint, f"{name}: hint")
        add(ex.formula, f"{name}: formula")
        for case, hint in ex.case_hints.items():
            add(hint, f"{name}: hint for case {case!r}")
    return found


def messages() -> list[str]:
    """Every message that must be translated, without duplicates, in a stable order."""
    return list(_sources())


def update(path: Path = PO_PATH) -> None:
    """Rewrite the .po from :func:`messages`: translations kept by msgid, new messages empty,
    obsolete ones dropped, the header as it was."""
    from babel.messages.catalog import Catalog
    from babel.messages.pofile import read_po, write_po

    if path.exists():
        with path.open("rb") as f:
            catalog = read_po(f)
    else:
        catalog = Catalog(locale="ko", domain=DOMAIN, project=DOMAIN, version="",
                          header_comment=_PO_HEADER, language_team="Korean", fuzzy=False)
    previous = {m.id: m for m in catalog if m.id}
    for msgid in previous:
        del catalog[msgid]
    for msgid, origins in _sources().items():
        old = previous.get(msgid)
        catalog.add(msgid, old.string if old else "", auto_comments=origins,
                    flags=old.flags if old else ())
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        write_po(f, catalog, width=0, ignore_obsolete=True)


def compile_mo(path: Path = PO_PATH) -> None:
    """Write the .mo next to the .po ``path`` (fuzzy and untranslated entries left out)."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with path.open("rb") as f:
        catalog = read_po(f)
    with path.with_suffix(".mo").open("wb") as f:
        write_mo(f, catalog)


def main(argv: list[str]) -> None:
    """``update`` or ``compile``, as the module docstring shows."""
    commands = {"update": update, "compile": compile_mo}
    if len(argv) != 1 or argv[0] not in commands:
        raise SystemExit("usage: python -m bnlib.check._i18n update|compile")
    commands[argv[0]]()
    print(f"{argv[0]}: {PO_PATH if argv[0] == 'update' else PO_PATH.with_suffix('.mo')}")


if __name__ == "__main__":
    main(sys.argv[1:])
