"""Build the course website into build/site/ from the stored notebooks (``make site``).

Usage::

    python tools/build_site.py                  # with solutions (folded), the default
    python tools/build_site.py --no-solutions   # for learners: make site SOLUTIONS=0
    python tools/build_site.py --repository URL # the clone address the home page gives

Nothing is executed: myst-nb renders the outputs stored in ``notebooks/NN_*.ipynb``. The steps:

1. stage ``build/site-src/``: this repo's ``site/`` folder (Sphinx's conf.py and static files),
   a home page for learners (``site/home.md`` filled in: which build this is, the clone
   command, where to start, the notebooks with their study times), a render copy of each
   notebook (``site_source``: alt text from ``site/figure_alt.json``), the TEACHING.md guide
   (with solutions only), and under ``_extra/downloads/`` the files readers download: each
   notebook's student edition (``NN_x-student.ipynb``, made fresh by tools/editions.py) and,
   with solutions, its teacher's edition (``NN_x-teacher.ipynb``);
2. MathJax 3 from the npm registry (``npm pack``, checked against a pinned SHA-256, cached in
   ``build/cache/``) into the site's static files, so no page needs a CDN;
3. ``sphinx-build`` into a fresh ``build/site/``; any Sphinx warning fails the build. Without
   solutions Sphinx gets the tag ``no_solutions`` (conf.py reads it).

The repository address comes from ``--repository``, else ``[project.urls] Repository`` in
pyproject.toml; without either the home page tells the reader to ask for it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

import editions
import nbformat
import notebook_requires
import site_source
import study_times

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "site"
NOTEBOOKS = ROOT / "notebooks"
ALT_TEXT = CONF_DIR / "figure_alt.json"
HOME = CONF_DIR / "home.md"
STAGE = ROOT / "build" / "site-src"
OUT = ROOT / "build" / "site"
CACHE = ROOT / "build" / "cache"
COURSE_GLOB = "[0-9][0-9]_*.ipynb"
# Where the exercises issue's TEACHING.md may live, first found wins.
TEACHING_CANDIDATES = ("TEACHING.md", "docs/TEACHING.md", "notebooks/TEACHING.md")

MATHJAX_VERSION = "3.2.2"
MATHJAX_SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"
# The one combined bundle the site loads; the others in es5/ are alternatives it never asks for.
MATHJAX_BUNDLE = "tex-chtml.js"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default build/site)")
    parser.add_argument(
        "--no-solutions",
        dest="solutions",
        action="store_false",
        help="for learners: stubs instead of solutions, no teacher's edition",
    )
    parser.add_argument("--repository", help="the clone address the home page gives")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        pages = stage(STAGE, args.solutions, args.repository or _repository())
    except (ValueError, editions.EditionError) as err:
        print(f"build_site: {err}", file=sys.stderr)
        return 1
    install_mathjax(STAGE / "_static" / "mathjax")
    staged = time.perf_counter()
    run_sphinx(STAGE, args.out, args.solutions)
    missing = [p for p in pages if not (args.out / f"{p}.html").is_file()]
    if missing:
        print(f"build_site: Sphinx wrote no page for {missing}", file=sys.stderr)
        return 1
    done = time.perf_counter()
    which = "with solutions" if args.solutions else "without solutions (for learners)"
    print(
        f"build_site: {len(pages)} pages in {_shown(args.out)}, {which} "
        f"(staging {staged - start:.1f} s, Sphinx {done - staged:.1f} s, total {done - start:.1f} s)"
    )
    return 0


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _repository() -> str | None:
    """``[project.urls] Repository`` of pyproject.toml, when it has one."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    urls = {key.lower(): value for key, value in project.get("urls", {}).items()}
    return urls.get("repository") or urls.get("source")


def read_alt_text() -> dict[str, dict[str, str]]:
    """{notebook name: {cell id: alt text}} from site/figure_alt.json."""
    table = json.loads(ALT_TEXT.read_text(encoding="utf-8"))
    return {name: texts for name, texts in table.items() if not name.startswith("_")}


def stage(stage_dir: Path, solutions: bool = True, repository: str | None = None) -> list[str]:
    """Write the Sphinx source folder; returns the page names (notebooks, then TEACHING)."""
    notebooks = notebook_requires.runnable(sorted(NOTEBOOKS.glob(COURSE_GLOB)))
    if not notebooks:
        raise SystemExit(f"build_site: no notebooks matching {COURSE_GLOB} in {NOTEBOOKS}")
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    shutil.copytree(CONF_DIR, stage_dir, ignore=shutil.ignore_patterns("__pycache__"))
    names = [path.stem for path in notebooks]
    alt = read_alt_text()
    downloads = stage_dir / "_extra" / "downloads"
    rows = []
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        rendered = site_source.prepare_notebook(nb, solutions, alt.get(path.stem, {}), path.name)
        (stage_dir / path.name).write_text(json.dumps(rendered, indent=1), encoding="utf-8")
        teacher = editions.read_notebook(path)
        student = editions.student_notebook(teacher, path, run_all=True)
        downloads.mkdir(parents=True, exist_ok=True)
        (downloads / f"{path.stem}-student.ipynb").write_text(nbformat.writes(student) + "\n")
        if solutions:
            _copy(path, downloads / f"{path.stem}-teacher.ipynb")
        times = study_times.study_time(teacher)
        rows.append(
            (
                path.stem,
                site_source.page_title(nb),
                times["exercises"],
                study_times._hours(times["total_minutes"]),
            )
        )
    print(
        f"build_site: {len(names)} notebooks, "
        + ("with solutions" if solutions else "without solutions")
    )

    extra_pages = []
    teaching = next((ROOT / c for c in TEACHING_CANDIDATES if (ROOT / c).is_file()), None)
    if teaching is not None and solutions:  # a guide for teachers, about the solutions too
        text = site_source.link_pages(teaching.read_text(encoding="utf-8"), names)
        text = site_source.number_exercises(text)
        (stage_dir / "TEACHING.md").write_text(text, encoding="utf-8")
        extra_pages.append("TEACHING")
        print(f"build_site: TEACHING page from {teaching.relative_to(ROOT)}")

    template = HOME.read_text(encoding="utf-8")
    index = site_source.learners_index(template, rows, solutions, repository, extra_pages)
    (stage_dir / "index.md").write_text(index, encoding="utf-8")
    (stage_dir / "home.md").unlink()
    (stage_dir / "figure_alt.json").unlink()
    return names + extra_pages


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def install_mathjax(target: Path) -> None:
    """Unpack MathJax's es5/ build (the bundle the site loads and what it loads on demand)."""
    tarball = _mathjax_tarball()
    prefix = "package/es5/"
    with tarfile.open(tarball, "r:gz") as archive:
        members = []
        for member in archive.getmembers():
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            rel = member.name[len(prefix) :]
            if "/" not in rel and rel != MATHJAX_BUNDLE:
                continue  # the other combined bundles
            member.name = rel
            members.append(member)
        target.mkdir(parents=True, exist_ok=True)
        archive.extractall(target, members=members, filter="data")
    if not (target / MATHJAX_BUNDLE).is_file():
        raise SystemExit(f"build_site: {tarball.name} holds no es5/{MATHJAX_BUNDLE}")


def _mathjax_tarball() -> Path:
    """The pinned MathJax tarball, from build/cache/ or fetched once with ``npm pack``."""
    tarball = CACHE / f"mathjax-{MATHJAX_VERSION}.tgz"
    if not tarball.is_file() or _sha256(tarball) != MATHJAX_SHA256:
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit(
                "build_site: npm not found; the site serves MathJax itself and takes it from "
                "the npm registry (install Node.js and npm, e.g. Debian's `apt-get install npm`)"
            )
        CACHE.mkdir(parents=True, exist_ok=True)
        tarball.unlink(missing_ok=True)
        subprocess.run(
            [
                npm,
                "pack",
                f"mathjax@{MATHJAX_VERSION}",
                "--loglevel=warn",
                "--pack-destination",
                str(CACHE),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        digest = _sha256(tarball)
        if digest != MATHJAX_SHA256:
            tarball.unlink()
            raise SystemExit(
                f"build_site: mathjax-{MATHJAX_VERSION}.tgz has SHA-256 {digest}, "
                f"expected {MATHJAX_SHA256}"
            )
    return tarball


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_sphinx(source: Path, out: Path, solutions: bool = True) -> None:
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going", "-E"]
    if not solutions:
        command += ["-t", "no_solutions"]
    command += ["-d", str(source / ".doctrees"), str(source), str(out)]
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"build_site: sphinx-build failed (exit {result.returncode})")


if __name__ == "__main__":
    sys.exit(main())
