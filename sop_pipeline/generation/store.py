"""Where drafts are kept: the pending row, the claim that lets one worker run it, the stored
outcome, and the result rebuilt from a row."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, or_, update
from sqlmodel import Session, col, select

from sop_pipeline import sop_format
from sop_pipeline.claims import claim as claim_once
from sop_pipeline.generation.messages import draft_notice, validate_request
from sop_pipeline.generation.recovery import current_worker
from sop_pipeline.models import Generation
from sop_pipeline.services import Services


@dataclass
class GenerationResult:
    """What one generation produced. `text` is the SOP as the model numbered it (the training
    text that an approval stores), without the DRAFT notice (empty unless
    `status == "completed"`); `markdown` has the notice on top."""

    generation_id: int
    status: str
    text: str
    sop: sop_format.SOP | None
    findings: list = field(default_factory=list)
    compliant: bool | None = None
    model: str | None = None
    mode: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int | None = None
    error: str | None = None
    draft_notice: str = ""
    markdown: str = ""
    repair_rounds: int = 0
    retrieved_example_ids: list[int] = field(default_factory=list)
    generated_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @property
    def summary(self) -> str:
        """One-paragraph compliance report (empty for failed generations)."""
        if not self.ok:
            return ""
        return sop_format.summarize(self.findings)


class RequestReplayed(Exception):
    """`start_generation`'s `claim_key` was claimed before: this request was handled already."""


@dataclass(frozen=True)
class ReplyAt:
    """Where a chat surface shows the draft: its thread and the reply message itself."""

    thread_ts: str
    ts: str


def start_generation(
    services: Services,
    request: str,
    requester: str | None,
    *,
    slack_channel: str | None = None,
    slack_thread_ts: str | None = None,
    slack_ts: str | None = None,
    claim_key: str | None = None,
) -> Generation:
    """Validate the request and store a pending Generation (committed). No provider call.
    `slack_ts` is the reply that will show the draft, when it is already posted.

    With `claim_key` (a chat command's own id), the key is claimed in the same transaction,
    so a replayed command stores nothing and raises `RequestReplayed`: one write, not two,
    before anything is posted (writers queue for SQLite's one writing connection)."""
    text = validate_request(request, services.settings.sop_max_request_chars)
    row = Generation(
        request=text, requester=requester, status="pending",
        worker=current_worker(),
        slack_channel=slack_channel, slack_thread_ts=slack_thread_ts, slack_ts=slack_ts,
        created_at=services.clock(),
    )
    with services.draft_session(write=True) as session:
        if claim_key is not None and not claim_once(session, claim_key, row.created_at):
            raise RequestReplayed(claim_key)
        session.add(row)
        session.commit()  # the id comes back with the INSERT; every other value is set here
    return row


def find_generation_by_message(session: Session, channel: str, ts: str) -> Generation | None:
    """The generation whose reply (or, failing that, request thread) is message `ts` in
    `channel`, the newest of several: one query."""
    query = select(Generation).where(
        Generation.slack_channel == channel,
        or_(col(Generation.slack_ts) == ts, col(Generation.slack_thread_ts) == ts),
    ).order_by(case((col(Generation.slack_ts) == ts, 0), else_=1), col(Generation.id).desc())
    return session.exec(query.limit(1)).first()


def claim(
    services: Services, generation_id: int, reply: ReplyAt | None = None,
) -> tuple[Generation, bool]:
    """Atomically move pending/failed → streaming, so two workers never run one request;
    `reply` (where the draft is shown, when it was posted after the row was stored) is
    recorded by the same UPDATE.

    A row left "streaming" by a worker that died is claimable again once it is older than
    twice the generation timeout plus a minute (no live worker can still be on it).
    """
    stale_before = services.clock() - timedelta(
        seconds=2 * services.settings.sop_generation_timeout_seconds + 60
    )
    claimable = or_(
        col(Generation.status).in_(("pending", "failed")),
        and_(col(Generation.status) == "streaming", col(Generation.created_at) < stale_before),
    )
    shown_at = {"slack_thread_ts": reply.thread_ts, "slack_ts": reply.ts} if reply else {}
    # One statement that returns the claimed row: on PostgreSQL one round trip in all.
    with services.draft_session(write=True, one_statement=True) as session:
        row = session.scalars(
            update(Generation)
            .where(col(Generation.id) == generation_id, claimable)
            .values(status="streaming", error=None, worker=current_worker(), **shown_at)
            .returning(Generation),
            # a fresh session holds no rows to update in Python: skip the ORM's evaluation
            execution_options={"synchronize_session": False},
        ).first()
        won = row is not None
        if not won:  # read before COMMIT: on SQLite a read after it would queue for the
            row = session.get(Generation, generation_id)  # writing connection once more
        session.commit()
        if row is None:
            raise LookupError(f"There is no SOP generation with id {generation_id}.")
        return row, won


def findings_json(findings: list) -> list[dict]:
    out = []
    for finding in findings:
        if is_dataclass(finding):
            # typeshed's is_dataclass also admits dataclass types; findings are instances
            out.append(asdict(finding))  # type: ignore[arg-type]
        else:
            out.append({k: getattr(finding, k, None)
                        for k in ("code", "severity", "message", "section")})
    return out


def _findings_from_json(items: list) -> list:
    out = []
    for item in items or []:
        try:
            out.append(sop_format.Finding(**item))
        except TypeError:
            continue
    return out


def finish(services: Services, generation_id: int, outcome: dict,
           row: Generation | None = None) -> GenerationResult:
    """Store a run's outcome (column values) and build the result from the row. `row` is the
    generation as its claim read it: the outcome is then written without reading it again,
    in one statement."""
    with services.draft_session(write=True, one_statement=row is not None) as session:
        if row is None:
            row = _store_outcome(session, generation_id, outcome)
        else:
            stored = session.exec(
                update(Generation).where(col(Generation.id) == generation_id).values(**outcome)
                .execution_options(synchronize_session=False))
            if stored.rowcount != 1:
                raise LookupError(f"There is no SOP generation with id {generation_id}.")
            for name, value in outcome.items():
                setattr(row, name, value)
        session.commit()  # the row keeps its values (expire_on_commit=False): no re-read
    return result_from_row(services, row)


def fail_before_running(services: Services, generation_id: int, error: str) -> None:
    """A stored request that will not run (its chat message could not be posted): failed at
    once with `error`, instead of pending until the recovery sweep finds it."""
    finish(services, generation_id,
           {"status": "failed", "error": error, "completed_at": services.clock()})


def _store_outcome(session: Session, generation_id: int, outcome: dict) -> Generation:
    """Write a run's outcome onto its row (flushed; the caller commits)."""
    row = session.get(Generation, generation_id)
    if row is None:
        raise LookupError(f"There is no SOP generation with id {generation_id}.")
    for name, value in outcome.items():
        setattr(row, name, value)
    session.add(row)
    session.flush()
    return row


def result_from_row(services: Services, row: Generation) -> GenerationResult:
    """Rebuild the result from storage (also used for already-completed generations)."""
    template = services.template
    text = (row.draft_text or "") if row.status == "completed" else ""
    sop = sop_format.parse(text, template) if text else None
    generated_at = row.completed_at or row.created_at or services.clock()
    notice = draft_notice(row.model, generated_at)
    markdown = ""
    if sop is not None:
        markdown = f"_{notice}_\n\n{sop_format.render_markdown(sop, template)}"
    return GenerationResult(
        generation_id=row.id or 0, status=row.status, text=text, sop=sop,
        findings=_findings_from_json(row.findings) if text else [],
        compliant=row.compliant, model=row.model, mode=row.mode,
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        latency_ms=row.latency_ms, error=row.error, draft_notice=notice, markdown=markdown,
        repair_rounds=row.repair_rounds,
        retrieved_example_ids=list(row.retrieved_example_ids or []),
        generated_at=generated_at,
    )

