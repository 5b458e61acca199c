"""The mutation score of the last `mutmut run`, one row a module: what `make mutate` prints.

A mutant is killed when a test fails on it (or it times out: the change made the code hang);
it survives when every test still passes. Mutants no test reaches are counted apart.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1: "killed", 3: "killed", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}


def outcome(code: int | None) -> str:
    if code is None:
        return "not run"
    if code == 0:
        return "survived"
    if code in (5, 33):
        return "no tests"
    return "killed" if code in KILLED or code < 0 else "other"


def main(folder: Path = Path("mutants")) -> int:
    rows = []
    for meta in sorted(folder.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter(outcome(code) for code in codes.values())
        rows.append((str(meta.relative_to(folder)).removesuffix(".meta"), counts))
    if not rows:
        print("No mutation results: run `make mutate` first.")
        return 1
    print("| module | mutants | killed | survived | no tests | not run | score |")
    print("|---|---|---|---|---|---|---|")
    total = Counter()
    for name, counts in rows:
        total.update(counts)
        print(f"| {name} | {sum(counts.values())} | {counts['killed']} | {counts['survived']} | "
              f"{counts['no tests']} | {counts['not run']} | {score(counts)} |")  # fmt: skip
    print(f"| all | {sum(total.values())} | {total['killed']} | {total['survived']} | {total['no tests']} | "
          f"{total['not run']} | {score(total)} |")  # fmt: skip
    return 0


def score(counts: Counter) -> str:
    tried = counts["killed"] + counts["survived"] + counts["no tests"]
    return f"{counts['killed'] / tried:.0%}" if tried else "-"


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("mutants")))
