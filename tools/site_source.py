"""Turn the course's stored files into the website's Sphinx sources, and read what a page must show.

Pure text and notebook transforms, shared by ``tools/build_site.py`` (which stages the sources)
and ``tools/check_site.py`` (which checks the built pages against the notebooks). Nothing here
imports Sphinx or a browser, so the unit tests run in the plain dev environment.

The stored notebooks are never changed: the site renders a *copy* in which

- each ``<details><summary>S</summary>…</details>`` block of a markdown cell becomes a MyST
  ``dropdown`` directive, so its body is parsed as Markdown and its math is typeset (raw HTML
  reaches the page untouched, and MathJax would skip the math inside it);
- each solution code cell (a line ``### BEGIN SOLUTION``) gets the ``hide-input`` tag, so its
  source is folded behind "Show the solution".
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

# <details> opening a block at the start of a line; `open` as an attribute keeps it unfolded.
_DETAILS_OPEN = re.compile(r"^[ \t]*<details(?P<attrs>[^>]*)>", re.MULTILINE | re.IGNORECASE)
_DETAILS_CLOSE = re.compile(r"</details\s*>", re.IGNORECASE)
_SUMMARY = re.compile(r"^\s*<summary[^>]*>(?P<title>.*?)</summary\s*>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(?P<hashes>#{1,6})[ \t]+(?P<text>.*?)[ \t#]*$")
_SOLUTION_MARK = "### BEGIN SOLUTION"
SOLUTION_TAG = "hide-input"


def details_to_dropdowns(markdown: str) -> str:
    """Rewrite every block-level ``<details>`` element of ``markdown`` as a MyST dropdown.

    A block is ``<details>`` at the start of a line, an optional ``<summary>`` right after it,
    and the body up to the matching ``</details>``; nested blocks are rewritten inside out.
    A ``<details>`` without its closing tag is left as it is. Returns the new text.
    """
    while True:
        match = _innermost_details(markdown)
        if match is None:
            return markdown
        start, body_start, end, attrs = match
        body = markdown[body_start:end]
        summary = _SUMMARY.match(body)
        title = "Details"
        if summary:
            title = " ".join(summary.group("title").split()) or title
            body = body[summary.end() :]
        body = body.strip("\n").rstrip()
        # The colon fence must be longer than any colon run inside, so a nested one closes first.
        longest = max((len(run) for run in re.findall(r":{3,}", body)), default=2)
        fence = ":" * max(3, longest + 1)
        options = ":open:\n" if re.search(r"\bopen\b", attrs, re.IGNORECASE) else ""
        block = f"{fence}{{dropdown}} {title}\n{options}\n{body}\n{fence}"
        close_end = _DETAILS_CLOSE.match(markdown, end).end()
        before, after = markdown[:start], markdown[close_end:]
        # Keep the directive a block of its own, separated by blank lines.
        if before and not before.endswith("\n\n"):
            before = before.rstrip("\n") + "\n\n"
        after = "\n\n" + after.lstrip("\n") if after.strip() else "\n"
        markdown = before + block + after


def _innermost_details(text: str) -> tuple[int, int, int, str] | None:
    """(start of <details>, start of its body, start of its </details>, attrs) or None."""
    opens = list(_DETAILS_OPEN.finditer(text))
    for opening in reversed(opens):
        closing = _DETAILS_CLOSE.search(text, opening.end())
        if closing is None:
            continue
        # Innermost: no other <details> opens between this one and its closing tag.
        if any(opening.end() <= o.start() < closing.start() for o in opens):
            continue
        return opening.start(), opening.end(), closing.start(), opening.group("attrs")
    return None


def is_solution_cell(cell: dict) -> bool:
    """True for a code cell holding an exercise solution (a line ``### BEGIN SOLUTION``)."""
    if cell.get("cell_type") != "code":
        return False
    return any(line.strip() == _SOLUTION_MARK for line in cell_source(cell).splitlines())


def prepare_notebook(nb: dict) -> dict:
    """A copy of the notebook ``nb`` (nbformat's JSON as a dict) as the site renders it.

    Markdown ``<details>`` blocks become dropdowns and solution code cells are folded (see the
    module docstring); outputs, ids and all other cells are kept as stored.
    """
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError(f"expected a notebook dict with a 'cells' list, got {type(nb).__name__}")
    out = copy.deepcopy(nb)
    for cell in out["cells"]:
        if cell.get("cell_type") == "markdown":
            cell["source"] = details_to_dropdowns(cell_source(cell))
        elif is_solution_cell(cell):
            metadata = cell.setdefault("metadata", {})
            tags = metadata.setdefault("tags", [])
            if SOLUTION_TAG not in tags:
                tags.append(SOLUTION_TAG)
            metadata.setdefault("mystnb", {}).update(
                code_prompt_show="Show the solution", code_prompt_hide="Hide the solution"
            )
    return out


def count_details(nb: dict) -> int:
    """How many ``<details>`` blocks the notebook's markdown cells hold (outside code fences)."""
    return sum(
        len(_DETAILS_OPEN.findall(_outside_fences(cell_source(c))))
        for c in nb["cells"]
        if c.get("cell_type") == "markdown"
    )


def count_solutions(nb: dict) -> int:
    """How many solution code cells the notebook holds."""
    return sum(is_solution_cell(c) for c in nb["cells"])


def notebook_headings(nb: dict) -> list[str]:
    """The Markdown headings (``#`` to ``######``) of the notebook's markdown cells, in order.

    Lines inside fenced code blocks and inside ``<details>`` blocks are not headings of the page.
    """
    headings = []
    for cell in nb["cells"]:
        if cell.get("cell_type") != "markdown":
            continue
        text = _outside_fences(cell_source(cell))
        text = _strip_details(text)
        for line in text.splitlines():
            match = _HEADING.match(line)
            if match and match.group("text"):
                headings.append(match.group("text"))
    return headings


def heading_key(text: str) -> str:
    """A comparison key for a heading: math, Markdown marks and punctuation dropped, lowercase.

    The same key comes out of a notebook's Markdown (``## 1. Why $A$ is *random*``) and the
    page's rendered text with its math elements removed (``1. Why  is random``).
    """
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|\\\(.*?\\\)", " ", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [text](url) -> text
    return "".join(ch for ch in text.lower() if ch.isalnum())


def readme_to_index(readme: str, pages: Iterable[str], extra_pages: Iterable[str] = ()) -> str:
    """The site's home page (MyST Markdown) from the README's text.

    Each notebook name in ``pages`` written as code (`` `03_initialisation` ``) becomes a link
    to its page, links to ``notebooks/NN_x.ipynb`` point at the page, and a hidden table of
    contents lists ``pages`` then ``extra_pages`` (say ``TEACHING``) for the sidebar.
    """
    pages, extra_pages = list(pages), list(extra_pages)
    text = link_pages(readme, pages + extra_pages)
    for name in pages:
        text = re.sub(rf"(?<!\[)`{re.escape(name)}(?:\.ipynb)?`", f"[`{name}`]({name}.ipynb)", text)
    toc = ["", "```{toctree}", ":hidden:", ":maxdepth: 1", ""]
    toc += pages + extra_pages
    toc += ["```", ""]
    return text.rstrip("\n") + "\n" + "\n".join(toc)


def link_pages(markdown: str, pages: Iterable[str]) -> str:
    """Point Markdown links at files that are pages of the site (``notebooks/03_x.ipynb``,
    ``TEACHING.md``, the README as the home page) to those pages, and turn relative links to anything else (a file of the
    repository the site does not hold) into plain text with the path as code.
    """
    pages = set(pages)

    def relink(match: re.Match) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#", target, re.IGNORECASE):
            return match.group(0)  # a URL with a scheme, or an anchor on the same page
        path, _, anchor = target.partition("#")
        stem = path.rsplit("/", 1)[-1]
        if stem == "README.md":  # the README is the home page
            stem = "index.md"
            pages.add("index")
        for suffix in (".ipynb", ".md"):
            if stem.endswith(suffix) and stem[: -len(suffix)] in pages:
                page = stem[: -len(suffix)]
                return f"[{label}]({page}{suffix}{'#' + anchor if anchor else ''})"
        return label if f"`{path}`" in label else f"{label} (`{path}`)"

    # Not images (a leading !): those the page cannot show are left to Sphinx's warning.
    return re.sub(r"(?<!!)\[([^\]\n]*)\]\(([^)\s]+)\)", relink, markdown)


def cell_source(cell: dict) -> str:
    """A cell's source as one string (nbformat stores a string or a list of lines)."""
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _outside_fences(text: str) -> str:
    """``text`` with the lines of fenced code blocks blanked (so ``# comment`` is no heading)."""
    lines, fence = [], None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group("fence")
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return "\n".join(lines)


def _strip_details(text: str) -> str:
    while (match := _innermost_details(text)) is not None:
        start, _, end, _ = match
        close_end = _DETAILS_CLOSE.match(text, end).end()
        text = text[:start] + text[close_end:]
    return text
