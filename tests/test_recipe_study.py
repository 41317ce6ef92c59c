"""bench/recipe_study.py and its plot (the table's statistics, resuming, ad-hoc rows, the picture); bench/cpu_processes.py."""
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import recipe_plot, recipe_study  # noqa: E402


def record(row, seed, linear, knn, epochs=None, threads=None, curve=None):
    curve = curve or [{"step": 10, "minutes": 1.0, "linear": linear, "knn": knn}]
    return {"row": row, "seed": seed, "epochs": epochs, "threads": threads, "overrides": ["--x", "1"],
            "train_seconds": 120.0 + seed * 60, "linear": linear, "knn": knn, "curve": curve, "run_dir": "r"}


def test_table_gives_mean_and_sample_std_over_seeds_and_marks_side_by_side_rows():
    recs = [record("default", 0, 0.79, 0.70), record("default", 1, 0.81, 0.74),
            record("vic", 0, 0.83, 0.80, epochs=2, threads=1),
            {"row": "baselines", "raw_pixels": {"linear": 0.844, "knn": 0.857}}]
    rows = dict(recipe_study.ROWS, vic=recipe_study.parse_override_row("vic=--loss.vicreg_weight 0.05")[1])
    text = recipe_study.table(recs, rows)
    line = next(x for x in text.splitlines() if x.startswith("| default |"))
    # seeds 0.79/0.81: mean 80.0, sample std sqrt(2 * 0.01^2 / 1) = 1.41 points; minutes (120 + 180) / 2 / 60
    assert "| 2 | 2.5 | 80.0 ± 1.4 | 72.0 ± 2.8 |" in line
    vic = next(x for x in text.splitlines() if x.startswith("| vic |"))
    assert "side by side" in vic and "| 2 | 1 |" in vic and "83.0 | 80.0" in vic and "--loss.vicreg_weight 0.05" in vic
    assert "| raw pixels | | | | 84.4 | 85.7 | baseline |" in text


def test_parse_override_row_splits_name_and_trainer_flags():
    name, (config, overrides, what) = recipe_study.parse_override_row("crop=--data.crop_scale [0.5,1.0]")
    assert name == "crop" and config == recipe_study.DEFAULT
    assert overrides == ["--data.crop_scale", "[0.5,1.0]"] and "crop_scale" in what


def test_a_recorded_run_is_not_repeated_and_new_ones_are_appended(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "recipe_study.jsonl").write_text(json.dumps(record("default", 0, 0.8, 0.7)) + "\n")
    ran = []

    def fake_run(row, spec, seed, epochs, threads, curve, runs):
        ran.append((row, seed))
        return record(row, seed, 0.5, 0.5, epochs, threads)

    monkeypatch.setattr(recipe_study, "run_one", fake_run)
    monkeypatch.setattr(recipe_study, "baselines", lambda records: None)
    assert recipe_study.main(["--rows", "default", "--seeds", "0,1", "--out-dir", str(out)]) == 0
    assert ran == [("default", 1)]
    lines = (out / "recipe_study.jsonl").read_text().splitlines()
    assert [json.loads(x)["seed"] for x in lines] == [0, 1]
    assert "65.0 ± 21.2" in (out / "recipe_study.md").read_text()  # (0.8 + 0.5) / 2, std 0.212


def test_unknown_row_is_an_error_naming_the_known_ones(tmp_path):
    with pytest.raises(SystemExit, match="unknown row.*nope.*known: default"):
        recipe_study.main(["--rows", "nope", "--out-dir", str(tmp_path)])


def test_plot_draws_budget_rows_only_with_their_colours(tmp_path):
    curve = [{"step": s, "minutes": m, "linear": a, "knn": a - 0.05} for s, m, a in ((100, 2.0, 0.7), (200, 4.0, 0.8))]
    recs = [record("default", 0, 0.8, 0.75, curve=curve),
            record("screen", 0, 0.9, 0.9, threads=1, curve=curve),  # side by side: not a budget curve
            {"row": "baselines", "raw_pixels": {"linear": 0.844, "knn": 0.857}}]
    assert list(recipe_plot.curves(recs)) == ["default"]
    out = recipe_plot.plot(recs, tmp_path / "img" / "study.png")
    img = Image.open(out).convert("RGB")
    assert img.size == (recipe_plot.W, recipe_plot.H)
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert recipe_plot.COLOURS[0] in colours and recipe_plot.COLOURS[1] not in colours


def test_plot_without_curves_says_how_to_get_them(tmp_path):
    with pytest.raises(SystemExit, match="--curve"):
        recipe_plot.plot([record("default", 0, 0.8, 0.7)], tmp_path / "x.png")


def test_cpu_processes_times_per_step_without_startup_and_compares_layouts(tmp_path, monkeypatch):
    from bench import cpu_processes
    calls = []

    def fake_wall(cmd, threads):
        steps = int(cmd[cmd.index("--training.stop_at_step") + 1])
        batch = int(cmd[cmd.index("--data.batch_size") + 1])
        calls.append((cmd[1] == "-m" and cmd[2] == "torch.distributed.run", threads, batch))
        per_step = 0.2 if threads == 2 else 0.125  # 30 s of start-up either way
        return 30.0 + per_step * steps

    monkeypatch.setattr(cpu_processes, "wall", fake_wall)
    out = tmp_path / "procs.json"
    assert cpu_processes.main(["--steps", "100", "300", "--out", str(out)]) == 0
    assert calls == [(False, 2, 128), (False, 2, 128), (True, 1, 64), (True, 1, 64)]
    record = json.loads(out.read_text())
    assert record["seconds_per_step"] == pytest.approx({"1 process x 2 threads": 0.2,
                                                        "2 processes x 1 thread (gloo DDP)": 0.125})
    assert "| 2 processes x 1 thread (gloo DDP) | 125 | 1024 | 1.60x |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("args, message", [(["--cores", "1"], "--cores must be >= 2"),
                                           (["--steps", "300", "100"], "0 < FEW < MANY"),
                                           (["--cores", "3"], "does not split over 3 processes")])
def test_cpu_processes_refuses_bad_layouts(args, message, capsys):
    from bench import cpu_processes
    with pytest.raises(SystemExit):
        cpu_processes.main(args)
    assert message in capsys.readouterr().err


def test_baselines_are_probed_once_per_study(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "recipe_study.jsonl").write_text(json.dumps(record("default", 0, 0.8, 0.7)) + "\n")
    calls = []

    def fake_baselines(records):
        calls.append(len(records))
        return {"row": "baselines", "raw_pixels": {"linear": 0.844, "knn": 0.857}}

    monkeypatch.setattr(recipe_study, "baselines", fake_baselines)
    for _ in range(2):
        assert recipe_study.main(["--rows", "default", "--seeds", "0", "--out-dir", str(out)]) == 0
    assert calls == [1]
    rows = [json.loads(x)["row"] for x in (out / "recipe_study.jsonl").read_text().splitlines()]
    assert rows == ["default", "baselines"]
    assert "| raw pixels | | | | 84.4 | 85.7 | baseline |" in (out / "recipe_study.md").read_text()
