"""Test the built website in headless Chromium, as a reader sees it (``make site-test``).

Usage::

    python tools/check_site.py              # checks build/site/, screenshots to build/site-test/

Serves ``build/site/`` on a loopback port and opens every page in Debian's Chromium through
Playwright (``LORA_NP_CHROMIUM`` overrides ``/usr/bin/chromium``), once at a desktop size and
once at a phone size, each in a fresh profile. Any request for something outside the site is
refused and counted as a failure. On every page and at both sizes it checks:

- every image loaded (``naturalWidth > 0``) and no local request failed;
- every math element typeset by MathJax, without errors; a notebook with math has some;
- no uncaught script error and nothing logged as a console error;
- the page does not scroll sideways (readable on a phone);
- a notebook page shows all of its notebook's Markdown headings (the first as the title), as many
  folded blocks as the notebook has ``<details>`` hints and solutions, all closed, and a folded
  source for each solution cell; the home page shows the README's headings;
- every local link resolves to a file of the site, and its #anchor to an element of that page;
- every image has alt text that says something (not empty, not a file name); the page's title
  (the tab) holds no raw LaTeX; no code block scrolls sideways; no solution marker and no
  exercise number in another style than ``NN.M`` on the page; no two downloads share a name;
- on a phone, the "Back to top" button never covers text;
- in a build without solutions (``<meta name="lora-np-solutions" content="no">``): no "Show the
  solution", no folded solution, no teacher's edition to download, and no line of any
  solution on the page.

Search, opened from disk (``file://``), must show an excerpt under each result.

A screenshot of each page (top of the page, and the whole page as JPEG) goes to
``build/site-test/``. Prints one line per failure and ends with ``N passed, M failed``
(one test per page and size, and one for the links); the exit status is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import build_site
import notebook_requires
import site_source

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "build" / "site"
SHOTS = ROOT / "build" / "site-test"
CHROMIUM = Path(os.environ.get("LORA_NP_CHROMIUM", "/usr/bin/chromium"))
# No GPU, no sandbox (CI runs as root), and none of Chromium's own background traffic.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 900}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
PAGE_TIMEOUT_MS = 30_000
_INLINE_MATH = re.compile(r"\$[^$\n]+\$")

# Runs in the page once it has loaded and MathJax has finished: everything the checks read.
_COLLECT = """async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map((img) => img.decode().catch(() => null)));
  const headingText = (h) => {
    const copy = h.cloneNode(true);
    copy.querySelectorAll('.headerlink, .math, mjx-container').forEach((e) => e.remove());
    return copy.textContent;
  };
  const article = document.querySelector('article') || document.body;
  const maths = [...document.querySelectorAll('.math')];
  return {
    images: imgs.map((img) => ({src: img.currentSrc || img.src, width: img.naturalWidth})),
    math: maths.length,
    mathUntypeset: maths.filter((m) => !m.querySelector('mjx-container')).length,
    mathErrors: document.querySelectorAll('mjx-merror').length,
    links: [...document.querySelectorAll('a[href]')].map((a) => a.href),
    ids: [...document.querySelectorAll('[id]')].map((e) => e.id)
      .concat([...document.querySelectorAll('a[name]')].map((a) => a.name)),
    headings: [...article.querySelectorAll('h1, h2, h3, h4, h5, h6')].map(headingText),
    title: (article.querySelector('h1') && headingText(article.querySelector('h1'))) || '',
    dropdowns: document.querySelectorAll('details.sd-dropdown').length,
    dropdownsOpen: document.querySelectorAll('details.sd-dropdown[open]').length,
    solutions: document.querySelectorAll('.tag_hide-input details.hide').length,
    solutionsOpen: document.querySelectorAll('.tag_hide-input details.hide[open]').length,
    scrollWidth: document.documentElement.scrollWidth,
    alts: [...article.querySelectorAll('img')].map((img) => img.getAttribute('alt') || ''),
    docTitle: document.title,
    navTitles: [...document.querySelectorAll('nav a')].map((a) => a.textContent.trim()),
    codeScrolling: [...article.querySelectorAll('pre')]
      .filter((pre) => pre.scrollWidth > pre.clientWidth + 1).length,
    codeBlocks: article.querySelectorAll('pre').length,
    text: article.textContent,
    cellText: [...article.querySelectorAll('.cell_input')].map((c) => c.textContent).join(' '),
    downloads: [...document.querySelectorAll('a[download]')].map((a) => a.getAttribute('download')),
    solutionsMeta: (document.querySelector('meta[name="lora-np-solutions"]') || {}).content || '',
  };
}"""
# On a phone, scrolled into the page: whether the "Back to top" button, when shown, lies over
# any text of the article.
_BACK_TO_TOP = """() => {
  const button = document.querySelector('#pst-back-to-top');
  if (!button) return null;
  const style = getComputedStyle(button);
  const box = button.getBoundingClientRect();
  if (style.display === 'none' || style.visibility === 'hidden' || box.height === 0) return null;
  const article = document.querySelector('article') || document.body;
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.textContent.trim()) continue;
    range.selectNodeContents(node);
    for (const r of range.getClientRects()) {
      if (r.right > box.left && r.left < box.right && r.bottom > box.top && r.top < box.bottom)
        return node.textContent.trim().slice(0, 40);
    }
  }
  return null;
}"""
_PATH_LIKE = re.compile(r"(^|/)[^ ]*\.(png|jpe?g|svg|gif)$", re.IGNORECASE)


@dataclass
class Expected:
    """What one page must show, read from its source (a notebook or a Markdown file)."""

    headings: list[str]
    details: int | None = None  # folded <details> blocks (notebooks only)
    solutions: int | None = None  # folded solution cells (notebooks only)
    has_math: bool = False
    solution_lines: list[str] = field(default_factory=list)  # must not show without solutions


@dataclass
class Report:
    pages: int = 0
    failures: list[str] = field(default_factory=list)
    passed: int = 0
    failed: int = 0
    images: int = 0
    math: int = 0
    links: set[tuple[str, str]] = field(default_factory=set)
    external_links: set[str] = field(default_factory=set)
    ids: dict[str, set[str]] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=SITE, help="built site (default build/site)")
    parser.add_argument("--shots", type=Path, default=SHOTS, help="screenshot folder")
    parser.add_argument("--full", action="store_true", help="also the whole page, as JPEG")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    if not (site / "index.html").is_file():
        print(f"site-test: no {site}/index.html; build the site first (make site)", file=sys.stderr)
        return 1
    if not CHROMIUM.is_file():
        print(
            f"site-test: no Chromium at {CHROMIUM}; install Debian's (apt-get install chromium) "
            "or point LORA_NP_CHROMIUM at one",
            file=sys.stderr,
        )
        return 1
    start = time.perf_counter()
    solutions = 'name="lora-np-solutions" content="no"' not in (site / "index.html").read_text()
    report = check_site(site, expected_pages(solutions), args.shots, full=args.full)
    print(f"site-test: a build {'with' if solutions else 'without'} solutions")
    for failure in report.failures:
        print(f"FAIL {failure}")
    print(
        f"site-test: {report.pages} pages x {len(VIEWPORTS)} sizes, {report.images} images, "
        f"{report.math} math elements, {len(report.links)} local links checked, "
        f"{len(report.external_links)} external links (not requested); screenshots in "
        f"{_shown(args.shots)}; {time.perf_counter() - start:.1f} s"
    )
    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


def check_site(site: Path, expected: dict[str, Expected], shots: Path, full=False) -> Report:
    """Open every page of ``site`` at every size; ``expected`` maps page names to what they
    must show (a name with no page is a failure). Screenshots go to ``shots``."""
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    pages = [p for p in pages if not p.startswith("_static/")]
    report = Report(pages=len(pages))
    for name in sorted(expected):
        if f"{name}.html" not in pages:
            report.failures.append(f"{name}.html: missing from the site")
            report.failed += 1
    shots.mkdir(parents=True, exist_ok=True)
    with _serve(site) as base:
        for size, options in VIEWPORTS.items():
            _visit_all(base, pages, size, options, expected, shots, full, report)
    if "search.html" in pages:
        search_problems = check_search_from_disk(site, shots)
        report.failures += search_problems
        report.passed += not search_problems
        report.failed += bool(search_problems)
    link_problems = _check_links(site, report)
    report.failures += link_problems
    report.passed += not link_problems
    report.failed += bool(link_problems)
    return report


def expected_pages(solutions: bool = True) -> dict[str, Expected]:
    """What each page built from a course file must show, keyed by page name, in a build with
    or without ``solutions``."""
    expected = {}
    notebooks = sorted(build_site.NOTEBOOKS.glob(build_site.COURSE_GLOB))
    for path in notebook_requires.runnable(notebooks, say=lambda line: None):  # as the build
        nb = json.loads(path.read_text(encoding="utf-8"))
        markdown = "\n".join(
            site_source.cell_source(c) for c in nb["cells"] if c.get("cell_type") == "markdown"
        )
        shown = site_source.prepare_notebook(nb, solutions)
        expected[path.stem] = Expected(
            headings=site_source.notebook_headings(shown),
            details=site_source.count_details(nb),
            solutions=site_source.count_solutions(nb) if solutions else 0,
            has_math=bool(_INLINE_MATH.search(markdown)),
            solution_lines=[] if solutions else solution_lines(nb),
        )
    home = build_site.HOME.read_text(encoding="utf-8")
    expected["index"] = Expected(headings=_markdown_headings(home))
    teaching = next(
        (ROOT / c for c in build_site.TEACHING_CANDIDATES if (ROOT / c).is_file()), None
    )
    if teaching is not None and solutions:
        text = site_source.number_exercises(teaching.read_text("utf-8"))
        expected["TEACHING"] = Expected(headings=_markdown_headings(text))
    return expected


def solution_lines(nb: dict) -> list[str]:
    """The lines of the notebook's solutions (between the markers) that appear nowhere else in
    it and are long enough to tell apart: none of them may show in a build without solutions."""
    inside, lines, elsewhere = False, [], []
    for cell in nb["cells"]:
        for line in site_source.cell_source(cell).split("\n"):
            text = line.strip()
            if text in ("### BEGIN SOLUTION", "### END SOLUTION"):
                inside = text == "### BEGIN SOLUTION"
            elif inside:
                lines.append(text)
            else:
                elsewhere.append(text)
    others = "\n".join(elsewhere)
    return sorted(
        {line for line in lines if len(line) >= 16 and not line.startswith("#")}
        - {line for line in lines if line in others}
    )


def _markdown_headings(text: str) -> list[str]:
    return site_source.notebook_headings({"cells": [{"cell_type": "markdown", "source": text}]})


def _visit_all(base, pages, size, options, expected, shots, full, report) -> None:
    from playwright.sync_api import sync_playwright

    with (
        tempfile.TemporaryDirectory(prefix="site-test-profile-") as profile,
        sync_playwright() as pw,
    ):
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            service_workers="block",
            **options,
        )
        outside: list[str] = []

        def route(route, request):
            if request.url.startswith(base):
                route.continue_()
            else:
                outside.append(request.url)
                route.abort("blockedbyclient")

        context.route("**/*", route)
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        try:
            for name in pages:
                problems = _visit(page, base, name, size, expected, shots, full, report, outside)
                report.passed += not problems
                report.failed += bool(problems)
                report.failures += [f"{name} [{size}]: {p}" for p in problems]
        finally:
            context.close()


def _visit(page, base, name, size, expected, shots, full, report, outside) -> list[str]:
    """Open one page at one size; returns what is wrong with it."""
    problems: list[str] = []
    outside.clear()
    handlers = {
        "pageerror": lambda err: problems.append(f"uncaught script error: {err}"),
        "console": lambda msg: (
            msg.type == "error" and problems.append(f"console error: {msg.text}")
        ),
        "requestfailed": lambda req: (
            req.url.startswith(base)
            and problems.append(f"request failed: {req.url} ({req.failure})")
        ),
        "response": lambda res: (
            res.status >= 400 and problems.append(f"HTTP {res.status} for {res.url}")
        ),
    }
    for event, handler in handlers.items():
        page.on(event, handler)
    try:
        page.goto(base + name, wait_until="load")
        page.evaluate(
            "() => (window.MathJax && MathJax.startup && MathJax.startup.promise) || null"
        )
        page.evaluate("() => document.fonts.ready.then(() => null)")
        seen = page.evaluate(_COLLECT)
        seen["viewportWidth"] = page.viewport_size["width"]
        stem = name.removesuffix(".html").replace("/", "_")
        page.screenshot(path=shots / f"{stem}-{size}.png")
        figure = page.query_selector(".cell_output img")
        if figure is not None:  # the first figure, with the text around it
            figure.evaluate("(img) => img.scrollIntoView({block: 'center'})")
            page.screenshot(path=shots / f"{stem}-{size}-figure.png")
        if full:
            page.screenshot(path=shots / f"{stem}-{size}-full.jpg", full_page=True, quality=60)
        if size == "phone":
            page.evaluate("() => window.scrollTo(0, document.body.scrollHeight / 2)")
            page.wait_for_timeout(400)  # the button appears after a scroll
            covered = page.evaluate(_BACK_TO_TOP)
            if covered:
                problems.append(f"the Back to top button covers text: {covered!r}")
                page.screenshot(path=shots / f"{stem}-{size}-back-to-top.png")
    except Exception as err:  # a page that cannot be opened is one failure, not a crash
        return problems + [f"could not be checked: {err}"]
    finally:
        for event, handler in handlers.items():
            page.remove_listener(event, handler)
    problems += [f"request outside the site refused: {url}" for url in outside]
    problems += _judge(name, seen, expected.get(name.removesuffix(".html")), base, report)
    return problems


def _judge(name, seen, want: Expected | None, base, report) -> list[str]:
    """The failures in what the browser saw on page ``name``."""
    problems = []
    report.images += len(seen["images"])
    report.math += seen["math"]
    problems += [f"image did not load: {i['src']}" for i in seen["images"] if i["width"] <= 0]
    for alt in seen["alts"]:
        if len(alt.split()) < 3 or _PATH_LIKE.search(alt.strip()):
            problems.append(f"image without alt text that says what it shows: alt={alt!r}")
    for title in [seen["docTitle"], *seen["navTitles"]]:
        if re.search(r"\\[(a-zA-Z]|\$", title):
            problems.append(f"title with raw LaTeX: {title!r}")
    if seen["codeScrolling"]:
        problems.append(
            f"{seen['codeScrolling']} of {seen['codeBlocks']} code blocks scroll sideways"
        )
    if "BEGIN SOLUTION" in seen["cellText"] or "END SOLUTION" in seen["cellText"]:
        problems.append("a solution marker is shown in a code cell")
    other_style = sorted(set(site_source.OTHER_STYLE.findall(seen["text"])))
    if other_style:
        problems.append(f"exercise numbers in another style than NN.M: {other_style}")
    names = seen["downloads"]
    if len(set(names)) != len(names):
        problems.append(f"downloads share a name: {sorted(names)}")
    if seen["solutionsMeta"] == "no":
        if "Show the solution" in seen["text"] or seen["solutions"]:
            problems.append("a solution to show in a build without solutions")
        teacher = [n for n in names if "teacher" in n] + [
            link for link in seen["links"] if "-teacher.ipynb" in link
        ]
        if teacher:
            problems.append(f"the teacher's edition offered without solutions: {teacher[0]}")
        if want is not None:
            shown = [line for line in want.solution_lines if line in seen["text"]]
            if shown:
                problems.append(f"solution text on the page: {shown[0]!r}")
    if seen["mathUntypeset"] or seen["mathErrors"]:
        problems.append(
            f"math not typeset: {seen['mathUntypeset']} of {seen['math']} untypeset, "
            f"{seen['mathErrors']} MathJax errors"
        )
    # Against the size asked for: a phone browser may widen its layout to fit what overflows.
    if seen["scrollWidth"] > seen["viewportWidth"] + 1:
        problems.append(
            f"page scrolls sideways: {seen['scrollWidth']} px wide on a "
            f"{seen['viewportWidth']} px wide screen"
        )
    for href in seen["links"]:
        url, _ = urldefrag(href)
        if href.startswith(base):
            report.links.add((name, href[len(base) :]))
        elif urlsplit(href).scheme in ("http", "https"):
            report.external_links.add(url)
    report.ids[name] = set(seen["ids"])
    if want is None:
        return problems
    shown = [site_source.heading_key(h) for h in seen["headings"]]
    missing = [h for h in want.headings if site_source.heading_key(h) not in shown]
    problems += [f"heading missing: {h!r}" for h in missing]
    if want.headings and site_source.heading_key(seen["title"]) != site_source.heading_key(
        want.headings[0]
    ):
        problems.append(f"title is {seen['title']!r}, expected {want.headings[0]!r}")
    if want.has_math and not seen["math"]:
        problems.append("the notebook has math but the page has no math element")
    if want.details is not None and (seen["dropdowns"], seen["dropdownsOpen"]) != (want.details, 0):
        problems.append(
            f"{seen['dropdowns']} folded blocks ({seen['dropdownsOpen']} open), expected "
            f"{want.details} closed ones for the notebook's <details>"
        )
    if want.solutions is not None and (seen["solutions"], seen["solutionsOpen"]) != (
        want.solutions,
        0,
    ):
        problems.append(
            f"{seen['solutions']} folded solution cells ({seen['solutionsOpen']} open), "
            f"expected {want.solutions} closed"
        )
    return problems


def check_search_from_disk(
    site: Path, shots: Path, word: str = "lora", timeout_ms: int = PAGE_TIMEOUT_MS
) -> list[str]:
    """Open the site's search page from disk (file://) and search ``word``: each result must
    show an excerpt of its page."""
    from playwright.sync_api import sync_playwright

    url = (site / "search.html").resolve().as_uri() + f"?q={word}"
    with (
        tempfile.TemporaryDirectory(prefix="site-test-profile-") as profile,
        sync_playwright() as pw,
    ):
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_FLAGS, "--allow-file-access-from-files=false"],
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(url, wait_until="load")
            try:
                page.wait_for_function(
                    # Sphinx lists the results in steps and says when it is done.
                    "() => { const li = document.querySelectorAll('#search-results li');"
                    " const done = /found/.test(document.querySelector('#search-results')"
                    ".textContent.slice(0, 200));"
                    " return done && [...li].every((x) => x.querySelector('.context'));}",
                    timeout=timeout_ms,
                )
            except Exception:
                pass
            found = page.evaluate(
                "() => [...document.querySelectorAll('#search-results li')]"
                ".map((li) => !!li.querySelector('.context'))"
            )
            page.screenshot(path=shots / "search-from-disk.png")
        finally:
            context.close()
    if not found:
        return [f"search.html from file://: no result for {word!r}"]
    if not all(found):
        return [
            f"search.html from file://: {found.count(False)} of {len(found)} results without "
            "an excerpt"
        ]
    return []


def _check_links(site: Path, report: Report) -> list[str]:
    """Every local link names a file of the site, and an #anchor an id on that page."""
    problems = []
    for page, rel in sorted(report.links):
        path, _, anchor = rel.partition("#")
        path = unquote(urlsplit(path).path)
        target = site / path if path else site / page
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"{page}: link to a missing file: {rel}")
            continue
        key = target.relative_to(site).as_posix()
        anchor = unquote(anchor)
        if anchor and key in report.ids and anchor not in report.ids[key]:
            problems.append(f"{page}: link to a missing anchor: {rel}")
    return problems


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class _serve:
    """Serve ``site`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""

    def __init__(self, site: Path):
        handler = functools.partial(_Quiet, directory=str(site))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


if __name__ == "__main__":
    sys.exit(main())
