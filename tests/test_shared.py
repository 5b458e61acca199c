"""A shared studio's limits: at most two GPU-slot jobs per visitor (running or waiting), and only
the models the studio offers."""

from __future__ import annotations

import time

import httpx
import pytest
from gradio_client import Client
from support import serve

from studio.cli import create_studio, offered_models, parse_args
from studio.errors import ModelUnavailable
from studio.registry import ModelState, Registry
from tabs.app import JOBS_PER_VISITOR, build_app
from tabs.common import model_choices

SLOW = ("tiny-flux-dev", "a red circle", "", 100, 3.5, 64, 64)


@pytest.fixture
def shared_app(tmp_path, free_port):
    args = parse_args(["--offline", "--shared", "--default-model", "tiny-flux-dev", "--output-dir", str(tmp_path)])
    studio = create_studio(args)
    demo = build_app(studio)
    try:
        yield serve(demo, free_port), studio
    finally:
        demo.close()


def test_a_visitor_has_at_most_two_jobs_in_the_gpu_slot_and_others_are_still_served(shared_app):
    url, _ = shared_app
    greedy = Client(url, verbose=False)
    jobs = [greedy.submit(*SLOW, seed, 8, api_name="/generate") for seed in range(JOBS_PER_VISITOR + 1)]
    deadline = time.monotonic() + 60
    while not any(job.done() for job in jobs):
        assert time.monotonic() < deadline, "no job was answered"
        time.sleep(0.02)
    # The one asked while two of its own were in the slot is refused at once...
    refused = [job for job in jobs if job.done()]
    assert len(refused) == 1 and "400 Bad Request" in str(refused[0].exception())
    # ...with the sentence the page shows, and so is any further one while those two run.
    fn_index = greedy._infer_fn_index("/generate", None)
    data = [*SLOW, 9, 1, [], [], 1.0]
    joined = httpx.post(
        f"{url}gradio_api/queue/join",
        json={"data": data, "fn_index": fn_index, "session_hash": greedy.session_hash, "event_data": None},
    )
    assert joined.status_code == 400 and "2 jobs running or waiting already" in joined.json()["detail"]
    # Another visitor is served while the first one's jobs run.
    other = Client(url, verbose=False)
    assert other.predict(*SLOW[:3], 2, *SLOW[4:], 0, 1, api_name="/generate")
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=300)
            outcomes.append("made")
        except Exception as error:
            outcomes.append(str(error))
    assert outcomes.count("made") == JOBS_PER_VISITOR
    assert sum("400" in outcome for outcome in outcomes) == 1
    # Once its jobs have ended the visitor is served again; quick updates were never limited.
    assert greedy.predict(*SLOW[:3], 2, *SLOW[4:], 0, 1, api_name="/generate")


def test_a_shared_studio_offers_the_built_ins_and_what_is_cached_and_nothing_else(catalogue):
    shared = offered_models(parse_args(["--offline"]), catalogue, shared=True)
    assert shared is not None and set(shared) == {spec.id for spec in catalogue if spec.builtin}
    assert offered_models(parse_args(["--offline"]), catalogue, shared=False) is None
    assert offered_models(parse_args(["--models", "all"]), catalogue, shared=True) is None
    assert offered_models(parse_args(["--models", "tiny-sd3", "shapes-flux"]), catalogue, shared=True) == [
        "tiny-sd3",
        "shapes-flux",
    ]
    with pytest.raises(Exception, match="no model 'nope'"):
        Registry(catalogue, offered=["nope"])


def test_a_model_not_offered_is_neither_listed_nor_run(catalogue, monkeypatch):
    monkeypatch.setenv("DIT_STUDIO_MODELS", "tiny-flux-dev, tiny-cogvideox")
    studio = create_studio(parse_args(["--offline", "--shared", "--default-model", "tiny-flux-dev"]))
    registry = studio.registry
    assert registry.state("tiny-sd3") is ModelState.NOT_OFFERED
    with pytest.raises(ModelUnavailable, match="not offered by this studio"), registry.use("tiny-sd3"):
        pass
    assert [model_id for _, model_id in model_choices(studio)] == ["tiny-flux-dev"]
    with registry.use("tiny-flux-dev") as pipe:
        assert pipe.transformer is not None
