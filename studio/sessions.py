"""Adapters a visitor adds are theirs alone when strangers share the studio.

In shared mode an adapter added through the UI is registered under a name derived from the
session (unguessable, so no one else can name it), listed only to that session, capped in
number, and removed with its files when the session ends. Locally (one user) names are used as
given and adapters stay for the life of the studio, as before.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from studio.errors import InvalidRequest
from studio.registry import Registry

MAX_SESSION_ADAPTERS = 4


def allowed_repos() -> set[str]:
    """Hub repositories a shared studio fetches LoRAs from: the In-Context LoRA sets' and those
    its operator lists in DIT_STUDIO_ALLOWED_REPOS (comma-separated)."""
    listed = {repo.strip() for repo in os.environ.get("DIT_STUDIO_ALLOWED_REPOS", "").split(",") if repo.strip()}
    return {"ali-vilab/In-Context-LoRA"} | listed


class SessionAdapters:
    def __init__(self, registry: Registry, shared: bool):
        self.registry = registry
        self.shared = shared
        # session -> [(model id, registered name)]
        self._owned: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def prefix(self, session: str) -> str:
        return "s" + hashlib.sha256(session.encode()).hexdigest()[:10] + "-" if self.shared else ""

    def registered_name(self, session: str, name: str) -> str:
        return self.prefix(session) + name

    def choices(self, session: str, model_id: str) -> list[tuple[str, str]]:
        """(shown name, registered name) of the adapters this session may use on the model: its
        own, and the studio's (an image set's LoRA); never another session's."""
        prefix = self.prefix(session)
        shown = []
        for name in self.registry.adapters(model_id):
            if prefix and name.startswith(prefix):
                shown.append((name.removeprefix(prefix), name))
            elif not self._is_session_name(name):
                shown.append((name, name))
        return shown

    @staticmethod
    def _is_session_name(name: str) -> bool:
        return len(name) > 12 and name[11] == "-" and all(c in "0123456789abcdef" for c in name[1:11])

    def add(self, session: str, model_id: str, name: str, upload: str | None, hub: list[str]) -> str:
        """Add (or, under a name it has, replace) an adapter for the session; its registered name."""
        registered = self.registered_name(session, name)
        replacing = registered in self.registry.adapters(model_id)
        with self._lock:
            owned = self._owned.setdefault(session, [])
            if self.shared and not replacing and len(owned) >= MAX_SESSION_ADAPTERS:
                raise InvalidRequest(f"At most {MAX_SESSION_ADAPTERS} adapters a visitor; remove one first.")
        if upload:
            self.registry.import_adapter(model_id, registered, upload)
        else:
            if self.shared and hub and hub[0] not in allowed_repos():
                raise InvalidRequest(
                    f"This shared studio fetches LoRAs only from {', '.join(sorted(allowed_repos()))}; "
                    "upload the file instead."
                )
            self.registry.fetch_adapter(model_id, registered, *hub)
        if not replacing:
            with self._lock:
                owned.append((model_id, registered))
        return registered

    def remove(self, session: str, model_id: str, registered: str) -> None:
        if self.shared and not registered.startswith(self.prefix(session)):
            raise InvalidRequest("Only the adapters you added can be removed here.")
        path = self._file(model_id, registered)
        self.registry.remove_adapter(model_id, registered)
        with self._lock:
            owned = self._owned.get(session, [])
            if (model_id, registered) in owned:
                owned.remove((model_id, registered))
        if self.shared and path is not None:
            path.unlink(missing_ok=True)

    def end(self, session: str) -> None:
        """The session left: its adapters and their copies go with it."""
        with self._lock:
            owned = self._owned.pop(session, [])
        for model_id, registered in owned:
            try:
                self.remove(session, model_id, registered)
            except InvalidRequest:
                continue

    def _file(self, model_id: str, registered: str) -> Path | None:
        path = self.registry.adapter_files.file_of(model_id, registered)
        # Only the studio's own copies of uploads are ever deleted.
        return path if path is not None and "loras" in path.parts else None
