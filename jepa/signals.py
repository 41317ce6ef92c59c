"""Stopping a run cleanly: the first SIGINT/SIGTERM lets the step finish and a checkpoint be written."""
from __future__ import annotations

import signal
import sys


class StopOnSignal:
    """Within ``with``: the first SIGINT/SIGTERM sets ``requested``; a second raises KeyboardInterrupt at once.

    ``next_step()`` numbers the step being finished in the message; ``announce`` prints it (rank 0).
    Outside the main thread signals stay as they are.
    """

    def __init__(self, next_step, checkpoint_dir, announce: bool = True):
        self.next_step, self.checkpoint_dir, self.announce = next_step, checkpoint_dir, announce
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            print(f"\nsecond {name}: stopping now without a checkpoint (the last one in {self.checkpoint_dir} "
                  "is kept)", file=sys.stderr)
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print(f"\n{name} received: finishing step {self.next_step()}, then saving a checkpoint (send it again "
                  "to stop at once)", file=sys.stderr)

    def __enter__(self) -> "StopOnSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
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
