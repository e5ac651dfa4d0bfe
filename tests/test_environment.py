"""The project's own setup: environment.yml agrees with pyproject.toml, notebooks are numbered."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# conda-forge and PyPI spell a few packages differently; map the conda name to the pip name.
CONDA_TO_PIP = {
    "matplotlib-base": "matplotlib",  # conda-forge's matplotlib without the Qt GUI backends
    "pytorch": "torch",  # conda-forge calls the torch package "pytorch"
    "cupy": "cupy-cuda12x",  # PyPI ships one CuPy wheel per CUDA major, conda-forge one package
}

# Entries of environment.yml that are not Python dependencies of the package.
CONDA_ONLY = {"python", "pip"}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def normalise(requirement: str) -> str:
    """The package name in a pip or conda requirement, lowercased, with `_` and `.` as `-`."""
    match = _NAME.match(requirement.strip())
    if match is None:
        raise ValueError(f"cannot read a package name from {requirement!r}")
    return re.sub(r"[_.]+", "-", match.group(0).lower())


def pyproject_requirements() -> dict[str, str]:
    """Runtime and [dev] requirements of pyproject.toml: {normalised name: original line}."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {normalise(line): line for line in lines}


def environment_requirements() -> dict[str, str]:
    """Conda and pip entries of environment.yml: {normalised pip name: original line}."""
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    found: dict[str, str] = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):  # the `pip:` section
            for line in entry.get("pip", []):
                if not line.startswith("-"):  # `-e .` installs the package itself
                    found[normalise(line)] = line
            continue
        name = normalise(entry)
        if name not in CONDA_ONLY:
            found[CONDA_TO_PIP.get(name, name)] = entry
    return found


def test_environment_yml_lists_every_pyproject_dependency():
    missing = sorted(set(pyproject_requirements()) - set(environment_requirements()))
    assert not missing, (
        f"pyproject.toml needs {missing} but environment.yml does not list them; "
        "add them to environment.yml (or to CONDA_TO_PIP if conda spells them differently)"
    )


def test_environment_yml_lists_nothing_pyproject_lacks():
    env = environment_requirements()
    extra = sorted(set(env) - set(pyproject_requirements()))
    assert not extra, (
        f"environment.yml lists {[env[name] for name in extra]} which pyproject.toml's runtime "
        "and [dev] dependencies do not; add them to pyproject.toml or remove them"
    )


def test_environment_yml_installs_the_package_itself():
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lines = [
        line
        for entry in env["dependencies"]
        if isinstance(entry, dict)
        for line in entry.get("pip", [])
    ]
    assert "-e ." in pip_lines, "environment.yml should end with `pip: [-e .]` to install lora_np"


NOTEBOOK_NAME = re.compile(r"(\d\d)_[a-z0-9]+(?:_[a-z0-9]+)*\.ipynb")


def test_notebooks_are_named_and_numbered_in_order():
    folder = ROOT / "notebooks"
    notebooks = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
    if not notebooks:
        pytest.skip("notebooks/ holds no notebook yet")
    badly_named = [path.name for path in notebooks if not NOTEBOOK_NAME.fullmatch(path.name)]
    assert not badly_named, f"notebooks must be named NN_topic.ipynb (lowercase): {badly_named}"
    numbers = [int(NOTEBOOK_NAME.fullmatch(path.name).group(1)) for path in notebooks]
    expected = list(range(len(notebooks)))
    assert numbers == expected, (
        f"notebook numbers must run 00, 01, ... without gaps or repeats; found "
        f"{[path.name for path in notebooks]}"
    )


@pytest.mark.crosscheck
def test_crosscheck_environment_has_the_pinned_torch(torch):
    """`make crosscheck` runs against exactly the torch that pyproject's [crosscheck] pins."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    pins = [line for line in extras["crosscheck"] if normalise(line) == "torch"]
    assert pins, "pyproject.toml's [crosscheck] extra should pin torch"
    pinned = pins[0].split("==", 1)[1]
    installed = torch.__version__.split("+", 1)[0]  # "2.13.0+cpu" -> "2.13.0"
    assert installed == pinned, (
        f"torch {torch.__version__} is installed; [crosscheck] pins {pinned}"
    )


CLOCKS = {"perf_counter", "process_time", "time", "monotonic", "timeit", "perf_counter_ns"}


def clock_derived_asserts(source: str) -> list[str]:
    """The assert statements of a cell that read a value computed from a clock: names assigned
    from a clock call, from a function whose body reads a clock, or from such names (a small
    taint analysis over the cell's syntax tree, repeated until nothing new is tainted)."""

    tree = ast.parse("\n".join(line for line in source.splitlines() if line[:1] not in "%!"))

    def names_in(node) -> set[str]:
        found = set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                found.add(sub.id)
            elif isinstance(sub, ast.Attribute):
                found.add(sub.attr)
        return found

    tainted = set(CLOCKS)
    while True:
        before = len(tainted)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.Lambda)) and names_in(node) & tainted:
                if isinstance(node, ast.FunctionDef):
                    tainted.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value:
                if names_in(node.value) & tainted:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        tainted |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                # times[name].append(clock() - started) taints `times`
                if set().union(*map(names_in, node.args)) & tainted:
                    tainted |= {n.id for n in ast.walk(node.func.value) if isinstance(n, ast.Name)}
        if len(tainted) == before:
            break
    return [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assert) and names_in(node) & tainted
    ]


def test_the_clock_analysis_finds_a_timing_assert():
    cell = "import time\ndef sec(f):\n    s = time.process_time()\n    f()\n    return time.process_time() - s\nt = min(sec(print) for _ in range(3))\nratio = t / 2\nassert ratio < 1.0\nassert 2 > 1\n"
    assert clock_derived_asserts(cell) == ["assert ratio < 1.0"]


def test_no_notebook_asserts_on_a_clock():
    """Times are shown to the learner, never asserted: a timing assert fails on a busy machine
    (it did, in CI's matrix). Speed is measured in benchmarks/, as ratios in one run."""
    import nbformat

    timed_asserts = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        for index, cell in enumerate(cells):
            timed_asserts += [
                f"{path.name} code cell {index}: {a}" for a in clock_derived_asserts(cell.source)
            ]
    assert not timed_asserts, f"an assert reads a clock: {timed_asserts}"


# ------------------------------------------------------------- BLAS variables are never changed

# Spelled in two halves so that this file does not find itself.
BLAS_VARIABLES = ("OPENBLAS_" + "CORETYPE", "OPENBLAS_" + "L2_SIZE")


def _test_matrix():
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import test_matrix
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return test_matrix


def test_the_matrix_passes_the_blas_variables_on_unchanged(monkeypatch, tmp_path):
    """Some processors set them because older OpenBLAS builds compute wrong results or crash
    without them; the matrix's environments keep them exactly as the machine sets them."""
    test_matrix = _test_matrix()
    monkeypatch.setenv(BLAS_VARIABLES[0], "Haswell")
    monkeypatch.setenv(BLAS_VARIABLES[1], "1048576")
    env = test_matrix.run_environment(tmp_path)
    assert env[BLAS_VARIABLES[0]] == "Haswell" and env[BLAS_VARIABLES[1]] == "1048576"
    assert env["LORA_NP_FIGURE_DIR"] == str(tmp_path)
    monkeypatch.delenv(BLAS_VARIABLES[0])
    assert BLAS_VARIABLES[0] not in test_matrix.run_environment(tmp_path)  # nor sets one


def test_the_matrix_runs_the_unit_suite_once_and_strict_nbval_everywhere():
    """The unit suite proves the library against old releases: once, on the lowest releases
    of the oldest Python (make test runs it on the newest); every configuration runs strict
    nbval, which is what differs between Pythons and releases for a learner."""
    test_matrix = _test_matrix()
    configs = [(p, r) for p in test_matrix.PYTHONS for r in test_matrix.RESOLUTIONS]
    suites = {c: test_matrix.suites(*c) for c in configs}
    assert all(s[-1] in ("nbval", "nbval-strict") for s in suites.values()), suites
    unit = [c for c, s in suites.items() if "unit" in s]
    assert unit == [(test_matrix.PYTHONS[0], "lowest")], unit
    strict = [c for c, s in suites.items() if "nbval-strict" in s]
    assert strict == [(test_matrix.PYTHONS[-1], "newest")], strict


def test_the_strict_check_moves_to_the_newest_python_found():
    test_matrix = _test_matrix()
    everything = [(p, r) for p in test_matrix.PYTHONS for r in test_matrix.RESOLUTIONS]
    assert test_matrix.strict_configuration(everything) == test_matrix.STRICT_ON
    assert test_matrix.strict_configuration([("3.11", "lowest"), ("3.12", "newest")]) == (
        "3.12",
        "newest",
    )
    assert test_matrix.strict_configuration([("3.11", "lowest"), ("3.12", "lowest")]) == (
        "3.12",
        "lowest",
    )
    assert test_matrix.strict_configuration([("3.12", "newest"), ("3.13", "lowest")]) == (
        "3.12",
        "newest",
    )  # the newest releases first: a Python's lowest ones are the oldest we allow
    assert test_matrix.strict_configuration([]) is None


def test_a_configuration_runs_unless_its_python_and_its_releases_both_run_elsewhere():
    test_matrix = _test_matrix()
    old, new = frozenset({("numpy", "2.0.0")}), frozenset({("numpy", "2.5.5")})
    pins = {
        ("3.11", "lowest"): old,
        ("3.12", "newest"): new,
        ("3.12", "lowest"): old,  # 3.11-lowest's releases, and 3.12 runs in 3.12-newest
        ("3.13", "newest"): new,  # 3.12-newest's releases, and 3.13 runs in 3.13-lowest
        ("3.13", "lowest"): frozenset({("numpy", "2.1.0")}),
    }
    dropped = test_matrix.repeated_pairs(pins)
    assert set(dropped) == {("3.12", "lowest"), ("3.13", "newest")}, dropped
    assert "3.11-lowest" in dropped[("3.12", "lowest")]
    # every Python and every set of releases still runs
    kept = {c: p for c, p in pins.items() if c not in dropped}
    assert {c[0] for c in kept} == {"3.11", "3.12", "3.13"}
    assert set(kept.values()) == set(pins.values())
    # the unit suite's configuration always runs; unknown releases (None) always run
    pins[("3.11", "newest")] = old
    assert ("3.11", "lowest") not in test_matrix.repeated_pairs(pins)
    pins[("3.12", "lowest")] = None
    assert ("3.12", "lowest") not in test_matrix.repeated_pairs(pins)
    # releases that only the unit suite uses do not make a configuration new
    with_yaml = frozenset({("numpy", "2.0.0"), ("pyyaml", "6.0.1")})
    assert test_matrix.course_releases(with_yaml) == old


def test_the_strict_configuration_masks_only_the_line_that_names_the_backend(tmp_path, monkeypatch):
    """On numpy-strict the outputs must be the stored ones but for `backend: numpy-strict`."""
    import configparser
    import re

    test_matrix = _test_matrix()
    monkeypatch.setattr(test_matrix, "BUILD", tmp_path)
    assert test_matrix.sanitize_file(False) == ROOT / "tools" / "nbval_sanitize.cfg"
    rules = configparser.RawConfigParser()
    rules.read(test_matrix.sanitize_file(True))
    base = configparser.RawConfigParser()
    base.read(ROOT / "tools" / "nbval_sanitize.cfg")
    assert set(rules.sections()) - set(base.sections()) == {"strict_backend_name"}

    def masked(text):
        for section in rules.sections():
            text = re.sub(rules[section]["regex"], rules[section]["replace"], text)
        return text

    assert masked("backend: numpy-strict\n") == masked("backend: numpy\n")
    assert masked("backend: cupy\n") != masked("backend: numpy\n")
    assert masked("loss 0.125 on numpy-strict arrays") == "loss 0.125 on numpy-strict arrays"
    env = test_matrix.run_environment(tmp_path, backend="numpy-strict")
    assert env["LORA_NP_BACKEND"] == "numpy-strict"


def test_the_matrix_builds_every_environment_before_testing_and_reports_a_failed_build(
    monkeypatch, tmp_path, capsys
):
    """Environments are built at once (downloads), configurations tested one at a time (CPU);
    a build that fails is a failed configuration, and the others are still tested."""
    test_matrix = _test_matrix()
    events = []

    def prepare(uv, wheel, python, version, resolution):
        events.append(("built", version, resolution))
        return "install failed (see log)" if version == "3.12" else None

    def test_configuration(version, resolution, strict_on):
        events.append(("tested", version, resolution))
        return "ok", ""

    monkeypatch.setattr(test_matrix, "BUILD", tmp_path)
    monkeypatch.setattr(test_matrix.shutil, "which", lambda name: "/bin/true")
    monkeypatch.setattr(test_matrix, "build_wheel", lambda uv: tmp_path / "x.whl")
    monkeypatch.setattr(test_matrix, "find_python", lambda version: f"/py{version}")
    monkeypatch.setattr(test_matrix, "prepare", prepare)
    monkeypatch.setattr(test_matrix, "test_configuration", test_configuration)
    monkeypatch.setattr(test_matrix, "failure_excerpt", lambda path: "")
    configs = ["3.11-lowest", "3.12-newest", "3.13-newest"]
    assert test_matrix.main(configs) == 1
    assert [e[0] for e in events] == ["built"] * 3 + ["tested"] * 2, events
    assert ("tested", "3.12", "newest") not in events
    table = capsys.readouterr().out.split("\n\n")[-1].splitlines()
    assert [line.split()[:2] for line in table] == [
        ["3.11-lowest", "ok"],
        ["3.12-newest", "FAILED"],
        ["3.13-newest", "ok"],
    ], table


def test_no_test_or_ci_step_names_a_blas_variable():
    """Tests and CI leave the BLAS variables alone: no test, CI script or test target names one
    in code (a comment or docstring may explain why; the Makefile's bench target may: it times,
    it does not test)."""
    files = [*(ROOT / "tests").rglob("*.py")]
    files += [ROOT / "tools" / name for name in ("test_matrix.py", "run_strict_course.py")]
    found = [
        f"{path.name}: {text!r}"
        for path in files
        if path != Path(__file__).resolve()
        for text in _code_strings(path.read_text())
        if _names_blas(text)
    ]
    shell = (ROOT / ".ci" / "run").read_text().splitlines()
    shell += (ROOT / "Makefile").read_text().split("\nbench:")[0].splitlines()
    found += [line.strip() for line in shell if _names_blas(line.split("#")[0])]
    assert not found, found


def _code_strings(source: str) -> list[str]:
    """The string constants of a Python file that are not docstrings (an environment variable
    can only be changed by naming it in a string: os.environ[...], env -u ...)."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def _names_blas(text: str) -> bool:
    return any(name in text for name in BLAS_VARIABLES) or "env -u" in text


def test_the_blas_scan_finds_a_change():
    assert _code_strings(f'"""{BLAS_VARIABLES[0]}"""\nos.environ.pop("x")') == ["x"]
    assert _names_blas(f"env = {{k: v for k in os.environ if k != '{BLAS_VARIABLES[0]}'}}")
    assert _names_blas("\tenv -u SOMETHING make test")
    assert not _names_blas("env = dict(os.environ)")
