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


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return Catalogue.load()


@pytest.fixture(scope="module")
def registry(catalogue) -> Registry:
    """A registry for each test module, so no module depends on what another left loaded or
    registered (adapters, ControlNets); within a module built-in models load once."""
    return Registry(catalogue, device="cpu")


@pytest.fixture
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def running_app(tmp_path, free_port):
    """The studio served offline on a free port, with a gradio_client Client on it (the output
    folder beside it); Gradio is imported only by the tests that serve it."""
    from gradio_client import Client
    from support import serve

    from studio.cli import create_studio, parse_args
    from tabs.app import build_app

    args = parse_args(
        ["--offline", "--default-model", "tiny-flux-dev", "--output-dir", str(tmp_path), "--port", str(free_port)]
    )
    demo = build_app(create_studio(args))
    try:
        url = serve(demo, free_port, allowed_paths=[str(tmp_path)])
        yield Client(url, verbose=False), tmp_path
    finally:
        demo.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
