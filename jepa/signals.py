"""Stopping a run cleanly: the first SIGINT/SIGTERM lets the step finish and a checkpoint be written.

SIGUSR2 is a cluster's "time is nearly up" (SLURM's ``--signal=USR2@SECONDS``, which submitit sets and also
sends on preemption): it stops the run the same way and is remembered, so that ``jepa.launch`` requeues the job.
"""
from __future__ import annotations

import signal
import sys

CLUSTER_SIGNAL = getattr(signal, "SIGUSR2", None)  # None where the platform has no SIGUSR2 (Windows)
_cluster_stops: list[int] = []  # steps at which this process was asked to stop by CLUSTER_SIGNAL


def cluster_stop_requested() -> bool:
    """True once a run of this process received the cluster's signal while training (requeue after its save)."""
    return bool(_cluster_stops)


class StopOnSignal:
    """Within ``with``: the first SIGINT/SIGTERM sets ``requested``; a second raises KeyboardInterrupt at once.

    SIGUSR2 sets ``requested`` too but never counts towards stopping at once: SLURM follows it with SIGTERM
    when the job ends, and that must not cut the checkpoint short. ``next_step()`` numbers the step being
    finished in the message; ``announce`` prints it (rank 0). Outside the main thread signals stay as they are.
    """

    def __init__(self, next_step, checkpoint_dir, announce: bool = True):
        self.next_step, self.checkpoint_dir, self.announce = next_step, checkpoint_dir, announce
        self.requested = False
        self._interrupts = 0
        self._previous: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if signum == CLUSTER_SIGNAL:
            _cluster_stops.append(self.next_step())
            self._tell(f"{name} received (the cluster's time limit or a preemption is near)")
            self.requested = True
            return
        self._interrupts += 1
        if self._interrupts > 1:
            print(f"\nsecond {name}: stopping now without a checkpoint (the last one in {self.checkpoint_dir} "
                  "is kept)", file=sys.stderr)
            raise KeyboardInterrupt
        self._tell(f"{name} received", again=True)
        self.requested = True

    def _tell(self, what: str, again: bool = False):
        if self.announce:
            print(f"\n{what}: finishing step {self.next_step()}, then saving a checkpoint"
                  + (" (send it again to stop at once)" if again else ""), file=sys.stderr)

    def __enter__(self) -> "StopOnSignal":
        for sig in (signal.SIGINT, signal.SIGTERM, CLUSTER_SIGNAL):
            if sig is None:
                continue
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. embedded use)
                break
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        return False
