"""The course on a learner's machine: strict nbval on every Python and dependency range we allow.

For each Python 3.11, 3.12 and 3.13 found here (a missing one is skipped with a clear line), two
throwaway environments under build/matrix/: one with the NEWEST release of every dependency, one
with the LOWEST release that pyproject.toml allows (uv's lowest-direct resolution, wheels only,
so on a newer Python it takes the lowest release that ships a wheel for it). The project is
installed non-editable, as a learner's `pip install .` would, and each environment runs strict
nbval on the stored notebooks (and 3.11-lowest, the oldest releases we allow, the unit tests
too: see UNIT_SUITE_ON; the newest releases on the numpy-strict backend, which proves the
course safe on CuPy: see STRICT_ON). The BLAS
variables (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE) are passed on exactly as the machine sets them:
some processors need them because older OpenBLAS builds compute wrong results or crash without,
so no test changes them. Portability across BLAS kernels is built into the tests and the stored
outputs instead (no compared digit depends on the kernel; see tests/test_experiments_07.py).

    python tools/test_matrix.py                  # every configuration
    python tools/test_matrix.py 3.12-newest      # or some of them: <python>-<newest|lowest>

A configuration that would repeat `make test` is skipped with a line that says so: the newest
one on .venv's Python when .venv holds the newest release of every requirement pyproject.toml names
(`make test` already ran strict nbval there, on the student edition: every stored output but
the exercise cells', with the library's answers; the teacher's solutions run in every other
configuration and in .ci/run's solved edition, and the installed wheel, the other thing it
would add, is proven by every other configuration). So is a configuration whose Python and
whose releases (those a notebook's execution depends on) both run in other configurations: on
Python 3.12 the lowest releases are 3.11's and the newest are 3.13's, so 3.12 runs once, and
each Python and each set of releases a learner can get still runs (repeated_pairs). Name a
configuration explicitly to run it anyway. Each run uses WORKERS processes (pytest-xdist,
--dist loadfile: a notebook stays in one kernel).

Needs `uv` (make test-matrix installs it into .venv). Exit status 1 when any configuration fails.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "matrix"
PYTHONS = ("3.11", "3.12", "3.13")
RESOLUTIONS = ("newest", "lowest")
CELL_TIMEOUT_S = 600  # a kernel that dies or hangs fails the cell instead of the whole run
WORKERS = 2  # the course machine's cores
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def find_python(version: str) -> str | None:
    """A working interpreter for ``version`` ('3.12'): on PATH, then pyenv's and system folders."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"))
    candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for candidate in filter(None, candidates):
        try:  # a pyenv shim exists on PATH even when that version is not selected: run it
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


def run(command: list[str], log, env=None) -> int:
    """Run ``command`` from the repository root, its output appended to ``log``."""
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    return subprocess.run(
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
    ).returncode


def declared_requirements() -> list[str]:
    """The runtime and [dev] requirements exactly as pyproject.toml states them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["dev"]


def build_wheel(uv: str) -> Path:
    """lora-np as a wheel, built once: installed from it, as a learner's `pip install .` would."""
    out = BUILD / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [uv, "build", "--wheel", "--quiet", "--out-dir", str(out), str(ROOT)], check=True, cwd=ROOT
    )
    return next(out.glob("lora_np-*.whl"))


def run_environment(figure_dir: Path, backend: str | None = None) -> dict[str, str]:
    """This process's environment, BLAS variables untouched, with figures sent to ``figure_dir``
    (and lora_np's array backend set to ``backend``, when given)."""
    env = dict(os.environ)
    env["LORA_NP_FIGURE_DIR"] = str(figure_dir)
    if backend:
        env["LORA_NP_BACKEND"] = backend
    return env


def _named() -> set[str]:
    """The packages pyproject.toml names (a newer release of one of their own dependencies,
    such as an HTML parser of nbconvert's, changes nothing the course is tested on)."""
    return {_pin(re.match(r"[A-Za-z0-9._-]+", line)[0])[0] for line in declared_requirements()}


# Requirements that only the unit suite and the linter use, never a notebook's execution:
# two configurations that differ only in these run the same course (PyYAML 6.0 has no wheel
# for Python 3.12, so 3.12's lowest resolution takes 6.0.1 where 3.11's takes 6.0).
UNIT_SUITE_ONLY = ("hypothesis", "pyyaml", "ruff")


def course_releases(pins: frozenset | None) -> frozenset | None:
    """``pins`` without UNIT_SUITE_ONLY: the releases a notebook's execution depends on."""
    return None if pins is None else frozenset(p for p in pins if p[0] not in UNIT_SUITE_ONLY)


def resolve(uv: str, python: str, resolution: str) -> frozenset[tuple[str, str]] | None:
    """The releases of the packages pyproject.toml names that ``python`` would install with
    ``resolution`` (as prepare() installs them), or None when uv cannot tell."""
    command = [uv, "pip", "compile", "-", "--quiet", "--no-header", "--no-annotate"]
    command += ["--python", python]
    if resolution == "lowest":
        command += ["--resolution", "lowest-direct", "--only-binary", ":all:"]
    resolved = subprocess.run(
        command,
        input="\n".join(declared_requirements()),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if resolved.returncode:
        return None
    named = _named()
    pins = {_pin(line) for line in resolved.stdout.splitlines() if "==" in line}
    pins = frozenset(pin for pin in pins if pin[0] in named)
    return pins if len(pins) == len(named) else None


def repeats_make_test(uv: str, version: str, resolution: str) -> str | None:
    """Why the configuration would only repeat `make test`'s strict nbval, or None: it is the
    newest one on .venv's Python and .venv holds every release it resolves to."""
    if resolution != "newest" or not VENV_PYTHON.exists():
        return None
    probe = "import sys; print('%d.%d' % sys.version_info[:2])"
    venv_version = subprocess.run(
        [str(VENV_PYTHON), "-c", probe], capture_output=True, text=True
    ).stdout.strip()
    if venv_version != version:
        return None
    pins = resolve(uv, str(VENV_PYTHON), "newest")
    installed = subprocess.run(
        [uv, "pip", "freeze", "--python", str(VENV_PYTHON)], capture_output=True, text=True
    )
    if pins is None or installed.returncode:
        return None  # cannot tell: run it
    have = {_pin(line) for line in installed.stdout.splitlines() if "==" in line}
    if not pins <= have:
        return None
    return f".venv (Python {version}) holds the newest release of all {len(pins)} requirements"


def repeated_pairs(
    pins: dict[tuple[str, str], frozenset | None], protected: tuple[str, str] | None = None
) -> dict[tuple[str, str], str]:
    """Which configurations to leave out, each with the reason: what a configuration adds is
    its Python and its set of releases (``pins``: course_releases of each), so one whose
    releases another configuration runs AND
    whose Python another configuration runs proves nothing new (on Python 3.12 the lowest
    releases are 3.11's, the newest are 3.13's). Decided from the last configuration to the
    first (the oldest Python keeps its own), never ``protected`` (it runs the unit suite),
    never one whose releases are unknown (None)."""
    protected = protected or UNIT_SUITE_ON
    kept = dict(pins)
    dropped = {}
    for config in reversed(list(pins)):
        if config == protected or pins[config] is None:
            continue
        others = {c: p for c, p in kept.items() if c != config}
        same_releases = [c for c, p in others.items() if p == pins[config]]
        same_python = [c for c in others if c[0] == config[0]]
        if same_releases and same_python:
            del kept[config]
            dropped[config] = (
                f"its releases run in {'-'.join(same_releases[0])}, "
                f"its Python in {'-'.join(same_python[0])}"
            )
    return dropped


def _pin(line: str) -> tuple[str, str]:
    """('numpy', '2.4.6') from 'numpy==2.4.6' or 'NumPy == 2.4.6 ; python_version...'."""
    name, _, version = line.split(";")[0].partition("==")
    return name.strip().lower().replace("_", "-"), version.strip()


# The unit suite, with the lowest releases, on this Python only: the oldest we allow, where
# lowest-direct resolves to the oldest releases of all (on a newer Python it takes the lowest
# release with a wheel for it, which is newer). The library's code paths depend on the releases,
# not on the Python minor version (make test runs the unit suite on .venv's Python with the
# newest), and strict nbval, which runs everywhere, exercises the library on every
# configuration through the notebooks. Under load on the course machine the unit suite added
# 6 to 14 minutes to each lowest configuration.
UNIT_SUITE_ON = (PYTHONS[0], "lowest")
# Strict nbval on the numpy-strict backend (LORA_NP_BACKEND=numpy-strict), whose arrays refuse
# silent conversion to host NumPy as CuPy's do: every notebook safe on a GPU, proven on a CPU,
# and its outputs still the stored ones (the backend is NumPy underneath; only the line that
# names the backend differs, masked by STRICT_SANITIZE). One execution of the course instead of
# two (this configuration's and tools/run_strict_course.py's); the plain backend on the newest
# releases is proven by make test (3.11) and 3.12-newest, on 3.13 by 3.13-lowest. Where
# 3.13-newest repeats other configurations (repeated_pairs), the check moves to the newest
# releases on another Python (strict_configuration).
STRICT_ON = (PYTHONS[-1], "newest")
STRICT_SANITIZE = """
[strict_backend_name]
regex: backend: numpy-strict
replace: backend: numpy
"""


def suites(version: str, resolution: str, strict_on=STRICT_ON) -> tuple[str, ...]:
    """What one configuration runs: strict nbval ("nbval", or "nbval-strict" on ``strict_on``,
    on the numpy-strict backend), and "unit" on UNIT_SUITE_ON."""
    nbval = "nbval-strict" if (version, resolution) == strict_on else "nbval"
    return ("unit", nbval) if (version, resolution) == UNIT_SUITE_ON else (nbval,)


def sanitize_file(strict: bool) -> Path:
    """tools/nbval_sanitize.cfg, plus STRICT_SANITIZE on the numpy-strict backend (written
    under build/matrix/)."""
    base = ROOT / "tools" / "nbval_sanitize.cfg"
    if not strict:
        return base
    combined = BUILD / "nbval_sanitize_strict.cfg"
    combined.write_text(base.read_text() + STRICT_SANITIZE)
    return combined


def failure_excerpt(log_path: Path, limit: int = 80) -> str:
    """What pytest said about the first failures (CI prints only stdout, not the log file)."""
    lines = log_path.read_text(errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if "= FAILURES =" in line), None)
    summary = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    body = lines[start : start + limit] if start is not None else lines[-limit:]
    return "\n".join(["    " + line for line in body + ["..."] + summary])


def prepare(uv: str, wheel: Path, python: str, version: str, resolution: str) -> str | None:
    """Build one configuration's environment: None, or why it could not be built. Downloads
    and file copies, little CPU: main() builds every environment at once, in threads, while
    the first configurations are tested."""
    name = f"py{version}-{resolution}"
    venv = BUILD / name
    shutil.rmtree(venv, ignore_errors=True)
    log_path = BUILD / f"{name}.log"
    with open(log_path, "w") as log:
        if run([uv, "venv", "--quiet", "--python", python, str(venv)], log):
            return f"could not create the environment (see {log_path})"
        venv_python = str(venv / "bin" / "python")
        install = [uv, "pip", "install", "--python", venv_python, f"{wheel}[dev]"]
        if resolution == "lowest":
            # Our own requirements named on the command line become "direct", so uv takes the
            # lowest release of each that has a wheel here; their dependencies stay newest.
            install += declared_requirements()
            install += ["--resolution", "lowest-direct", "--only-binary", ":all:"]
        if run(install, log):
            return f"install failed (see {log_path})"
    return None


def strict_configuration(chosen: list[tuple[str, str]]) -> tuple[str, str] | None:
    """Which of the ``chosen`` (version, resolution) runs on numpy-strict: STRICT_ON, or where
    it does not run, the newest Python's configuration with the newest releases (else the
    newest Python's lowest), so that the check never silently goes."""
    if not chosen or STRICT_ON in chosen:
        return STRICT_ON if chosen else None
    return max(chosen, key=lambda c: (c[1] == "newest", PYTHONS.index(c[0])))


def test_configuration(version: str, resolution: str, strict_on=STRICT_ON) -> tuple[str, str]:
    """Test the course in one environment that prepare() built: (status, detail)."""
    name = f"py{version}-{resolution}"
    venv = BUILD / name
    log_path = BUILD / f"{name}.log"
    with open(log_path, "a") as log:
        venv_python = str(venv / "bin" / "python")
        versions = subprocess.run(
            [
                venv_python,
                "-c",
                "import numpy, matplotlib; print(numpy.__version__, matplotlib.__version__)",
            ],
            capture_output=True,
            text=True,
            cwd="/",  # the installed package, not the source tree
        ).stdout.split()
        env = run_environment(BUILD / "figures" / name)
        pytest = [venv_python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        pytest += ["-n", str(WORKERS), "--dist", "loadfile"]
        # The unit tests where old releases could break the library; `make test` already ran
        # them on the newest, so the newest runs spend their time on the notebooks alone. The
        # student edition's full execution is left to `make test` (minutes, and no library
        # behaviour it checks depends on the releases), and so are the tests that rerun an
        # experiment with a deliberate change to show that the rerun tests catch it (their
        # tolerances are measured across BLAS kernels, not releases).
        marks = "not crosscheck and not gpu and not sensitivity and not solved_edition"
        unit = ["tests", "-m", marks, "-k", "not student_edition_runs"]
        if "unit" in suites(version, resolution, strict_on) and run(pytest + unit, log, env):
            return "FAILED", f"unit tests failed (see {log_path})"
        strict = "nbval-strict" in suites(version, resolution, strict_on)
        nbval = pytest + [
            "--nbval",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(sanitize_file(strict)),
            "--nbval-cell-timeout",
            str(CELL_TIMEOUT_S),
            "notebooks",
        ]
        if strict:
            env = run_environment(BUILD / "figures" / name, backend="numpy-strict")
        if run(nbval, log, env):
            backend = " on the numpy-strict backend" if strict else ""
            return "FAILED", f"strict nbval{backend} failed (see {log_path})"
    detail = f"numpy {versions[0]}, matplotlib {versions[1]}" if len(versions) == 2 else ""
    return "ok", detail + (", numpy-strict backend" if strict else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", help="e.g. 3.11-newest 3.13-lowest (default: all)")
    args = parser.parse_args(argv)
    wanted = args.configs or [f"{p}-{r}" for p in PYTHONS for r in RESOLUTIONS]
    for config in wanted:
        version, _, resolution = config.partition("-")
        if version not in PYTHONS or resolution not in RESOLUTIONS:
            parser.error(
                f"unknown configuration {config!r}; expected <3.11|3.12|3.13>-<newest|lowest>"
            )
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(uv).exists():
        print("uv is not installed: run `make test-matrix`, which installs it", file=sys.stderr)
        return 1
    BUILD.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(uv)
    rows, failed, chosen = [], False, {}
    for config in wanted:
        version, _, resolution = config.partition("-")
        python = find_python(version)
        if python is None:
            print(f"skip {config}: no Python {version} found (looked on PATH and in pyenv)")
            rows.append((config, "skipped", f"no Python {version} here"))
            continue
        repeated = None if args.configs else repeats_make_test(uv, version, resolution)
        if repeated:
            print(f"skip {config}: repeats make test ({repeated})")
            rows.append((config, "skipped", "repeats make test"))
            continue
        chosen[config] = (python, version, resolution)
    if not args.configs:  # named configurations run as asked
        pins = {(v, r): course_releases(resolve(uv, py, r)) for py, v, r in chosen.values()}
        for (version, resolution), why in repeated_pairs(pins).items():
            config = f"{version}-{resolution}"
            print(f"skip {config}: repeats other configurations ({why})")
            rows.append((config, "skipped", f"repeats others: {why}"))
            del chosen[config]
    strict_on = strict_configuration([(v, r) for _, v, r in chosen.values()])
    pool = ThreadPoolExecutor(max_workers=max(1, len(chosen)))
    built = {c: pool.submit(prepare, uv, wheel, *job) for c, job in chosen.items()}
    for config, (python, version, resolution) in chosen.items():
        print(f"{config}: {python} ...", flush=True)
        start = time.perf_counter()
        problem = built[config].result()
        if problem:
            status, detail = "FAILED", problem
        else:
            status, detail = test_configuration(version, resolution, strict_on)
        seconds = time.perf_counter() - start
        print(f"  {status} in {seconds:.0f} s  {detail}", flush=True)
        if status == "FAILED":
            print(failure_excerpt(BUILD / f"py{version}-{resolution}.log"), flush=True)
        rows.append((config, status, f"{seconds:.0f} s  {detail}"))
        failed |= status == "FAILED"
    pool.shutdown()
    print()
    order = {config: i for i, config in enumerate(wanted)}
    for config, status, detail in sorted(rows, key=lambda row: order[row[0]]):
        print(f"{config:<14} {status:<8} {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
