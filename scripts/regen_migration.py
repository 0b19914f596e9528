"""Regenerate the initial Alembic revision from `sop_pipeline/models.py`.

Only for the unreleased first schema: once a release is out, add new revisions with
`alembic revision --autogenerate` instead of rewriting this one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command

from sop_pipeline.db import MIGRATIONS_DIR, alembic_config, make_engine


def main() -> None:
    for old in (MIGRATIONS_DIR / "versions").glob("0001_*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'empty.db'}")
        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
    for new in (MIGRATIONS_DIR / "versions").glob("0001_*.py"):
        print(f"wrote {new}")


if __name__ == "__main__":
    main()
