"""The README is how a user learns the studio: it keeps a section for every tab and its two-command
quick start (an edit that cut a dozen sections once passed every other test)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# Tabs whose section is named otherwise: the agent's is the ChatDiT chat; the history (each
# session's own results) is told where sessions are kept private.
SECTION_OF = {"Agent": "Chat agent", "History": "Sharing safely"}


def test_every_tab_of_the_app_has_its_section():
    tabs = re.findall(r'gr\.Tab\("([^"]+)"', (ROOT / "tabs" / "app.py").read_text())
    headings = re.findall(r"^## (.+)$", README, flags=re.MULTILINE)
    assert len(tabs) >= 10
    missing = [tab for tab in tabs if not any(h.startswith(SECTION_OF.get(tab, tab)) for h in headings)]
    assert not missing, f"README has no section for {missing}"


def test_the_quick_start_is_two_commands_and_ci_runs_the_second():
    quick_start = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in quick_start.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
