"""One rank of the multi-process tests, launched by torchrun: ``dist_worker.py SCENARIO OUT_DIR``.

Each rank runs small trainers on synthetic data and saves what tests/test_distributed.py
compares to ``OUT_DIR/<scenario>_rank<R>.pt``. The configs and the hand-built batches are
shared with the test, which runs the single-process reference itself.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

# small_config sits beside this file: first on sys.path under torchrun, put there by conftest.py under pytest
from small_config import SMALL_BASE

BASE = {**SMALL_BASE, "data.dataset": "synthetic", "data.synthetic_size": "64", "data.image_size": "16",
        "data.channels": "1", "model.patch_size": "2", "model.num_hierarchies": "2", "data.batch_size": "4",
        "training.epochs": "2", "optim.warmup_epochs": "0.5", "optim.lr": "5e-3", "optim.start_lr": "1e-3",
        "optim.ema": "[0.6, 0.8]", "optim.grad_clip": "1.0", "logging.log_every": "1", "checkpoint.every_epochs": "0"}
# a low EMA momentum moves the target encoder a lot per step, so a skipped or stale EMA cannot hide in the tolerance
EQUIV_STEPS = 3
GLOBAL_BATCH = 8


def make_cfg(**over):
    from jepa.config import load_config
    raw = dict(BASE)
    raw.update({k: str(v) for k, v in over.items()})
    return load_config(None, raw)


def handmade_batches(cfg, steps: int = EQUIV_STEPS, size: int = GLOBAL_BATCH):
    """``steps`` global batches of random images with masks from the real sampler, the same in every process."""
    from jepa.data.batches import Batch, block_shape, build_mask_sampler
    g = torch.Generator().manual_seed(1234)
    sampler = build_mask_sampler(cfg)
    out = []
    for _ in range(steps):
        images = torch.randn(size, cfg.data.channels, cfg.data.image_size, cfg.data.image_size, generator=g)
        ctx, tgt = sampler.sample(size, generator=g)
        ctx_idx, tgt_idx = torch.stack(ctx), torch.stack(tgt)
        out.append(Batch(images, torch.zeros(size), ctx_idx, tgt_idx, block_shape(tgt_idx, sampler.grid[1])))
    return out


def split(batch, parts: int):
    """``batch`` cut into ``parts`` equal consecutive pieces (images and every mask alike)."""
    from jepa.data import Batch
    n = batch.images.shape[0] // parts
    return [Batch(batch.images[i * n:(i + 1) * n], batch.labels[i * n:(i + 1) * n], batch.ctx_idx[:, i * n:(i + 1) * n],
                  batch.tgt_idx[:, i * n:(i + 1) * n], batch.block_hw) for i in range(parts)]


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in params])


def snapshot(trainer) -> dict:
    m = trainer.model
    return {"online": flat(m.online_parameters()), "target": flat(m.target_encoder.parameters())}


def record_steps(trainer, on_step=None) -> list:
    """Snapshot the parameters after every optimizer step of ``trainer.train()``."""
    steps = []
    original = trainer.train_step

    def step(group):
        out = original(group)
        steps.append(snapshot(trainer))
        if on_step is not None:
            on_step(trainer.step)
        return out
    trainer.train_step = step
    return steps


def count_calls(obj, name: str) -> dict:
    counter = {"n": 0}
    original = getattr(obj, name)

    def counted(*args, **kwargs):
        counter["n"] += 1
        return original(*args, **kwargs)
    setattr(obj, name, counted)
    return counter


def capture_grads(trainer) -> list:
    """Record the full gradients the optimizer sees at each step (after any all-reduce and clipping)."""
    from torch.distributed.tensor import DTensor
    seen = []
    original = trainer.optimizer.step

    def step(*args, **kwargs):
        seen.append({n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).clone()
                     for n, p in trainer.model.named_parameters() if p.grad is not None})
        return original(*args, **kwargs)
    trainer.optimizer.step = step
    return seen


def equivalence_run(trainer, rank: int, world: int, accum: int) -> dict:
    """Train on this rank's share of the hand-built global batches (``accum`` micro-batches per step)."""
    grads = capture_grads(trainer)
    for batch in handmade_batches(trainer.cfg):
        trainer.train_step(split(batch, world * accum)[rank * accum:(rank + 1) * accum])
    return {"state": trainer.model.state_dict(), "grads": grads[0]}


def scenario_ddp(out: Path, rank: int, world: int) -> dict:
    import jepa.checkpoint.files as jcheckpoint
    import jepa.train as jtrain
    from jepa import distributed as jdist
    saves = count_calls(jcheckpoint, "atomic_save")
    trainer = jtrain.Trainer(make_cfg(**{"training.accum_steps": 2, "training.stop_at_step": 5}), run_dir=out / "ddp")
    no_sync = count_calls(trainer.online, "no_sync")
    steps = record_steps(trainer)
    result = trainer.train()
    reduced = jdist.mean_over_ranks({"rank": torch.tensor(float(rank)), "const": 2.0}, trainer.dist, trainer.device)
    equiv = equivalence_run(jtrain.Trainer(make_cfg(), run_dir=out / "equiv"), rank, world, accum=1)
    return {"steps": steps, "result": result, "no_sync": no_sync["n"], "saves": saves["n"], "reduced": reduced,
            "wrapped": type(trainer.online).__name__, "equiv": equiv}


def scenario_interrupt(out: Path, rank: int, world: int) -> dict:
    """An uninterrupted run, then the same run stopped by SIGTERM delivered to rank 1 alone after step 3."""
    import jepa.checkpoint.files as jcheckpoint
    import jepa.train as jtrain
    cfg = make_cfg(**{"training.accum_steps": 2})
    full = jtrain.Trainer(cfg, run_dir=out / "full")
    full_result = full.train()
    saves = count_calls(jcheckpoint, "atomic_save")
    cut = jtrain.Trainer(cfg, run_dir=out / "cut")

    def sigterm_rank1(step):
        if rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
    record_steps(cut, sigterm_rank1)
    cut_result = cut.train()
    return {"full": snapshot(full), "full_result": full_result, "cut_result": cut_result, "saves": saves["n"],
            "checkpoints": sorted(p.name for p in (out / "cut" / "checkpoints").glob("ckpt_step*.pt"))}


def scenario_resume(out: Path, rank: int, world: int) -> dict:
    import jepa.checkpoint.files as jcheckpoint
    import jepa.train as jtrain
    trainer = jtrain.Trainer(make_cfg(**{"training.accum_steps": 2}), run_dir=out / "cut", resume="auto")
    start = trainer.step
    result = trainer.train()
    return {"start": start, "result": result, "final": snapshot(trainer)}


def scenario_fsdp(out: Path, rank: int, world: int) -> dict:
    """FSDP on hand-built batches (2 micro-batches per rank): 2 steps, checkpoint, 1 step; then resume and 1 step."""
    import jepa.checkpoint.files as jcheckpoint
    import jepa.train as jtrain
    from jepa import distributed as jdist
    from torch.distributed.tensor import DTensor
    cfg = make_cfg(**{"distributed.strategy": "fsdp", "data.batch_size": 2, "training.accum_steps": 2})
    trainer = jtrain.Trainer(cfg, run_dir=out / "fsdp")
    batches = handmade_batches(cfg)
    mine = [split(b, world * 2)[rank * 2:rank * 2 + 2] for b in batches]
    sharded = all(isinstance(p, DTensor) for p in trainer.model.parameters())
    grads = capture_grads(trainer)
    for group in mine[:2]:
        trainer.train_step(group)
    ckpt = trainer.save_checkpoint()
    trainer.train_step(mine[2])
    final = jdist.model_state(trainer.model)
    resumed = jtrain.Trainer(cfg, run_dir=out / "fsdp", resume=str(ckpt))
    resumed.train_step(mine[2])
    return {"sharded": sharded, "checkpoint": str(ckpt), "final": final, "grads": grads[0],
            "resumed": jdist.model_state(resumed.model), "resumed_step": resumed.step}


def scenario_shards(out: Path, rank: int, world: int) -> dict:
    """Two epochs of the shard stream written to ``out/shards`` (48 one-image classes), 2 loader workers per rank."""
    from jepa.config import load_config
    from jepa.data import TrainBatches
    cfg = load_config(None, {"data.dataset": "shards", "data.shards": str(out / "shards" / "shard-{000000..000007}.tar"),
                             "data.image_size": "16", "data.channels": "3", "model.patch_size": "4",
                             "masks.min_keep": "4", "data.batch_size": "4", "data.num_workers": "2",
                             "data.shuffle_buffer": "4"})
    batches = TrainBatches(cfg, rank=rank, world_size=world)
    labels = {e: [b.labels.tolist() for b in batches.epoch(e)] for e in (0, 1)}
    return {"labels": labels, "batches_per_epoch": batches.batches_per_epoch}


def scenario_hf_stream(out: Path, rank: int, world: int) -> dict:
    """Two epochs of the parquet stream written to ``out/hf`` (48 rows labelled by row, 8 row groups), 2 loader
    workers per rank."""
    from jepa.config import load_config
    from jepa.data import TrainBatches
    cfg = load_config(None, {"data.dataset": "hf", "data.hf_path": str(out / "hf" / "train-*.parquet"),
                             "data.hf_streaming": "true", "data.image_size": "16", "data.channels": "3",
                             "model.patch_size": "4", "masks.min_keep": "4", "data.batch_size": "4",
                             "data.num_workers": "2", "data.shuffle_buffer": "4"})
    batches = TrainBatches(cfg, rank=rank, world_size=world)
    labels = {e: [b.labels.tolist() for b in batches.epoch(e)] for e in (0, 1)}
    return {"labels": labels, "batches_per_epoch": batches.batches_per_epoch}


def main(argv):
    scenario, out = argv[0], Path(argv[1])
    from jepa import distributed as jdist
    info = jdist.init_distributed("gloo", "cpu")
    result = globals()[f"scenario_{scenario}"](out, info.rank, info.world_size)
    torch.save(result, out / f"{scenario}_rank{info.rank}.pt")
    jdist.barrier(info)
    jdist.cleanup(info)


if __name__ == "__main__":
    main(sys.argv[1:])
