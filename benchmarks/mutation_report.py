"""Mutation score per module from a `make mutation` run (mutmut's results under mutants/).

    python benchmarks/mutation_report.py              # the table (Markdown), as in the README
    python benchmarks/mutation_report.py --survivors  # and the name of every surviving mutant

Score = killed / (mutants that were run): a mutant that no selected test reaches ("no tests")
counts against the score, one skipped on purpose does not. `mutmut show <name>` prints a
survivor's diff.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

# mutmut 3's exit codes (mutmut/stats.py); any other code is "suspicious".
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 255: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
          37: "type check", None: "not checked", -9: "crashed", -11: "crashed"}
COLUMNS = ["killed", "survived", "no tests", "timeout", "not checked"]


def load(root: Path) -> dict[str, dict[str, int | None]]:
    """{module path: {mutant name: exit code}} from every ``*.meta`` file under ``root``."""
    out = {}
    for meta in sorted(root.rglob("*.py.meta")):
        rel = meta.relative_to(root).as_posix()[: -len(".meta")]
        out[rel] = json.loads(meta.read_text())["exit_code_by_key"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="mutants", type=Path)
    p.add_argument("--survivors", action="store_true")
    args = p.parse_args()
    data = load(args.root)
    if not data:
        raise SystemExit(f"error: no mutmut results under {args.root}/; run `make mutation` first")
    print("| module | mutants | " + " | ".join(COLUMNS) + " | score |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    total = Counter()
    survivors = []
    for module, codes in data.items():
        counts = Counter(STATUS.get(c, "suspicious") for c in codes.values())
        total.update(counts)
        run = sum(counts.values()) - counts["skipped"] - counts["not checked"]
        score = f"{100 * (counts['killed'] + counts['timeout']) / run:.1f} %" if run else "-"
        print(f"| `{module.removeprefix('src/')}` | {len(codes)} | " + " | ".join(str(counts[c]) for c in COLUMNS)
              + f" | {score} |")
        survivors += [name for name, c in codes.items() if STATUS.get(c) in ("survived", "no tests")]
    run = sum(total.values()) - total["skipped"] - total["not checked"]
    if run:
        print(f"| all | {sum(total.values())} | " + " | ".join(str(total[c]) for c in COLUMNS)
              + f" | {100 * (total['killed'] + total['timeout']) / run:.1f} % |")
    if args.survivors:
        print("\nsurvived or reached by no test:")
        print("\n".join(survivors))


if __name__ == "__main__":
    main()
