"""The mutation score of the last `mutmut run`, one row a module: what `make mutate` prints.

A mutant is killed when a test fails on it, when mypy rejects it (`make test` type-checks, so the
suite catches it without running a test) or when its tests time out (the change made the code
hang); it survives when every test still passes. Mutants no test reaches count as not killed.
The exit codes are mutmut's own (`mutmut.stats.status_by_exit_code`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

OUTCOME_BY_EXIT_CODE = {
    None: "not run",
    0: "survived",
    1: "killed",
    3: "killed",
    5: "no tests",
    33: "no tests",
    37: "mypy",
    36: "timeout",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
}
CAUGHT = ("killed", "mypy", "timeout")


def outcome(code: int | None) -> str:
    # Anything else (a crash, a signal) is a failure of the suite on the mutant: killed.
    return OUTCOME_BY_EXIT_CODE.get(code, "killed")


def main(folder: Path = Path("mutants")) -> int:
    rows = []
    for meta in sorted(folder.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(outcome(code) for code in codes.values())
        rows.append((str(meta.relative_to(folder)).removesuffix(".meta"), counts))
    if not rows:
        print("No mutation results: run `make mutate` first.")
        return 1
    print("| module | mutants | killed by a test | by mypy | timed out | survived | no tests | not run | score |")
    print("|---|---|---|---|---|---|---|---|---|")
    total = Counter()
    for name, counts in rows:
        total.update(counts)
        print(f"| {name} | {row(counts)} |")
    print(f"| all | {row(total)} |")
    return 0


def row(counts: Counter) -> str:
    cells = [sum(counts.values())] + [counts[kind] for kind in (*CAUGHT, "survived", "no tests", "not run")]
    return " | ".join(str(cell) for cell in cells) + f" | {score(counts)}"


def score(counts: Counter) -> str:
    caught = sum(counts[kind] for kind in CAUGHT)
    tried = caught + counts["survived"] + counts["no tests"]
    return f"{caught / tried:.0%}" if tried else "-"


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("mutants")))
