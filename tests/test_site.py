"""The website's tools: the source transforms (tools/site_source.py) and the browser checks
(tools/check_site.py), the latter on small hand-made sites with one page that is right and one
that breaks every rule, so that each check is seen to fail. The browser tests need the [site]
extra's playwright and Debian's chromium (make site-test runs them); elsewhere they skip."""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

import check_site as browser  # noqa: E402
import site_source  # noqa: E402

# ---- details -> dropdowns ------------------------------------------------------------------


def test_details_become_a_dropdown_with_the_summary_as_title():
    md = "Task.\n\n<details><summary>Hint 1</summary>\n\nUse $A^\\top$.\n</details>\n\nMore."
    out = site_source.details_to_dropdowns(md)
    assert out == "Task.\n\n:::{dropdown} Hint 1\n\nUse $A^\\top$.\n:::\n\nMore."


def test_details_on_one_line_and_summary_on_its_own_line():
    one_line = site_source.details_to_dropdowns("<details><summary>S</summary>Body.</details>")
    assert one_line == ":::{dropdown} S\n\nBody.\n:::\n"
    own_line = site_source.details_to_dropdowns(
        "<details>\n<summary>Solution</summary>\n\n```python\nx = 1\n```\n</details>"
    )
    assert own_line == ":::{dropdown} Solution\n\n```python\nx = 1\n```\n:::\n"


def test_open_details_stay_open_and_missing_summary_gets_a_title():
    out = site_source.details_to_dropdowns("<details open>\nBody\n</details>")
    assert out == ":::{dropdown} Details\n:open:\n\nBody\n:::\n"


def test_nested_details_and_colon_runs_get_longer_fences():
    md = "<details><summary>Out</summary>\n\n<details><summary>In</summary>x</details>\n</details>"
    out = site_source.details_to_dropdowns(md)
    assert out == "::::{dropdown} Out\n\n:::{dropdown} In\n\nx\n:::\n::::\n"


def test_unclosed_and_inline_details_are_left_alone():
    unclosed = "<details><summary>S</summary>\nno end"
    assert site_source.details_to_dropdowns(unclosed) == unclosed
    inline = "Text with <details>inline</details> markup."
    assert site_source.details_to_dropdowns(inline) == inline


# ---- notebooks -----------------------------------------------------------------------------


def _nb(*cells):
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _md(source, cell_id="m"):
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": source}


def _code(source, cell_id="c"):
    return {
        "cell_type": "code",
        "id": cell_id,
        "metadata": {},
        "source": source,
        "outputs": [],
        "execution_count": None,
    }


SOLUTION = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"


def test_prepare_notebook_folds_solutions_and_hints_and_leaves_the_stored_one_alone():
    nb = _nb(
        _md(["# Title\n", "<details><summary>Hint</summary>h</details>"]),
        _code(SOLUTION, "s"),
        _code("print(1)  # BEGIN SOLUTION in a comment is no marker", "p"),
    )
    stored = json.dumps(nb)
    out = site_source.prepare_notebook(nb)
    assert json.dumps(nb) == stored
    assert out["cells"][0]["source"] == "# Title\n\n:::{dropdown} Hint\n\nh\n:::\n"
    assert out["cells"][1]["metadata"]["tags"] == ["hide-input"]
    assert out["cells"][1]["metadata"]["mystnb"]["code_prompt_show"] == "Show the solution"
    assert out["cells"][2]["metadata"] == {}
    assert [c["id"] for c in out["cells"]] == ["m", "s", "p"]
    assert site_source.count_solutions(nb) == 1
    assert site_source.count_details(nb) == 1


def test_prepare_notebook_rejects_what_is_not_a_notebook():
    with pytest.raises(ValueError, match="expected a notebook dict with a 'cells' list, got list"):
        site_source.prepare_notebook([])


def test_headings_skip_code_fences_and_details():
    nb = _nb(
        _md("# 03 — Why $A$ starts *random*\n\n```python\n# not a heading\n```\n## 1. Setup ##"),
        _md("<details><summary>S</summary>\n\n## hidden\n</details>\n### Exercise 3.1: `f` (★)"),
        _code("# a comment"),
    )
    assert site_source.notebook_headings(nb) == [
        "03 — Why $A$ starts *random*",
        "1. Setup",
        "Exercise 3.1: `f` (★)",
    ]
    assert site_source.count_details(nb) == 1


def test_heading_key_matches_the_rendered_text_without_its_math():
    key = site_source.heading_key
    assert key("04 — Why $\\alpha/r$? Scaling the [LoRA](x.md) update") == key(
        "04 — Why ? Scaling the LoRA update"
    )
    assert key("Exercise 1.1: `lora_forward` (★★, ~10 min)") == key(
        "Exercise 1.1: lora_forward (★★, ~10 min)"
    )
    assert key("1. Setup") != key("2. Setup")


# ---- home page -----------------------------------------------------------------------------


def test_readme_becomes_the_home_page_with_links_and_a_table_of_contents():
    readme = (
        "# Course\n\n| `00_autodiff` | autodiff |\n\nSee [the notebook](notebooks/00_autodiff.ipynb),"
        " [the guide](TEACHING.md), [results](benchmarks/RESULTS.md) and [web](https://x.org).\n"
        "Back to [the top](README.md#course).\n"
    )
    index = site_source.readme_to_index(readme, ["00_autodiff"], ["TEACHING"])
    assert "| [`00_autodiff`](00_autodiff.ipynb) | autodiff |" in index
    assert "[the notebook](00_autodiff.ipynb)" in index
    assert "[the guide](TEACHING.md)" in index
    assert "results (`benchmarks/RESULTS.md`)" in index  # no page for it on the site
    assert "[web](https://x.org)" in index
    assert "[the top](index.md#course)" in index
    assert index.endswith("```{toctree}\n:hidden:\n:maxdepth: 1\n\n00_autodiff\nTEACHING\n```\n")


# ---- the browser checks --------------------------------------------------------------------

_needs_browser = pytest.mark.skipif(
    importlib.util.find_spec("playwright") is None or not browser.CHROMIUM.is_file(),
    reason="needs the [site] extra's playwright and Debian's chromium (make site-test)",
)
# A 2x2 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMAAAAAQAAH5"
    "E0R1AAAAAElFTkSuQmCC"
)


def _page(title: str, body: str) -> str:
    head = f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>'
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"


@_needs_browser
def test_a_clean_site_passes(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "fig.png").write_bytes(PNG)
    (site / "index.html").write_text(
        _page(
            "home",
            '<article><h1>Home</h1><img src="fig.png"><a href="other.html#part">on</a>'
            '<a href="https://example.invalid/elsewhere">a link out is no request</a></article>',
        )
    )
    (site / "other.html").write_text(_page("o", '<article><h1>Other</h1><h2 id="part">Part</h2>'))
    expected = {"index": browser.Expected(headings=["Home"])}
    report = browser.check_site(site, expected, tmp_path / "shots")
    assert report.failures == []
    assert (report.passed, report.failed) == (5, 0)  # 2 pages x 2 sizes, and the links
    assert report.images == 2 and report.external_links == {"https://example.invalid/elsewhere"}
    assert (tmp_path / "shots" / "index-phone.png").is_file()


@_needs_browser
def test_every_check_fails_on_a_broken_page(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(
        _page(
            "bad",
            "<article><h1>Wrong title</h1>"
            '<img src="https://example.invalid/remote.png"><img src="missing.png">'
            '<span class="math">\\(x\\)</span>'
            '<a href="nowhere.html">x</a><a href="index.html#no-such-id">y</a>'
            '<div style="width: 2000px">wide</div>'
            '<script>throw new Error("boom")</script></article>',
        )
    )
    want = browser.Expected(headings=["Right title", "A section"], details=1, solutions=1)
    report = browser.check_site(site, {"index": want, "gone": want}, tmp_path / "shots")
    text = "\n".join(report.failures)
    for needle in [
        "gone.html: missing from the site",
        "request outside the site refused: https://example.invalid/remote.png",
        "image did not load: ",
        "HTTP 404 for ",
        "math not typeset: 1 of 1 untypeset",
        "uncaught script error: boom",
        "heading missing: 'Right title'",
        "heading missing: 'A section'",
        "title is 'Wrong title', expected 'Right title'",
        "0 folded blocks (0 open), expected 1 closed",
        "0 folded solution cells (0 open), expected 1 closed",
        "page scrolls sideways: ",
        "link to a missing file: nowhere.html",
        "link to a missing anchor: index.html#no-such-id",
    ]:
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert "[phone]: page scrolls sideways: 2008 px wide on a 390 px wide screen" in text
    assert report.failed == 4 and report.passed == 0  # missing page, 2 sizes, the links


def test_the_built_site_is_never_tracked_by_git():
    root = TOOLS.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ["build/site/index.html", "build/site-src/conf.py", "build/site-test/x.png"]:
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=root)
        assert ignored.returncode == 0, f"{path} is not ignored by git"
