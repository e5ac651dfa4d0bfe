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
import editions  # noqa: E402
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


# ---- what the site shows differently from the stored notebook ---------------------------


def test_solution_fold_holds_no_markers_and_the_learners_build_shows_the_stub():
    nb = _nb(_code(SOLUTION, "s"), _code("print(1)", "p"))
    teacher = site_source.prepare_notebook(nb)
    assert teacher["cells"][0]["source"] == "def f(x):\n    return x\n"
    learners = site_source.prepare_notebook(nb, solutions=False)
    assert learners["cells"][0]["source"] == (
        "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    )
    assert learners["cells"][0]["metadata"] == {}  # nothing folded, nothing to show
    assert learners["cells"][1] == nb["cells"][1]


def test_every_figure_gets_its_alt_text_and_a_missing_one_is_an_error():
    figure = _code("plot()", "fig")
    figure["outputs"] = [{"output_type": "display_data", "data": {"image/png": "AAAA"}}]
    nb = _nb(figure, _code("print(1)", "p"))
    out = site_source.prepare_notebook(nb, alt={"fig": "A line falling from 1 to 0."})
    assert out["cells"][0]["metadata"]["mystnb"]["image"]["alt"] == "A line falling from 1 to 0."
    assert out["cells"][1]["metadata"] == {}
    with pytest.raises(ValueError, match="02_x.ipynb: the figure of cell 'fig' has no alt text"):
        site_source.prepare_notebook(nb, alt={}, name="02_x.ipynb")


def test_exercise_numbers_take_one_style():
    text = "see exercises 1.1 and 1.2, Exercise 2.3: merging, Exercise 03.1; version 2.1 stays"
    assert site_source.number_exercises(text) == (
        "see exercises 01.1 and 01.2, Exercise 02.3: merging, Exercise 03.1; version 2.1 stays"
    )
    nb = _nb(_md("### Exercise 5.1: the energy rank (★)"))
    shown = site_source.prepare_notebook(nb)
    assert site_source.notebook_headings(shown) == ["Exercise 05.1: the energy rank (★)"]
    assert not site_source.OTHER_STYLE.search("Exercise 05.1 and exercises 01.1")
    assert site_source.OTHER_STYLE.search("Exercise 5.1")


def test_page_titles_hold_no_latex():
    nb = _nb(_md("# 04 — Why $\\alpha/r$? Scaling\n\n## Keeps $\\alpha$ math"))
    assert site_source.page_title(nb) == "04 — Why α/r? Scaling"
    shown = site_source.prepare_notebook(nb)
    assert shown["cells"][0]["source"] == "# 04 — Why α/r? Scaling\n\n## Keeps $\\alpha$ math"
    assert site_source.plain_title("# why $A$ starts") == "# why *A* starts"
    assert site_source.plain_math("\\|M\\|_F = \\sqrt{2}") == "‖M‖_F = √2"


def test_home_page_is_for_learners_and_says_which_build_it_is():
    template = (
        "# Course\n\n{{edition}}\n\n{{repository}}Run:\n\n```bash\n{{clone}}\nmake lab\n```\n\n"
        "{{first}}\n\n{{solutions}}\n\n{{table}}\n"
    )
    rows = [("00_a", "00 — A", 2, "1 h 00 min"), ("01_b", "01 — B", 1, "45 min")]
    page = site_source.learners_index(template, rows, True, "https://x.org/lora-np.git", ["T"])
    assert "git clone https://x.org/lora-np.git lora-np && cd lora-np\nmake lab" in page
    assert "shows the solutions" in page and "[00 — A](00_a.ipynb)" in page
    assert "| [01 — B](01_b.ipynb) | 1 | 45 min |" in page
    assert page.endswith("```{toctree}\n:hidden:\n:maxdepth: 1\n\n00_a\n01_b\nT\n```\n")
    learners = site_source.learners_index(template, rows, False, None)
    assert "without their solutions" in learners and "solution" not in learners.replace(
        "without their solutions", ""
    )
    assert "Ask your teacher for the address of the course's repository" in learners
    assert "The course lives at <https://x.org/lora-np.git>." in page
    assert "{{" not in learners


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
    for name in ("a-student.ipynb", "a-teacher.ipynb"):
        (site / name).write_text("{}")
    (site / "index.html").write_text(
        _page(
            "home",
            '<article><h1>Home</h1><img src="fig.png" alt="A line falling from 1 to 0.">'
            '<a href="other.html#part">on</a><a href="a-student.ipynb" download="a-student.ipynb">'
            's</a><a href="a-teacher.ipynb" download="a-teacher.ipynb">t</a><pre>short</pre>'
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
            '<img src="missing.png" alt="_images/abc.png">'
            '<div style="width: 200px"><pre style="white-space: pre; overflow-x: auto">'
            + "x"
            * 60
            + "</pre></div>"
            '<div class="cell_input"><pre>### BEGIN SOLUTION</pre></div><p>See Exercise 2.1</p>'
            '<a href="a.ipynb" download="a.ipynb">s</a><a href="b.ipynb" download="a.ipynb">t</a>'
            '<script>throw new Error("boom")</script>'
            '<script>document.title = "04 - Why \\\\(\\\\alpha/r\\\\)?"</script></article>'
            '<button id="pst-back-to-top" style="position: fixed; top: 0; left: 0; width: 390px;'
            ' height: 300px; opacity: 0.5">Back to top</button>',
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
        "image without alt text that says what it shows: alt=''",
        "image without alt text that says what it shows: alt='_images/abc.png'",
        "title with raw LaTeX: '04 - Why \\\\(\\\\alpha/r\\\\)?'",
        "1 of 2 code blocks scroll sideways",
        "a solution marker is shown in a code cell",
        "exercise numbers in another style than NN.M: ['Exercise 2.1']",
        "downloads share a name",
        "index.html [phone]: the Back to top button covers text: ",
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


@_needs_browser
def test_a_build_without_solutions_shows_none(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    meta = '<meta name="lora-np-solutions" content="no">'
    (site / "index.html").write_text(
        _page(
            "x",
            f"{meta}<article><h1>Home</h1><p>Show the solution</p><pre>return W0 + scaling * delta"
            '</pre><a href="downloads/a-teacher.ipynb">t</a></article>',
        )
    )
    (site / "downloads").mkdir()
    (site / "downloads" / "a-teacher.ipynb").write_text("{}")
    want = browser.Expected(headings=["Home"], solution_lines=["return W0 + scaling * delta"])
    report = browser.check_site(site, {"index": want}, tmp_path / "shots")
    text = "\n".join(report.failures)
    for needle in [
        "a solution to show in a build without solutions",
        "the teacher's edition offered without solutions: ",
        "solution text on the page: 'return W0 + scaling * delta'",
    ]:
        assert needle in text, f"{needle!r} not in:\n{text}"


@_needs_browser
def test_search_from_disk_needs_an_excerpt_under_each_result(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "search.html").write_text(
        _page(
            "s",
            '<div id="search-results"><p>Search finished, found 1 page.</p><ul><li><a href="x.html">x</a></li></ul></div>',
        )
    )
    problems = browser.check_search_from_disk(site, tmp_path, timeout_ms=3000)
    assert problems == ["search.html from file://: 1 of 1 results without an excerpt"]
    (site / "search.html").write_text(
        _page(
            "s",
            '<div id="search-results"><p>Search finished, found 1 page.</p><ul><li><a>x</a>'
            '<p class="context">…</p></li></ul></div>',
        )
    )
    assert browser.check_search_from_disk(site, tmp_path) == []


def test_solution_lines_are_those_found_only_in_solutions():
    nb = _nb(
        _code(
            "def f(x):\n    ### BEGIN SOLUTION\n    return x * scaling_factor\n    y = 1\n"
            "    ### END SOLUTION",
            "s",
        ),
        _code("print('shown anyway')\nz = f(2)", "p"),
    )
    assert browser.solution_lines(nb) == ["return x * scaling_factor"]


def test_stage_with_and_without_solutions(tmp_path):
    """What Sphinx gets: without solutions no solution line, marker or teacher's edition
    anywhere in the staged sources; with them the solutions folded without their markers."""
    import build_site
    import notebook_requires

    lines = {
        path.name: browser.solution_lines(json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(build_site.NOTEBOOKS.glob(build_site.COURSE_GLOB))
    }
    # 09 (it needs torch: notebook_requires) is the graduation notebook, without exercises
    assert all(
        found
        for name, found in lines.items()
        if not notebook_requires.requirements(build_site.NOTEBOOKS / name)
    ), "every notebook has solutions to hide"

    learners = tmp_path / "learners"
    pages = build_site.stage(learners, solutions=False, repository="https://x.org/l.git")
    assert "TEACHING" not in pages
    files = [p for p in learners.rglob("*") if p.is_file() and p.suffix in (".ipynb", ".md")]
    assert not [p for p in files if "teacher" in p.name]
    staged = {p.name: p.read_text(encoding="utf-8") for p in files}
    for name, text in staged.items():
        assert "SOLUTION" not in text and "Show the solution" not in text, name
        own = lines.get(name.replace("-student", ""), [])
        shown = [line for line in own if line in text]
        assert not shown, f"{name}: {shown[:2]}"
    assert "git clone https://x.org/l.git lora-np" in staged["index.md"]

    teachers = tmp_path / "teachers"
    build_site.stage(teachers, solutions=True)
    assert (teachers / "_extra" / "downloads" / "02_lora_layer-teacher.ipynb").is_file()
    nb = json.loads((teachers / "02_lora_layer.ipynb").read_text(encoding="utf-8"))
    nb02 = editions.select(["02"])[0]
    folded = [c for c in nb["cells"] if "hide-input" in c["metadata"].get("tags", [])]
    assert len(folded) == len(editions.find_exercises(editions.read_notebook(nb02), nb02))
    assert not any("### BEGIN SOLUTION" in site_source.cell_source(c) for c in folded)
