"""Each session's results: saved to its own folder in shared mode, listed and deleted only there."""

import json

import pytest
from PIL import Image

from studio.errors import InvalidRequest
from studio.history import History
from studio.metadata import save_image


def result(history: History, session: str, seed: int):
    return save_image(Image.new("RGB", (8, 8)), {"model": "m", "seed": seed}, history.folder(session), f"m-{seed}")


def test_shared_sessions_see_only_their_own_results_and_a_reload_keeps_them(tmp_path):
    history = History(tmp_path, shared=True)
    ann = history.attach("tab-1", None)
    history.attach("tab-2", "not a token")  # a forged value is replaced by a fresh token
    result(history, "tab-1", 1)
    result(history, "tab-2", 2)
    assert [e.settings["seed"] for e in history.entries("tab-1")] == [1]
    assert [e.settings["seed"] for e in history.entries("tab-2")] == [2]
    history.attach("tab-1-reloaded", ann)  # the same browser after a reload brings its token back
    assert [e.settings["seed"] for e in history.entries("tab-1-reloaded")] == [1]
    assert history.entries("api-client") == []  # no token: a folder of its own


def test_deleting_takes_only_a_name_of_ones_own(tmp_path):
    history = History(tmp_path, shared=True)
    history.attach("mine", None)
    history.attach("theirs", None)
    theirs = result(history, "theirs", 7)
    mine = result(history, "mine", 3)
    mine.with_suffix(".zip").write_bytes(b"panels")
    for name in ("../" + theirs.name, str(theirs), theirs.name, "x.txt", ""):
        with pytest.raises(InvalidRequest):
            history.delete("mine", name)
    assert theirs.exists()
    history.delete("mine", mine.name)
    assert not mine.exists() and not mine.with_suffix(".zip").exists()
    assert history.entries("mine") == []


def test_locally_the_history_is_the_output_folder(tmp_path):
    history = History(tmp_path, shared=False)
    first, second = result(history, "a", 1), result(history, "b", 2)
    assert history.folder("a") == history.folder("b") == tmp_path
    assert {e.path for e in history.entries("a")} == {first, second}
    assert json.loads(json.dumps(history.entries("a")[0].settings))["model"] == "m"
