"""SLURM without a launcher (srun's variables, recorded environments) and ``python -m jepa.launch`` (submitit).

The preemption test runs a 2-task job through submitit's local executor on gloo: SIGUSR2 after step 3, a save
at the step boundary, a requeue with --resume auto, and final weights equal to an uninterrupted 2-process run
started as srun would start it (SLURM's variables, no torchrun).
"""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jepa import distributed as jdist
from jepa import launch, signals
from jepa.checkpoint import checkpoint_path
from jepa.signals import StopOnSignal
from jepa.slurm import (LaunchError, expand_hostlist, expand_tasks_per_node, launcher_rank, port_for_job,
                        process_layout, unused_slurm_tasks)

from small_config import SMALL_BASE

ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 180

# one task of `sbatch --nodes 2 --ntasks-per-node 8 --gpus-per-node 8` + `srun python -m jepa.train`: node 1, GPU 3
TWO_NODES_X8 = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NODELIST": "gpu[01-02]",
                "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NNODES": "2", "SLURM_NTASKS": "16",
                "SLURM_STEP_NUM_TASKS": "16", "SLURM_NTASKS_PER_NODE": "8", "SLURM_TASKS_PER_NODE": "8(x2)",
                "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_PROCID": "11",
                "SLURM_LOCALID": "3", "SLURM_NODEID": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
# the batch script of a 4-task allocation itself (no srun): SLURM sets PROCID 0 but no step
BATCH_SCRIPT = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n[1-4]", "SLURM_NTASKS": "4", "SLURM_PROCID": "0",
                "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_TASKS_PER_NODE": "1(x4)"}


# ---------------------------------------------------------------- SLURM's variables


@pytest.mark.parametrize("text, hosts", [
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("a[1-2]-b,c", ["a1-b", "a2-b", "c"]),
    ("node-[001-004]", ["node-001", "node-002", "node-003", "node-004"]),
    ("n1,n2", ["n1", "n2"]),
    ("r[1-2]n[8-9],x[10]", ["r1n8", "r1n9", "r2n8", "r2n9", "x10"]),
    ("login", ["login"]),
])
def test_node_lists_expand_as_slurm_writes_them(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text, words", [("gpu[01-03", "unbalanced"), ("gpu[3-1]", "'3-1'"), ("gpu[a-b]", "'a-b'"),
                                         ("gpu]1[", "unbalanced")])
def test_unreadable_node_lists_are_errors_that_quote_them(text, words):
    with pytest.raises(LaunchError, match=words):
        expand_hostlist(text)


def test_tasks_per_node_expand():
    assert expand_tasks_per_node("8(x2),4") == [8, 8, 4]
    assert expand_tasks_per_node("2") == [2]
    with pytest.raises(LaunchError, match=r"SLURM_TASKS_PER_NODE='8\*2'"):
        expand_tasks_per_node("8*2")


def test_two_nodes_of_eight_tasks_give_rank_world_local_rank_and_the_first_node_as_master():
    layout = process_layout(TWO_NODES_X8, visible_gpus=8)
    assert (layout.rank, layout.world_size, layout.local_rank, layout.device_index) == (11, 16, 3, None)
    assert (layout.master_addr, layout.master_port, layout.source) == ("gpu01", port_for_job("123456"), "slurm")
    assert 20000 <= layout.master_port < 30000 and port_for_job("123456") != port_for_job("123457")
    assert launcher_rank(TWO_NODES_X8) == 11
    mine = process_layout({**TWO_NODES_X8, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29400"}, visible_gpus=8)
    assert (mine.master_addr, mine.master_port) == ("10.0.0.5", 29400)


def test_one_gpu_bound_per_task_uses_that_gpu():
    assert process_layout({**TWO_NODES_X8, "CUDA_VISIBLE_DEVICES": "3"}, visible_gpus=1).device_index == 0


@pytest.mark.parametrize("change, gpus, words", [
    ({}, 4, "8 tasks on this node but each sees 4 GPUs"),
    ({"SLURM_STEP_NUM_TASKS": "12", "SLURM_NTASKS": "12"}, 8,
     r"8\(x2\) adds up to 16 tasks but SLURM_STEP_NUM_TASKS=12"),
    ({"SLURM_PROCID": "16"}, 8, "SLURM_PROCID=16 is not a rank of the 16 tasks"),
    ({"SLURM_LOCALID": "8"}, 8, "SLURM_LOCALID=8 but this node runs 8 tasks"),
    ({"SLURM_STEP_NODELIST": "gpu[01-03]"}, 8, "describes 2 nodes but the node list has 3"),
    ({"SLURM_STEP_TASKS_PER_NODE": "", "SLURM_TASKS_PER_NODE": "", "SLURM_NTASKS_PER_NODE": ""}, 8,
     "not how many tasks run on each node"),
])
def test_slurm_variables_that_disagree_are_clear_errors(change, gpus, words):
    with pytest.raises(LaunchError, match=words):
        process_layout({**TWO_NODES_X8, **change}, visible_gpus=gpus)


def test_torchrun_variables_win_and_a_lone_task_or_the_batch_script_is_one_process():
    torchrun = process_layout({**TWO_NODES_X8, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, visible_gpus=8)
    assert (torchrun.rank, torchrun.world_size, torchrun.source, torchrun.master_addr) == (1, 2, "torchrun", None)
    one_task = {**TWO_NODES_X8, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}
    assert process_layout(one_task, visible_gpus=8).world_size == 1
    assert process_layout(BATCH_SCRIPT).world_size == 1 and launcher_rank(BATCH_SCRIPT) == 0
    assert unused_slurm_tasks(BATCH_SCRIPT) == 3 and unused_slurm_tasks(TWO_NODES_X8) == 0


def test_the_trainer_started_without_srun_in_a_big_allocation_trains_alone_and_says_so(monkeypatch, caplog):
    for name in [k for k in os.environ if k.startswith("SLURM_") or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")]:
        monkeypatch.delenv(name)
    for name, value in BATCH_SCRIPT.items():
        monkeypatch.setenv(name, value)
    info = jdist.init_distributed("auto", "cpu")
    assert not info.enabled
    assert "SLURM allocated 4 tasks but this process was not started by srun" in caplog.text


# ---------------------------------------------------------------- the cluster's signal


def test_the_cluster_signal_stops_at_the_step_and_a_following_sigterm_does_not_cut_the_save(monkeypatch, capsys):
    monkeypatch.setattr(signals, "_cluster_stops", [])
    with StopOnSignal(lambda: 5, "ckpts") as stop:
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)  # SLURM's end-of-job SIGTERM after the warning
        assert stop.requested and signals.cluster_stop_requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    err = capsys.readouterr().err
    assert "SIGUSR2 received (the cluster's time limit or a preemption is near): finishing step 5" in err
    assert "second SIGTERM" in err


# ---------------------------------------------------------------- python -m jepa.launch


def run_launch(argv, capsys):
    code = launch.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_prints_the_sbatch_script_for_two_nodes_of_eight_gpus(capsys):
    code, out, err = run_launch(["--dry-run", "--nodes", "2", "--gpus-per-node", "8", "--partition", "p", "--time",
                                 "1-12", "--account", "acc", "--mem", "256G", "--", "--config",
                                 "configs/default.yaml"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --partition=p", "#SBATCH --time=2160", "#SBATCH --account=acc", "#SBATCH --mem=256G",
                 "#SBATCH --signal=USR2@120", "# every task runs: python -m jepa.train --config configs/default.yaml"):
        assert line in lines, line
    srun = [line for line in lines if line.startswith("srun ")]
    assert len(srun) == 1 and srun[0].endswith(f"-u -m submitit.core._submit {Path('slurm_logs/%j').absolute()}")


@pytest.mark.parametrize("argv, words", [
    (["--dry-run", "--", "--model.bogus", "3"], "unknown config key 'model.bogus'"),
    (["--dry-run", "--config", "configs/default.yaml"], "give the training arguments after --"),
    (["--dry-run", "--time", "soon", "--"], "--time 'soon' is not a SLURM time"),
    (["--cluster", "local", "--nodes", "2", "--"], "--nodes must be 1"),
])
def test_launch_errors_are_one_line_before_anything_is_submitted(argv, words, capsys, tmp_path):
    code, out, err = run_launch(argv, capsys)
    assert code == 2 and err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1, err


def test_without_submitit_launch_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)
    code, out, err = run_launch(["--dry-run", "--", "--config", "configs/default.yaml"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: python -m jepa.launch needs submitit, which is not installed: pip install 'jepa-trainer[slurm]'"]


def test_time_limits_in_slurm_formats():
    assert [launch.parse_time(t) for t in ("90", "10:30", "2:00:00", "1-0", "1-2:30", "0-0:0:1")] == \
        [90, 11, 120, 1440, 1590, 1]


def test_the_requeued_job_resumes_auto_with_the_same_arguments():
    job = launch.TrainJob(["--config", "c.yaml", "--resume", "runs/x/ckpt.pt", "--run-dir", "r"])
    again = job.checkpoint()
    assert isinstance(again.function, launch.TrainJob) and (again.args, again.kwargs) == ((), {})
    assert again.function.train_args == ["--config", "c.yaml", "--run-dir", "r", "--resume", "auto"]
    assert launch.with_resume_auto(["--resume=auto", "--a.b", "1"]) == ["--a.b", "1", "--resume", "auto"]


def test_submitting_writes_the_sbatch_script_and_pickles_the_training(tmp_path, monkeypatch, capsys):
    """A fake sbatch (and srun, which submitit looks for) on PATH: submitit's real SLURM submission path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho Submitted batch job 4242\n")
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    folder = tmp_path / "logs" / "%j"
    code, out, err = run_launch(["--nodes", "2", "--gpus-per-node", "4", "--folder", str(folder), "--",
                                 "--config", "configs/quick_validation.yaml"], capsys)
    assert code == 0, err
    assert "submitted job 4242: 2 node(s) x 4 task(s) = 8 processes" in out
    script = (tmp_path / "submitted.sh").read_text()
    assert "#SBATCH --ntasks-per-node=4" in script and "#SBATCH --job-name=quick_validation" in script
    import submitit
    delayed = submitit.helpers.DelayedSubmission.load(tmp_path / "logs" / "4242" / "4242_submitted.pkl")
    assert isinstance(delayed.function, launch.TrainJob)
    assert delayed.function.train_args == ["--config", "configs/quick_validation.yaml"]


def test_submitting_without_slurm_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    code, out, err = run_launch(["--folder", str(tmp_path / "logs"), "--", "--config", "configs/default.yaml"], capsys)
    assert code == 2 and "sbatch and srun are not on this machine's PATH" in err


# ---------------------------------------------------------------- preemption and requeue, end to end


TRAIN = {**SMALL_BASE, "data.dataset": "synthetic", "data.synthetic_size": "32", "data.image_size": "16",
         "data.channels": "1", "model.patch_size": "4", "data.batch_size": "4", "training.epochs": "2",
         "optim.warmup_epochs": "0.5", "checkpoint.every_epochs": "0", "checkpoint.keep_last": "10",
         "logging.log_every": "1", "logging.rankme_batch": "0"}  # 2 ranks: 4 steps per epoch, 8 in all
PREEMPT_AT, TOTAL = 3, 8


def train_args(run_dir: Path) -> list[str]:
    return [a for k, v in TRAIN.items() for a in (f"--{k}", v)] + ["--run-dir", str(run_dir)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def task_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SUBMITIT_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return {**env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **extra}


def srun_like(run_dir: Path) -> list[subprocess.Popen]:
    """``srun -n 2 python -m jepa.train ...`` on one node: SLURM's variables only, as srun sets them."""
    common = {"SLURM_JOB_ID": "31", "SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
              "SLURM_TASKS_PER_NODE": "2", "SLURM_STEP_ID": "0", "SLURM_NODEID": "0", "MASTER_PORT": str(free_port())}
    return [subprocess.Popen([sys.executable, "-m", "jepa.train", *train_args(run_dir)], cwd=ROOT,
                             env=task_env(**common, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for r in range(2)]


def wait_all(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=JOB_TIMEOUT)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            pytest.fail("the srun-like run did not finish in time")
        assert proc.returncode == 0, outs[-1][-4000:]
    return outs


def tensors(obj, prefix=""):
    """Every tensor of a nested checkpoint, by path."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def test_a_preempted_job_saves_requeues_with_resume_auto_and_ends_as_an_uninterrupted_run(tmp_path, monkeypatch):
    from launch_job import PreemptedAt
    reference = srun_like(tmp_path / "reference")
    for name, value in task_env(MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    params = {"ntasks_per_node": 2, "time": 60, "signal_delay_s": 30}  # 60 min: the signal is a preemption
    job = launch.submit(PreemptedAt(train_args(tmp_path / "run"), PREEMPT_AT), str(tmp_path / "logs"), params,
                        cluster="local")
    wait_all(reference)
    try:
        results = job.results()
    finally:
        job.cancel(check=False)
    assert results == [0, 0]
    log = job.paths.stderr.read_text() + job.paths.stdout.read_text()
    assert "SIGUSR2 received (the cluster's time limit or a preemption is near)" in log, log[-3000:]
    assert "Requeued job" in log, log[-3000:]
    assert job.submission().function.train_args[-2:] == ["--resume", "auto"]
    assert checkpoint_path(tmp_path / "run", PREEMPT_AT).is_file(), "no checkpoint at the preempted step"
    got = torch.load(checkpoint_path(tmp_path / "run", TOTAL), weights_only=True)
    want = torch.load(checkpoint_path(tmp_path / "reference", TOTAL), weights_only=True)
    assert got["step"] == want["step"] == TOTAL
    got_t, want_t = (tensors({k: ckpt[k] for k in ("model", "optimizer")}) for ckpt in (got, want))
    assert got_t.keys() == want_t.keys() and len(got_t) > 10
    for name, value in want_t.items():
        assert torch.equal(got_t[name], value), f"{name} differs from the uninterrupted run"
