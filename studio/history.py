"""Where each session's results go and what it may see again.

Single-user (local) mode: every result goes to the output folder and the history lists it all, as
a person's own folder. Shared mode (a Space, a share link, a host open to the network): each
browser keeps a random owner token (in its own storage, so a reload keeps it), results go to that
owner's folder, and a session lists and deletes only its own. Names that come from a browser are
checked to be file names inside that folder, never paths.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import InvalidRequest
from studio.metadata import png_text

OWNER = re.compile(r"[0-9a-f]{32}")
HISTORY_LIMIT = 60


@dataclass(frozen=True)
class Entry:
    path: Path
    settings: dict[str, Any]

    @property
    def caption(self) -> str:
        what = self.settings.get("method", "text to image")
        return f"{what} · {self.settings.get('model', '?')} · seed {self.settings.get('seed', '?')}"


class History:
    def __init__(self, root: Path, shared: bool):
        self.root = root
        self.shared = shared
        # Gradio session -> owner token: a session's results are its owner's.
        self._owners: dict[str, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def new_owner() -> str:
        return secrets.token_hex(16)

    def attach(self, session: str, owner: str | None) -> str:
        """The owner of a session: the browser's stored token when it is one, else a new one."""
        owner = owner if isinstance(owner, str) and OWNER.fullmatch(owner) else self.new_owner()
        with self._lock:
            self._owners[session] = owner
        return owner

    def folder(self, session: str) -> Path:
        """Where the session's results are saved (and listed from)."""
        if not self.shared:
            return self.root
        with self._lock:
            owner = self._owners.get(session)
            if owner is None:  # an API client, with no browser storage: its session is its owner
                owner = self._owners[session] = self.new_owner()
        return self.root / "sessions" / owner

    def entries(self, session: str, limit: int = HISTORY_LIMIT) -> list[Entry]:
        """The session's results that carry studio settings, newest first."""
        folder = self.folder(session)
        if not folder.is_dir():
            return []
        pictures = sorted(folder.glob("*.png"), key=lambda path: path.stat().st_mtime, reverse=True)
        found = []
        for path in pictures:
            try:
                text = png_text(path)
            except InvalidRequest:
                continue
            if text is not None:
                found.append(Entry(path, json.loads(text)))
            if len(found) == limit:
                break
        return found

    def find(self, session: str, name: str) -> Path:
        """One of the session's results by its file name (a bare name of its own folder: never a
        path a visitor chooses), or InvalidRequest."""
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".png"):
            raise InvalidRequest("Pick one of your results first.")
        path = self.folder(session) / name
        if not path.is_file():
            raise InvalidRequest("That result is not in your history (any more).")
        return path

    def delete(self, session: str, name: str) -> None:
        """Delete one of the session's results (and the panels and zip that came with a set)."""
        path = self.find(session, name)
        folder = path.parent
        for companion in [path, path.with_suffix(".zip"), *folder.glob(f"{path.stem}-panel-*.png")]:
            companion.unlink(missing_ok=True)
