"""Sixteen sessions at once, three jobs each, some cancelling: no job lost or made twice, every
job that was not cancelled returns the image the same request makes alone, and the queue
recovers afterwards."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from studio.generation import GenerationSettings, generate

SESSIONS, JOBS = 16, 3
REQUEST = ("tiny-flux-dev", "a red circle", "", 2, 3.5, 64, 64)


def picture(result) -> np.ndarray:
    gallery = result[0]
    return np.asarray(Image.open(gallery[0]["image"]).convert("RGB"), dtype=np.int16)


@pytest.mark.slow
def test_sixteen_sessions_share_the_studio_fairly(running_app, registry):
    client, output_dir = running_app
    url = client.src
    alone = {
        seed: np.asarray(next(generate(registry, GenerationSettings(
            model="tiny-flux-dev", prompt="a red circle", steps=2, guidance=3.5, width=64, height=64, seed=seed
        ))).image, dtype=np.int16)
        for seed in range(SESSIONS * JOBS)
    }  # fmt: skip

    # Each visitor connects before any job runs: what is under test is how the queue shares the
    # model among sessions, not how fast the API description answers a machine already busy.
    visitors = [Client(url, verbose=False) for _ in range(SESSIONS)]

    def visitor(number: int) -> list:
        own = visitors[number]
        jobs = [own.submit(*REQUEST, number * JOBS + k, 1, api_name="/generate") for k in range(JOBS)]
        cancelling = number % 4 == 3
        if cancelling:
            own.predict(api_name="/cancel")
        outcomes = []
        for k, job in enumerate(jobs):
            try:
                outcomes.append((number * JOBS + k, picture(job.result(timeout=300))))
            except Exception as error:
                assert cancelling, f"session {number} lost job {k}: {error}"
                outcomes.append((number * JOBS + k, None))
        return outcomes

    with ThreadPoolExecutor(SESSIONS) as pool:
        results = [outcome for outcomes in pool.map(visitor, range(SESSIONS)) for outcome in outcomes]
    made = [(seed, image) for seed, image in results if image is not None]
    assert all(np.array_equal(image, alone[seed]) for seed, image in made)  # each its own, none swapped
    served = sum(1 for number in range(SESSIONS) if number % 4 != 3) * JOBS
    assert len(made) >= served  # every job of a session that did not cancel came back
    assert len(list(output_dir.glob("*.png"))) == len(made)  # none made twice, none made unseen
    again = client.predict(*REQUEST, 7, 1, api_name="/generate")  # the queue recovered
    assert np.array_equal(picture(again), alone[7])
