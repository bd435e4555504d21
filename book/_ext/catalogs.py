"""The Korean edition's message catalogs: update them from the English source, check them.

``locale/ko/LC_MESSAGES/book/*.po`` hold one catalog per page, kept with sphinx-intl.
Sphinx's ``gettext`` builder extracts the English messages (every paragraph, heading, list
item, caption, alt text, exercise statement and solution) into ``_build/gettext/*.pot``;
this module compares the two.

Usage (the Makefile runs the first two)::

    python book/_ext/catalogs.py update _build/gettext   # make gettext: merge new messages
    python book/_ext/catalogs.py check _build/gettext    # make book: fail on stale catalogs
    python book/_ext/catalogs.py lint [PO ...]           # a translator's check of the markup

``lint`` (also run by ``tests/test_translations.py``) checks each translation against its
English message: the same citations, equations, cross-references, math, code and links; a
term link whose text is the glossary's Korean term; the English term in parentheses at the
first use of each term on a page; Hangul wherever the English has words; emphasis that
Markdown can open and close next to Korean particles.

``update`` runs ``sphinx-intl update`` (new messages arrive untranslated, changed ones
fuzzy), then fills in the messages that have nothing to translate: display math and the
glossary's Korean names, which read the same in both editions. ``check`` fails when any
message of the English source lacks a translation, or has only a fuzzy one: an English
sentence that changed without its translation fails CI.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po
from student_notebooks import ROLE, role_target  # one reading of MyST roles for the book

ROOT = Path(__file__).resolve().parents[2]
LANGUAGE = "ko"
LOCALE = ROOT / "locale"
WIDTH = 0  # no wrapping: one message, one line, which diffs and greps cleanly

_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S)
_CODE = re.compile(r"\{[a-z:-]+\}`[^`]*`|``[^`]+``|`[^`]+`")
_URL = re.compile(r"https?://\S+")
_WORD = re.compile(r"[A-Za-z]{2,}")
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def catalog_dir(language: str = LANGUAGE) -> Path:
    return LOCALE / language / "LC_MESSAGES"


def prose(text: str) -> str:
    """``text`` without its math, code, roles and URLs: the words a translator translates."""
    return _URL.sub(" ", _CODE.sub(" ", _MATH.sub(" ", text)))


def is_language_neutral(msgid: str) -> bool:
    """Whether ``msgid`` reads the same in both editions: no English word outside math, code
    and roles (display math, a bare formula, the glossary's Korean names)."""
    if msgid.strip().startswith("\\") or msgid.startswith("\n"):
        return True  # a display-math block: LaTeX, no prose
    return _WORD.search(prose(msgid)) is None


def read(path: Path) -> Catalog:
    with path.open("rb") as f:
        return read_po(f)


def write(catalog: Catalog, path: Path) -> None:
    with path.open("wb") as f:
        write_po(f, catalog, width=WIDTH, omit_header=False, sort_output=False)


def update(pot_dir: Path, language: str = LANGUAGE) -> None:
    """Merge ``pot_dir``'s templates into the catalogs, then fill the language-neutral ones."""
    subprocess.run([sys.executable, "-m", "sphinx_intl", "update", "-p", str(pot_dir), "-l",
                    language, "-d", str(LOCALE), "-w", str(WIDTH), "--no-obsolete"], check=True)
    for po in sorted(catalog_dir(language).rglob("*.po")):
        catalog, changed = read(po), False
        for message in catalog:
            if message.id and not message.string and is_language_neutral(message.id):
                message.string, changed = message.id, True
        if changed:
            write(catalog, po)


# --------------------------------------------------------------------------- lint

_INLINE_CODE = re.compile(r"(?<![}`])`(?P<code>[^`]+)`")
_LINK_TARGET = re.compile(r"\]\((?P<url>[^)\s]+)\)|https?://[^\s)>]+")


def glossary_terms(language: str = LANGUAGE) -> dict[str, list[str]]:
    """Each glossary term (lower case) -> its names in ``language``, from ``book/glossary.md``:
    the lines under the English term ("weight decay" -> ["가중치 감쇠", "가중치 감소"]), the
    first being the one the edition uses; a name's own parenthesis ("AdaBN (적응형 배치
    정규화)") is dropped, and "pre-LN / post-LN" gives both."""
    text = (ROOT / "book" / "glossary.md").read_text(encoding="utf-8")
    body = text.split("```{glossary}", 1)[1].split("\n```", 1)[0]
    terms: dict[str, list[str]] = {}
    for block in body.split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith((" ", ":"))]
        if len(lines) >= 2:
            names = []
            for line in lines[1:]:
                names += [n.strip() for n in line.split(" (")[0].split(" / ")]
            terms[lines[0].lower()] = names
    return terms


def _references(text: str) -> Counter:
    """What must survive translation unchanged: roles (a term by its target), math, code and
    link targets."""
    found: Counter = Counter()
    for m in ROLE.finditer(text):
        body = role_target(m["body"])[1].lower() if m["role"] == "term" else m["body"]
        found[f"{{{m['role']}}}{body}"] += 1
    rest = ROLE.sub(" ", text)
    found.update(f"math {m.group(0)}" for m in _MATH.finditer(rest))
    rest = _MATH.sub(" ", rest)
    found.update(f"code {m['code']}" for m in _INLINE_CODE.finditer(rest))
    found.update(f"link {m.group(0).lstrip('](').rstrip(')')}" for m in _LINK_TARGET.finditer(rest))
    return found


def _emphasis(text: str) -> tuple[int, int]:
    """How many ``<em>`` and ``<strong>`` spans ``text`` renders to (math blanked out)."""
    from markdown_it import MarkdownIt

    html = MarkdownIt("commonmark").renderInline(_MATH.sub("x", text))
    return html.count("<em>"), html.count("<strong>")


def lint(po: Path, terms: dict[str, list[str]] | None = None) -> list[str]:
    """The problems of one catalog, each as ``"msgid...: what is wrong"``."""
    terms = glossary_terms() if terms is None else terms
    chapter = po.stem not in ("glossary",)
    problems: list[str] = []
    introduced: set[str] = set()
    catalog = read(po)
    msgids = {m.id for m in catalog if m.id}
    for message in catalog:
        if not message.id:
            continue
        msgid, msgstr = message.id, message.string
        where = f"{po.stem}: {msgid[:70]!r}"
        if not msgstr:
            problems.append(f"{where}: untranslated")
            continue
        if msgstr != msgid and msgstr in msgids:
            problems.append(f"{where}: the translation is another message of the page (in the "
                            "glossary: another term, which Sphinx rejects as a duplicate)")
        if message.fuzzy:
            problems.append(f"{where}: fuzzy")
        if msgstr == msgid and is_language_neutral(msgid):
            continue
        lost = _references(msgid) - _references(msgstr)
        added = _references(msgstr) - _references(msgid)
        if lost or added:
            problems.append(f"{where}: markup differs: missing {sorted(lost)}, "
                            f"extra {sorted(added)}")
        if _emphasis(msgid) != _emphasis(msgstr):
            problems.append(f"{where}: {_emphasis(msgstr)} emphasized spans render, the English "
                            f"has {_emphasis(msgid)}: CommonMark does not close `**` between "
                            "punctuation and a Korean letter (\"**`x`**는\"); move or space it")
        if _WORD.search(prose(msgid)) and not HANGUL.search(msgstr):
            problems.append(f"{where}: no Hangul in the translation")
        for m in ROLE.finditer(msgstr):
            if m["role"] != "term":
                continue
            shown, target = role_target(m["body"])
            names = terms.get(target.lower())
            if names is None:
                problems.append(f"{where}: {{term}} to {target!r}, not in the glossary")
                continue
            if not any(name.lower() in shown.lower() for name in names):
                problems.append(f"{where}: {{term}}`{m['body']}` should read {names[0]!r}, "
                                "the glossary's term")
            if chapter and target.lower() not in introduced:
                introduced.add(target.lower())
                tail = msgstr[m.end():m.end() + 80 + len(target)].lower()
                if not re.match(r"\s*\(", tail) or target.lower() not in tail:
                    problems.append(f"{where}: first use of {target!r} on this page: follow "
                                    f"the role with the English term, e.g. ({target})")
    return problems


# --------------------------------------------------------------------------- check


@dataclass
class Report:
    """What ``check`` found for one page."""

    page: str
    total: int
    missing: list[str]
    fuzzy: list[str]

    @property
    def translated(self) -> int:
        return self.total - len(self.missing) - len(self.fuzzy)


def check(pot_dir: Path, language: str = LANGUAGE) -> list[Report]:
    """For each template under ``pot_dir``, which of its messages the catalog lacks or has
    only fuzzy."""
    reports = []
    for pot in sorted(pot_dir.rglob("*.pot")):
        page = pot.relative_to(pot_dir).with_suffix("").as_posix()
        ids = [m.id for m in read(pot) if m.id]
        po = catalog_dir(language) / f"{page}.po"
        catalog = read(po) if po.is_file() else Catalog()
        missing, fuzzy = [], []
        for msgid in ids:
            message = catalog.get(msgid)
            if message is None or not message.string:
                missing.append(msgid)
            elif message.fuzzy:
                fuzzy.append(msgid)
        reports.append(Report(page, len(ids), missing, fuzzy))
    return reports


def main(argv: list[str]) -> int:
    if argv[:1] == ["lint"]:
        paths = [Path(p) for p in argv[1:]] or sorted(catalog_dir().rglob("*.po"))
        terms = glossary_terms()
        problems = [p for path in paths for p in lint(path, terms)]
        print("\n".join(problems) or f"{len(paths)} catalog(s): no problems")
        return 1 if problems else 0
    if len(argv) != 2 or argv[0] not in ("update", "check"):
        print(__doc__)
        return 2
    pot_dir = Path(argv[1])
    if not any(pot_dir.rglob("*.pot")):
        print(f"no .pot files under {pot_dir}: run the gettext builder first (make gettext)")
        return 2
    if argv[0] == "update":
        update(pot_dir)
        return 0
    reports = check(pot_dir)
    total = sum(r.total for r in reports)
    done = sum(r.translated for r in reports)
    bad = [r for r in reports if r.missing or r.fuzzy]
    for r in bad:
        print(f"{r.page}: {len(r.missing)} untranslated, {len(r.fuzzy)} fuzzy")
        for msgid in (r.missing + r.fuzzy)[:5]:
            print(f"    {msgid[:110]!r}")
    print(f"{LANGUAGE}: {done} of {total} messages translated ({100 * done / max(total, 1):.1f}%)"
          + ("" if not bad else "; run `make gettext`, translate, and commit locale/"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
