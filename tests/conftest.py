import os
import socket
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub: no network, an empty hub cache, a private build folder.
_scratch = Path(tempfile.mkdtemp(prefix="dit-studio-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = str(_scratch / "hub")
os.environ.setdefault("DIT_STUDIO_HOME", str(_scratch / "studio"))
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402

from studio.catalogue import Catalogue  # noqa: E402
from studio.registry import Registry  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TINY_MODELS = ["tiny-flux-dev", "tiny-flux-schnell", "tiny-sd3", "tiny-pixart-sigma", "tiny-sana", "tiny-sana-sprint"]


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return Catalogue.load()


@pytest.fixture(scope="session")
def registry(catalogue) -> Registry:
    """One registry for the whole run, as the studio has: built-in models load once."""
    return Registry(catalogue, device="cpu")


@pytest.fixture
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
