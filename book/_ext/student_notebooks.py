"""The notebooks a reader downloads or opens in Colab, generated from the chapters.

The chapters in ``book/`` are the book's build sources: MyST Markdown (``{term}``, ``{eq}``,
``{cite:p}`` roles, ``{exercise}`` directives) and every solution in plain view. Jupyter and
Colab render none of that markup. This Sphinx extension writes two notebooks per chapter
from the source, at every build, using the numbers Sphinx itself gave the equations and
exercises:

* ``notebooks/NN_chapter.ipynb``, the student notebook: plain Markdown that Jupyter and Colab
  render (terms link to the hosted glossary, ``{eq}`` becomes the equation's number,
  citations read "(Ioffe & Szegedy, 2015)" and link to the bibliography, exercises are
  marked blocks), and no solutions: the stub cells stay, so each checker reports "not done
  yet" until the reader fills them in;
* ``notebooks/solutions/NN_chapter.ipynb``, the instructors' notebook: the same, with every
  solution kept under a "Solution" heading; its code cells are the chapter's, unchanged.

The Korean edition's build (``language = "ko"``) writes the same two notebooks in Korean,
``notebooks/ko/`` and ``notebooks/ko/solutions/``: every paragraph, heading, list item, table
cell and exercise title of the Markdown is looked up in the page's catalog
(``locale/ko/LC_MESSAGES/``, the translations the Korean pages use), and one code cell is
added after the header, which asks ``bnlib.check`` for Korean hints; the chapter's code cells
are copied unchanged.

The generated files are committed, because Colab opens notebooks from the repository; they
are never edited by hand. Every build compares them with what it generates and warns (an
error under ``-W``) when one is stale. ``make notebooks`` rewrites them: it sets
``BOOK_NOTEBOOKS_DIR`` to the folder to write, which also turns notebook execution off for
that build, since only the sources are needed. The built HTML serves the student notebooks
under ``_notebooks/``; the page's download button and its Colab link point to them.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from editions import language
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

OUT_ENV = "BOOK_NOTEBOOKS_DIR"
FOLDER = "notebooks"  # in the repository, beside book/
SERVED = "_notebooks"  # in the built HTML

ROLE = re.compile(r"\{(?P<role>[a-z][a-z-]*(?::[a-z-]+)?)\}`(?P<body>[^`]+)`")
FENCE_OPEN = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[a-z-]+)\}[ \t]*(?P<arg>.*)$")
# Display math with a label, also indented inside a list item (the indent is kept).
DISPLAY_MATH = re.compile(
    r"^(?P<indent>[ \t]*)\$\$\n(?P<tex>.*?)\n(?P=indent)\$\$[ \t]*\((?P<label>[^)\s]+)\)[ \t]*$",
    re.M | re.S)


class GenerationError(Exception):
    """The source uses markup the generator cannot turn into plain Markdown."""


@dataclass
class BookIndex:
    """What the generator looks up, all of it read from Sphinx's environment.

    ``equations`` and ``exercises`` map a label to its number as the HTML shows it
    (``"3.1"``); ``exercise_titles`` a label to its title; ``terms`` a glossary term
    (lower case) to its anchor on the glossary page; ``titles`` a document name (e.g.
    ``"book/notation"``) to its title; ``citations`` a BibTeX key to ``(authors, year,
    anchor)``, the anchor being the entry's on the bibliography page.
    """

    base_url: str
    book_title: str  # _config.yml's title, in the edition's language
    equations: dict[str, str] = field(default_factory=dict)
    exercises: dict[str, str] = field(default_factory=dict)
    exercise_titles: dict[str, str] = field(default_factory=dict)
    terms: dict[str, str] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    citations: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    source_dir: Path = Path(".")  # the book's root: {literalinclude} paths start from it
    glossary_doc: str = "book/glossary"
    bibliography_doc: str = "book/bibliography"

    def url(self, docname: str, anchor: str = "") -> str:
        return f"{self.base_url}{docname}.html" + (f"#{anchor}" if anchor else "")


# --------------------------------------------------------------------------- languages


@dataclass(frozen=True)
class Words:
    """What the generator itself writes, in one language."""

    exercise: str
    solution: str
    note: str
    student: str
    solutions: str
    language_cell: str | None = None  # a code cell that sets the checkers' language


WORDS = {
    "en": Words(
        exercise="Exercise {number}",
        solution="Solution to Exercise {number}",
        note=("*This is the exercise notebook of the chapter [{title}]({url}) of the book "
              "[{book}]({home}). Run the cells from the top; each exercise's checker reports "
              "\"not done yet\" until you replace its stub. {solutions}*"),
        student="Solutions are not part of it.",
        solutions="This copy, for instructors, keeps every solution.",
    ),
    "ko": Words(
        exercise="연습 문제 {number}",
        solution="연습 문제 {number}의 풀이",
        note=("*[{book}]({home})의 [{title}]({url}) 장에 딸린 연습 노트북이다. 셀을 위에서부터 "
              "차례로 실행하라. 각 연습 문제의 채점기는 스텁을 바꾸기 전까지 \"아직 풀지 "
              "않았다\"고 알린다. {solutions}*"),
        student="풀이는 들어 있지 않다.",
        solutions="강사용인 이 사본에는 모든 풀이가 들어 있다.",
        language_cell=("# 채점기(bnlib.check)의 메시지를 한국어로 받는다.\n"
                       "import os\n\n"
                       "os.environ[\"BNLIB_LANG\"] = \"ko\""),
    ),
}


class Translation:
    """A page's Markdown in another language, message by message, from its catalog.

    ``messages`` maps an English message, as Sphinx's gettext builder extracts it (a
    paragraph's, heading's or table cell's MyST source, its lines joined by spaces), to its
    translation. Text without a translation stays English; ``missing`` collects it.
    """

    def __init__(self, messages: dict[str, str]) -> None:
        from markdown_it.renderer import RendererHTML
        from myst_parser.config.main import MdParserConfig
        from myst_parser.parsers.mdit import create_md_parser

        self.messages = messages
        self.missing: list[str] = []
        self._md = create_md_parser(MdParserConfig(enable_extensions={
            "dollarmath", "amsmath", "colon_fence", "deflist", "substitution"}), RendererHTML)

    def text(self, message: str) -> str:
        key = message.replace("\n", " ").strip()
        found = self.messages.get(key)
        if not found:
            self.missing.append(key)
        return found or message

    def markdown(self, text: str) -> str:
        """``text`` with every paragraph, heading and table cell translated; math, code and
        the layout (list markers, indentation, block quotes) as they were."""
        lines = text.split("\n")
        tokens = self._md.parse(text)
        drop: set[int] = set()
        for before, token in zip(tokens, tokens[1:]):
            if token.type != "inline" or token.map is None:
                continue
            start, end = token.map
            if before.type in ("th_open", "td_open"):
                cell = token.content.strip()
                lines[start] = lines[start].replace(cell, self.text(cell), 1)
                continue
            if before.type not in ("paragraph_open", "heading_open"):
                continue
            first = token.content.split("\n")[0]
            at = lines[start].find(first)
            if at < 0:
                self.missing.append(token.content)
                continue
            lines[start] = lines[start][:at] + self.text(token.content)
            drop.update(range(start + 1, end))
        return "\n".join(line for i, line in enumerate(lines) if i not in drop)


# --------------------------------------------------------------------------- roles


def role_target(body: str) -> tuple[str, str]:
    """``"text <target>"`` -> ``(text, target)``; ``"target"`` -> ``(target, target)``."""
    m = re.fullmatch(r"(?P<text>.*?)\s*<(?P<target>[^<>]+)>", body, re.S)
    return (m["text"], m["target"]) if m else (body, body)


def _cite(keys: str, index: BookIndex, textual: bool) -> str:
    parts = []
    for key in (k.strip() for k in keys.split(",")):
        if key not in index.citations:
            raise GenerationError(f"unknown citation key {key!r}")
        authors, year, anchor = index.citations[key]
        link = index.url(index.bibliography_doc, anchor)
        parts.append(f"[{authors} ({year})]({link})" if textual
                     else f"[{authors}, {year}]({link})")
    if textual:
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return "(" + "; ".join(parts) + ")"


def convert_roles(text: str, index: BookIndex, docname: str, words: Words = WORDS["en"]) -> str:
    """Replace every MyST role in ``text`` by plain Markdown (see the module docstring)."""

    def one(m: re.Match) -> str:
        role, body = m["role"], m["body"]
        if role == "term":
            shown, term = role_target(body)
            anchor = index.terms.get(term.lower())
            if anchor is None:
                raise GenerationError(f"{docname}: unknown glossary term {term!r}")
            return f"[{shown}]({index.url(index.glossary_doc, anchor)})"
        if role == "eq":
            if body not in index.equations:
                raise GenerationError(f"{docname}: unknown equation label {body!r}")
            return f"({index.equations[body]})"
        if role in ("cite:p", "cite:t"):
            return _cite(body, index, textual=role == "cite:t")
        if role == "doc":
            shown, target = role_target(body)
            doc = str(Path(docname).parent / target) if "/" not in target else target
            if doc not in index.titles:
                raise GenerationError(f"{docname}: unknown document {target!r}")
            return f"[{index.titles[doc] if shown == target else shown}]({index.url(doc)})"
        if role in ("numref", "ref"):
            shown, label = role_target(body)
            if label not in index.exercises:
                raise GenerationError(f"{docname}: {{{role}}} to {label!r}, not an exercise")
            name = words.exercise.format(number=index.exercises[label])
            if role == "ref" and shown == label:
                name += f" ({index.exercise_titles[label]})"
            return name if shown == label else shown
        raise GenerationError(f"{docname}: no plain-Markdown form for the role {{{role}}}")

    return ROLE.sub(one, text)


def convert_math(text: str, index: BookIndex, docname: str) -> str:
    """``$$ ... $$ (label)`` -> ``$$ ... \\tag{3.1} $$``: the number Jupyter can show."""

    def one(m: re.Match) -> str:
        label = m["label"]
        if label not in index.equations:
            raise GenerationError(f"{docname}: unknown equation label {label!r}")
        indent = m["indent"]
        return f"{indent}$$\n{m['tex']}\n{indent}\\tag{{{index.equations[label]}}}\n{indent}$$"

    return DISPLAY_MATH.sub(one, text)


# --------------------------------------------------------------------------- directives


@dataclass
class Directive:
    name: str
    arg: str
    options: dict[str, str]
    body: str


def split_blocks(text: str) -> list[str | Directive]:
    """Markdown text cut into plain stretches and top-level fenced directives."""
    lines = text.split("\n")
    blocks: list[str | Directive] = []
    plain: list[str] = []
    i = 0
    while i < len(lines):
        m = FENCE_OPEN.match(lines[i])
        if not m:
            plain.append(lines[i])
            i += 1
            continue
        fence, j = m["fence"], i + 1
        options: dict[str, str] = {}
        while j < len(lines) and (opt := re.match(r"^:([a-z-]+):\s*(.*)$", lines[j])):
            options[opt[1]] = opt[2].strip()
            j += 1
        body_start = j
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        if j == len(lines):
            raise GenerationError(f"the {{{m['name']}}} directive is never closed")
        if plain:
            blocks.append("\n".join(plain))
            plain = []
        body = "\n".join(lines[body_start:j]).strip("\n")
        blocks.append(Directive(m["name"], m["arg"].strip(), options, body))
        i = j + 1
    if plain:
        blocks.append("\n".join(plain))
    return blocks


def quote(text: str) -> str:
    """``text`` as a Markdown block quote."""
    return "\n".join(f"> {line}".rstrip() for line in text.split("\n"))


# --------------------------------------------------------------------------- notebooks


@dataclass
class Generated:
    student: nbformat.NotebookNode
    solutions: nbformat.NotebookNode
    exercises: list[dict]


def generate(source: nbformat.NotebookNode, docname: str, index: BookIndex,
             language: str = "en", translation: Translation | None = None) -> Generated:
    """The student and the solutions notebook of the chapter ``source`` (``docname``), in
    ``language``; any language but English needs the page's ``translation``."""
    words = WORDS[language]
    tr = translation.markdown if translation is not None else (lambda text: text)
    title_of = translation.text if translation is not None else (lambda text: text)

    def plain(text: str) -> str:
        return convert_math(convert_roles(tr(text), index, docname, words), index, docname)

    student, solutions = copy.deepcopy(source), copy.deepcopy(source)
    student.cells, solutions.cells = [], []
    exercises: list[dict] = []
    in_solution = False
    current: dict | None = None  # the exercise whose stub and checker come next

    for cell in source.cells:
        if cell.cell_type == "code":
            clean = copy.deepcopy(cell)
            clean.outputs, clean.execution_count = [], None
            solutions.cells.append(clean)
            if not in_solution:
                student.cells.append(copy.deepcopy(clean))
                if current is not None:
                    current["checkers"] += re.findall(r"\bcheck\.([a-z_0-9]+)\(", clean.source)
            continue
        if cell.cell_type != "markdown":
            raise GenerationError(f"{docname}: a {cell.cell_type} cell; only code and Markdown")
        mine: list[str] = []  # this cell's Markdown, for the student
        theirs: list[str] = []  # and for the instructors
        for block in split_blocks(cell.source):
            if isinstance(block, str):
                text = plain(block)
                theirs.append(text)
                if not in_solution:
                    mine.append(text)
                continue
            if block.name == "exercise":
                label = block.options.get("label")
                if label not in index.exercises:
                    raise GenerationError(f"{docname}: exercise {block.arg!r} has no known label")
                number = index.exercises[label]
                name = words.exercise.format(number=number)
                head = f"**{name}: {convert_roles(title_of(block.arg), index, docname, words)}**"
                text = quote(f"{head}\n\n{plain(block.body)}")
                mine.append(text)
                theirs.append(text)
                current = {"label": label, "number": number, "title": title_of(block.arg),
                           "checkers": []}
                exercises.append(current)
            elif block.name == "literalinclude":
                path = (index.source_dir / docname).parent / block.arg
                code = python_object(path, block.options.get("pyobject"), docname)
                text = f"```python\n{code}\n```"
                theirs.append(text)
                if not in_solution:
                    mine.append(text)
            elif block.name == "solution-start":
                in_solution = True
                solved = words.solution.format(number=_solved(block, index, docname))
                theirs.append(f"**{solved}**")
            elif block.name == "solution-end":
                in_solution = False
                current = None
            elif block.name == "solution":
                solved = words.solution.format(number=_solved(block, index, docname))
                theirs.append(quote(f"**{solved}**\n\n{plain(block.body)}"))
            else:
                raise GenerationError(f"{docname}: no plain-Markdown form for {{{block.name}}}")
        for target, parts in ((student, mine), (solutions, theirs)):
            text = "\n\n".join(p.strip("\n") for p in parts if p.strip())
            if text:
                new = copy.deepcopy(cell)
                new.source = text
                new.pop("attachments", None)
                target.cells.append(new)
    if in_solution:
        raise GenerationError(f"{docname}: a solution-start without its solution-end")

    title = index.titles[docname]
    for nb, kind in ((student, "student"), (solutions, "solutions")):
        note = words.note.format(
            title=title, url=index.url(docname), book=index.book_title,
            home=index.url("book/intro"),
            solutions=words.student if kind == "student" else words.solutions)
        header = nbformat.v4.new_markdown_cell(note)
        header.id = f"{kind}-header"
        at = _after_title(nb)
        nb.cells.insert(at, header)
        if words.language_cell is not None:
            switch = nbformat.v4.new_code_cell(words.language_cell)
            switch.id = f"{language}-language"
            nb.cells.insert(at + 1, switch)
        nb.metadata["bnbook"] = {
            "kind": kind,
            "generated_from": f"{docname}.ipynb",
            "language": language,
            "do_not_edit": "generated by book/_ext/student_notebooks.py; run `make notebooks`",
            "exercises": [{k: e[k] for k in ("label", "number", "title", "checkers")}
                          for e in exercises],
        }
        nb.metadata.pop("widgets", None)
    return Generated(student, solutions, exercises)


def python_object(path: Path, dotted: str | None, docname: str) -> str:
    """The source of ``dotted`` (``"Class.method"``, decorators included) in the Python file
    ``path``, dedented; the whole file when ``dotted`` is ``None``: what ``{literalinclude}``
    with ``:pyobject:`` shows on the page."""
    if not path.is_file():
        raise GenerationError(f"{docname}: {{literalinclude}} of a missing file {path}")
    text = path.read_text(encoding="utf-8")
    if dotted is None:
        return text.rstrip("\n")
    body: list[ast.stmt] = ast.parse(text).body
    node = None
    for part in dotted.split("."):
        node = next((n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef |
                                                   ast.ClassDef) and n.name == part), None)
        if node is None:
            raise GenerationError(f"{docname}: no {dotted} in {path.name}")
        body = node.body
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    lines = text.split("\n")[start - 1:node.end_lineno]
    return textwrap.dedent("\n".join(lines))


def _solved(block: Directive, index: BookIndex, docname: str) -> str:
    label = block.arg.split()[0] if block.arg else ""
    if label not in index.exercises:
        raise GenerationError(f"{docname}: a solution to the unknown exercise {label!r}")
    return index.exercises[label]


def _after_title(nb: nbformat.NotebookNode) -> int:
    """The index just after the chapter's title cell (its first Markdown cell)."""
    return next((i + 1 for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), 0)


def dumps(nb: nbformat.NotebookNode) -> str:
    """The file text of ``nb``: nbformat's layout, so that committed files diff cleanly."""
    return nbformat.writes(nb) + "\n"


# --------------------------------------------------------------------------- Sphinx


def book_index(app: Sphinx) -> BookIndex:
    """Equation and exercise numbers, glossary anchors, titles and citations, from Sphinx."""
    env = app.env
    base = app.config.html_baseurl.rstrip("/") + "/"
    index = BookIndex(base_url=base, book_title=app.config.html_title,
                      source_dir=Path(app.srcdir))
    for kinds in env.toc_fignumbers.values():
        for node_id, number in kinds.get("displaymath", {}).items():
            index.equations[node_id.removeprefix("equation-")] = ".".join(map(str, number))
        for label, number in kinds.get("exercise", {}).items():
            index.exercises[label] = ".".join(map(str, number))
    for label, info in getattr(env, "sphinx_exercise_registry", {}).items():
        # sphinx-exercise keeps the title as the subtitle node of the exercise's title
        subtitles = [n for n in info["node"].findall()
                     if type(n).__name__ == "exercise_subtitle"]
        index.exercise_titles[label] = subtitles[0].astext() if subtitles else ""
    for (kind, name), (_doc, anchor) in env.domaindata["std"]["objects"].items():
        if kind == "term":
            index.terms[name.lower()] = anchor
    index.titles = {doc: title.astext() for doc, title in env.titles.items()}
    for citation in env.domaindata["cite"]["citations"]:
        index.citations[citation.key] = (*author_year(citation.entry), citation.citation_id)
    return index


def author_year(entry) -> tuple[str, str]:
    """``("Ioffe & Szegedy", "2015")``, ``("He et al.", "2016")`` from a BibTeX entry."""
    names = [" ".join(p.prelast_names + p.last_names).replace("{", "").replace("}", "")
             for p in entry.persons.get("author", [])]
    if len(names) == 1:
        authors = names[0]
    elif len(names) == 2:
        authors = f"{names[0]} & {names[1]}"
    else:
        authors = f"{names[0]} et al."
    return authors, entry.fields.get("year", "n.d.")


def chapters(app: Sphinx) -> list[str]:
    """Every notebook page of the book, as a document name (``book/03_bn_algorithm``)."""
    return sorted(d for d in app.env.found_docs if app.env.doc2path(d).endswith(".ipynb"))


def folder(lang: str) -> str:
    """Where the ``lang`` edition's notebooks are committed: ``notebooks/`` for English,
    ``notebooks/ko/`` for Korean."""
    return FOLDER if lang == "en" else f"{FOLDER}/{lang}"


def page_translation(app: Sphinx, docname: str) -> Translation | None:
    """The page's catalog as a :class:`Translation`; ``None`` for the English edition."""
    lang = language(app)
    if lang == "en":
        return None
    from babel.messages.pofile import read_po

    messages: dict[str, str] = {}
    for directory in app.config.locale_dirs:
        po = Path(app.srcdir) / directory / lang / "LC_MESSAGES" / f"{docname}.po"
        if po.is_file():
            with po.open("rb") as f:
                messages.update({m.id: m.string for m in read_po(f)
                                 if m.id and m.string and not m.fuzzy})
    return Translation(messages)


def _write_notebooks(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    index = book_index(app)
    root = Path(app.srcdir)
    out = os.environ.get(OUT_ENV)
    served = Path(app.outdir) / SERVED
    lang = language(app)
    for docname in chapters(app):
        source = nbformat.read(app.env.doc2path(docname), as_version=4)
        try:
            made = generate(source, docname, index, lang, page_translation(app, docname))
        except GenerationError as err:
            logger.warning(f"student notebook of {docname}: {err}")
            continue
        name = Path(docname).name + ".ipynb"
        for sub, nb in (("", made.student), ("solutions", made.solutions)):
            text = dumps(nb)
            (served / sub).mkdir(parents=True, exist_ok=True)
            (served / sub / name).write_text(text, encoding="utf-8")
            committed = root / folder(lang) / sub / name
            if out:
                target = Path(out) / sub / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            elif not committed.is_file() or committed.read_text(encoding="utf-8") != text:
                logger.warning(
                    f"{committed.relative_to(root)} is stale against {docname}.ipynb "
                    "(or its translation): run `make notebooks` and commit the result")


def _no_execution_when_only_writing(app: Sphinx, config) -> None:
    if os.environ.get(OUT_ENV):
        config.nb_execution_mode = "off"


def _point_buttons_at_student_notebooks(app: Sphinx, pagename: str, templatename: str,
                                        context: dict, doctree) -> None:
    """The page's .ipynb download and its Colab link hand out the student notebook."""
    if context.get("page_source_suffix") != ".ipynb":
        return
    name = Path(pagename).name + ".ipynb"
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []):
            if button.get("label") == "download-source-button":
                button["url"] = f"{context['pathto'](SERVED, 1)}/{name}"
                button["tooltip"] = ("Download the exercise notebook (.ipynb)"
                                     if language(app) == "en" else "연습 노트북 내려받기 (.ipynb)")
            url = button.get("url", "")
            if "colab.research.google.com" in url:
                button["url"] = re.sub(r"/blob/([^/]+)/.*$",
                                       rf"/blob/\1/{folder(language(app))}/{name}", url)


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _no_execution_when_only_writing, priority=900)
    app.connect("build-finished", _write_notebooks)
    app.connect("html-page-context", _point_buttons_at_student_notebooks, priority=950)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


