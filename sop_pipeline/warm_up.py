"""Start-up warm-up: do once, before the first request, what a burst of requests would otherwise
do in many threads at the same time.

* The tokenizer's encoding tables load once (about 0.2 s), not in 50 racing drafting threads.
* The SOP template is read and the provider client built (it imports its HTTP stack).
* Every SQL statement a draft or an approval runs is compiled. SQLAlchemy compiles a statement
  the first time it runs and caches it; in the first burst after a start, 50 drafting and 40
  approving threads all met the empty cache together and each compiled the same statements
  (several milliseconds each, all under one interpreter lock). Here they run once in a
  transaction that is always rolled back, so nothing is stored. On PostgreSQL the rolled-back
  inserts still draw one value from each id sequence, as any rolled-back transaction does: ids
  have gaps, never duplicates.
* What start-up built to keep (modules, the tokenizer's tables, compiled statements) is moved
  out of the garbage collector's sight (`gc.freeze`): a full collection scanned all of it,
  an interpreter-wide pause of about 100 ms, and one fell in the first burst.
* Memory that start-up used and freed (migrations, loading the tokenizer) goes back to the
  operating system: about 7 MB of resident memory the bot would otherwise keep all its life.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import uuid

from sop_pipeline import examples, tokens
from sop_pipeline.claims import claim
from sop_pipeline.services import Services

log = logging.getLogger(__name__)


def warm_up(services: Services) -> None:
    """Everything above; the bot calls it after building its services, before serving."""
    from sop_pipeline.generation import warm_up as warm_up_drafting

    tokens.warm_up()
    warm_up_drafting(services)
    warm_statement_cache(services)
    settle_memory()


def warm_statement_cache(services: Services) -> None:
    """Run a draft's and an approval's statements once and roll them back. A failure here only
    costs speed, so it is logged and the bot starts anyway."""
    from sop_pipeline.generation.generate import exercise_statements as exercise_drafting

    tag = uuid.uuid4().hex[:12]
    with services.session() as session:
        try:
            exercise_drafting(session, services)
            claim(session, f"warm-up:{tag}", services.clock())
            examples.exercise_statements(session, services.template, services.settings, tag)
        except Exception:  # noqa: BLE001 - an optimisation must not stop the bot
            log.warning("could not warm the SQL statement cache; the first requests will be "
                        "slower", exc_info=True)
        finally:
            session.rollback()


def settle_memory() -> bool:
    """Collect garbage, freeze what survives (see above), and ask the C allocator to return
    free heap pages to the system; False where it cannot (only glibc has `malloc_trim`)."""
    gc.collect()
    gc.freeze()
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter is linked with
    except (OSError, AttributeError):
        return False
    trim(0)
    return True
