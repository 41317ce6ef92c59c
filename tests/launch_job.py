"""A training job for tests/test_slurm.py that the cluster "preempts" once: SIGUSR2 after a given step.

It is pickled by submitit in the test and unpickled in each task of the local executor, so it lives in an
importable module (the test puts tests/ on the tasks' PYTHONPATH). Every task signals itself, as SLURM
signals every task of a job; the requeued job is a plain ``TrainJob``.
"""
import os
import signal

from jepa.launch import TrainJob


class PreemptedAt(TrainJob):
    def __init__(self, train_args, at_step: int):
        super().__init__(train_args)
        self.at_step = at_step

    def __call__(self):
        from jepa.train import Trainer
        original, at = Trainer.train_step, self.at_step

        def step_then_signal(trainer, group):
            out = original(trainer, group)
            if trainer.step == at:
                os.kill(os.getpid(), signal.SIGUSR2)
            return out
        Trainer.train_step = step_then_signal
        return super().__call__()
