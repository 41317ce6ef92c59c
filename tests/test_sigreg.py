"""SIGReg (jepa/sigreg.py): the formula against an independent float64 evaluation, its gradient, what it scores
high and low, the directions' determinism, and two gloo processes against one."""
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jepa.errors import ConfigError
from jepa.seeds import mix_seed
from jepa.sigreg import null_value, quadrature, sigreg, sigreg_directions, world_size

import sigreg_worker as W

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 120


def direct(z: np.ndarray, a: np.ndarray, num_points: int = 17, t_max: float = 5.0) -> float:
    """The statistic by the definition: per direction, the complex ECF on the symmetric grid over
    [-t_max, t_max] (2·num_points − 1 nodes), numpy's trapezoid rule, then the mean over directions."""
    t = np.linspace(-t_max, t_max, 2 * num_points - 1)
    stats = []
    for m in range(a.shape[1]):
        x = z @ a[:, m]
        integrand = []
        for tk in t:
            ecf = np.mean(np.exp(1j * tk * x))
            integrand.append(abs(ecf - np.exp(-tk * tk / 2)) ** 2 * np.exp(-tk * tk / 2))
        stats.append(np.trapezoid(integrand, t))
    return float(np.mean(stats))


@pytest.mark.parametrize("n,d,m,num_points,t_max", [(7, 5, 3, 17, 5.0), (1, 4, 1, 17, 5.0), (33, 9, 13, 2, 3.0),
                                                    (64, 16, 8, 21, 2.5), (5, 1, 2, 4, 7.0)])
def test_matches_a_direct_float64_evaluation(n, d, m, num_points, t_max):
    g = torch.Generator().manual_seed(n * 100 + d)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.3 + 0.2
    a = torch.randn(d, m, generator=g, dtype=torch.float64)  # not normalised: the formula holds for any projection
    want = direct(z.numpy(), a.numpy(), num_points, t_max)
    got = sigreg(z, a, num_points=num_points, t_max=t_max)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert sigreg(z, a, num_points=num_points, t_max=t_max, scale_by_n=True).item() == pytest.approx(n * want, rel=1e-12)
    assert sigreg(z.float(), a.float(), num_points=num_points, t_max=t_max).item() == pytest.approx(want, rel=1e-4)


def test_quadrature_nodes_and_weights_are_the_documented_ones():
    t, weights, phi = quadrature(17, 5.0, dtype=torch.float64)
    assert torch.allclose(t, torch.arange(17, dtype=torch.float64) * 0.3125)
    trapezoid = weights / torch.exp(-t * t / 2)
    assert trapezoid[0].item() == pytest.approx(0.3125) and trapezoid[-1].item() == pytest.approx(0.3125)
    assert torch.allclose(trapezoid[1:-1], torch.full((15,), 0.625, dtype=torch.float64))
    assert torch.equal(phi, torch.exp(-t * t / 2))
    # ∫ exp(-t²/2)·exp(-t²/2) dt over the real line is √π: the grid integrates a smooth weight almost exactly
    assert (weights * phi).sum().item() == pytest.approx(math.sqrt(math.pi), rel=1e-6)


def test_gradient_passes_gradcheck_in_float64():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    a = sigreg_directions(5, 3, step=0, seed=1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: sigreg(x, a), (z,))
    assert torch.autograd.gradcheck(lambda x: sigreg(x, a, num_points=5, t_max=2.0, scale_by_n=True), (z,))
    d = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: sigreg(x, y), (z, d))


def test_null_value_is_the_mean_over_standard_normal_samples(one_thread):
    g = torch.Generator().manual_seed(5)
    n, draws = 32, 400
    a = sigreg_directions(8, 16, step=0, seed=0)
    values = torch.stack([sigreg(torch.randn(n, 8, generator=g), a) for _ in range(draws)])
    # the per-draw values have a spread of about their mean, so 400 draws pin the mean to ~5%
    assert values.mean().item() == pytest.approx(null_value(n), rel=0.12)
    assert null_value(n) == pytest.approx(null_value(1) / n)
    # the continuous integral ∫ (1 − e^{−t²}) e^{−t²/2} dt = √(2π) − √(2π/3)
    assert null_value(1) == pytest.approx(math.sqrt(2 * math.pi) - math.sqrt(2 * math.pi / 3), rel=1e-5)


def test_gaussian_batch_scores_near_null_and_degenerate_batches_score_far_higher(one_thread):
    g = torch.Generator().manual_seed(9)
    n, d = 512, 32
    a = sigreg_directions(d, 64, step=0, seed=0)
    gaussian = torch.randn(n, d, generator=g)
    floor = null_value(n)
    assert sigreg(gaussian, a).item() < 2 * floor
    u = torch.randn(n, 1, generator=g)
    line = torch.nn.functional.normalize(torch.randn(1, d, generator=g), dim=1)
    degenerate = {"collapsed": torch.randn(1, d, generator=g).expand(n, d), "zeros": torch.zeros(n, d),
                  "rank-1": u * line * math.sqrt(d), "x3": 3 * gaussian, "x0.1": 0.1 * gaussian,
                  "shifted": gaussian + 2 / math.sqrt(d)}
    for name, z in degenerate.items():
        assert sigreg(z, a).item() > 20 * floor, name


def test_the_gradient_moves_a_collapsed_batch_to_a_gaussian_one(one_thread):
    z = (0.05 * torch.randn(256, 16)).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.05)
    for step in range(100):
        loss = sigreg(z, sigreg_directions(16, 32, step=step, seed=0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    fresh = sigreg_directions(16, 256, step=1000, seed=0)  # directions it never trained on
    assert sigreg(z.detach(), fresh).item() < 2 * null_value(256)
    assert 0.8 < z.detach().std().item() < 1.2


def test_directions_are_unit_deterministic_and_redrawn_each_step():
    a = sigreg_directions(7, 5, step=4, seed=2)
    assert a.shape == (7, 5) and a.dtype == torch.float32
    assert torch.allclose(a.norm(dim=0), torch.ones(5), atol=1e-6)
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(a, sigreg_directions(7, 5, step=4, seed=2))
    assert not torch.allclose(a, sigreg_directions(7, 5, step=5, seed=2))
    assert not torch.allclose(a, sigreg_directions(7, 5, step=4, seed=3))
    want = torch.randn(7, 5, generator=torch.Generator().manual_seed(mix_seed(2, "sigreg", 4)), dtype=torch.float64)
    assert torch.allclose(a.double(), want / want.norm(dim=0), atol=1e-7)
    assert sigreg_directions(7, 5, step=4, seed=2, dtype=torch.float64).dtype == torch.float64


def test_directions_cover_the_sphere_evenly():
    a = sigreg_directions(3, 20000, step=0, seed=0, dtype=torch.float64)
    assert torch.allclose(a.mean(dim=1), torch.zeros(3, dtype=torch.float64), atol=0.02)
    assert torch.allclose(a @ a.T / 20000, torch.eye(3, dtype=torch.float64) / 3, atol=0.01)


def test_low_precision_inputs_and_autocast_compute_in_fp32():
    z, a = torch.randn(64, 8), sigreg_directions(8, 4, step=0, seed=0)
    want = sigreg(z.double(), a.double()).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sigreg(z, a)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want, rel=1e-4)
    assert sigreg(z.bfloat16(), a).dtype == torch.float32


def test_bad_arguments_are_refused_with_what_is_valid():
    z, a = torch.randn(4, 3), torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        sigreg(torch.randn(4), a)
    with pytest.raises(ValueError, match="D = 3"):
        sigreg(z, torch.randn(4, 2))
    with pytest.raises(ValueError, match="empty batch"):
        sigreg(torch.randn(0, 3), a)
    with pytest.raises(ValueError, match="floating-point"):
        sigreg(torch.ones(4, 3, dtype=torch.long), a)
    with pytest.raises(ConfigError, match="num_points must be an integer >= 2, got 1"):
        sigreg(z, a, num_points=1)
    with pytest.raises(ConfigError, match="t_max must be a finite number > 0, got 0"):
        sigreg(z, a, t_max=0)
    with pytest.raises(ConfigError, match="slices must be an integer >= 1, got 0"):
        sigreg_directions(3, 0, step=0, seed=0)
    with pytest.raises(ConfigError, match="sample count must be an integer >= 1"):
        null_value(0)


def test_without_a_process_group_nothing_is_reduced():
    assert world_size() == 1


def launch_pair(out: Path) -> list[dict]:
    """Run tests/sigreg_worker.py as two gloo processes on this machine; return each rank's results."""
    store = out / "store"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "sigreg_worker.py"), str(r), "2", str(store),
                               str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) for r in range(2)]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=LAUNCH_TIMEOUT)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"the gloo pair ran over {LAUNCH_TIMEOUT}s and was killed")
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def test_two_gloo_processes_give_the_global_batch_statistic_and_ddp_gradients(tmp_path):
    ranks = launch_pair(tmp_path)
    inputs, layer, directions = W.make_inputs()
    for scaled in (False, True):
        one = W.evaluate(inputs, layer, directions, scaled)
        start = 0
        for rank, rows in enumerate(W.ROWS):
            got = ranks[rank][scaled]
            torch.testing.assert_close(got["value"], one["value"], rtol=1e-12, atol=0)
            # each rank's gradient on its rows is world_size × the global one: DDP's average then matches
            torch.testing.assert_close(got["z_grad"], 2 * one["z_grad"][start:start + rows], rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(got["layer_grad"], one["layer_grad"], rtol=1e-10, atol=1e-14)
            start += rows
    # the scaled form uses the global N, not the rank's own
    assert ranks[0][True]["value"].item() == pytest.approx(sum(W.ROWS) * ranks[0][False]["value"].item(), rel=1e-12)


def test_bench_script_records_the_sigreg_time_and_its_share(tmp_path, one_thread):
    from bench import bench_sigreg
    out = tmp_path / "sigreg.json"
    assert bench_sigreg.main(["--n", "8", "--dim", "64", "--slices", "4", "--ref-batch", "1", "--image-size", "16",
                              "--reps", "1", "--warmup", "0", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["n"] == 8 and record["slices"] == 4 and record["sigreg_ms"] > 0 and record["encoder_ms"] > 0
    assert record["sigreg_share"] == pytest.approx(record["sigreg_ms"] / (record["sigreg_ms"] + record["encoder_ms"]))
    assert "SIGReg share" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        bench_sigreg.main(["--num-points", "1"])
