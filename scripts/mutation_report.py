"""The mutation score of the last `mutmut run`, one row a module: what `make mutate` prints.

A mutant is killed when a test fails on it, when mypy rejects it (`make test` type-checks, so the
suite catches it without running a test) or when its tests time out (the change made the code
hang); it survives when every test still passes. Mutants no test reaches count as not killed.
The exit codes are mutmut's own (`mutmut.stats.status_by_exit_code`).

A survivor is either killed by a new test or listed in `scripts/equivalent_mutants.toml` with the
reason it cannot change what the studio does: listed survivors get their own column, and the
report names every survivor that is not listed (and every listed mutant that no longer survives),
so the list cannot go stale unnoticed.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

EQUIVALENTS_FILE = Path(__file__).with_name("equivalent_mutants.toml")

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
COLUMNS = (*CAUGHT, "equivalent", "survived", "no tests", "not run")


def outcome(code: int | None) -> str:
    # Anything else (a crash, a signal) is a failure of the suite on the mutant: killed.
    return OUTCOME_BY_EXIT_CODE.get(code, "killed")


def equivalents(path: Path = EQUIVALENTS_FILE) -> dict[str, str]:
    """Mutant name -> why it cannot change behaviour."""
    with open(path, "rb") as handle:
        return {entry["name"]: entry["reason"] for entry in tomllib.load(handle).get("mutant", [])}


def main(folder: Path = Path("mutants")) -> int:
    listed = equivalents()
    rows, unexplained = [], []
    for meta in sorted(folder.rglob("*.py.meta")):
        counts: Counter = Counter()
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            kind = outcome(code)
            if kind == "survived" and name in listed:
                kind = "equivalent"
                del listed[name]  # what is left at the end no longer survives
            elif kind in ("survived", "no tests"):
                unexplained.append(f"{name} ({kind})")
            counts[kind] += 1
        rows.append((str(meta.relative_to(folder)).removesuffix(".meta"), counts))
    if not rows:
        print("No mutation results: run `make mutate` first.")
        return 1
    print("| module | mutants | killed by a test | by mypy | timed out | equivalent | survived | no tests | not run "
          "| score | score without the equivalents |")  # fmt: skip
    print("|---" * 11 + "|")
    total: Counter = Counter()
    for name, counts in rows:
        total.update(counts)
        print(f"| {name} | {row(counts)} |")
    print(f"| all | {row(total)} |")
    for name in unexplained:
        print(f"not killed and not listed as equivalent: {name}")
    for name in listed:
        print(f"listed as equivalent but not a survivor now: {name}")
    return 0


def row(counts: Counter) -> str:
    cells = [sum(counts.values())] + [counts[kind] for kind in COLUMNS]
    return " | ".join(str(cell) for cell in cells) + f" | {score(counts)} | {score(counts, False)}"


def score(counts: Counter, with_equivalents: bool = True) -> str:
    caught = sum(counts[kind] for kind in CAUGHT)
    tried = caught + counts["survived"] + counts["no tests"] + (counts["equivalent"] if with_equivalents else 0)
    return f"{caught / tried:.1%}" if tried else "-"


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("mutants")))
