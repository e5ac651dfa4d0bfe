"""The library's shape: imports point one way (no cycle, not even inside a function)."""

import ast
from pathlib import Path

import lora_np as ln

PACKAGE = Path(ln.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set:
    """Every lora_np module ``path`` imports, at any depth of the file (functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lora_np")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("lora_np"):
                continue
            found.add(module)
            for alias in node.names:  # `from . import nn` imports the module lora_np.nn
                candidate = f"{module}.{alias.name}"
                if _exists(candidate):
                    found.add(candidate)
    return {m for m in found if m != name}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _graph() -> dict:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        graph[_module_name(path)] = _imports(path)
    return graph


def _cycle(graph: dict):
    """One import cycle as a list of modules, or None. A package's __init__ importing its own
    submodules is how a package re-exports, so edges from a package to its children are
    ignored (a child importing its package back still counts)."""
    edges = {
        m: {t for t in targets if not t.startswith(m + ".") and t in graph}
        for m, targets in graph.items()
    }
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                return stack[stack.index(t) :] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_inside_lora_np_counting_imports_inside_functions():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_scan_sees_imports_inside_functions(tmp_path):
    graph = _graph()
    assert "lora_np.autograd" in graph["lora_np.functional"]
    assert "lora_np.functional" not in graph["lora_np.autograd"]
    assert "lora_np.serialization" in graph["lora_np.lora.peft_format"]


def test_no_module_is_over_500_lines():
    long = {
        _module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert not long, long


def test_every_public_name_of_the_design_is_in_lora():
    for name in (
        "LoRALinear",
        "inject",
        "mark_only_lora_as_trainable",
        "add_adapter",
        "set_adapter",
        "disable_adapters",
        "delete_adapter",
        "save_adapter",
        "load_adapter",
        "combine_adapters",
        "merge_and_unload",
        "unload",
        "lora_layers",
        "find_targets",
        "INITS",
    ):
        assert hasattr(ln.lora, name), name
