"""Retrieval at library scale: what one draft, one status report and one approval's count cost
with N approved examples, on SQLite and PostgreSQL.

For each database and N (default 0, 1,000 and 10,000) a fresh database is pre-loaded with N
varied examples (benchmarks/library.py), then a separate process measures:

* prompt assembly for one draft: the database ranking, reading the chosen rows, counting their
  tokens and building the messages, exactly as a draft in retrieval mode does (p50/p99 over
  varied requests),
* the `sop-bot status` report (`sop_pipeline.status.status_report`, p50/p99),
* the approval confirmation's count query (`examples.example_counts`, p50/p99),
* the measuring process's peak RSS (VmHWM).

Each figure is printed as wall-clock time and, on the line below, as the measuring process's
CPU time (which leaves out waiting for a core on a busy machine, and PostgreSQL's own work).

    python benchmarks/retrieval.py                        # both databases, N = 0, 1000, 10000
    python benchmarks/retrieval.py --database sqlite --sizes 0 1000

Targets at 10,000: prompt assembly < 30 ms p99, status < 300 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_URL = os.environ.get("SOP_BENCH_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGETS = {"prompt_p99_ms": 30.0, "status_p99_ms": 300.0}
REQUESTS = [
    "Write an SOP for cleaning of the tablet compression machine, line {n}",
    "Write an SOP for calibration of the pH meter in the QC laboratory",
    "Write an SOP for operation of the steam sterilizer (autoclave)",
    "Write an SOP for line clearance before packaging on the blister line {n}",
    "Write an SOP for receipt and sampling of raw materials in the warehouse",
    "Write an SOP for cleaning of the fluid bed dryer filter bags",
    "SOP for preventive maintenance of the air compressor drain valve",
    "Procedure to verify the metal detector with test pieces every hour",
    "How do we sanitise the CIP skid spray balls in the dairy plant?",
    "Write an SOP for handling the forklift truck battery charging",
    "Write an SOP for torque wrench calibration in the machine shop",
    "Write an SOP for start-up and shutdown of the purified water system",
]


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def _timed(fn, runs: int) -> tuple[list[float], list[float]]:  # noqa: ANN001
    """Wall-clock and this process's CPU milliseconds per call. On a shared machine the wall
    clock includes waiting for a core; the CPU time does not (nor the PostgreSQL server's)."""
    times, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return times, cpu


def measure(database_url: str, runs: int) -> dict:
    """Run in its own process, against an already pre-loaded database."""
    from sop_pipeline import tokens
    from sop_pipeline.examples import example_counts
    from sop_pipeline.generation import prompts
    from sop_pipeline.generation.retrieval import ranker_for, retrieve, stored_example_tokens
    from sop_pipeline.services import build_services
    from sop_pipeline.settings import load_settings
    from sop_pipeline.status import status_report

    settings = load_settings(None, database_url=database_url, openai_api_key="sk-bench",
                             data_dir=Path(tempfile.mkdtemp()))
    services = build_services(settings, upgrade_db=False)
    tokens.warm_up()
    template = services.template
    ranker = ranker_for(services)
    counter = iter(range(10**9))

    def assemble() -> None:  # what generate._retrieval_messages does for one draft
        request = REQUESTS[next(counter) % len(REQUESTS)].format(n=next(counter) % 7)
        with services.session() as session:
            chosen = retrieve(
                session, request, k=settings.sop_retrieval_k,
                token_budget=settings.sop_retrieval_token_budget,
                count_tokens=stored_example_tokens,
                ranker=ranker)
        prompts.retrieval_messages(settings.sop_system_prompt, template, request,
                                   [c.document for c in chosen])

    def counts() -> None:
        with services.session() as session:
            example_counts(session, settings)

    def status() -> None:
        status_report(services).lines()

    for fn in (assemble, counts, status):  # first calls compile statements and fill caches
        fn()
    result = {}
    for name, fn, n in (("prompt", assemble, runs), ("status", status, max(runs // 10, 10)),
                        ("count", counts, max(runs // 4, 20))):
        times, cpu = _timed(fn, n)
        result[f"{name}_p50_ms"] = round(_percentile(times, 0.5), 2)
        result[f"{name}_p99_ms"] = round(_percentile(times, 0.99), 2)
        result[f"{name}_cpu_p50_ms"] = round(_percentile(cpu, 0.5), 2)
        result[f"{name}_cpu_p99_ms"] = round(_percentile(cpu, 0.99), 2)
    with open("/proc/self/status") as status_file:
        hwm = next(line for line in status_file if line.startswith("VmHWM"))
    result["peak_rss_mb"] = round(int(hwm.split()[1]) / 1024, 1)
    services.engine.dispose()
    return result


def _fresh_database(kind: str, workdir: Path) -> tuple[str, callable]:
    if kind == "sqlite":
        path = workdir / f"retrieval-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite:///{path}", lambda: None
    from sqlalchemy import create_engine, text

    name = f"sopbench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop


def run(kind: str, size: int, runs: int, workdir: Path) -> dict:
    from benchmarks.library import preload

    url, drop = _fresh_database(kind, workdir)
    try:
        started = time.perf_counter()
        preload(url, size)
        loaded = time.perf_counter() - started
        out = subprocess.run(
            [sys.executable, __file__, "--measure", url, "--runs", str(runs)],
            check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result.update(database=kind, examples=size, preload_s=round(loaded, 1))
        return result
    finally:
        drop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1000, 10_000])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--measure", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.runs)))
        return 0
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    print(f"{'database':<9} {'examples':>8} {'prompt p50':>10} {'p99':>7} {'status p50':>10} "
          f"{'p99':>7} {'count p50':>9} {'p99':>7} {'peak RSS':>9} {'preload':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            for size in args.sizes:
                r = run(kind, size, args.runs, Path(tmp))
                print(f"{kind:<9} {size:>8} {r['prompt_p50_ms']:>8.1f}ms "
                      f"{r['prompt_p99_ms']:>5.1f}ms {r['status_p50_ms']:>8.1f}ms "
                      f"{r['status_p99_ms']:>5.1f}ms "
                      f"{r['count_p50_ms']:>7.1f}ms {r['count_p99_ms']:>5.1f}ms "
                      f"{r['peak_rss_mb']:>7.1f}MB {r['preload_s']:>7.1f}s", flush=True)
                print(f"{'':<9} {'CPU':>8} {r['prompt_cpu_p50_ms']:>8.1f}ms "
                      f"{r['prompt_cpu_p99_ms']:>5.1f}ms {r['status_cpu_p50_ms']:>8.1f}ms "
                      f"{r['status_cpu_p99_ms']:>5.1f}ms {r['count_cpu_p50_ms']:>7.1f}ms "
                      f"{r['count_cpu_p99_ms']:>5.1f}ms", flush=True)
    print(f"Targets at 10,000: prompt assembly p99 < {TARGETS['prompt_p99_ms']:.0f} ms, "
          f"status < {TARGETS['status_p99_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
