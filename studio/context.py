"""What the studio's tabs share: the registry, where results are saved, and cancel switches."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from studio.history import History
from studio.registry import Registry
from studio.runner import LocalRunner
from studio.sessions import SessionAdapters


class Cancellations:
    """The cancel switches of the jobs running for each session (a browser tab, or an API
    client: each has its own session). Cancel flips every switch of the session; a job's switch
    leaves with the job, so nothing accumulates and a later job starts unswitched."""

    def __init__(self) -> None:
        self._running: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def job(self, session: str) -> Iterator[threading.Event]:
        """A cancel switch for one job of the session, for as long as the job runs."""
        switch = threading.Event()
        with self._lock:
            self._running.setdefault(session, set()).add(switch)
        try:
            yield switch
        finally:
            with self._lock:
                switches = self._running.get(session, set())
                switches.discard(switch)
                if not switches:
                    self._running.pop(session, None)

    def cancel(self, session: str) -> bool:
        """Flip the session's running jobs' switches; False when none runs."""
        with self._lock:
            switches = list(self._running.get(session, ()))
        for switch in switches:
            switch.set()
        return bool(switches)

    def running(self) -> int:
        with self._lock:
            return sum(len(switches) for switches in self._running.values())


# One job at most: 50 steps of four 1024² images (or the same work in another shape).
SHARED_WORK_BUDGET = 50 * 4 * 1024 * 1024


@dataclass
class StudioContext:
    registry: Registry
    output_dir: Path
    default_model: str
    # Strangers share this process (a Space, a share link, a host open to the network): each
    # session sees only its own results.
    shared: bool = False
    cancellations: Cancellations = field(default_factory=Cancellations)
    # Where the tabs send their jobs (method, settings, inputs).
    runner: LocalRunner = field(init=False)
    history: History = field(init=False)
    adapters: SessionAdapters = field(init=False)

    def __post_init__(self) -> None:
        self.runner = LocalRunner(self.registry, SHARED_WORK_BUDGET if self.shared else None)
        self.history = History(self.output_dir, self.shared)
        self.adapters = SessionAdapters(self.registry, self.shared)
