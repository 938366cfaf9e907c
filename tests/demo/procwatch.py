"""Which processes a command started, and whether any of them outlived it."""

from __future__ import annotations

import contextlib
import threading

import psutil


class Descendants:
    """Samples a process's tree (recursively) until it exits, in a background thread."""

    def __init__(self, pid: int) -> None:
        self.seen: dict[int, float] = {}  # pid -> create time (tells a reused pid apart)
        self._root = psutil.Process(pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        done = threading.Event()
        while self._alive():
            with contextlib.suppress(psutil.Error):
                for child in self._root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        self.seen.setdefault(child.pid, child.create_time())
            done.wait(0.2)  # a sampling period: there is no event to wait for

    def _alive(self) -> bool:
        try:
            return self._root.is_running() and self._root.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)

    def survivors(self) -> list[str]:
        out = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{pid} {' '.join(p.cmdline())}")
        return out
