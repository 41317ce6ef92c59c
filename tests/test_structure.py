"""The package layout stays readable (docs/architecture.md): no import cycles (not even inside functions), no
module over 600 lines, no function over 80, and a config that stands alone."""
import ast
import subprocess
import sys
import typing
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


def test_no_function_is_longer_than_80_lines():
    long = {}
    for name, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long, long


def test_importing_the_config_loads_no_torch_and_nothing_it_configures():
    code = ("import sys, jepa.config; from jepa.config import load_config; load_config(None); "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jepa', 'jepa_kernels'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    loaded = set(out.split())
    outside = {m for m in loaded if m not in ("jepa", "jepa.errors") and not m.startswith("jepa.config")}
    assert "jepa.config.schema" in loaded and not outside, sorted(outside)


def test_the_config_imports_only_itself_and_the_errors_and_the_kernels_no_jepa():
    modules = project_modules()
    for name, path in modules.items():
        deps = imports_of(path, set(modules))
        if name.startswith("jepa.config"):
            assert all(d.startswith("jepa.config") or d in ("jepa", "jepa.errors") for d in deps), (name, deps)
        if name.startswith("jepa_kernels"):
            assert not any(d.split(".")[0] == "jepa" for d in deps), (name, deps)


def test_the_kernels_offer_the_backends_the_config_allows():
    """jepa_kernels keeps its own Literal (it never imports jepa); the two must list the same choices."""
    from jepa.config.choices import KernelsBackend
    from jepa_kernels.dispatch import KernelsBackend as KernelsOwn
    assert typing.get_args(KernelsBackend) == typing.get_args(KernelsOwn)


def test_config_choices_are_defined_only_in_the_config():
    """A ``Name = Literal[...]`` outside jepa/config listing a config field's choices is a second owner of them
    (jepa_kernels excepted: it never imports jepa)."""
    import jepa.config.choices as choices
    owned = {typing.get_args(v) for v in vars(choices).values() if typing.get_origin(v) is typing.Literal}
    found = []
    for name, path in project_modules().items():
        if name.startswith(("jepa.config", "jepa_kernels")):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Subscript) \
                    and getattr(node.value.value, "id", None) == "Literal":
                args = ast.literal_eval(node.value.slice)
                if (args if isinstance(args, tuple) else (args,)) in owned:
                    found.append(f"{name}.{node.targets[0].id}")
    assert not found, found


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
