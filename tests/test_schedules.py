import math

import pytest

from jepa.config import load_config
from jepa.schedules import build_schedules


def make(total=100, per_epoch=10, **optim):
    cfg = load_config(None, {f"optim.{k}": str(v) for k, v in optim.items()})
    return build_schedules(cfg.optim, total, per_epoch)


def test_ema_momentum_is_linear_and_ends_at_one():
    s = make(total=50)
    values = [s.momentum_at(i) for i in range(51)]
    assert values[0] == pytest.approx(0.996)
    assert values[-1] == 1.0
    diffs = [b - a for a, b in zip(values, values[1:])]
    assert max(diffs) - min(diffs) < 1e-12 and diffs[0] == pytest.approx(0.004 / 50)


def test_lr_warmup_then_cosine():
    s = make(total=100, per_epoch=10, warmup_epochs=2, lr=1e-3, start_lr=2e-4, final_lr=1e-6)
    assert s.warmup_steps == 20
    assert s.lr_at(0) == pytest.approx(2e-4)
    assert s.lr_at(10) == pytest.approx(6e-4)
    assert s.lr_at(20) == pytest.approx(1e-3)
    mid = 20 + 40
    assert s.lr_at(mid) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert s.lr_at(100) == pytest.approx(1e-6)
    after = [s.lr_at(i) for i in range(20, 101)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_weight_decay_cosine_and_linear():
    s = make(total=100, weight_decay=0.04, final_weight_decay=0.4)
    assert s.wd_at(0) == pytest.approx(0.04) and s.wd_at(100) == pytest.approx(0.4)
    assert s.wd_at(50) == pytest.approx(0.22)
    assert s.wd_at(25) == pytest.approx(0.04 + 0.36 * 0.5 * (1 - math.cos(math.pi / 4)))
    lin = make(total=100, wd_schedule="linear")
    assert lin.wd_at(25) == pytest.approx(0.04 + 0.36 * 0.25)
