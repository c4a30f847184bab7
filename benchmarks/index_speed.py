"""How long indexing an MSMT17-sized dataset takes (126,441 records, empty files).

Builds an MSMT17_V1 tree of empty-but-named files with list files of the official sizes
(train 30,248 + val 2,373, query 11,659, gallery 82,161) in a temporary folder, then times
``load_dataset("msmt17", ...)``: list parsing, existence checks and label-map lookup, no decoding.
Usage: python benchmarks/index_speed.py [--scale 1.0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from magnifier.data import load_dataset

SIZES = {"list_train.txt": (30248, 1041), "list_val.txt": (2373, 1041), "list_query.txt": (11659, 3060),
         "list_gallery.txt": (82161, 3060)}


def build(root: Path, scale: float) -> int:
    d = root / "MSMT17_V1"
    total = 0
    for name, (count, ids) in SIZES.items():
        folder = "train" if name in ("list_train.txt", "list_val.txt") else "test"
        n = max(1, int(count * scale))
        lines = []
        for i in range(n):
            pid = i % ids
            rel = f"{pid:04d}/{pid:04d}_{i:06d}_{i % 15 + 1:02d}_0303morning_{i % 100:04d}_{int(name == 'list_val.txt')}.jpg"
            path = d / folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            lines.append(f"{rel} {pid}\n")
        (d / name).write_text("".join(lines))
        total += n
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        n = build(Path(tmp), args.scale)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = load_dataset("msmt17", tmp)
        took = time.perf_counter() - t0
    print(f"fixture of {n:,} empty image files built in {built:.1f} s")
    print(f"load_dataset('msmt17'): {took:.2f} s for {len(data.train) + len(data.query) + len(data.gallery):,} records "
          f"({data.num_train_pids} train ids)")


if __name__ == "__main__":
    main()
