"""CPU seconds, context switches and RSS of running processes (psutil)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil


class ProcMeter:
    """CPU seconds of one process (own, and of its reaped children)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)

    def cpu(self) -> tuple[float, float]:
        t = self.proc.cpu_times()
        return float(t.user + t.system), float(t.children_user + t.children_system)

    def system_cpu(self) -> float:
        """The kernel's part of the process's own CPU (syscalls: pipes, sockets; on
        loopback a send also runs the receiver's TCP path)."""
        return float(self.proc.cpu_times().system)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def voluntary_ctx(self) -> int:
        """Times the process blocked with nothing to do (in epoll): a proxy for how
        many pieces the data moved in."""
        return int(self.proc.num_ctx_switches().voluntary)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)


@dataclass
class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread."""

    meter: ProcMeter
    interval: float = 0.05
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter() - start, self.meter.rss()))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)
