"""Prompt tokens per request: fine-tuned mode versus retrieval mode, offline.

Fine-tuning exists to make every request cheap: the fine-tuned model needs only the system
prompt and the request, while the base model needs the format and example SOPs in its prompt.
This builds both prompts with the real prompt builders (no network) over an example library
(by default the fixture SOPs in tests/data/sops/) and counts o200k_base tokens.

    python benchmarks/prompt_cost.py [--sops DIR] [--k 3] [--budget 6000]

Goal: the fine-tuned prompt is at most 1/20 of the retrieval prompt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sop_pipeline import sop_format  # noqa: E402
from sop_pipeline.generation import prompts  # noqa: E402
from sop_pipeline.generation.retrieval import (  # noqa: E402
    Document,
    example_messages,
    select_examples,
)
from sop_pipeline.settings import load_settings  # noqa: E402
from sop_pipeline.tokens import count_chat_tokens  # noqa: E402

DEFAULT_SOPS = ROOT / "tests" / "data" / "sops"
GOAL_RATIO = 20.0
REQUESTS = (
    "Write an SOP for cleaning of the tablet compression machine",
    "Write an SOP for calibration of the pH meter",
    "Write an SOP for operation of the steam sterilizer (autoclave)",
    "Write an SOP for line clearance before packaging",
    "Write an SOP for receipt and sampling of raw materials in the warehouse",
    "Write an SOP for cleaning of the fluid bed dryer",
)


def load_library(folder: Path) -> list[Document]:
    """Every .txt/.md SOP in `folder`, canonicalised, with a prompt made from its title."""
    template = sop_format.load_template(None)
    docs: list[Document] = []
    files = sorted(p for p in folder.iterdir() if p.suffix in (".txt", ".md"))
    for number, path in enumerate(files, start=1):
        sop = sop_format.parse(path.read_text(encoding="utf-8"), template)
        title = sop.title or path.stem.replace("_", " ")
        text = sop_format.render_canonical(sop, template)
        docs.append(Document(id=number, title=title, prompt=f"Write an SOP for {title}",
                             text=text))
    return docs


def measure(request: str, library: list[Document], *, system_prompt: str, k: int,
            budget: int) -> tuple[int, int, int]:
    """(fine-tuned tokens, retrieval tokens, examples used) for one request."""
    template = sop_format.load_template(None)
    fine_tuned = count_chat_tokens(prompts.fine_tuned_messages(system_prompt, request))
    chosen = select_examples(
        request, library, k=k, token_budget=budget,
        count_tokens=lambda d: count_chat_tokens(example_messages(d)) - 3,
    )
    messages = prompts.retrieval_messages(
        system_prompt, template, request, [c.document for c in chosen]
    )
    return fine_tuned, count_chat_tokens(messages), len(chosen)


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(env_file=None)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sops", type=Path, default=DEFAULT_SOPS, help="example SOP folder")
    parser.add_argument("--k", type=int, default=settings.sop_retrieval_k)
    parser.add_argument("--budget", type=int, default=settings.sop_retrieval_token_budget)
    args = parser.parse_args(argv)
    if not args.sops.is_dir():
        print(f"No SOP folder at {args.sops}; pass --sops DIR.", file=sys.stderr)
        return 2
    library = load_library(args.sops)
    print(f"Library: {len(library)} SOPs from {args.sops}; k={args.k}, budget={args.budget}")
    print(f"{'request':<72} {'fine-tuned':>10} {'retrieval':>10} {'examples':>8}")
    total_ft = total_rt = 0
    for request in REQUESTS:
        ft, rt, used = measure(request, library, system_prompt=settings.sop_system_prompt,
                               k=args.k, budget=args.budget)
        total_ft, total_rt = total_ft + ft, total_rt + rt
        print(f"{request[:72]:<72} {ft:>10} {rt:>10} {used:>8}")
    ratio = total_rt / total_ft if total_ft else float("inf")
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    print(f"Total prompt tokens: fine-tuned {total_ft}, retrieval {total_rt}")
    print(f"Ratio retrieval/fine-tuned: {ratio:.1f}x (fine-tuned prompt is 1/{ratio:.0f} of "
          f"retrieval; goal at most 1/{GOAL_RATIO:.0f}: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
