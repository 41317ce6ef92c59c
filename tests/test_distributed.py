"""Multi-process training (issue 6): torchrun with 2 CPU ranks over gloo, compared with one process.

Each launch runs tests/dist_worker.py under ``torch.distributed.run`` on a free loopback
port and is killed (with its workers) if it takes longer than LAUNCH_TIMEOUT, so a hung
process group cannot hang CI.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jepa.config import ConfigError, load_config
from jepa.data import TrainBatches
from jepa.data.shard_writer import write_shards
from jepa.train import Trainer

import dist_worker as W
from data_formats import write_varied_folder

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 240
RTOL, ATOL = 1e-5, 1e-6


def launch(scenario: str, out: Path, nproc: int = 2) -> list[dict]:
    """Run one worker scenario on ``nproc`` ranks; return each rank's saved results."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--local-addr", "127.0.0.1",
           "--monitor-interval", "0.1", str(ROOT / "tests" / "dist_worker.py"), scenario, str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun '{scenario}' ran over {LAUNCH_TIMEOUT}s and was killed:\n{output[-4000:]}")
    assert proc.returncode == 0, f"torchrun '{scenario}' failed (exit {proc.returncode}):\n{output[-6000:]}"
    return [torch.load(out / f"{scenario}_rank{r}.pt", weights_only=False) for r in range(nproc)]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def ddp(out_dir):
    return launch("ddp", out_dir)


@pytest.fixture(scope="module")
def interrupted(out_dir):
    return launch("interrupt", out_dir)


@pytest.fixture(scope="module")
def resumed(out_dir, interrupted):
    return launch("resume", out_dir)


@pytest.fixture(scope="module")
def fsdp(out_dir):
    return launch("fsdp", out_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, global batch 8, on the hand-built batches: the model state before and after each step,
    and the gradients of the first step."""
    trainer = Trainer(W.make_cfg(**{"data.batch_size": W.GLOBAL_BATCH}), run_dir=tmp_path_factory.mktemp("ref"))
    grads = W.capture_grads(trainer)
    states = [{k: v.clone() for k, v in trainer.model.state_dict().items()}]
    for batch in W.handmade_batches(trainer.cfg):
        trainer.train_step([batch])
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    return {"states": states, "grads": grads[0]}


def assert_states_close(got: dict, want: dict):
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=RTOL, atol=ATOL, msg=lambda m: f"{k}: {m}")


# ---------------------------------------------------------------- DDP


def test_ranks_hold_identical_online_and_target_weights_after_every_step(ddp):
    r0, r1 = ddp
    assert r0["wrapped"] == "DistributedDataParallel"
    assert len(r0["steps"]) == len(r1["steps"]) == 5
    previous = None
    for step, (a, b) in enumerate(zip(r0["steps"], r1["steps"]), start=1):
        assert torch.equal(a["online"], b["online"]), f"online weights differ across ranks after step {step}"
        assert torch.equal(a["target"], b["target"]), f"target encoder differs across ranks after step {step}"
        if previous is not None:
            assert not torch.equal(a["target"], previous), f"the EMA did not move the target at step {step}"
        previous = a["target"]


def test_accumulation_reduces_gradients_only_on_the_last_micro_step(ddp):
    # 5 steps x 2 micro-batches: DDP's no_sync() on the first micro-batch of each step only
    assert [r["no_sync"] for r in ddp] == [5, 5]


def test_only_rank0_writes_and_metrics_are_averaged_over_ranks(ddp):
    r0, r1 = ddp
    assert r0["result"]["stopped"] == r1["result"]["stopped"] == "stop_at_step 5"
    assert (r0["saves"], r1["saves"]) == (1, 0)
    assert r0["reduced"] == r1["reduced"] == {"rank": 0.5, "const": 2.0}


def test_two_ranks_match_one_process_with_twice_the_batch(ddp, reference):
    """Gradients are averaged over ranks (not summed, not local) and the EMA runs on every rank."""
    states = reference["states"]
    for r in ddp:
        assert_states_close(r["equiv"]["grads"], reference["grads"])
        assert_states_close(r["equiv"]["state"], states[-1])
    target = [k for k in states[0] if k.startswith("target_encoder.")]
    moved = max((states[-1][k] - states[0][k]).abs().max().item() for k in target)
    assert moved > 1000 * ATOL, "the reference target encoder barely moved: a skipped EMA could pass unnoticed"


# ---------------------------------------------------------------- signals and resume


def test_sigterm_on_one_rank_stops_all_ranks_at_the_same_step_and_rank0_saves(interrupted):
    r0, r1 = interrupted
    assert r0["cut_result"]["stopped"] == r1["cut_result"]["stopped"] == "signal"
    assert r0["cut_result"]["step"] == r1["cut_result"]["step"] == 3
    assert r0["checkpoints"] == ["ckpt_step00000003.pt"]
    assert (r0["saves"], r1["saves"]) == (1, 0)


def test_resume_under_two_ranks_continues_to_the_uninterrupted_weights(interrupted, resumed):
    for full, res in zip(interrupted, resumed):
        assert res["start"] == 3
        assert res["result"]["stopped"] == full["full_result"]["stopped"] == "completed"
        assert res["result"]["step"] == full["full_result"]["step"] == 8  # crosses an epoch boundary
        torch.testing.assert_close(res["final"]["online"], full["full"]["online"], rtol=0, atol=0)
        torch.testing.assert_close(res["final"]["target"], full["full"]["target"], rtol=0, atol=0)


# ---------------------------------------------------------------- FSDP


def test_fsdp_matches_one_process_and_resumes_exactly(fsdp, reference):
    r0, r1 = fsdp
    assert r0["sharded"] and r1["sharded"], "FSDP did not replace the parameters with sharded ones"
    assert_states_close(r0["grads"], reference["grads"])
    assert_states_close(r0["final"], reference["states"][-1])
    assert r1["final"] == {}  # full state is gathered to rank 0 only
    assert r0["resumed_step"] == 3
    for k, v in r0["final"].items():
        assert torch.equal(r0["resumed"][k], v), f"{k} differs after resuming the FSDP checkpoint"


def test_fsdp_checkpoint_is_a_plain_checkpoint_that_one_process_resumes(fsdp, reference, tmp_path):
    ckpt = torch.load(fsdp[0]["checkpoint"], weights_only=True)
    assert_states_close(ckpt["model"], reference["states"][2])
    assert sorted(ckpt["optimizer"]["state"]) == list(range(len(ckpt["optimizer"]["state"])))
    cfg = W.make_cfg(**{"data.batch_size": W.GLOBAL_BATCH})
    trainer = Trainer(cfg, run_dir=tmp_path, resume=fsdp[0]["checkpoint"])
    assert trainer.step == 2
    trainer.train_step([W.handmade_batches(cfg)[2]])
    assert_states_close(trainer.model.state_dict(), reference["states"][3])


# ---------------------------------------------------------------- shards


def test_two_ranks_with_two_workers_each_see_every_shard_sample_once_per_epoch(out_dir):
    root = write_varied_folder(out_dir / "images", classes=48, per_class=1, seed=4, sides=(17, 30))
    write_shards(root / "train", out_dir / "shards", num_shards=8)
    r0, r1 = launch("shards", out_dir)
    assert r0["batches_per_epoch"] == r1["batches_per_epoch"] == 6
    for epoch in (0, 1):
        seen = [label for r in (r0, r1) for batch in r["labels"][epoch] for label in batch]
        assert sorted(seen) == list(range(48)), f"epoch {epoch}: not every sample exactly once"
    assert r0["labels"][0] != r0["labels"][1], "the second epoch repeated the first one's order"


def test_two_ranks_with_two_workers_each_read_every_parquet_row_once_per_epoch(out_dir):
    from data_formats import encoded_images, write_hf_parquet
    images = encoded_images(48, seed=6)
    for k in (0, 1):
        write_hf_parquet(out_dir / "hf" / f"train-{k}.parquet", images[24 * k:24 * (k + 1)],
                         list(range(24 * k, 24 * (k + 1))))
    r0, r1 = launch("hf_stream", out_dir)
    assert r0["batches_per_epoch"] == r1["batches_per_epoch"] == 6
    for epoch in (0, 1):
        seen = [label for r in (r0, r1) for batch in r["labels"][epoch] for label in batch]
        assert sorted(seen) == list(range(48)), f"epoch {epoch}: not every row exactly once"
    assert r0["labels"][0] != r0["labels"][1], "the second epoch repeated the first one's order"


# ---------------------------------------------------------------- single-process checks


def test_ranks_get_disjoint_shards_and_their_own_masks():
    cfg = W.make_cfg()
    ranks = [TrainBatches(cfg, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        orders = [tb.order(epoch) for tb in ranks]
        assert len(orders[0]) == len(orders[1]) == 32
        assert sorted(torch.cat(orders).tolist()) == list(range(64))
    assert not torch.equal(ranks[0].order(0), ranks[0].order(1)), "set_epoch did not reshuffle"
    b0, b1 = (next(tb.epoch(0)) for tb in ranks)
    assert not (b0.ctx_idx.shape == b1.ctx_idx.shape and torch.equal(b0.ctx_idx, b1.ctx_idx))
    again = next(TrainBatches(cfg, rank=1, world_size=2).epoch(0))
    assert torch.equal(again.ctx_idx, b1.ctx_idx) and torch.equal(again.images, b1.images)


def test_bad_distributed_settings_are_clear_errors(monkeypatch):
    from jepa import distributed as jdist
    with pytest.raises(ConfigError, match="training.precision"):
        load_config(None, {"distributed.strategy": "fsdp", "training.precision": "fp16"})
    with pytest.raises(ConfigError, match="distributed.strategy"):
        load_config(None, {"distributed.strategy": "zero3"})
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="distributed.backend=nccl needs CUDA"):
        jdist.init_distributed("nccl", "cpu")
