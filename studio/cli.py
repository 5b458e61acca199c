"""`dit-studio` / `python -m studio`: parse flags, build the registry, launch the browser UI.

This is the composition root, the one place that joins the engine to the Gradio tabs.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from studio.memory import AUTOMATIC, POLICY_NAMES

if TYPE_CHECKING:
    from studio.catalogue import Catalogue

SHARE_SERVER = ("api.gradio.app", 443)
# Uploads (images, LoRA files) larger than this are refused by the server before a handler runs.
MAX_UPLOAD = "512mb"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dit-studio", description="DiT Studio: a browser studio for Diffusion Transformers."
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to serve on")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    parser.add_argument("--offline", action="store_true", help="never reach the hub: cached and built-in models only")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best there is)")
    parser.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32"],
        default=None,
        help="default: bf16 on cuda, fp16 on mps, fp32 on cpu",
    )
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="GB",
        help="memory the loaded models may use on the device (default: 90%% of the GPU)",
    )
    parser.add_argument(
        "--memory-policy",
        choices=POLICY_NAMES,
        default=AUTOMATIC,
        help="how models sit in memory: auto (the fastest plan that fits the budget: text encoders offloaded, "
        "then the transformer int8 or 4-bit, then everything streamed) or one policy for every model",
    )
    parser.add_argument("--default-model", default="shapes-flux", help="catalogue id selected at start")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs"), help="where result PNGs are saved")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument(
        "--auth", action="append", default=[], metavar="USER:PASSWORD", help="require a login (repeatable)"
    )
    parser.add_argument(
        "--auth-file", type=Path, default=None, help="a file of USER:PASSWORD lines (# comments allowed)"
    )
    parser.add_argument(
        "--share-without-auth", action="store_true", help="allow --share with no login (anyone with the link)"
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="strangers share this studio: each session sees only its own results "
        "(on by itself with --share, a host open to the network, or on Spaces)",
    )
    parser.add_argument(
        "--mcp",
        action="store_true",
        help="also serve the studio's tools over the Model Context Protocol at /gradio_api/mcp/ "
        "(a shared studio only behind a login)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="ID",
        help="the only catalogue models this studio runs ('all': every one). Shared studios default to the "
        "built-ins and the models already in the local cache, so no visitor starts a download (on Spaces: the "
        "DIT_STUDIO_MODELS secret, ids separated by spaces or commas)",
    )
    return parser.parse_args(argv)


def offered_models(args: argparse.Namespace, catalogue: Catalogue, shared: bool) -> list[str] | None:
    """The models the studio runs: --models (or DIT_STUDIO_MODELS); in a shared studio by default
    the built-ins and what is already in the local cache; None: every catalogue model."""
    from studio.loading import in_local_cache, required_repos

    named = args.models or os.environ.get("DIT_STUDIO_MODELS", "").replace(",", " ").split() or None
    if named == ["all"] or (named is None and not shared):
        return None
    if named is not None:
        return named
    return [
        spec.id
        for spec in catalogue
        if spec.builtin or all(in_local_cache(repo, marker) for repo, marker in required_repos(spec))
    ]


def logins(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (user, password) pairs from --auth, --auth-file and, on Spaces, the DIT_STUDIO_AUTH
    secret (same USER:PASSWORD lines); ValueError names a malformed one without echoing it."""
    lines = list(args.auth)
    if args.auth_file is not None:
        try:
            lines += args.auth_file.read_text().splitlines()
        except OSError as error:
            raise ValueError(f"--auth-file: cannot read {args.auth_file} ({error.strerror})") from None
    lines += os.environ.get("DIT_STUDIO_AUTH", "").splitlines()
    pairs = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, password = line.partition(":")
        if not colon or not user.strip() or not password:
            raise ValueError(f"login {number} is not USER:PASSWORD")
        pairs.append((user.strip(), password))
    return pairs


def internet_reachable(address: tuple[str, int] = SHARE_SERVER, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def create_studio(args: argparse.Namespace):
    if args.offline:
        # Read by huggingface_hub at import time, so set before anything imports it.
        os.environ["HF_HUB_OFFLINE"] = "1"
    from studio.catalogue import Catalogue
    from studio.context import StudioContext
    from studio.device import choose_device
    from studio.memory import installed_quantizers, policy_named, unavailable_reason
    from studio.registry import Registry

    device, dtype = choose_device(args.device, args.dtype)
    if args.memory_policy != AUTOMATIC:
        reason = unavailable_reason(policy_named(args.memory_policy), device, installed_quantizers())
        if reason is not None:
            raise ValueError(f"--memory-policy {args.memory_policy} cannot run on {device}: {reason}")
    catalogue = Catalogue.load()
    catalogue.get(args.default_model)
    shared = shared_deployment(args)
    offered = offered_models(args, catalogue, shared)
    registry = Registry(
        catalogue,
        device=device,
        dtype=dtype,
        memory_budget_gb=args.memory_budget,
        offered=offered,
        memory_policy=args.memory_policy,
    )
    return StudioContext(
        registry=registry,
        output_dir=args.output_dir.resolve(),
        default_model=args.default_model,
        shared=shared,
    )


def shared_deployment(args: argparse.Namespace) -> bool:
    open_host = args.host not in ("127.0.0.1", "localhost", "::1")
    return bool(args.shared or args.share or open_host or os.environ.get("SPACE_ID"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from studio.errors import StudioError

    try:
        studio = create_studio(args)
    except (StudioError, ValueError) as error:
        sys.exit(f"dit-studio: {error}")
    from tabs.app import build_app, launch_options

    try:
        auth = logins(args)
    except ValueError as error:
        sys.exit(f"dit-studio: {error}")
    share = args.share
    if share and not auth and not args.share_without_auth:
        sys.exit(
            "dit-studio: --share makes the studio public: give --auth USER:PASSWORD (or --auth-file), "
            "or --share-without-auth to publish it to anyone with the link."
        )
    if args.mcp and studio.shared and not auth:
        sys.exit(
            "dit-studio: --mcp on a shared studio lets any program run its tools: give --auth USER:PASSWORD "
            "(or --auth-file) as well."
        )
    if share and (args.offline or not internet_reachable()):
        print(
            f"--share: no public link, the internet is not reachable from here; "
            f"the studio is still served at http://{args.host}:{args.port}"
        )
        share = False
    demo = build_app(studio, mcp=args.mcp)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=share,
        inbrowser=not args.no_browser,
        # Shared: results reach a session only through its own history and outputs.
        allowed_paths=[] if studio.shared else [str(studio.output_dir)],
        auth=auth or None,
        **launch_options(),
        max_file_size=MAX_UPLOAD,
        mcp_server=args.mcp,
    )


if __name__ == "__main__":
    main()
