"""Sphinx configuration of the course website (built by ``tools/build_site.py``, ``make site``).

``build_site.py`` copies this folder into ``build/site-src/`` next to the staged notebooks, the
home page made from the README and, in ``_extra/``, the downloadable notebooks; Sphinx then
renders the stored outputs without executing anything. Every asset a page loads (theme, fonts,
MathJax) is served from the site itself: nothing is fetched from another host at read time.
"""

from __future__ import annotations

import html
from pathlib import Path

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
    extra = Path(__file__).with_name("_extra")
    teacher = extra / "notebooks" / f"{pagename}.ipynb"
    if not teacher.is_file():
        return None
    student = extra / "student" / f"{pagename}.ipynb"
    name = html.escape(f"{pagename}.ipynb")

    def link(folder: str, label: str) -> str:
        href = html.escape(pathto(f"{folder}/{pagename}.ipynb", 1))
        return f'<a class="reference download" href="{href}" download="{name}">{label}</a>'

    if student.is_file():
        links = (
            link("student", "student edition")
            + " (exercises to solve, no outputs) · "
            + link("notebooks", "teacher's edition")
            + " (solutions and stored outputs)"
        )
    else:
        links = link("notebooks", name) + " (with its stored outputs)"
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


def setup(app):
    # MathJax on every page, not only those with equations: the sidebar's page titles hold math.
    app.set_html_assets_policy("always")
    app.connect("html-page-context", _add_download_box)
