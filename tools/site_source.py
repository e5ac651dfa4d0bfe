"""Turn the course's stored files into the website's Sphinx sources, and read what a page must show.

Pure text and notebook transforms, shared by ``tools/build_site.py`` (which stages the sources)
and ``tools/check_site.py`` (which checks the built pages against the notebooks). Nothing here
imports Sphinx or a browser, so the unit tests run in the plain dev environment.

The stored notebooks are never changed: the site renders a *copy* in which

- each ``<details><summary>S</summary>…</details>`` block of a markdown cell becomes a MyST
  ``dropdown`` directive, so its body is parsed as Markdown and its math is typeset (raw HTML
  reaches the page untouched, and MathJax would skip the math inside it);
- each solution code cell (a line ``### BEGIN SOLUTION``) gets the ``hide-input`` tag, so its
  source is folded behind "Show the solution", without nbgrader's marker lines; in the
  learners' build (no solutions) it shows the student edition's stub instead, unfolded;
- exercise numbers take one style, ``NN.M`` ("Exercise 2.1" is shown as "Exercise 02.1");
- the math of the page title (its ``#`` heading) becomes plain text (``$\\alpha/r$`` -> ``α/r``),
  so tabs, search results and links show no raw LaTeX;
- each figure output gets its alt text from ``site/figure_alt.json`` (keyed by notebook and
  cell id; a figure without one is an error).
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
_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")  # nbgrader's, as tools/editions.py
SOLUTION_TAG = "hide-input"
# "Exercise 2.1", "exercises 1.1 and 1.2", "Exercises 2.1–2.3": a word, then numbers.
_EXERCISE_REF = re.compile(
    r"\b(?P<word>[Ee]xercises?)(?P<space>\s+)"
    r"(?P<numbers>\d+\.\d+(?:(?:\s*,\s*|\s+and\s+|\s+or\s+|\s*[–-]\s*)\d+\.\d+)*)"
)
# An exercise number in another style than NN.M: what the site test looks for on a page.
OTHER_STYLE = re.compile(r"\b[Ee]xercises?\s+\d\.\d+")
_MATH = re.compile(r"\$(?P<tex>[^$]+)\$")
# TeX commands a title may hold, as the characters a reader sees.
_TEX_SYMBOLS = {
    "alpha": "α",
    "beta": "β",
    "gamma": "γ",
    "delta": "δ",
    "Delta": "Δ",
    "sigma": "σ",
    "Sigma": "Σ",
    "phi": "φ",
    "lambda": "λ",
    "mu": "μ",
    "theta": "θ",
    "epsilon": "ε",
    "top": "⊤",
    "sqrt": "√",
    "times": "×",
    "cdot": "·",
    "approx": "≈",
    "le": "≤",
    "ge": "≥",
    "ll": "≪",
    "to": "→",
    "infty": "∞",
    "ell": "ℓ",
}


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


def plain_math(tex: str) -> str:
    """TeX as the plain text a title can hold: ``\\alpha/r`` -> ``α/r``, ``\\|M\\|_F`` -> ``‖M‖_F``."""
    text = re.sub(r"\\([A-Za-z]+)", lambda m: _TEX_SYMBOLS.get(m.group(1), m.group(1)), tex)
    text = text.replace("\\|", "‖").replace("\\,", " ").replace("\\", "")
    return text.replace("{", "").replace("}", "").strip()


def plain_title(heading: str) -> str:
    """A heading with its inline math as plain text; one letter stays italic (``*A*``)."""

    def plain(match: re.Match) -> str:
        text = plain_math(match.group("tex"))
        return f"*{text}*" if re.fullmatch(r"[A-Za-z]", text) else text

    return _MATH.sub(plain, heading)


def number_exercises(text: str) -> str:
    """Every exercise number in ``text`` in the style ``NN.M``: "Exercise 2.1" -> "Exercise 02.1"."""

    def pad(match: re.Match) -> str:
        numbers = re.sub(
            r"(\d+)\.(\d+)", lambda m: f"{int(m.group(1)):02d}.{m.group(2)}", match["numbers"]
        )
        return f"{match['word']}{match['space']}{numbers}"

    return _EXERCISE_REF.sub(pad, text)


def _title_plain(markdown: str) -> str:
    """``markdown`` with the math of its ``#`` headings (the page title) as plain text."""
    lines = markdown.split("\n")
    for index, line in enumerate(lines):
        match = _HEADING.match(line)
        if match and len(match.group("hashes")) == 1:
            lines[index] = plain_title(line)
    return "\n".join(lines)


def _without_markers(source: str) -> str:
    return "\n".join(line for line in source.split("\n") if line.strip() not in _MARKERS)


def _stubbed(source: str) -> str:
    """The student edition's stub: each marked region replaced by nbgrader's two lines."""
    out, inside = [], False
    for line in source.split("\n"):
        if line.strip() == _MARKERS[0]:
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + stub for stub in _STUB]
            inside = True
        elif line.strip() == _MARKERS[1]:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def has_figure(cell: dict) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def prepare_notebook(
    nb: dict, solutions: bool = True, alt: dict[str, str] | None = None, name: str = "notebook"
) -> dict:
    """A copy of the notebook ``nb`` (nbformat's JSON as a dict) as the site renders it.

    See the module docstring: dropdowns, folded solutions without markers (``solutions``) or
    the stub in their place, exercise numbers and the title in one style, and the alt text of
    every figure from ``alt`` ({cell id: text}; None skips alt text). Raises ValueError naming
    ``name`` and the cell when a figure has no alt text. Outputs, ids and all other cells are
    kept as stored.
    """
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError(f"expected a notebook dict with a 'cells' list, got {type(nb).__name__}")
    out = copy.deepcopy(nb)
    for cell in out["cells"]:
        if cell.get("cell_type") == "markdown":
            text = number_exercises(details_to_dropdowns(cell_source(cell)))
            cell["source"] = _title_plain(text)
            continue
        if is_solution_cell(cell):
            if not solutions:
                cell["source"] = _stubbed(cell_source(cell))
                continue
            cell["source"] = _without_markers(cell_source(cell))
            metadata = cell.setdefault("metadata", {})
            tags = metadata.setdefault("tags", [])
            if SOLUTION_TAG not in tags:
                tags.append(SOLUTION_TAG)
            metadata.setdefault("mystnb", {}).update(
                code_prompt_show="Show the solution", code_prompt_hide="Hide the solution"
            )
        if alt is not None and cell.get("cell_type") == "code" and has_figure(cell):
            text = alt.get(cell.get("id", ""), "").strip()
            if not text:
                raise ValueError(
                    f"{name}: the figure of cell {cell.get('id')!r} has no alt text; add what it "
                    "shows to site/figure_alt.json"
                )
            mystnb = cell.setdefault("metadata", {}).setdefault("mystnb", {})
            mystnb.setdefault("image", {})["alt"] = text
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


def learners_index(
    template: str,
    rows: list[tuple[str, str, int, str]],
    solutions: bool,
    repository: str | None,
    extra_pages: Iterable[str] = (),
) -> str:
    """The site's home page (MyST Markdown), written for learners, from ``site/home.md``.

    ``rows`` holds one (page name, plain title, exercises, study time) per notebook, in order.
    The page says which build it is (with or without solutions), how to get the course (the
    clone command for ``repository``, or where to ask for it) and where to start; a hidden table
    of contents lists the notebooks then ``extra_pages`` for the sidebar.
    """
    if not rows:
        raise ValueError("the home page needs at least one notebook")
    if solutions:
        edition = (
            "*This site shows the solutions:* each exercise's is folded under **Show the "
            "solution**, and each page also offers the teacher's edition of its notebook."
        )
        hint = "Try each exercise before you open its solution."
    else:
        edition = "*This site shows the exercises without their solutions.*"
        hint = ""
    clone = (
        f"git clone {repository} lora-np && cd lora-np"
        if repository
        else "git clone <course repository address> lora-np && cd lora-np"
    )
    where = (
        f"The course lives at <{repository}>. "
        if repository
        else "Ask your teacher for the address of the course's repository, for the first one. "
    )
    table = ["| notebook | exercises | study time |", "|---|---|---|"]
    table += [f"| [{title}]({name}.ipynb) | {n} | {time} |" for name, title, n, time in rows]
    first_name, first_title = rows[0][0], rows[0][1]
    text = template
    for key, value in {
        "edition": edition,
        "clone": clone,
        "repository": where,
        "first": f"[{first_title}]({first_name}.ipynb)",
        "solutions": hint,
        "table": "\n".join(table),
    }.items():
        text = text.replace("{{" + key + "}}", value)
    text = re.sub(r"\n{3,}", "\n\n", text)
    toc = ["", "```{toctree}", ":hidden:", ":maxdepth: 1", ""]
    toc += [row[0] for row in rows] + list(extra_pages)
    toc += ["```", ""]
    return text.rstrip("\n") + "\n" + "\n".join(toc)


def page_title(nb: dict) -> str:
    """The notebook's title as the site shows it: its first ``#`` heading, math as plain text
    and Markdown marks dropped ("04 — Why α/r? Scaling the LoRA update")."""
    for heading in notebook_headings(nb):
        return re.sub(r"[*_`]", "", plain_title(heading)).strip()
    return ""


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
