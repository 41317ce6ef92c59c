"""Submit a training run to SLURM through submitit: ``python -m jepa.launch [options] -- <jepa.train arguments>``.

The job runs one task per GPU on every node (``srun``); each task trains in-process and finds its rank in
SLURM's variables (``jepa.slurm``). SLURM sends SIGUSR2 ``--signal-delay-s`` seconds before the time limit
(and on preemption where the cluster signals it): every rank finishes its step, rank 0 saves a checkpoint,
and the job requeues itself with ``--resume auto`` through submitit's checkpoint protocol, so it continues
from the same step and data position. The config is loaded here first: a bad key fails before submitting.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

from jepa import cli
from jepa import signals
from jepa.config import add_config_args, load_config, parse_overrides
from jepa.errors import UserError
from jepa.slurm import port_for_job

INSTALL_HINT = "pip install 'jepa-trainer[slurm]'"
TIME_HELP = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


class LaunchUsageError(UserError):
    """A launcher option is missing, malformed, or needs something this machine lacks (submitit)."""


def require_submitit():
    """The submitit module, or a one-line error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise LaunchUsageError(f"python -m jepa.launch needs submitit, which is not installed: {INSTALL_HINT}") \
            from None
    return submitit


class TrainJob:
    """What every task of the job runs: ``python -m jepa.train ARGS`` in this process; requeued on preemption."""

    def __init__(self, train_args: list[str]):
        self.train_args = list(train_args)

    def __call__(self) -> int:
        export_local_ranks()
        from jepa import train
        code = train.main(self.train_args)
        if code != 0:
            raise RuntimeError(f"python -m jepa.train stopped with exit code {code}; its error is in this task's log")
        if signals.cluster_stop_requested():
            requeue_after_save()
        return code

    def checkpoint(self, *args, **kwargs):
        """submitit's requeue protocol: the same training, continued from the run's newest checkpoint."""
        return require_submitit().helpers.DelayedSubmission(TrainJob(with_resume_auto(self.train_args)))


def with_resume_auto(train_args: list[str]) -> list[str]:
    """``train_args`` with any ``--resume X`` replaced by ``--resume auto``."""
    return cli.strip_resume(train_args) + ["--resume", "auto"]


def requeue_after_save():
    """Hand the cluster's signal, now that the checkpoint is written, to submitit's handler: task 0 requeues.

    submitit installed that handler before the job started; the trainer held the signal only while training.
    """
    handler = signal.getsignal(signals.CLUSTER_SIGNAL)
    if callable(handler):
        handler(signals.CLUSTER_SIGNAL, None)


def export_local_ranks():
    """Under submitit's local executor (no SLURM): torchrun's variables for this task, from submitit's job info."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or "RANK" in os.environ:
        return
    job = require_submitit().JobEnvironment()
    if job.num_tasks <= 1:
        return
    os.environ.update(RANK=str(job.global_rank), WORLD_SIZE=str(job.num_tasks), LOCAL_RANK=str(job.local_rank),
                      MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                      MASTER_PORT=os.environ.get("MASTER_PORT") or str(port_for_job(job.job_id)))


# ---------------------------------------------------------------- submitting


def parse_time(text: str) -> int:
    """SLURM's --time formats -> whole minutes (rounded up)."""
    days, _, clock = text.rpartition("-") if "-" in text else ("", "", text)
    try:
        fields = [int(f) for f in clock.split(":")]
        d = int(days) if days else 0
    except ValueError:
        fields = []
    if not fields or len(fields) > 3 or any(f < 0 for f in fields):
        raise LaunchUsageError(f"--time {text!r} is not a SLURM time ({TIME_HELP})")
    if days:
        h, m, s = (fields + [0, 0])[:3]
    else:
        h, m, s = {1: (0, fields[0], 0), 2: (0, *fields), 3: tuple(fields)}[len(fields)]
    minutes = d * 1440 + h * 60 + m + (1 if s else 0)
    if minutes <= 0:
        raise LaunchUsageError(f"--time {text!r} is no time at all; give the job's time limit ({TIME_HELP})")
    return minutes


def check_train_args(train_args: list[str]):
    """Load the training config here, as the job will, so a bad key fails before anything is submitted."""
    parser = cli.ArgumentParser(prog="python -m jepa.train (after --)")
    add_config_args(parser)
    for flag in ("--resume", "--run-dir"):
        parser.add_argument(flag)
    parser.add_argument("--profile", action="store_true")
    args, rest = parser.parse_known_args(train_args)
    if args.print_config or args.help_config:
        raise LaunchUsageError("--print-config and --help-config print and exit; run them with python -m jepa.train")
    return load_config(args.config, parse_overrides(rest))


def slurm_parameters(opts, job_name: str, train_args: list[str]) -> dict:
    """submitit's SLURM parameters (``_make_sbatch_string``'s names): one task per GPU on every node."""
    tasks = opts.tasks_per_node or max(1, opts.gpus_per_node)
    params = {"job_name": job_name, "nodes": opts.nodes, "ntasks_per_node": tasks, "time": parse_time(opts.time),
              "signal_delay_s": opts.signal_delay_s,
              "setup": [f"# every task runs: python -m jepa.train {shlex.join(train_args)}"]}
    if opts.gpus_per_node:
        params["gpus_per_node"] = opts.gpus_per_node
    for key in ("partition", "account", "qos", "constraint", "cpus_per_task"):
        if getattr(opts, key) is not None:
            params[key] = getattr(opts, key)
    if opts.mem is not None:
        params["additional_parameters"] = {"mem": opts.mem}
    return params


def sbatch_script(folder: str, params: dict) -> str:
    """The sbatch script submitit would submit for ``params``, rendered without a cluster."""
    from submitit.slurm.slurm import _make_sbatch_string
    folder = str(Path(folder).expanduser().absolute())  # as submitit's executor resolves it
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(folder)])
    return _make_sbatch_string(command=command, folder=folder, **params)


def submit(job: TrainJob, folder: str, params: dict, cluster: str = "slurm", max_timeouts: int = 10):
    """Submit ``job`` (SLURM, or submitit's local executor on this machine) and return submitit's job."""
    submitit = require_submitit()
    if cluster == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=max_timeouts)
        executor.update_parameters(tasks_per_node=params["ntasks_per_node"], timeout_min=params["time"],
                                   signal_delay_s=params["signal_delay_s"],
                                   gpus_per_node=params.get("gpus_per_node", 0))
    else:
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise LaunchUsageError("SLURM's sbatch and srun are not on this machine's PATH: submit from a login node "
                                   "of the cluster (--dry-run prints the script without one)")
        executor = submitit.SlurmExecutor(folder, max_num_timeout=max_timeouts)
        executor.update_parameters(**params)
    return executor.submit(job)


# ---------------------------------------------------------------- command line


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m jepa.launch", description=__doc__.splitlines()[0],
                           usage="%(prog)s [options] -- <python -m jepa.train arguments>")
    p.add_argument("--nodes", type=positive, default=1, help="nodes to run on (default 1)")
    p.add_argument("--gpus-per-node", type=natural, default=1, help="GPUs per node, one task each (default 1)")
    p.add_argument("--tasks-per-node", type=positive, help="tasks per node (default: --gpus-per-node, at least 1)")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--time", default="24:00:00", help=f"time limit of each attempt ({TIME_HELP}; default 24:00:00)")
    p.add_argument("--account", help="SLURM account to charge")
    p.add_argument("--qos", help="SLURM quality of service")
    p.add_argument("--constraint", help="SLURM node features, e.g. a100")
    p.add_argument("--mem", help="memory per node, as sbatch --mem takes it (e.g. 256G)")
    p.add_argument("--cpus-per-task", type=positive, help="CPU cores per task (data loader workers + 1 or more)")
    p.add_argument("--folder", default="slurm_logs/%j", help="where submitit writes logs and the job's pickles "
                   "(%%j is the job id; on a file system the nodes share; default slurm_logs/%%j)")
    p.add_argument("--signal-delay-s", type=positive, default=120,
                   help="SLURM signals the job this many seconds before its time limit (a step and a checkpoint must "
                        "fit; default 120)")
    p.add_argument("--max-timeouts", type=natural, default=10,
                   help="requeues after reaching the time limit before the job gives up (preemptions do not count)")
    p.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                   help="local: run the job on this machine with submitit's local executor (one node), to try it")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script that would be submitted and exit")
    return p


def positive(text: str) -> int:
    value = natural(text)
    if value < 1:
        raise ValueError(text)
    return value


def natural(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """The launcher's options and the training arguments after ``--``."""
    if "--" not in argv:
        raise LaunchUsageError("give the training arguments after --, e.g. python -m jepa.launch --nodes 2 "
                               "--gpus-per-node 8 -- --config configs/default.yaml")
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if any(a in ("-h", "--help") for a in argv[: argv.index("--") if "--" in argv else len(argv)]):
        parser.print_help()
        return 0
    own, train_args = split_argv(argv)
    opts = parser.parse_args(own)
    require_submitit()
    if opts.cluster == "local" and opts.nodes > 1:
        raise LaunchUsageError(f"--cluster local runs on this machine only: --nodes must be 1, not {opts.nodes}")
    cfg = check_train_args(train_args)
    params = slurm_parameters(opts, cfg.name, train_args)
    if opts.dry_run:
        print(sbatch_script(opts.folder, params), end="")
        return 0
    job = submit(TrainJob(train_args), opts.folder, params, opts.cluster, opts.max_timeouts)
    tasks = params["nodes"] * params["ntasks_per_node"]
    print(f"submitted job {job.job_id}: {params['nodes']} node(s) x {params['ntasks_per_node']} task(s) = {tasks} "
          f"processes; logs in {job.paths.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
