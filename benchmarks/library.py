"""Pre-load a database with N approved examples of varied text, for benchmarks at library scale.

Each example is a house-format SOP made from a random procedure (cleaning, calibration,
operation...) of a random piece of equipment in a random area and industry, with 4 to 30 steps
drawn from the fixture library's real steps (tests/data/sops) and from step patterns filled
with equipment-specific parts, checks and values. So titles, vocabulary and lengths vary the
way a plant's library does, and full-text ranking has real work to do.

    from benchmarks.library import preload
    preload("sqlite:///bench.db", 10_000)   # about 10 s on SQLite; upgrades the schema first

Rows go in with multi-row INSERTs in one transaction per 1,000; the search index's triggers
fire for each row, exactly as for an approval.
"""

from __future__ import annotations

import hashlib
import random
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "data" / "sops"
BATCH = 1000

PROCEDURES = [
    ("Cleaning of", "cleaning"), ("Calibration of", "calibration"),
    ("Operation of", "operation"), ("Preventive Maintenance of", "maintenance"),
    ("Qualification of", "qualification"), ("Sanitation of", "sanitation"),
    ("Changeover of", "changeover"), ("Line Clearance for", "line clearance"),
    ("Inspection of", "inspection"), ("Verification of", "verification"),
    ("Handling and Storage of", "handling"), ("Breakdown Maintenance of", "breakdown"),
    ("Performance Check of", "performance check"), ("Start-up and Shutdown of", "start-up"),
]
EQUIPMENT = {
    "Tablet Compression Machine": ["punches", "dies", "turret", "hopper", "feed frame"],
    "Fluid Bed Dryer": ["filter bags", "product container", "air handling unit", "inlet probe"],
    "Rapid Mixer Granulator": ["impeller", "chopper", "discharge valve", "bowl"],
    "Autoclave": ["chamber", "door gasket", "vent valve", "pressure gauge"],
    "pH Meter": ["electrode", "buffer solutions", "temperature probe"],
    "Analytical Balance": ["weighing pan", "draft shield", "level indicator"],
    "Metal Detector": ["reject mechanism", "test pieces", "conveyor belt", "aperture"],
    "Torque Wrench": ["ratchet head", "scale", "square drive"],
    "CIP Skid": ["caustic tank", "acid tank", "spray balls", "conductivity sensor"],
    "Blister Packing Machine": ["forming station", "sealing roller", "foil reel", "cutter"],
    "HPLC System": ["column", "pump seals", "detector lamp", "injector"],
    "Dissolution Tester": ["paddles", "vessels", "water bath", "shafts"],
    "Coating Pan": ["spray guns", "baffles", "exhaust duct", "peristaltic pump"],
    "Pasteurizer": ["plate heat exchanger", "holding tube", "flow diversion valve"],
    "Homogenizer": ["valve seat", "plungers", "pressure gauge"],
    "Retort": ["steam spreader", "temperature recorder", "basket"],
    "Capping Machine": ["chuck", "cap sorter", "torque head"],
    "Laminar Air Flow Unit": ["HEPA filter", "pre-filter", "UV lamp", "magnehelic gauge"],
    "Purified Water System": ["RO membrane", "UV steriliser", "storage tank", "loop"],
    "Walk-in Cold Room": ["evaporator", "door curtain", "temperature logger"],
    "Forklift Truck": ["forks", "battery", "hydraulic hoses", "mast"],
    "Air Compressor": ["oil separator", "air dryer", "receiver tank", "drain valve"],
    "Spray Dryer": ["atomiser", "cyclone", "drying chamber"],
    "CNC Lathe": ["chuck jaws", "tool turret", "coolant tank", "spindle"],
    "Label Printer": ["print head", "ribbon", "platen roller"],
    "Incubator": ["shelves", "thermostat", "door seal"],
    "Sieve Shaker": ["mesh", "clamp", "timer"],
    "Filling Line": ["nozzles", "buffer tank", "check weigher"],
    "X-ray Inspection System": ["shielding curtains", "generator", "reject bin"],
    "Dust Collector": ["cartridges", "hopper", "pulse valves"],
}
AREAS = ["production area", "granulation suite", "packing hall", "QC laboratory",
         "microbiology laboratory", "warehouse", "dispensing booth", "dairy plant",
         "bakery line", "cold store", "utility block", "grade C cleanroom", "machine shop",
         "bottling hall", "raw material store", "finished goods store"]
INDUSTRIES = ["pharmaceutical plant", "food factory", "dairy", "medical device plant",
              "beverage plant", "contract manufacturer", "API plant", "cosmetics plant"]
ROLES = ["Operator", "Production Officer", "QA Officer", "Engineering Technician",
         "Microbiologist", "Warehouse Assistant", "QC Analyst", "Shift Supervisor"]
HEADS = ["Head - Production", "Head - Quality Assurance", "Head - Engineering",
         "Head - Quality Control", "Plant Manager", "Head - Warehouse"]
PATTERNS = [
    "Check the {part} of the {eq} for {defect} and record the result in the {log}.",
    "Clean the {part} with {agent} and wipe dry with a lint-free cloth.",
    "Verify that the {part} reads within {low} to {high} {unit} before use.",
    "Remove the {part} and inspect it for {defect}; replace it if damaged.",
    "Switch off the {eq} and apply the lock-out tag before touching the {part}.",
    "Record the {part} reading every {minutes} minutes in the {log}.",
    "Rinse the {part} with {agent} until the rinse water is clear.",
    "Inform the {role} if the {part} shows {defect}.",
    "Fix the status label 'CLEANED' on the {eq} after the {part} is dry.",
    "Calibrate the {part} against the reference standard at {low} and {high} {unit}.",
    "Allow the {eq} to run empty for {minutes} minutes and listen for abnormal noise.",
    "Attach the printout of the {part} check to the batch record.",
]
DEFECTS = ["cracks", "residue", "corrosion", "wear", "leaks", "loose fittings", "discolouration",
           "product build-up", "foreign matter", "abnormal vibration"]
AGENTS = ["purified water", "70% isopropyl alcohol", "1% detergent solution",
          "hot potable water", "2% caustic solution", "approved sanitiser"]
LOGS = ["equipment log book", "cleaning record", "calibration record", "batch record",
        "maintenance register", "usage log"]
UNITS = ["°C", "bar", "psi", "g", "mg", "pH", "rpm", "Nm", "µS/cm"]
ABBREVIATIONS = ["SOP: Standard Operating Procedure", "QA: Quality Assurance",
                 "QC: Quality Control", "CIP: Cleaning In Place", "GMP: Good Manufacturing "
                 "Practice", "HEPA: High Efficiency Particulate Air", "RO: Reverse Osmosis",
                 "PPE: Personal Protective Equipment", "LOTO: Lock-Out Tag-Out"]


def _fixture_steps() -> list[str]:
    """Real procedure steps from the fixture library (parsed with the house template)."""
    from sop_pipeline import sop_format

    template = sop_format.load_template(None)
    steps: list[str] = []
    for path in sorted(FIXTURES.iterdir()):
        if path.suffix not in (".txt", ".md"):
            continue
        sop = sop_format.parse(path.read_text(encoding="utf-8"), template)
        section = sop.section("procedure")
        steps += [item.text for item in (section.items if section else []) if item.text]
    return steps


def _step(rng: random.Random, eq: str, parts: list[str]) -> str:
    low = rng.randint(1, 120)
    return rng.choice(PATTERNS).format(
        part=rng.choice(parts), eq=eq.lower(), defect=rng.choice(DEFECTS),
        agent=rng.choice(AGENTS), log=rng.choice(LOGS), low=low, high=low + rng.randint(1, 40),
        unit=rng.choice(UNITS), minutes=rng.choice([5, 10, 15, 30, 60]),
        role=rng.choice(ROLES).lower())


def make_sop(rng: random.Random, number: int, real_steps: list[str]) -> tuple[str, str]:
    """(title, canonical house-format text) of one varied SOP."""
    head, verb = rng.choice(PROCEDURES)
    eq, parts = rng.choice(list(EQUIPMENT.items()))
    area, industry = rng.choice(AREAS), rng.choice(INDUSTRIES)
    title = f"{head} {eq} in the {area.title()} ({number})"
    n_steps = rng.choice([4, 5, 6, 8, 10, 12, 15, 20, 25, 30])
    steps = [rng.choice(real_steps) if rng.random() < 0.35 else _step(rng, eq, parts)
             for _ in range(n_steps)]
    roles = rng.sample(ROLES, rng.randint(1, 3))
    abbreviations = ["SOP: Standard Operating Procedure",
                     *rng.sample(ABBREVIATIONS[1:], rng.randint(0, 3))]
    lines = [
        f"Title: {title}", "",
        f"1.0 Objective: To lay down the procedure for {verb} of the {eq.lower()} "
        f"({', '.join(rng.sample(parts, min(2, len(parts))))}) in the {area}.", "",
        f"2.0 Scope: Applicable to the {eq.lower()} in the {area} of the {industry}.", "",
        "3.0 Responsibility:",
        *[f"3.{i} {role}" for i, role in enumerate(roles, start=1)], "",
        f"4.0 Accountability: {rng.choice(HEADS)}", "",
        "5.0 Procedure:",
        *[f"5.{i} {step}" for i, step in enumerate(steps, start=1)], "",
        "6.0 Abbreviations:", *abbreviations,
    ]
    return title, "\n".join(lines)


def preload(database_url: str, count: int, *, seed: int = 15) -> None:
    """Insert `count` approved examples with varied texts (schema upgraded first)."""
    from sqlalchemy import insert

    from sop_pipeline import db
    from sop_pipeline.examples import default_prompt
    from sop_pipeline.models import TrainingExample, eval_point
    from sop_pipeline.tokens import count_tokens

    engine = db.make_engine(database_url)
    db.upgrade(engine)
    rng = random.Random(seed)
    real_steps = _fixture_steps()
    now = datetime.now(UTC)
    try:
        with engine.connect() as conn:
            start = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM training_example")
            first = int(start.scalar_one()) + 1
        for offset in range(0, count, BATCH):
            rows = []
            for number in range(first + offset, first + min(offset + BATCH, count)):
                title, body = make_sop(rng, number, real_steps)
                rows.append({
                    "prompt": default_prompt(title), "sop_text": body, "title": title,
                    "content_hash": (digest := hashlib.sha256(body.encode()).hexdigest()),
                    "eval_point": eval_point(digest),
                    "source": "import", "source_path": f"benchmark/{number}.txt",
                    "approver": "UBENCH", "approved_at": now, "status": "approved",
                    "token_count": count_tokens(body), "created_at": now,
                })
            with engine.begin() as conn:
                conn.execute(insert(TrainingExample), rows)
        if engine.dialect.name == "postgresql":  # what autovacuum does soon after a bulk load
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()


if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database_url")
    parser.add_argument("count", type=int)
    args = parser.parse_args()
    started = time.perf_counter()
    preload(args.database_url, args.count)
    print(f"{args.count} examples in {time.perf_counter() - started:.1f} s")
