"""Two fixes to the HTML that Jupyter Book 1.x writes, so the book works offline and cleanly.

1. MathJax 3 is served from the book's own static files instead of a CDN: the built HTML
   must make no request to a third-party host (readers' privacy; CI has no internet).
   PyPI's ``django-static-mathjax`` ships MathJax 3 as files (the ``mathjax`` package); its
   ``es5`` build is copied into ``_static/mathjax`` and ``mathjax_path`` points there.
2. Each page's scripts are de-duplicated: sphinx-thebe's inline configuration script is
   registered twice, and declaring its ``const THEBE_JS_URL`` twice is a JavaScript error
   on every page.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from sphinx.application import Sphinx
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


def _use_local_mathjax(app: Sphinx, config) -> None:  # noqa: ANN001
    config.mathjax_path = ENTRY


def _copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    if not (target / "tex-chtml.js").is_file():
        shutil.copytree(mathjax_es5_dir(), target, dirs_exist_ok=True)


def _dedupe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict,
                    doctree) -> None:  # noqa: ANN001
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


def setup(app: Sphinx) -> dict:
    mathjax_es5_dir()  # fail early, with the fix, if the files are missing
    app.connect("config-inited", _use_local_mathjax, priority=900)
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
