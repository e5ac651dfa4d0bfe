"""Build the course website into build/site/ from the stored notebooks (``make site``).

Usage::

    python tools/build_site.py            # stage build/site-src/, then Sphinx -> build/site/

Nothing is executed: myst-nb renders the outputs stored in ``notebooks/NN_*.ipynb``. The steps:

1. stage ``build/site-src/``: this repo's ``site/`` folder (Sphinx's conf.py and static files),
   a home page made from README.md, a render copy of each notebook (``site_source``), the
   TEACHING.md guide when it exists, and under ``_extra/`` the files readers download: each
   stored notebook (teacher's edition) and, when ``make student`` has written ``build/student/``,
   its student edition;
2. MathJax 3 from the npm registry (``npm pack``, checked against a pinned SHA-256, cached in
   ``build/cache/``) into the site's static files, so no page needs a CDN;
3. ``sphinx-build`` into a fresh ``build/site/``; any Sphinx warning fails the build.
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
from pathlib import Path

import notebook_requires
import site_source

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "site"
NOTEBOOKS = ROOT / "notebooks"
STUDENT = ROOT / "build" / "student"
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
    args = parser.parse_args(argv)
    start = time.perf_counter()
    pages = stage(STAGE)
    install_mathjax(STAGE / "_static" / "mathjax")
    staged = time.perf_counter()
    run_sphinx(STAGE, args.out)
    missing = [p for p in pages if not (args.out / f"{p}.html").is_file()]
    if missing:
        print(f"build_site: Sphinx wrote no page for {missing}", file=sys.stderr)
        return 1
    done = time.perf_counter()
    print(
        f"build_site: {len(pages)} pages in {args.out.relative_to(ROOT)} "
        f"(staging {staged - start:.1f} s, Sphinx {done - staged:.1f} s, total {done - start:.1f} s)"
    )
    return 0


def stage(stage_dir: Path) -> list[str]:
    """Write the Sphinx source folder; returns the page names (notebooks, then TEACHING)."""
    notebooks = notebook_requires.runnable(sorted(NOTEBOOKS.glob(COURSE_GLOB)))
    if not notebooks:
        raise SystemExit(f"build_site: no notebooks matching {COURSE_GLOB} in {NOTEBOOKS}")
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    shutil.copytree(CONF_DIR, stage_dir, ignore=shutil.ignore_patterns("__pycache__"))
    names = [path.stem for path in notebooks]

    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        rendered = site_source.prepare_notebook(nb)
        (stage_dir / path.name).write_text(json.dumps(rendered, indent=1), encoding="utf-8")
        _copy(path, stage_dir / "_extra" / "notebooks" / path.name)

    students = _student_editions(names)
    for name, path in students.items():
        _copy(path, stage_dir / "_extra" / "student" / f"{name}.ipynb")
    print(
        f"build_site: {len(names)} notebooks, "
        + (
            f"{len(students)} student editions"
            if students
            else "no student edition (build/student/)"
        )
    )

    extra_pages = []
    teaching = next((ROOT / c for c in TEACHING_CANDIDATES if (ROOT / c).is_file()), None)
    if teaching is not None:
        text = site_source.link_pages(teaching.read_text(encoding="utf-8"), names)
        (stage_dir / "TEACHING.md").write_text(text, encoding="utf-8")
        extra_pages.append("TEACHING")
        print(f"build_site: TEACHING page from {teaching.relative_to(ROOT)}")
    else:
        print("build_site: no TEACHING.md yet, no teaching page")

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = site_source.readme_to_index(readme, names, extra_pages)
    (stage_dir / "index.md").write_text(index, encoding="utf-8")
    return names + extra_pages


def _student_editions(names: list[str]) -> dict[str, Path]:
    """The student edition of each notebook found under build/student/ (any depth)."""
    if not STUDENT.is_dir():
        return {}
    found = {}
    for name in names:
        matches = sorted(STUDENT.rglob(f"{name}.ipynb"), key=lambda p: len(p.parts))
        matches = [m for m in matches if ".ipynb_checkpoints" not in m.parts]
        if matches:
            found[name] = matches[0]
    return found


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


def run_sphinx(source: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going"]
    command += ["-d", str(source / ".doctrees"), str(source), str(out)]
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"build_site: sphinx-build failed (exit {result.returncode})")


if __name__ == "__main__":
    sys.exit(main())
