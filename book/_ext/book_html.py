"""Additions to the HTML that Jupyter Book 1.x writes: offline, clean, and easy to navigate.

1. MathJax 3 is served from the book's own static files instead of a CDN: the built HTML
   must make no request to a third-party host (readers' privacy; CI has no internet).
   PyPI's ``django-static-mathjax`` ships MathJax 3 as files (the ``mathjax`` package); its
   ``es5`` build is copied into ``_static/mathjax`` and ``mathjax_path`` points there.
2. Each page's scripts are de-duplicated: sphinx-thebe's inline configuration script is
   registered twice, and declaring its ``const THEBE_JS_URL`` twice is a JavaScript error
   on every page.
3. Every glossary entry links back to where the term is introduced: the first use of the
   term (its ``{term}`` role) in reading order, at the exact spot in the chapter.
4. Every notebook page of the English edition can also be downloaded as MyST Markdown
   (``.md``, written with jupytext), next to the ``.ipynb`` and ``.pdf`` the theme offers.
5. A glossary term previews its definition on hover (a ``title``, as citations have).
6. ``static/book.css``: nothing is clipped at any width. Code and outputs wrap, display
   equations scroll beside their number, tables scroll, figures keep a readable size.
7. Korean text is marked ``lang="ko"`` (the glossary's Korean names and definitions), so
   browsers pick a Korean font and screen readers a Korean voice.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import jupytext
import nbformat
from docutils import nodes
from editions import language
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.errors import ExtensionError

ENTRY = "mathjax/tex-chtml.js"


def mathjax_es5_dir() -> Path:
    """The ``es5`` folder of the installed MathJax 3 files."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ExtensionError(
            "MathJax files not found: install them with `pip install django-static-mathjax` "
            "(requirements.txt pins it)"
        )
    es5 = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").is_file():
        raise ExtensionError(f"MathJax's tex-chtml.js is missing under {es5}")
    return es5


def _use_local_mathjax(app: Sphinx, config) -> None:
    config.mathjax_path = ENTRY


def _add_book_css(app: Sphinx, config) -> None:
    config.html_static_path.append(str(Path(__file__).parent / "static"))
    app.add_css_file("book.css")


def _copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    if not (target / "tex-chtml.js").is_file():
        shutil.copytree(mathjax_es5_dir(), target, dirs_exist_ok=True)


def _dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict,
                    doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        attributes = getattr(js, "attributes", {})
        # The same inline script comes with filename None once and "" once.
        key = (getattr(js, "filename", str(js)) or "", tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


# --------------------------------------------------------------------------- glossary back-links


def _note_term_uses(app: Sphinx, doctree: nodes.document) -> None:
    """Mark the first use of each glossary term in this document with an anchor."""
    env = app.env
    uses = env.__dict__.setdefault("bn_term_uses", {})
    for xref in list(doctree.findall(addnodes.pending_xref)):
        if xref.get("refdomain") != "std" or xref.get("reftype") != "term":
            continue
        term = xref["reftarget"].lower()
        if env.docname in uses.setdefault(term, {}):
            continue
        anchor = nodes.make_id(f"first-use-{term}") or f"first-use-{len(uses)}"
        xref.parent.insert(xref.parent.index(xref), nodes.inline("", "", ids=[anchor]))
        uses[term][env.docname] = anchor


def _purge_term_uses(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    for per_doc in env.__dict__.get("bn_term_uses", {}).values():
        per_doc.pop(docname, None)


def _merge_term_uses(app: Sphinx, env: BuildEnvironment, docnames, other) -> None:
    mine = env.__dict__.setdefault("bn_term_uses", {})
    for term, per_doc in other.__dict__.get("bn_term_uses", {}).items():
        mine.setdefault(term, {}).update({d: a for d, a in per_doc.items() if d in docnames})


def _reading_order(env: BuildEnvironment) -> list[str]:
    """Documents in table-of-contents order, depth first from the root."""
    order: list[str] = []

    def walk(doc: str) -> None:
        if doc in order:
            return
        order.append(doc)
        for child in env.toctree_includes.get(doc, []):
            walk(child)

    walk(env.config.root_doc)
    return order


INTRODUCED = {"en": "Introduced in: ", "ko": "처음 나오는 곳: "}


def _link_glossary_to_first_uses(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    if not any(doctree.findall(addnodes.glossary)):
        return
    env = app.env
    uses = env.__dict__.get("bn_term_uses", {})
    rank = {doc: i for i, doc in enumerate(_reading_order(env))}
    # Every name a term is known by, from its anchor: the Korean edition's term line reads
    # "아핀 변환 (affine transformation)", but the chapters link the English name.
    names: dict[str, set[str]] = {}
    for (kind, name), (_doc, anchor) in env.domaindata["std"]["objects"].items():
        if kind == "term":
            names.setdefault(anchor, set()).add(name.lower())
    for item in doctree.findall(nodes.definition_list_item):
        terms = {t.astext().lower() for t in item.findall(nodes.term)}
        for term in item.findall(nodes.term):
            for anchor in term["ids"]:
                terms |= names.get(anchor, set())
        found = [(rank.get(d, len(rank)), d, a) for t in sorted(terms)
                 for d, a in uses.get(t, {}).items() if d != docname]
        if not found:
            continue
        _, target, anchor = min(found)
        uri = app.builder.get_relative_uri(docname, target) + "#" + anchor
        link = nodes.reference("", env.titles[target].astext(), refuri=uri,
                               classes=["first-use"])
        para = nodes.paragraph("", "", nodes.emphasis("", INTRODUCED[language(app)]),
                               link)
        item.findall(nodes.definition).__next__().append(para)


# --------------------------------------------------------------------------- term previews


def _note_definitions(app: Sphinx, doctree: nodes.document) -> None:
    """On the glossary page, remember each term's definition (its first paragraph)."""
    if not any(doctree.findall(addnodes.glossary)):
        return
    found = app.env.__dict__.setdefault("bn_term_definitions", {})
    for item in doctree.findall(nodes.definition_list_item):
        paragraphs = list(item.findall(nodes.paragraph))
        if not paragraphs:
            continue
        text = " ".join(paragraphs[0].astext().split())
        for term in item.findall(nodes.term):
            for node_id in term["ids"]:
                found[node_id] = text


def _merge_definitions(app: Sphinx, env: BuildEnvironment, docnames, other) -> None:
    env.__dict__.setdefault("bn_term_definitions", {}).update(
        other.__dict__.get("bn_term_definitions", {}))


def _preview_terms(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Give every link to a glossary term the term's definition as its hover title."""
    definitions = app.env.__dict__.get("bn_term_definitions", {})
    for ref in doctree.findall(nodes.reference):
        if "std-term" not in ref.get("classes", []) and not any(
                "std-term" in c.get("classes", []) for c in ref.children
                if isinstance(c, nodes.Element)):
            continue
        anchor = ref.get("refuri", "").partition("#")[2] or ref.get("refid", "")
        if anchor in definitions:
            ref["reftitle"] = definitions[anchor]


# --------------------------------------------------------------------------- .md downloads


def _write_markdown_sources(app: Sphinx, exception: Exception | None) -> None:
    """Write ``_sources/<doc>.md`` (MyST Markdown, via jupytext) for every notebook page.

    The English edition only: the source is English (the Korean edition offers the Korean
    exercise notebook)."""
    if exception is not None or app.builder.format != "html" or language(app) != "en":
        return
    for docname in app.env.found_docs:
        source = Path(app.env.doc2path(docname))
        if source.suffix == ".ipynb":
            notebook = nbformat.read(source, as_version=4)
            target = Path(app.outdir) / "_sources" / f"{docname}.md"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(jupytext.writes(notebook, fmt="md:myst"), encoding="utf-8")


def _add_markdown_download(app: Sphinx, pagename: str, templatename: str, context: dict,
                           doctree) -> None:
    if context.get("page_source_suffix") != ".ipynb" or language(app) != "en":
        return
    for group in context.get("header_buttons", []):
        if group.get("label") == "download-buttons":
            group["buttons"].insert(1, {
                "type": "link",
                "url": f"{context['pathto']('_sources', 1)}/{pagename}.md",
                "text": ".md",
                "tooltip": "Download as MyST Markdown",
                "icon": "fas fa-file-lines",
                "label": "download-markdown-button",
            })


HANGUL = re.compile(r"[\uac00-\ud7a3]")
LATIN = re.compile(r"[A-Za-z]")
BLOCK = re.compile(r"<(p|dt)((?:\s[^>]*)?)>(.*?)</\1>", re.S)
TAG = re.compile(r"<[^>]+>|\\\(.*?\\\)|\$[^$]*\$", re.S)


def mark_korean(html: str) -> str:
    """``html`` with ``lang="ko"`` on every ``<p>`` and ``<dt>`` whose text is mostly Korean:
    more Hangul syllables than Latin letters, outside tags and math."""
    def mark(m: re.Match) -> str:
        tag, attrs, inner = m.groups()
        text = TAG.sub("", inner)
        if "lang=" in attrs or len(HANGUL.findall(text)) <= len(LATIN.findall(text)):
            return m.group(0)
        return f'<{tag}{attrs} lang="ko">{inner}</{tag}>'
    return BLOCK.sub(mark, html)


def _mark_korean(app: Sphinx, pagename: str, templatename: str, context: dict,
                 doctree) -> None:
    if language(app) != "en":
        return  # the Korean edition's pages are lang="ko" as a whole
    if "body" in context and HANGUL.search(context["body"]):
        context["body"] = mark_korean(context["body"])


def setup(app: Sphinx) -> dict:
    mathjax_es5_dir()  # fail early, with the fix, if the files are missing
    app.connect("config-inited", _use_local_mathjax, priority=900)
    app.connect("config-inited", _add_book_css, priority=900)
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("doctree-read", _note_term_uses)
    app.connect("env-purge-doc", _purge_term_uses)
    app.connect("env-merge-info", _merge_term_uses)
    app.connect("doctree-resolved", _link_glossary_to_first_uses)
    app.connect("doctree-read", _note_definitions)
    app.connect("env-merge-info", _merge_definitions)
    app.connect("doctree-resolved", _preview_terms)
    app.connect("build-finished", _write_markdown_sources)
    app.connect("html-page-context", _add_markdown_download, priority=900)
    app.connect("html-page-context", _mark_korean, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
