"""Sphinx configuration of the course website (built by ``tools/build_site.py``, ``make site``).

``build_site.py`` copies this folder into ``build/site-src/`` next to the staged notebooks, the
home page made from the README and, in ``_extra/``, the downloadable notebooks; Sphinx then
renders the stored outputs without executing anything. Every asset a page loads (theme, fonts,
MathJax) is served from the site itself: nothing is fetched from another host at read time.
"""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

# ``make site SOLUTIONS=0`` builds with the tag no_solutions (tools/build_site.py): no solution
# on any page, no teacher's edition to download. ``tags`` is Sphinx's, set before this runs.
SOLUTIONS = not tags.has("no_solutions")  # noqa: F821

project = "lora-np"
html_title = "lora-np: LoRA from first principles"
author = "the lora-np authors"

extensions = ["myst_nb", "sphinx_design", "sphinx.ext.mathjax"]

# Show the stored outputs exactly as executed: never run a notebook while building.
nb_execution_mode = "off"
nb_merge_streams = True
# No widget outputs in the course; without this myst-nb links require.js from a CDN.
nb_ipywidgets_js = {}

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
# Notebooks number their sections by hand and exercises sit at ### under ##: level jumps are fine.
suppress_warnings = ["myst.header"]

exclude_patterns = ["_extra", "_static", "_templates", ".doctrees", "**.ipynb_checkpoints"]

# MathJax 3 from the npm registry, unpacked by build_site.py into _static/mathjax/.
mathjax_path = "mathjax/tex-chtml.js"
mathjax3_config = {"options": {}, "chtml": {"matchFontHeight": False}}

html_theme = "sphinx_book_theme"
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    # The theme's download button offers the staged copy; each page links the stored ones.
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    # The sidebar has the search field; without this the theme adds a second one in a header.
    "navbar_persistent": [],
}
if SOLUTIONS:  # the default build says on every page which it is
    html_theme_options["announcement"] = (
        "This build of the course shows the exercises' solutions. To hand the site to "
        "learners, build it with <code>make site SOLUTIONS=0</code>."
    )
html_static_path = ["_static"]
html_css_files = ["site.css"]
html_favicon = "_static/favicon.svg"
html_extra_path = ["_extra"] if Path(__file__).with_name("_extra").is_dir() else []
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
# Light by default (the stored figures have white backgrounds); the reader can switch.
html_context = {"default_mode": "light"}


def _download_box(pagename: str, pathto) -> str | None:
    """The "run this notebook" box of a notebook page, or None for other pages."""
    downloads = Path(__file__).with_name("_extra") / "downloads"
    student = downloads / f"{pagename}-student.ipynb"
    if not student.is_file():
        return None

    def link(path: Path, label: str) -> str:
        href = html.escape(pathto(f"downloads/{path.name}", 1))
        return f'<a class="reference download" href="{href}" download="{path.name}">{label}</a>'

    links = link(student, f"<code>{student.name}</code>") + ", the student edition (exercises to "
    links += "solve, no outputs)"
    teacher = downloads / f"{pagename}-teacher.ipynb"
    if SOLUTIONS and teacher.is_file():
        links += (
            " · " + link(teacher, f"<code>{teacher.name}</code>") + ", the teacher's edition "
            "(solutions and stored outputs)"
        )
    return (
        '<div class="admonition lora-downloads"><p class="admonition-title">Run this notebook</p>'
        f"<p>Download {links}. It imports the course's <code>lora_np</code> library: open it "
        "inside the course folder, where <code>make lab</code> starts JupyterLab.</p></div>"
    )


def _add_download_box(app, pagename, templatename, context, doctree) -> None:
    box = _download_box(pagename, context["pathto"])
    body = context.get("body", "")
    if box is None or "</h1>" not in body:
        return
    # Right under the page's title.
    head, _, tail = body.partition("</h1>")
    context["body"] = f"{head}</h1>\n{box}{tail}"


def _add_edition_meta(app, pagename, templatename, context, doctree) -> None:
    """``<meta name="lora-np-solutions" content="yes|no">``: the site test reads which build."""
    tag = f'<meta name="lora-np-solutions" content="{"yes" if SOLUTIONS else "no"}">\n'
    context["metatags"] = context.get("metatags", "") + tag


class _Text(HTMLParser):
    """A page's body as its text, keeping each <section id> so that anchored search results
    still find their part; scripts, styles and heading links dropped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "style") or "headerlink" in (attrs.get("class") or ""):
            self.skip += 1
        elif tag == "section":
            self.parts.append(f'<section id="{html.escape(attrs.get("id") or "")}">')

    def handle_endtag(self, tag):
        if tag in ("script", "style") or (tag == "a" and self.skip):
            self.skip = max(0, self.skip - 1)
        elif tag == "section":
            self.parts.append("</section>")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(html.escape(re.sub(r"\s+", " ", data)))


_PAGE_TEXT: dict[str, str] = {}


def _collect_search_text(app, pagename, templatename, context, doctree) -> None:
    if doctree is not None and context.get("body"):
        parser = _Text()
        parser.feed(context["body"])
        _PAGE_TEXT[pagename] = f'<div role="main">{"".join(parser.parts)}</div>'
    if pagename == "search":  # the text below, for excerpts where fetch() is refused
        app.add_js_file("search-pages.js")
        app.add_js_file("search-file.js")


def _write_search_text(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        text = json.dumps(_PAGE_TEXT, ensure_ascii=False, sort_keys=True)
        target = Path(app.outdir) / "_static" / "search-pages.js"
        target.write_text(f"window.LORA_NP_PAGES = {text};\n", encoding="utf-8")


def setup(app):
    # MathJax on every page, not only those with equations: headings in the sidebar hold math.
    app.set_html_assets_policy("always")
    app.connect("html-page-context", _add_download_box)
    app.connect("html-page-context", _add_edition_meta)
    app.connect("html-page-context", _collect_search_text)
    app.connect("build-finished", _write_search_text)
