"""Mutation score per module from a `make mutation` run (mutmut's results under mutants/).

    python benchmarks/mutation_report.py              # the table (Markdown), as in the README
    python benchmarks/mutation_report.py --survivors  # and the name of every surviving mutant
    python benchmarks/mutation_report.py --sample 150 --seed 0 models/branches.py
        # 150 not-yet-run mutants of that module, drawn at random (names for `mutmut run`)

Score = killed / (mutants that were run): a mutant that no selected test reaches ("no tests")
counts against the score, one skipped on purpose does not. `mutmut show <name>` prints a
survivor's diff.
"""

from __future__ import annotations

import argparse
import json
import random
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
    p.add_argument("--sample", type=int, default=0,
                   help="print this many not-yet-run mutants of each MODULE instead of the table: a "
                        "random sample for modules whose full run takes hours (the model's mutants run "
                        "about 12 s of tests each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("modules", nargs="*", help="module paths (suffixes, e.g. models/branches.py) for --sample")
    args = p.parse_args()
    data = load(args.root)
    if not data:
        raise SystemExit(f"error: no mutmut results under {args.root}/; run `make mutation` first")
    if args.sample:
        rng = random.Random(args.seed)
        for module, codes in data.items():
            if any(module.endswith(m) for m in args.modules):
                todo = sorted(name for name, c in codes.items() if c is None)
                print("\n".join(rng.sample(todo, min(args.sample, len(todo)))))
        return
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
