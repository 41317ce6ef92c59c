"""bench/gpu_check.sh --smoke: the GPU check's own code path on CPU, so it is ready to run when a GPU is lent.

The suite runs a subset of the smoke run to stay fast (env, kernels, the eager step: ~1 minute on 2 cores);
the full smoke (also the kernel tests' subset, the compiled step and the bf16-residual step) is
``bash bench/gpu_check.sh --smoke`` (< 5 minutes).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_check(out: Path, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "JEPA_REAL_TRITON", "OUT")}
    env.update(OUT=str(out), PYTHON=sys.executable, PYTHONPATH=str(ROOT), **env_extra)
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=600)


def test_smoke_run_writes_the_results_layout(tmp_path):
    proc = run_check(tmp_path, JEPA_CHECK_STEPS="env kernels step-eager")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["env.txt", "kernels.json", "log.txt", "steps.jsonl", "summary.md"]  # flat, at most 8

    assert "torch:" in (tmp_path / "env.txt").read_text() and "triton:" in (tmp_path / "env.txt").read_text()
    kernels = json.loads((tmp_path / "kernels.json").read_text())
    checks = kernels["correctness"]
    assert {c["dtype"] for c in checks} == {"float32", "float16"} and len(checks) >= 16
    assert all(c["ok"] and c["rel_err"] <= c["tol"] for c in checks), [c for c in checks if not c["ok"]]
    rows = kernels["bandwidth"]["rows"]
    ops = {r["op"] for r in rows}
    assert any(op.startswith("gather fwd") for op in ops) and any(op.startswith("EMA") for op in ops)
    assert any(op.startswith("target loss fused") for op in ops) and any(op.startswith("gather bwd") for op in ops)
    for op in ops:  # every op timed on both paths (the deterministic row pass is Triton's alone)
        assert {r["impl"] for r in rows if r["op"] == op} == ({"triton"} if "deterministic" in op else {"triton", "torch"})
    assert all(r["us"] > 0 and r["bytes"] > 0 for r in rows)

    (step,) = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert step["variant"] == "eager" and step["images_per_s"] > 0 and 0 < step["mfu"]
    assert step["settings"]["precision"] == "bfloat16" and step["peak_mem_bytes"] > 0

    log = (tmp_path / "log.txt").read_text()
    for name in ("env", "kernels", "step eager"):
        assert f"== {name}: ok in" in log
    assert "== tests: not selected (JEPA_CHECK_STEPS) ==" in log
    summary = (tmp_path / "summary.md").read_text()
    for heading in ("# GPU check", "### Steps", "### Kernels on", "### Targets", "training step"):
        assert heading in summary
    assert "| gather fwd, one mask | float32 |" in summary and "| eager |" in summary


def test_steps_past_the_budget_are_skipped_and_reported(tmp_path):
    proc = run_check(tmp_path, JEPA_CHECK_BUDGET="10")
    assert proc.returncode == 1  # an incomplete check is not a passing one
    log = (tmp_path / "log.txt").read_text()
    for name in ("env", "kernels", "tests", "step eager", "step compiled", "step residual-bf16"):
        assert f"== {name}: skipped" in log
    assert "### Steps" in (tmp_path / "summary.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "summary.md"]
