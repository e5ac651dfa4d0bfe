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
- every local link resolves to a file of the site, and its #anchor to an element of that page.

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
  };
}"""


@dataclass
class Expected:
    """What one page must show, read from its source (a notebook or a Markdown file)."""

    headings: list[str]
    details: int | None = None  # folded <details> blocks (notebooks only)
    solutions: int | None = None  # folded solution cells (notebooks only)
    has_math: bool = False


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
    report = check_site(site, expected_pages(), args.shots, full=args.full)
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
    link_problems = _check_links(site, report)
    report.failures += link_problems
    report.passed += not link_problems
    report.failed += bool(link_problems)
    return report


def expected_pages() -> dict[str, Expected]:
    """What each page built from a course file must show, keyed by page name."""
    expected = {}
    for path in sorted(build_site.NOTEBOOKS.glob(build_site.COURSE_GLOB)):
        nb = json.loads(path.read_text(encoding="utf-8"))
        markdown = "\n".join(
            site_source.cell_source(c) for c in nb["cells"] if c.get("cell_type") == "markdown"
        )
        expected[path.stem] = Expected(
            headings=site_source.notebook_headings(nb),
            details=site_source.count_details(nb),
            solutions=site_source.count_solutions(nb),
            has_math=bool(_INLINE_MATH.search(markdown)),
        )
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    expected["index"] = Expected(headings=_markdown_headings(readme))
    teaching = next(
        (ROOT / c for c in build_site.TEACHING_CANDIDATES if (ROOT / c).is_file()), None
    )
    if teaching is not None:
        expected["TEACHING"] = Expected(headings=_markdown_headings(teaching.read_text("utf-8")))
    return expected


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
