"""How fast SOP files are read, parsed, checked and turned into training text, offline.

`sop-bot import` of a 10,000-file library spends its CPU here, before any database work.
Reads every fixture (tests/data/sops, quirks, real_sops) N times, then one very long
hard-wrapped SOP to show the parser stays linear on long items.

    python benchmarks/parse_corpus.py [--rounds 50] [--long-steps 5000]

Goal: well over 100 files per second on one core; the long SOP in about linear time
(doubling --long-steps about doubles its time).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    from sop_pipeline.sop_format import load_template, parse, render_training_text, validate
    from sop_pipeline.sop_format.documents import read_document

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--long-steps", type=int, default=5000)
    args = parser.parse_args()
    template = load_template(None)
    data = ROOT / "tests" / "data"
    files = sorted(
        p for folder in ("sops", "quirks", "real_sops") for p in (data / folder).iterdir()
        if p.name != "SOURCES.md"
    )

    started = time.perf_counter()
    for _ in range(args.rounds):
        for path in files:
            sop = parse(read_document(path).text, template)
            validate(sop, template)
            render_training_text(sop, template)
    elapsed = time.perf_counter() - started
    count = args.rounds * len(files)
    print(f"{count} files read+parsed+validated+rendered in {elapsed:.2f} s: "
          f"{count / elapsed:.0f} files/s ({1000 * elapsed / count:.2f} ms per file)")

    for steps in (args.long_steps, 2 * args.long_steps):
        text = long_sop(steps)
        started = time.perf_counter()
        sop = parse(text, template)
        validate(sop, template)
        render_training_text(sop, template)
        elapsed = time.perf_counter() - started
        print(f"one SOP with {steps} steps wrapped at 50 columns ({len(text) // 1024} KiB, "
              f"{text.count(chr(10))} lines): {elapsed:.2f} s")


def long_sop(steps: int) -> str:
    step = "Wipe the surface with a lint-free cloth soaked in purified water and let it dry."
    lines = ["Title: Long procedure", "1.0 Objective: To test.", "2.0 Scope: Tests.",
             "3.0 Responsibility: Operator", "4.0 Accountability: QA", "5.0 Procedure:"]
    for n in range(1, steps + 1):
        lines.extend(textwrap.wrap(f"5.{n} {step}", 50))
    lines.append("6.0 Abbreviations: None")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
