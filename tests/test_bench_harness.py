"""bench/harness.py: every bench script goes through it, its records are JSON + markdown with the machine line,
its timer returns ordered, positive seconds."""
import ast
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import harness  # noqa: E402

BENCH = ROOT / "bench"
LIBRARIES = {"harness.py", "reference_code_step.py", "conftest.py", "recipe_plot.py"}
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name not in LIBRARIES and not p.name.startswith("bench_kernel_"))


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module ``tree`` imports, ``from bench import harness`` counted as ``bench.harness``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def names_used(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
           {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}


def test_the_script_list_is_what_bench_holds():
    names = {p.name for p in SCRIPTS}
    assert {"throughput.py", "vs_official.py", "loader.py", "gpu_check.py", "bench_attention.py"} <= names
    assert len(names) >= 12, names


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_script_uses_the_harness_and_no_parser_or_writer_of_its_own(path):
    tree = ast.parse(path.read_text())
    modules = imported_modules(tree)
    assert "bench.harness" in modules, f"{path.name} does not import bench.harness"
    assert "argparse" not in modules and "ArgumentParser" not in names_used(tree), path.name
    assert "jepa.io" not in modules and "atomic_write_text" not in names_used(tree), \
        f"{path.name} writes files itself: records go through harness.write_record/write_json/write_text"


def test_the_kernel_benchmarks_get_the_harness_through_their_conftest():
    assert "bench.harness" in imported_modules(ast.parse((BENCH / "conftest.py").read_text()))
    for path in BENCH.glob("bench_kernel_*.py"):
        assert "argparse" not in imported_modules(ast.parse(path.read_text())), path.name


def test_one_matmul_peak_and_one_machine_reader_in_bench():
    for path in BENCH.glob("*.py"):
        if path.name == "harness.py":
            continue
        text = path.read_text()
        assert "def matmul_peak" not in text and "/proc/cpuinfo" not in text and "def device_name" not in text, \
            path.name


def test_record_is_json_and_markdown_side_by_side_with_the_machine_line(tmp_path, monkeypatch, capsys):
    written = []
    real = harness.atomic_write_text
    monkeypatch.setattr(harness, "atomic_write_text", lambda path, text: written.append(Path(path)) or real(path, text))
    out = tmp_path / "deep" / "run.json"
    harness.write_record(out, {"images_per_s": 12.5}, "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert written == [out, out.with_suffix(".md")]  # both through the atomic writer
    record = json.loads(out.read_text())
    line = harness.machine()
    assert record == {"images_per_s": 12.5, "machine": line}
    md = out.with_suffix(".md").read_text()
    assert md.startswith("# Title\n") and md.endswith(f"\n\nMachine: {line}\n")
    assert f"torch {torch.__version__}" in line and f"{torch.get_num_threads()} threads" in line
    assert md in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.tmp*")), "a temporary file was left behind"


def test_record_keeps_a_given_machine_and_prints_only_without_out(tmp_path, capsys):
    result = harness.write_record(None, {"machine": "the lab box"}, "text", echo=True)
    assert result["machine"] == "the lab box" and "Machine: the lab box" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    harness.write_record(tmp_path / "r.md", {}, "x", echo=False)  # a .md path still gets its JSON beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]


def test_timer_rounds_are_positive_and_ordered():
    x = torch.randn(128, 128)
    calls = []
    timing = harness.time_calls(lambda: calls.append(x @ x), 5, warmup=2, calls=3, device="cpu")
    assert len(calls) == 2 + 5 * 3 and len(timing.seconds) == 5
    assert all(s > 0 for s in timing.seconds)
    assert 0 < timing.best <= timing.median <= max(timing.seconds)
    assert timing.best <= timing.mean <= max(timing.seconds)
    assert timing.best <= timing.quantile(0.95) <= max(timing.seconds) and timing.quantile(0.0) == timing.best
    with pytest.raises(ValueError, match="reps and calls must be >= 1"):
        harness.time_calls(lambda: None, 0)


def test_matmul_peak_is_a_positive_flop_rate():
    assert harness.matmul_peak("cpu", torch.float32, n=64, reps=2) > 0


def test_common_flags_parse_check_and_apply(monkeypatch):
    p = harness.parser("A tool.\n\nMore.")
    harness.add_timing(p, reps=20, warmup=3, flags=("--steps", "--reps"))
    harness.add_threads(p)
    harness.add_out(p)
    harness.add_device(p)
    assert p.description == "A tool."
    set_threads = []
    monkeypatch.setattr(torch, "set_num_threads", set_threads.append)
    args = harness.parse(p, ["--reps", "7", "--threads", "3", "--out", "x.json"])
    assert (args.reps, args.warmup, args.out, args.device, set_threads) == (7, 3, "x.json", "cpu", [3])
    args, rest = harness.parse(p, ["--steps", "2", "--model.depth", "4"], known=True)
    assert args.reps == 2 and rest == ["--model.depth", "4"]
    with pytest.raises(SystemExit):
        harness.parse(p, ["--steps", "0"])


def test_passthrough_and_results_dir():
    assert harness.split_passthrough(["--a", "1", "--", "--b", "2"]) == (["--a", "1"], ["--b", "2"])
    assert harness.split_passthrough(["--a"]) == (["--a"], [])
    folder = harness.results_dir("cpu")
    assert folder.parent == ROOT / "bench" / "results" and folder.name.startswith("cpu-") and " " not in folder.name
