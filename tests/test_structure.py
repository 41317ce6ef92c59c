"""The package layout stays readable: no import cycles (not even inside functions), no module over 600 lines."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jepa", "jepa_kernels")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Project modules that ``path`` imports anywhere in its body (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def test_no_module_imports_one_that_imports_it_back():
    modules = project_modules()
    graph = {name: imports_of(path, set(modules)) for name, path in modules.items()}
    # a package's __init__ re-exporting its own submodules is not a cycle of concepts
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    cycles = []

    def visit(node, stack, seen):
        for dep in sorted(graph[node]):
            if dep in stack:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in seen:
                seen.add(dep)
                visit(dep, stack + [dep], seen)
    for start in sorted(graph):
        visit(start, [start], {start})
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_no_module_is_longer_than_600_lines():
    long = {name: n for name, path in project_modules().items() if (n := len(path.read_text().splitlines())) > 600}
    assert not long, long


def test_top_level_import_names_are_ours_alone():
    """``kernels`` is Hugging Face's package (transformers needs it): no folder of ours may shadow it."""
    tops = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert tops == set(PACKAGES), tops
    assert not (ROOT / "kernels").exists() and not (ROOT / "tests" / "kernels").exists()
    setup = (ROOT / "setup.py").read_text()
    assert 'name="jepa-trainer"' in setup and '"kernels.*"' not in setup


def test_every_console_script_names_a_main_that_exists():
    """setup.py's ``jepa-NAME=jepa.NAME:main`` entry points survive a module becoming a package."""
    import importlib
    import re
    clis = re.search(r"CLIS = \(([^)]*)\)", (ROOT / "setup.py").read_text()).group(1)
    names = re.findall(r'"(\w+)"', clis)
    assert "eval" in names and "train" in names
    for name in names:
        assert callable(getattr(importlib.import_module(f"jepa.{name}"), "main", None)), f"jepa.{name}:main"
