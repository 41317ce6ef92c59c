"""Profiler traces of real training steps carry every phase label; phase timing and op counting are exact."""
import json

import pytest
import torch

import jepa.cpu as cpu
import jepa.profiling as profiling
from jepa.config import load_config
from jepa.profiling import PHASES, PhaseTimer, top_level_aten_ops
from jepa.train import Trainer, main

from small_config import SMALL_BASE

SMALL = {**SMALL_BASE, "model.depth": "1", "data.batch_size": "16", "data.subset": "128", "optim.warmup_epochs": "0.5",
         "profiling.wait": "1", "profiling.warmup": "1", "profiling.active": "2"}


def trace_names(run_dir):
    traces = list((run_dir / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1, list((run_dir / "profile").iterdir()) if (run_dir / "profile").exists() else "no dir"
    events = json.loads(traces[0].read_text())["traceEvents"]
    return {e.get("name") for e in events}


def test_profile_flag_writes_a_trace_with_every_phase_label(tmp_path):
    cfg = load_config(None, {**SMALL, "training.stop_at_step": "5"})
    Trainer(cfg, run_dir=tmp_path, profile=True).train()
    names = trace_names(tmp_path)
    missing = [p for p in PHASES if p not in names]
    assert not missing, f"labels missing from the trace: {missing}"
    assert any(n and n.startswith("aten::mm") or n == "aten::addmm" for n in names)


def test_profiling_config_key_and_cli(tmp_path):
    code = main(["--training.stop_at_step", "4", "--run-dir", str(tmp_path), "--profiling.enabled", "true",
                 *[a for k, v in SMALL.items() for a in (f"--{k}", v)]])
    assert code == 0
    assert {"target_forward", "backward", "ema"} <= trace_names(tmp_path)


def test_phase_timer_is_exclusive_of_nested_phases(monkeypatch):
    clock = iter([0.0, 1.0, 4.0, 10.0, 20.0, 22.0])  # outer opens, inner 1..4, inner 10..20, outer closes at 22
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(clock))
    timer = PhaseTimer("cpu")
    with timer.range("outer"):
        with timer.range("inner"):
            pass
        with timer.range("inner"):
            pass
    assert dict(timer.totals) == {"inner": 13.0, "outer": 22.0 - 13.0}


def test_phase_timer_patch_restores_and_keeps_trace_labels():
    import jepa.data.batches as data_module
    original = data_module.record_function
    timer = PhaseTimer("cpu")
    with torch.profiler.profile() as prof:
        with timer.patch(data_module):
            assert data_module.record_function == timer.range
            with data_module.record_function("masks"):
                torch.ones(3).sum()
    assert data_module.record_function is original
    assert timer.totals["masks"] > 0
    assert "masks" in {e.name for e in prof.events()}


def test_top_level_aten_ops_counts_only_outermost_calls():
    x, w, b = torch.randn(4, 3), torch.randn(5, 3), torch.randn(5)
    with torch.profiler.profile() as prof:
        torch.nn.functional.linear(x, w, b)  # aten::linear -> aten::t, aten::addmm, ...: one top-level op
        x.sum()
        with torch.profiler.record_function("label"):
            x.mul(2)
    assert top_level_aten_ops(prof.events()) == 3


@pytest.mark.parametrize("env", ["0", "1"])
def test_allocator_tuning_switch(monkeypatch, env):
    monkeypatch.setattr(cpu, "_allocator_tuned", None)
    monkeypatch.setenv("JEPA_TUNE_MALLOC", env)
    applied = cpu.tune_cpu_allocator()
    assert applied is (env == "1" and cpu.sys.platform.startswith("linux"))
    assert cpu.tune_cpu_allocator() is applied  # once per process
