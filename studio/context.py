"""What the studio's tabs share: the registry, where results are saved, and cancel switches."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from studio.registry import Registry
from studio.runner import LocalRunner


class Cancellations:
    """One cancel switch per browser session: a new run gets a fresh switch, Cancel flips it."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            event = self._events[session] = threading.Event()
            return event

    def cancel(self, session: str) -> bool:
        with self._lock:
            event = self._events.get(session)
        if event is None:
            return False
        event.set()
        return True


@dataclass
class StudioContext:
    registry: Registry
    output_dir: Path
    default_model: str
    cancellations: Cancellations = field(default_factory=Cancellations)
    # Where the tabs send their jobs (method, settings, inputs).
    runner: LocalRunner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = LocalRunner(self.registry)
