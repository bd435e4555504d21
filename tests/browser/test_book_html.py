"""The built book, read in a real browser: Playwright driving Debian's Chromium.

Run after `make book` with `make browser-test`. For every page in `_toc.yml` it checks that
the page loads with no console errors and no failed or third-party requests, that MathJax
rendered every formula, that every image loads, that exercise solutions start hidden and
open on a click, and that the Colab button and the download button hand out the page's
student notebook. At a desktop (1280 px) and a phone (400 px) width it measures every
element of the page and fails on any that is clipped or runs out of its column without a
scroll bar, and on an equation number drawn over its formula. It also checks that no page
shows a frozen progress bar, an internal equation label or production vocabulary, that
glossary terms preview their definition, and searches the book for a known term.

Every page is opened in both editions, the English one at `_build/html/` and the Korean one
at `_build/html/ko/`. The Korean pages must also be marked `lang="ko"`, draw their Hangul in
a CJK font (Chromium reports the platform fonts it used; CI installs Debian's
`fonts-noto-cjk`), link to the same page in English and back, and hand out the Korean
student notebook. Screenshots land in `_build/screenshots/` for the record.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser"
    )


pytestmark = [
    pytest.mark.skipif(not (HTML / "index.html").exists(), reason="run `make book` first"),
    pytest.mark.skipif(chromium_path() is None, reason="needs Chromium (apt-get install chromium)"),
]


def toc_pages() -> list[str]:
    """Every page of `_toc.yml`, as its path without suffix (e.g. 'book/intro')."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node) -> None:
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return pages


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Serve `_build/html` on a free loopback port, as `make serve` would."""
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium_path(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield b
        b.close()


class PageVisit:
    """A page opened in a fresh context, with what happened on the way recorded."""

    def __init__(self, browser, base: str, page_path: str,
                 width: int = 1280) -> None:
        self.base = base
        self.console_errors: list[str] = []
        self.failed: list[str] = []
        self.third_party: list[str] = []
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.console_errors.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))
        self.page.on("response", self._response)
        self.page.goto(f"{base}/{page_path}.html", wait_until="load")
        self.wait_for_mathjax()

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(self.base) or urlparse(url).scheme in ("data", "blob", "about"):
            route.continue_()
        else:  # the book must make no request to a third-party host
            self.third_party.append(url)
            route.abort()

    def _console(self, msg) -> None:
        # The theme logs this once when no colour mode was saved yet; it is not a fault.
        if msg.type == "error" and "invalid theme mode" not in msg.text:
            self.console_errors.append(msg.text)

    def _response(self, response) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.url} (HTTP {response.status})")

    def wait_for_mathjax(self) -> None:
        self.page.wait_for_function(
            "() => !window.MathJax || !MathJax.startup || !MathJax.startup.promise"
            " ? true : MathJax.startup.promise.then(() => true)",
            timeout=30_000,
        )

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser, server):
    opened: list[PageVisit] = []

    def open_page(page_path: str, width: int = 1280) -> PageVisit:
        v = PageVisit(browser, server, page_path, width)
        opened.append(v)
        return v

    yield open_page
    for v in opened:
        v.close()


PAGES = toc_pages()
EDITIONS = {"en": "", "ko": "ko/"}  # language: the edition's folder under _build/html
HANGUL = re.compile(r"[\uac00-\ud7a3]")


def both(pages: list[str]) -> list:
    """``pages`` in both editions, as pytest parameters ``(language, page)``."""
    return [pytest.param(lang, p, id=f"{lang}-{p}") for lang in EDITIONS for p in pages]


def fonts_of_korean_text(page) -> dict[str, int]:
    """The platform fonts Chromium drew the page's first Korean paragraph (or list item,
    term, table cell) with: family -> glyph count. Empty when the page has none."""
    found = page.evaluate("""() => {
      const el = Array.from(document.querySelectorAll('main p, main li, main dt, main td'))
        .find(e => /[\\uac00-\\ud7a3]/.test(Array.from(e.childNodes)
          .filter(n => n.nodeType === 3).map(n => n.textContent).join('')));
      if (el) el.id = el.id || 'bn-korean-probe';
      return el ? el.id : null;
    }""")
    if found is None:
        return {}
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": f"[id='{found}']"})["nodeId"]
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    cdp.detach()
    return {f["familyName"]: f["glyphCount"] for f in fonts}


@pytest.mark.parametrize(("lang", "page_path"), both(PAGES))
def test_page_loads_cleanly_and_renders(visit, lang, page_path):
    v = visit(EDITIONS[lang] + page_path)
    page = v.page
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = f"{EDITIONS[lang]}{page_path}".replace("/", "__")
    page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)

    assert not v.console_errors, f"console errors: {v.console_errors}"
    assert not v.failed, f"failed requests: {v.failed}"
    assert not v.third_party, f"requests to third-party hosts: {v.third_party}"
    assert page.locator("html").get_attribute("lang") == lang

    main = page.locator("main")
    assert "$$" not in main.inner_text(), "raw $$ left: MathJax did not render some math"
    source = (ROOT / f"{page_path}.ipynb")
    source = source if source.exists() else ROOT / f"{page_path}.md"
    if "$" in source.read_text():
        assert page.locator("mjx-container").count() > 0, "the page has math but none rendered"

    broken = page.evaluate(
        "() => Array.from(document.images)"
        ".filter(img => !img.complete || img.naturalWidth === 0).map(img => img.src)"
    )
    assert not broken, f"images that did not load: {broken}"

    other = "ko" if lang == "en" else "en"
    link = page.locator(f"nav.bn-edition a[hreflang='{other}']")
    assert link.count() == 1, "every page links to the same page in the other edition"
    target = urlparse(page.evaluate("a => a.href", link.element_handle())).path
    assert target == f"/{EDITIONS[other]}{page_path}.html", f"the edition link goes to {target}"

    if lang == "ko":
        text = main.inner_text()
        assert HANGUL.search(page.locator("main h1").last.inner_text()), "an English page title"
        if page_path != "book/bibliography":  # a list of English references
            assert len(HANGUL.findall(text)) > 0.2 * len(re.findall(r"[A-Za-z]", text)), (
                "a Korean page should be mostly Korean")
            fonts = fonts_of_korean_text(page)
            assert any("CJK" in f and n > 0 for f, n in fonts.items()), (
                f"Hangul drawn without a CJK font: {fonts}")


def test_edition_links_work_both_ways(visit):
    v = visit("book/04_running_statistics")
    v.page.locator("nav.bn-edition a").click()
    v.page.wait_for_load_state("load")
    assert v.page.url.endswith("/ko/book/04_running_statistics.html")
    assert v.page.locator("html").get_attribute("lang") == "ko"
    assert HANGUL.search(v.page.locator("main h1").last.inner_text())
    v.page.locator("nav.bn-edition a").click()
    v.page.wait_for_load_state("load")
    assert v.page.url.endswith("/book/04_running_statistics.html")
    assert "/ko/" not in v.page.url
    assert v.page.locator("html").get_attribute("lang") == "en"


@pytest.mark.parametrize(("lang", "page_path"),
                         both([p for p in PAGES if (ROOT / f"{p}.ipynb").exists()]))
def test_notebook_page_has_figures_solutions_and_colab(visit, lang, page_path):
    v = visit(EDITIONS[lang] + page_path)
    page = v.page
    assert page.locator("main img").count() > 0, "a chapter should show its figures"
    for ref_page in ("notation", "glossary", "bibliography"):
        assert page.locator(f"main a[href*='{ref_page}.html']").count() > 0, (
            f"a chapter should link to the {ref_page} page")
    no_alt = page.evaluate(
        "() => Array.from(document.querySelectorAll('.cell_output img'))"
        ".filter(img => !(img.getAttribute('alt') || '').trim()).length"
    )
    assert no_alt == 0, f"{no_alt} figures have no alt text (set mystnb.image.alt)"
    if lang == "ko":
        alts = page.evaluate("() => Array.from(document.querySelectorAll('.cell_output img'))"
                             ".map(img => img.getAttribute('alt'))")
        english = [a for a in alts if not HANGUL.search(a)]
        assert not english, f"alt text left in English: {english[:2]}"

    # sphinx-exercise renders a solution as an admonition; sphinx-togglebutton hides its
    # body until the title is clicked.
    solutions = page.locator(".solution.dropdown")
    assert solutions.count() > 0, "no exercise solutions found"
    for i in range(solutions.count()):
        assert "toggle-hidden" in solutions.nth(i).get_attribute("class"), "must start hidden"
    first = solutions.first
    body = first.locator("section").first
    assert not body.is_visible(), "a solution's body must start hidden"
    first.locator(".toggle-button").click()
    body.wait_for(state="visible", timeout=5_000)
    assert "toggle-hidden" not in first.get_attribute("class")

    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    branch = CONFIG["repository"].get("branch", "main")
    name = page_path.split("/")[-1]
    folder = "notebooks/" if lang == "en" else f"notebooks/{lang}/"
    expected = (f"https://colab.research.google.com/github/{repo}/blob/{branch}/{folder}"
                f"{name}.ipynb")
    links = page.locator("a[href*='colab.research.google.com']")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert expected in hrefs, f"Colab link should be {expected}, found {hrefs}"


@pytest.mark.parametrize("lang", EDITIONS)
def test_notebook_pages_offer_the_student_notebook_and_md_downloads(visit, lang):
    v = visit(EDITIONS[lang] + "book/03_bn_algorithm")
    base = f"{v.base}/{EDITIONS[lang]}"
    downloads = ["_notebooks/03_bn_algorithm.ipynb"]
    if lang == "en":  # the MyST source is English; the Korean edition offers no .md
        downloads.append("_sources/book/03_bn_algorithm.md")
    for href in downloads:
        link = v.page.locator(f"a[href$='{href}']")
        assert link.count() == 1, f"no download link to {href}"
        response = v.page.request.get(f"{base}{href}")
        assert response.ok and ("Batch Normalization" if lang == "en" else "배치 정규화") in (
            response.text())
    text = v.page.request.get(f"{base}_notebooks/03_bn_algorithm.ipynb").text()
    notebook = v.page.request.get(f"{base}_notebooks/03_bn_algorithm.ipynb").json()
    assert notebook["metadata"]["bnbook"]["kind"] == "student"
    assert notebook["metadata"]["bnbook"]["language"] == lang
    assert "{term}" not in text
    assert ("배치 정규화" in text) == (lang == "ko")


@pytest.mark.parametrize("lang", EDITIONS)
def test_glossary_entries_link_to_where_each_term_is_introduced(visit, lang):
    v = visit(EDITIONS[lang] + "book/glossary")
    entries = v.page.locator("dl.glossary > dt + dd")
    links = v.page.locator("dl.glossary a.first-use")
    assert links.count() >= 0.8 * entries.count(), "most entries need a link"
    href = links.first.get_attribute("href")
    page, anchor = href.split("#")
    v.page.goto(f"{v.base}/{EDITIONS[lang]}book/{page}#{anchor}", wait_until="load")
    assert v.page.locator(f"[id='{anchor}']").count() == 1, f"{href} points at no element"


def test_english_glossary_gives_korean_names_marked_korean(visit):
    v = visit("book/glossary")
    korean = v.page.locator("dl.glossary > dt[lang='ko']")
    assert korean.count() >= 0.9 * v.page.locator("dl.glossary > dt + dd").count()
    assert any("배치 정규화" in t for t in korean.all_inner_texts())
    english = v.page.locator("dl.glossary > dt", has_text="batch normalization").first
    assert english.get_attribute("lang") is None


def test_korean_glossary_leads_with_the_korean_term_in_korean_order(visit):
    v = visit("ko/book/glossary")
    heads = v.page.locator("dl.glossary > dt").all_inner_texts()
    entries = v.page.locator("dl.glossary > dt + dd").count()
    assert len(heads) == entries, "one term line per entry: the Korean name leads"
    assert all(HANGUL.search(h) and re.search(r"\([^)]*[A-Za-z][^)]*\)", h) for h in heads), (
        "every entry reads 'Korean (English)'")
    assert "배치 정규화 (batch normalization)" in [h.strip().rstrip("#").strip() for h in heads]
    korean = [h for h in heads if HANGUL.match(h)]
    assert korean == sorted(korean), "entries are sorted by their Korean term"


@pytest.mark.parametrize(("lang", "word"), [("en", "covariate"), ("ko", "공변량")])
def test_search_finds_a_known_term(visit, lang, word):
    v = visit(EDITIONS[lang] + "search")
    v.page.goto(f"{v.base}/{EDITIONS[lang]}search.html?q={word}", wait_until="load")
    results = v.page.locator("#search-results li")
    results.first.wait_for(timeout=15_000)
    texts = [t.lower() for t in results.all_inner_texts()]
    assert any(word in t for t in texts), f"no result mentions the term: {texts}"


# --------------------------------------------------------------------------- layout and words

CLIPPED_JS = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  const column = article.getBoundingClientRect();
  const limit = Math.min(document.documentElement.clientWidth, column.right) + 1;
  const style = el => getComputedStyle(el).overflowX;
  const scrolls = el => ['auto', 'scroll'].includes(style(el));
  const clips = el => ['hidden', 'clip'].includes(style(el));
  const name = el => el.tagName.toLowerCase() + (el.className && typeof el.className === 'string'
      ? '.' + el.className.trim().split(/\\s+/).slice(0, 2).join('.') : '');
  const text = el => (el.innerText || el.textContent || '').trim().slice(0, 60);
  const bad = [];
  for (const el of article.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (el.closest('.toggle-hidden, details:not([open])')) continue;  // a closed solution
    if (el.closest('mjx-assistive-mml')) continue;  // MathML for screen readers, never drawn
    if (getComputedStyle(el).visibility === 'hidden') continue;
    let box = el.parentElement;
    while (box && box !== article && !scrolls(box) && !clips(box)) box = box.parentElement;
    if (box && box !== article && scrolls(box)) continue;  // reachable with a scroll bar
    const right = (box && box !== article) ? box.getBoundingClientRect().right + 1 : limit;
    const out = Math.round(r.right - right);
    if (out > 0) bad.push(`${name(el)} runs ${out} px out: ${text(el)}`);
  }
  for (const m of article.querySelectorAll('div.math')) {
    const n = m.querySelector('span.eqno'), f = m.querySelector('mjx-container');
    if (!n || !f) continue;
    const a = n.getBoundingClientRect(), b = f.getBoundingClientRect();
    if (a.left < b.right - 1 && a.right > b.left + 1 && a.top < b.bottom && a.bottom > b.top)
      bad.push(`equation number ${n.innerText.trim()} is drawn over its formula`);
  }
  const page = document.scrollingElement;
  if (page.scrollWidth > page.clientWidth + 1) bad.push(`the page scrolls sideways`);
  return bad;
}"""


@pytest.mark.parametrize("width", [1280, 400])
@pytest.mark.parametrize(("lang", "page_path"), both(PAGES))
def test_nothing_is_clipped(visit, lang, page_path, width):
    v = visit(EDITIONS[lang] + page_path, width)
    clipped = v.page.evaluate(CLIPPED_JS)
    assert not clipped, f"{len(clipped)} clipped at {width} px: " + "; ".join(clipped[:8])


def equation_labels() -> set[str]:
    labels = set()
    for path in (ROOT / "book").glob("*.ipynb"):
        labels |= set(re.findall(r"\$\$ *\(([\w-]+)\)", path.read_text()))
    return labels


PRODUCTION_WORDS = re.compile(
    r"seed material|seed post|source material|the seeds'|seeds' advice|the seeds say", re.I)
FROZEN_BAR = re.compile(r"\d+%\|[^\n]*\|\s*\d+/\d+|it/s\]")


@pytest.mark.parametrize(("lang", "page_path"), both(PAGES))
def test_no_frozen_bars_internal_labels_or_production_words(visit, lang, page_path):
    text = visit(EDITIONS[lang] + page_path).page.locator("main").inner_text()
    assert not FROZEN_BAR.search(text), f"a progress bar: {FROZEN_BAR.search(text)[0]!r}"
    leaked = sorted(label for label in equation_labels() if f"({label})" in text)
    assert not leaked, f"internal equation labels shown to readers: {leaked}"
    found = PRODUCTION_WORDS.search(text)
    assert not found, f"production vocabulary on the page: {found[0]!r}"


@pytest.mark.parametrize(("lang", "start"),
                         [("en", "Normalizing each feature"), ("ko", "층 입력의")])
def test_glossary_terms_preview_their_definition(visit, lang, start):
    v = visit(EDITIONS[lang] + "book/03_bn_algorithm")
    term = v.page.locator("main a[href*='glossary.html#term-batch-normalization']").first
    title = term.get_attribute("title") or ""
    assert title.startswith(start), f"no definition on hover: {title!r}"
