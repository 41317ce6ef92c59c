"""bench/vs_official.py: the official script's record is read as written, and ratios use both official runs."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import vs_official  # noqa: E402

FAKE_OFFICIAL = '''
import json, sys
out = sys.argv[sys.argv.index("--out") + 1]
calls = __import__("pathlib").Path(sys.argv[0]).with_suffix(".count")
n = int(calls.read_text()) if calls.exists() else 0
calls.write_text(str(n + 1))
ips = [100.0, 140.0][n]
json.dump({"physical": {"matmul_peak_gflops": 200.0}, "environment": {"ijepa_commit": "abc"},
           "speed": {"num_workers_0": {"images_per_s": ips, "median_s_per_step": 128 / ips,
                                       "mfu_vs_matmul_peak": 0.5},
                     "flops_per_step_mean_timed_batches": 7.2e10,
                     "mask_tokens_timed_batches": {"context_mean": 7.0}}}, open(out, "w"))
'''


def test_rows_ratios_against_the_mean_of_both_official_runs(tmp_path, monkeypatch, capsys):
    script = tmp_path / "official.py"
    script.write_text(FAKE_OFFICIAL)
    seen = []

    def fake_ours(overrides, steps, threads):
        seen.append(overrides)
        return {"images_per_s": 180.0, "step_s_median": 128 / 180, "flops_per_step": 9.5e10, "mfu": 0.7,
                "peak_gflops": 210.0, "context_tokens_mean": 15.2, "phases": {}}
    monkeypatch.setattr(vs_official, "run_ours", fake_ours)
    monkeypatch.setenv("IJEPA_SRC", str(tmp_path))
    out = tmp_path / "res" / "vs.json"
    assert vs_official.main(["--official", str(script), "--out", str(out), "--bf16"]) == 0
    record = json.loads(out.read_text())
    labels = [(r["label"], r["precision"]) for r in record["rows"]]
    assert labels == [("official (before)", "fp32"), ("ours, eager", "fp32"), ("ours, compiled", "fp32"),
                      ("ours, eager", "bf16"), ("ours, compiled", "bf16"), ("official (after)", "fp32")]
    assert [r["images_per_s"] for r in record["rows"] if r["label"].startswith("official")] == [100.0, 140.0]
    assert record["official_images_per_s_mean"] == pytest.approx(120.0)
    assert "| ours, eager | fp32 | 180 | 1.50x |" in out.with_suffix(".md").read_text()
    assert seen[1] == {"training.precision": "fp32", "training.compile": "true"}


def test_a_failing_official_run_is_a_failed_row_not_a_crash(tmp_path, monkeypatch):
    script = tmp_path / "official.py"
    script.write_text("import sys; print('no IJEPA_SRC here', file=sys.stderr); sys.exit(3)")
    monkeypatch.setattr(vs_official, "run_ours", lambda *a: {"error": "skipped"})
    monkeypatch.setenv("IJEPA_SRC", str(tmp_path))
    out = tmp_path / "vs.json"
    assert vs_official.main(["--official", str(script), "--out", str(out), "--no-compiled"]) == 1
    md = out.with_suffix(".md").read_text()
    assert "failed: no IJEPA_SRC here" in md and "| ours, eager | fp32 | failed: skipped" in md


@pytest.mark.parametrize("flags, tag", [(["avx2", "fma"], "avx2"), (["avx2", "avx512f"], "avx512"),
                                        (["avx512f", "avx512_bf16"], "avx512bf16"),
                                        (["avx512f", "avx512_bf16", "amx_bf16"], "amx"), ([], "generic")])
def test_result_files_are_named_by_the_best_matrix_instructions(flags, tag):
    assert vs_official.matrix_tag(flags) == tag
