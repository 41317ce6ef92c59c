"""A dependency-free progress bar: steps, rate, ETA and the latest metrics on one line."""
from __future__ import annotations

import sys
import time


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Redraws in place on a terminal; prints a line every ``every_s`` seconds otherwise (log files)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, stream=None, every_s: float = 30.0,
                 unit: str = "step"):
        self.total, self.n, self.start_n = total, initial, initial
        self.unit = unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = every_s
        self.t0 = time.time()
        self.last_print = 0.0
        self.postfix = ""
        self.printed_end = False

    def set_postfix(self, **values):
        parts = []
        for k, v in values.items():
            if isinstance(v, float):
                v = f"{v:.4g}" if k != "ips" else f"{v:.0f}"
            parts.append(f"{k} {v}")
        self.postfix = "  ".join(parts)
        self._draw(force=True)

    def update(self, n: int):
        self.n = n
        self._draw()

    def line(self) -> str:
        elapsed = time.time() - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        frac = self.n / max(1, self.total)
        bar = "#" * int(frac * 20)
        return (f"{self.unit} {self.n}/{self.total} [{bar:<20}] {frac:4.0%}  {_fmt_time(elapsed)}<{_fmt_time(eta)}"
                + (f"  {self.postfix}" if self.postfix else ""))

    def _draw(self, force: bool = False):
        if not self.enabled:
            return
        now = time.time()
        if self.tty:
            if force or now - self.last_print > 0.2 or self.n == self.total:
                self.stream.write("\r" + self.line() + "\033[K")
                self.stream.flush()
                self.last_print = now
        elif force and not self.printed_end and (now - self.last_print >= self.every_s or self.n == self.total):
            self._print_line(now)

    def _print_line(self, now: float):
        self.printed_end = self.n == self.total
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self.last_print = now

    def close(self):
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        elif not self.printed_end and self.n > self.start_n:
            self._print_line(time.time())
