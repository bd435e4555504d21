"""Two editions from one source: the English book and its Korean translation.

The Korean edition is the same Sphinx project built with ``language = "ko"``: Sphinx's i18n
replaces every message with its translation from ``locale/ko/LC_MESSAGES/`` (see
``book/_ext/catalogs.py``), and ``make book`` writes it to ``_build/html/ko/``, beside the
English one at ``_build/html/``, from the same executed notebooks. This extension adds what
Sphinx leaves out:

1. Every page links to the same page in the other edition (a link at the top of the article,
   and ``<link rel="alternate" hreflang>`` in the head).
2. Figures' alt text is translated too. Notebook images only appear after reading, so
   Sphinx's own i18n never sees their alt text: the ``gettext`` builder is handed it here, and
   the Korean build looks it up in the page's catalog.
3. Exercise titles are translated too: sphinx-exercise builds them without a source line,
   which Sphinx's i18n needs to pick a message; they get one before it runs.
4. The parts' captions in the table of contents are translated too: Jupyter Book inserts the
   toctrees after Sphinx's i18n has run.
5. The theme speaks the edition's language: ``locale/<lang>/LC_MESSAGES/sphinx.po`` adds
   the pydata theme's interface strings (Sphinx reads the project's catalogs for its own
   domain first), ``booktheme.po`` those of sphinx-book-theme, ahead of its own catalog,
   and the search box's placeholder is set here.
6. The Korean glossary leads with the Korean term, "배치 정규화 (batch normalization)", and is
   sorted by it. The source lists the Korean name as a second term under the English one;
   that line is dropped where the translated first term already carries it.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.locale import init as init_locale
from sphinx.transforms import SphinxTransform
from sphinx.util.i18n import docname_to_domain

EDITIONS = {"en": ("English", ""), "ko": ("한국어", "ko/")}  # language: (name, path under html/)
TITLES = {"ko": "배치 정규화, 밑바닥부터 빠른 구현까지"}  # English: _config.yml's title
# The footer's licence line (_config.yml holds the English one)
FOOTERS = {"ko": (
    '<p lang="ko">글은 <a href="{repo}/blob/main/LICENSE-TEXT">CC BY 4.0</a>, 코드(bnlib, 노트북의 '
    '코드 셀)는 <a href="{repo}/blob/main/LICENSE">MIT 라이선스</a>를 따른다.</p>')}
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def language(app: Sphinx) -> str:
    """The edition being built: ``"en"`` or ``"ko"``."""
    return app.config.language or "en"


def other_edition(lang: str) -> str:
    return "ko" if lang == "en" else "en"


def edition_url(pathto_root: str, lang: str, target: str, pagename: str) -> str:
    """The relative URL, from a page of the ``lang`` edition, of ``pagename`` in the ``target``
    edition; ``pathto_root`` is the page's relative path to its own edition's root."""
    up = "../" * EDITIONS[lang][1].count("/")  # from this edition's root to html/
    return f"{pathto_root}{up}{EDITIONS[target][1]}{pagename}.html"


def _link_other_edition(app: Sphinx, pagename: str, templatename: str, context: dict,
                        doctree) -> None:
    if "body" not in context:
        return
    lang = language(app)
    target = other_edition(lang)
    root = context["pathto"]("", 1)
    root = "" if root in (".", "./", "#") else root.rstrip("/") + "/"
    href = edition_url(root, lang, target, pagename)
    name = EDITIONS[target][0]
    context["metatags"] = context.get("metatags", "") + (
        f'\n<link rel="alternate" hreflang="{target}" href="{href}" />')
    context["body"] = (
        f'<nav class="bn-edition" aria-label="{"Language" if lang == "en" else "언어"}">'
        f'<a class="bn-edition-link" href="{href}" hreflang="{target}" lang="{target}">'
        f'{name}</a></nav>\n' + context["body"])


# --------------------------------------------------------------------------- alt text


def _hand_alt_text_to_gettext(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Images and exercise titles made after reading have no ``uid``, and the gettext
    builder skips such nodes."""
    if app.builder.name != "gettext":
        return
    for image in doctree.findall(nodes.image):
        if image.get("alt") and not hasattr(image, "uid"):
            image.uid = ""  # what Sphinx itself does for toctree captions
    # sphinx-exercise rebuilds an exercise's title after reading as " (<title>)"; the message
    # is the title itself, as ExerciseTitleSource gave it to Sphinx's i18n at read time.
    for exercise in doctree.findall(lambda n: type(n).__name__ == "exercise_enumerable_node"):
        title = exercise.next_node(nodes.title)
        text = title.astext().strip() if title is not None else ""
        if text.startswith("(") and text.endswith(")") and not hasattr(title, "uid"):
            title.uid, title.rawsource = "", text[1:-1]
            title.source, title.line = exercise.source, exercise.line


def page_catalog(app: Sphinx, docname: str):
    """The page's compiled catalog in the edition's language (a gettext translations object),
    or ``None`` when there is none."""
    dirs = [str(Path(app.srcdir) / d) for d in app.config.locale_dirs]
    domain = docname_to_domain(docname, app.config.gettext_compact)
    catalog, found = init_locale(dirs, language(app), domain)
    return catalog if found else None


def _translate_alt_text(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    if language(app) == "en" or app.builder.format != "html":
        return
    catalog = page_catalog(app, docname)
    if catalog is None:
        return
    for image in doctree.findall(nodes.image):
        if image.get("alt"):
            image["alt"] = catalog.gettext(image["alt"])


# --------------------------------------------------------------------------- exercise titles


class ExerciseTitleSource(SphinxTransform):
    """Give sphinx-exercise's title nodes the source, line and raw text that Sphinx's i18n
    needs to extract and translate them (the titles are plain text: no markup to lose)."""

    default_priority = 15  # before sphinx.transforms.i18n.Locale (20)

    def apply(self, **kwargs) -> None:
        for node in self.document.findall(nodes.subtitle):
            if type(node).__name__ != "exercise_subtitle" or node.source:
                continue
            node.rawsource = node.rawsource or node.astext()
            node.source = self.env.doc2path(self.env.docname)


class TocCaptions(SphinxTransform):
    """Translate the captions of the toctrees that sphinx-external-toc inserts (its transform
    runs at priority 100, after Sphinx's Locale at 20; the collector reads them at 880)."""

    default_priority = 150

    def apply(self, **kwargs) -> None:
        toctrees = [n for n in self.document.findall(addnodes.toctree) if n.get("caption")]
        if language(self.app) == "en" or not toctrees:
            return
        catalog = page_catalog(self.app, self.env.docname)
        for toctree in toctrees if catalog is not None else []:
            toctree["caption"] = toctree["rawcaption"] = catalog.gettext(toctree["caption"])


# --------------------------------------------------------------------------- the theme

SEARCH_BAR = {"ko": "이 책에서 검색..."}


def _theme_in_language(app: Sphinx) -> None:
    lang = language(app)
    if lang == "en" or app.builder.format != "html":
        return
    import gettext

    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    from sphinx import locale

    folder = Path(app.srcdir) / app.config.locale_dirs[0] / lang / "LC_MESSAGES"
    with (folder / "booktheme.po").open("rb") as f:
        catalog = read_po(f)
    with (folder / "booktheme.mo").open("wb") as f:
        write_mo(f, catalog)
    ours = gettext.translation("booktheme", localedir=folder.parent.parent, languages=[lang])
    theirs = locale.translators.get(("general", "booktheme"))
    if theirs is not None:
        ours.add_fallback(theirs)
    locale.translators["general", "booktheme"] = ours
    app.config.html_theme_options["search_bar_text"] = SEARCH_BAR[lang]


# --------------------------------------------------------------------------- the Korean glossary


def _korean_glossary(app: Sphinx, doctree: nodes.document) -> None:
    if language(app) == "en":
        return
    for glossary in doctree.findall(addnodes.glossary):
        for dl in glossary.findall(nodes.definition_list):
            items = [c for c in dl.children if isinstance(c, nodes.definition_list_item)]
            for item in items:
                terms = [c for c in item.children if isinstance(c, nodes.term)]
                if HANGUL.search(terms[0].astext()):  # translated: "아핀 변환 (affine ...)"
                    for term in terms[1:]:
                        if HANGUL.search(term.astext()):
                            item.remove(term)
            items.sort(key=lambda item: item.next_node(nodes.term).astext().lower())
            dl.children = []
            dl.extend(items)


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", _link_other_edition, priority=900)
    app.connect("doctree-resolved", _hand_alt_text_to_gettext)
    app.connect("doctree-resolved", _translate_alt_text)
    app.connect("doctree-read", _korean_glossary)
    app.connect("builder-inited", _theme_in_language)
    app.add_transform(ExerciseTitleSource)
    app.add_transform(TocCaptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# --------------------------------------------------------------------------- the Korean build


def edition_config(language: str, execute: str | None = None) -> str:
    """``_config.yml`` for the ``language`` edition, as YAML text: the same book with
    ``language`` set, the shared execution cache (both editions show the outputs of one
    run) and paths made absolute, since Jupyter Book reads paths relative to the config
    file. ``execute`` overrides ``execute_notebooks`` (``"off"`` to extract messages fast)."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    config["title"] = TITLES.get(language, config["title"])
    sphinx = config["sphinx"]
    sphinx["config"]["language"] = language
    sphinx["local_extensions"] = {name: str((root / path).resolve())
                                  for name, path in sphinx["local_extensions"].items()}
    config["bibtex_bibfiles"] = [str(root / p) for p in config["bibtex_bibfiles"]]
    config["execute"]["cache"] = str(root / "_build" / ".jupyter_cache")
    if execute is not None:
        config["execute"]["execute_notebooks"] = execute
    config["html"]["baseurl"] = config["html"]["baseurl"].rstrip("/") + "/" + \
        EDITIONS[language][1]
    if language in FOOTERS:
        config["html"]["extra_footer"] = FOOTERS[language].format(repo=config["repository"]["url"])
    return yaml.safe_dump(config, allow_unicode=True, sort_keys=False)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Print the _config.yml of one edition.")
    ap.add_argument("language", choices=sorted(EDITIONS))
    ap.add_argument("--execute", choices=["cache", "off"])
    args = ap.parse_args()
    print(edition_config(args.language, args.execute), end="")
