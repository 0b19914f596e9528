"""Examples stored before verbatim training text (issue #13): found again and restored.

Releases before issue #13 stored an approved SOP renumbered: a wrapped line became a step and
the steps after it got new numbers. Those rows (`legacy_text`) are found by their wording
fingerprint when the same SOP is imported or approved again, and get the verbatim text in
place; `renumbered_examples` lists the ones that still look renumbered, for a person to
re-import. Rows stored since verbatim text are never rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from sop_pipeline import audit
from sop_pipeline.models import ExampleStatus, TrainingExample, eval_point
from sop_pipeline.sop_format.title_prompt import default_prompt
from sop_pipeline.sop_format.wording import continuation_steps, title_may_be_cut

if TYPE_CHECKING:  # examples calls this module while approving: no import back at run time
    from sop_pipeline.examples import PreparedSop


def renumbered_twin(
    session: Session, prepared: PreparedSop, channel: str | None = None, ts: str | None = None
) -> TrainingExample | None:
    """The example a release before issue #13 stored for this SOP, maybe renumbered: a
    legacy row with the same wording fingerprint, the same title (or the first line the old
    release kept of a wrapped one) and another text. None when the verbatim text is stored
    already, or no such row exists. Rows stored verbatim are never matched: two files of one
    SOP numbered differently (typed "5.1" and Word's "1.") are two examples, as approved.

    Of several, the example of this Slack message comes first, then approved before
    retracted, then the oldest."""
    if not prepared.wording:
        return None
    # One query for both questions (is the verbatim text stored? which legacy rows share the
    # wording?), and only the columns that choose: an approval never reads other texts.
    query = sa_select(
        col(TrainingExample.id), col(TrainingExample.title), col(TrainingExample.status),
        col(TrainingExample.slack_channel), col(TrainingExample.slack_ts),
        col(TrainingExample.content_hash),
    ).where(or_(col(TrainingExample.content_hash) == prepared.digest,
                and_(col(TrainingExample.wording_hash) == prepared.wording,
                     col(TrainingExample.legacy_text).is_(True))))
    rows = list(session.execute(query))
    if any(row[5] == prepared.digest for row in rows):
        return None
    twins = [row for row in rows if title_may_be_cut(row[1], prepared.title)]
    if not twins:
        return None
    example_id, *_ = min(twins, key=lambda row: (
        not (channel and ts and (row[3], row[4]) == (channel, ts)),
        row[2] != ExampleStatus.APPROVED, row[0] or 0))
    if example_id is None:
        return None
    return session.get(TrainingExample, example_id, populate_existing=True)


def restore_text(session: Session, example: TrainingExample, prepared: PreparedSop,
                 actor: str | None) -> bool:
    """Give `example` the verbatim text (and full title) in place of its renumbered one, with
    an audit event; id, approver, dates and status stay. False when another writer changed
    the row or stored this text first (the caller then treats it as a plain approval)."""
    old_hash = example.content_hash
    values: dict[str, Any] = {"sop_text": prepared.canonical, "content_hash": prepared.digest,
                              "eval_point": eval_point(prepared.digest),
                              "wording_hash": prepared.wording, "token_count": prepared.tokens,
                              "legacy_text": False}
    if prepared.title and prepared.title != example.title:
        values["title"] = prepared.title
        if example.prompt == default_prompt(example.title):  # derived from the cut title
            values["prompt"] = default_prompt(prepared.title)
    try:
        with session.begin_nested():  # another writer may have stored the text meanwhile
            result = session.exec(
                update(TrainingExample)
                .where(col(TrainingExample.id) == example.id,
                       col(TrainingExample.content_hash) == old_hash)
                .values(**values)
            )
    except IntegrityError:
        return False
    if result.rowcount != 1:
        return False
    changed = ", ".join(sorted(key for key in values if key not in ("wording_hash",
                                                                    "legacy_text")))
    audit.record(
        session, actor=actor or "system", action="restore_text",
        subject=f"example:{example.id}", old_value=old_hash, new_value=prepared.digest,
        reason=("re-approved SOP: the text an older release stored renumbered now keeps the "
                f"author's numbering ({changed})"),
    )
    session.flush()
    return True


@dataclass(frozen=True)
class RenumberedSuspect:
    """An approved example whose text looks renumbered by a release before issue #13."""

    example_id: int
    title: str
    lines: list[str]  # its numbered lines that read as the rest of the line before
    same_wording: list[int]  # other approved examples with the same wording fingerprint


def renumbered_examples(
    session: Session, batch: int = 500
) -> tuple[list[RenumberedSuspect], int]:
    """(suspects, legacy approved examples checked): examples stored before verbatim text
    whose numbered lines continue the line before. Reads the texts in batches of `batch`."""
    approved = col(TrainingExample.status) == ExampleStatus.APPROVED
    shared = (sa_select(col(TrainingExample.wording_hash)).where(approved)
              .group_by(col(TrainingExample.wording_hash)).having(func.count() > 1))
    twins: dict[str, list[int]] = {}
    for example_id, wording in session.execute(
        sa_select(col(TrainingExample.id), col(TrainingExample.wording_hash))
        .where(approved, col(TrainingExample.wording_hash).in_(shared))
    ):
        twins.setdefault(wording, []).append(example_id)
    suspects: list[RenumberedSuspect] = []
    checked, last_id = 0, 0
    while True:
        rows = session.exec(
            select(TrainingExample.id, TrainingExample.title, TrainingExample.sop_text,
                   TrainingExample.wording_hash)
            .where(TrainingExample.status == ExampleStatus.APPROVED,
                   col(TrainingExample.legacy_text).is_(True),
                   col(TrainingExample.id) > last_id)
            .order_by(col(TrainingExample.id)).limit(batch)
        ).all()
        if not rows:
            return suspects, checked
        for example_id, title, sop_text, wording in rows:
            assert example_id is not None  # a stored row
            checked, last_id = checked + 1, example_id
            lines = continuation_steps(sop_text)
            if lines:
                others = [i for i in twins.get(wording or "", []) if i != example_id]
                suspects.append(RenumberedSuspect(example_id, title or "", lines, others))
