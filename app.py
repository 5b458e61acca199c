"""Hugging Face Spaces entry point (README front matter: app_file: app.py)."""

from studio.cli import main

main(["--host", "0.0.0.0", "--no-browser"])
