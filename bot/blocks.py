"""Block Kit rendering: SOP drafts, compliance findings, the status dashboard and App Home.

Slack rejects a message with more than 50 blocks or a section text over 3,000 characters
(`invalid_blocks`), so long drafts are split into several messages here; drafts too long even
for that are attached as a file by the caller (see `MAX_DRAFT_MESSAGES`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from bot import render
from sop_pipeline.training.run_messages import state_words

MAX_SECTION_CHARS = 3000
MAX_BLOCKS = 50
MAX_HOME_BLOCKS = 100
MAX_HEADER_CHARS = 150
MAX_TEXT_CHARS = 3000  # fallback/notification text we send; Slack truncates at 40,000
MAX_DRAFT_MESSAGES = 4
PROGRESS_TAIL_CHARS = 2800

APPROVE_ACTION = "sop_approve"
REGENERATE_ACTION = "sop_regenerate"
DOCX_ACTION = "sop_download_docx"
MODEL_ROLLBACK_ACTION = "sop_model_rollback"
MODEL_BASE_ACTION = "sop_model_activate_base"

Block = dict[str, Any]


def escape(text: str) -> str:
    """Untrusted text for mrkdwn: `bot.render.mrkdwn` (escaped, invisible controls removed)."""
    return render.mrkdwn(text)


def split_text(text: str, limit: int = MAX_SECTION_CHARS) -> list[str]:
    """Split at line breaks (or, for a single huge line, hard) into chunks of <= limit."""
    chunks: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line) > limit:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:limit])
            line = line[limit:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            chunks.append(current)
            current = line
        else:
            current = candidate
    if current or not chunks:
        chunks.append(current)
    return chunks


def section(text: str) -> Block:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def sections(text: str) -> list[Block]:
    """One or more section blocks for `text` (already mrkdwn), each within the limit."""
    return [section(chunk) for chunk in split_text(text) if chunk.strip()]


def context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:MAX_SECTION_CHARS]}]}


def header(text: str) -> Block:
    text = " ".join(render.plain(text).split()) or "SOP draft"
    if len(text) > MAX_HEADER_CHARS:
        text = text[: MAX_HEADER_CHARS - 1] + "…"
    return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": False}}


def button(text: str, action_id: str, value: str, style: str | None = None) -> dict:
    element = {"type": "button", "action_id": action_id, "value": value,
               "text": {"type": "plain_text", "text": text}}
    if style:
        element["style"] = style
    return element


def draft_actions(generation_id: int) -> Block:
    value = str(generation_id)
    return {
        "type": "actions",
        "block_id": f"sop_draft_{generation_id}",
        "elements": [
            button("Approve as example", APPROVE_ACTION, value, "primary"),
            button("Regenerate", REGENERATE_ACTION, value),
            button("Download .docx", DOCX_ACTION, value),
        ],
    }


# --- SOP drafts -----------------------------------------------------------------------------


def title_line(structure: dict) -> str:
    title = structure.get("title")
    return f"Title: {title}" if title else "SOP draft"


def sop_body_blocks(structure: dict) -> list[Block]:
    """The SOP as the house format writes it (`render_canonical`: "Title: …", "N.0 Heading:
    body", "N.k step"), so what people read is what is approved and exported; headings bold."""
    blocks: list[Block] = [header(title_line(structure))]
    for part in structure.get("sections", []):
        heading = " ".join(p for p in (part.get("number"), part.get("heading")) if p) + ":"
        first = f"*{escape(heading)}*"
        if part.get("body"):
            first += " " + escape(part["body"])
        lines = [first]
        for item in part.get("items", []):
            if "line" in item:  # as the training text writes it: nested bullets indented
                lines.append(escape(item["line"]))
                continue
            prefix = f"{item['number']} " if item.get("number") else ""
            lines.append(escape(prefix + item["text"]))
        blocks.extend(sections("\n".join(lines)))
    return blocks


def findings_text(findings: Iterable[Any], limit: int = 20) -> str:
    """Findings as a bulleted mrkdwn list (errors first); `findings` are sop_format Findings."""
    ordered = sorted(findings, key=lambda f: f.severity != "error")
    lines = [f"• {'❌' if f.severity == 'error' else '⚠️'} {escape(f.message)}"
             for f in ordered[:limit]]
    if len(ordered) > limit:
        lines.append(f"• …and {len(ordered) - limit} more.")
    return "\n".join(lines)


def compliance_line(findings: list[Any], compliant: bool | None) -> str:
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    if compliant and not findings:
        return ":white_check_mark: Follows the house format."
    if compliant:
        return f":white_check_mark: Follows the house format ({warnings} warning(s))."
    return f":x: Does not follow the house format yet ({errors} error(s), {warnings} warning(s))."


def draft_messages(
    structure: dict, *, findings: list[Any], compliant: bool | None, model: str | None,
    mode: str | None, draft_notice: str | None, generation_id: int,
) -> list[list[Block]]:
    """The draft as one or more messages of <= 50 blocks; the last carries findings, model
    and the buttons so they sit under the end of the SOP."""
    notice = draft_notice or "DRAFT: not approved for use until reviewed under your SOP process."
    body = [context(f":warning: *{escape(notice)}*")] + sop_body_blocks(structure)
    footer: list[Block] = [{"type": "divider"}, section(compliance_line(findings, compliant))]
    if findings:
        footer.extend(sections(findings_text(findings)))
    footer.append(context(f"Model: `{escape(model or 'unknown')}` · mode: {escape(mode or '?')}"
                          f" · draft #{generation_id}"))
    footer.append(draft_actions(generation_id))
    blocks = body + footer
    messages: list[list[Block]] = []
    while len(blocks) > MAX_BLOCKS:
        messages.append(blocks[:MAX_BLOCKS])
        blocks = blocks[MAX_BLOCKS:]
    messages.append(blocks)
    return messages


def draft_file_summary(
    structure: dict, *, findings: list[Any], compliant: bool | None, model: str | None,
    mode: str | None, draft_notice: str | None, generation_id: int,
) -> list[Block]:
    """When a draft is too long for Slack messages: a summary; the SOP goes in a file."""
    notice = draft_notice or "DRAFT: not approved for use until reviewed."
    blocks = [
        context(f":warning: *{escape(notice)}*"),
        header(title_line(structure)),
        section("This draft is too long to show in Slack, so it is attached as a file below."),
        section(compliance_line(findings, compliant)),
    ]
    if findings:
        blocks.extend(sections(findings_text(findings, limit=10)))
    blocks.append(context(f"Model: `{escape(model or 'unknown')}` · mode: {escape(mode or '?')}"
                          f" · draft #{generation_id}"))
    blocks.append(draft_actions(generation_id))
    return blocks


def progress_text(text: str, requester: str | None = None) -> str:
    """What a placeholder shows while the draft streams in: the latest part of the model's
    text, rendered like everything else (`render.code`: escaped, no fence break-out)."""
    tail = text[-PROGRESS_TAIL_CHARS:]
    if len(text) > PROGRESS_TAIL_CHARS:
        tail = "…" + tail.split("\n", 1)[-1]
    return f":hourglass_flowing_sand: Drafting…\n{render.code(tail)}" if tail.strip() else (
        ":hourglass_flowing_sand: Drafting your SOP…"
    )


# --- status dashboard -------------------------------------------------------------------------


def _when(value: Any) -> str:
    if value in (None, ""):
        return "—"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    text = str(value)
    return text.replace("T", " ")[:16] + (" UTC" if "T" in text else "")


def _run_line(run: dict) -> str:
    parts = [f"#{run.get('id', '?')} {escape(state_words(run.get('state')))}",
             _when(run.get("finished_at") or run.get("created_at"))]
    if run.get("model"):
        parts.append(f"`{escape(str(run['model']))}`")
    if run.get("error_message"):
        parts.append(escape(str(run["error_message"]))[:300])
    if run.get("chart_url"):
        parts.append(f"<{run['chart_url']}|loss chart>")
    return "• " + " · ".join(parts)


def status_blocks(report: dict) -> list[Block]:
    """The admin dashboard from `sop_pipeline.status.status_report(...).to_dict()`."""
    blocks: list[Block] = [header("SOP Bot status")]
    if report.get("active_model"):
        model = (f"*Active model:* `{escape(report['active_model'])}` since "
                 f"{_when(report.get('active_model_since'))}")
    else:
        model = (f"*Active model:* none fine-tuned yet; drafting with "
                 f"`{escape(str(report.get('base_model') or '?'))}` and retrieval.")
    backend = f"*Backend:* {escape(str(report.get('backend', '?')))}"
    if not report.get("retraining_enabled", True):
        backend += " (retraining disabled)"
    blocks.append(section(f"{model}\n{backend}"))
    blocks.append(section(
        f"*Examples:* {report.get('approved', 0)} approved, "
        f"{report.get('new_since_last_training', 0)} of {report.get('threshold', '?')} new "
        f"since the last training, {report.get('retracted', 0)} retracted."
    ))
    blocks.append(section(f"*Next scheduled check:* {_when(report.get('next_check'))}"))
    run = report.get("active_run")
    if run:
        loss = ""
        if run.get("train_loss") is not None:
            loss = f", step {run.get('step')}, latest loss {float(run['train_loss']):.4f}"
        if run.get("valid_loss") is not None:
            loss += f" (validation {float(run['valid_loss']):.4f})"
        job = f", job `{escape(str(run['job_id']))}`" if run.get("job_id") else ""
        text = (f"*Running:* run #{run.get('id')}, {escape(state_words(run.get('state')))}"
                f"{job}{loss}")
        if run.get("error_message"):
            text += f"\nRetrying after: {escape(str(run['error_message']))[:500]}"
        blocks.append(section(text))
    else:
        blocks.append(section("*Running:* no training run in progress."))
    runs = report.get("recent_runs") or []
    if runs:
        blocks.extend(sections("*Last runs:*\n" + "\n".join(_run_line(r) for r in runs[:5])))
    days = report.get("days_to_cutoff")
    if days is not None:
        icon = ":warning: " if int(days) <= 30 else ""
        blocks.append(context(
            f"{icon}{int(days)} day(s) left before the provider's fine-tuning cutoff; base "
            f"model shutdown in {report.get('days_to_shutdown', '?')} day(s)."
        ))
    if report.get("deprecation_warning"):
        blocks.append(context(f":warning: {escape(str(report['deprecation_warning']))}"))
    blocks.extend(training_backend_blocks(report.get("training_backends") or []))
    actions = model_actions(report)
    if actions is not None:
        blocks = blocks[: MAX_BLOCKS - 1] + [actions]
    return blocks[:MAX_BLOCKS]


def confirm_dialog(title: str, text: str, confirm: str, *, danger: bool = True) -> dict:
    """A Block Kit `confirm` object: Slack asks "are you sure?" before sending the click.
    Limits: title 100, text 300, button labels 30 characters."""
    dialog: dict[str, Any] = {
        "title": {"type": "plain_text", "text": title[:100]},
        "text": {"type": "mrkdwn", "text": text[:300]},
        "confirm": {"type": "plain_text", "text": confirm[:30]},
        "deny": {"type": "plain_text", "text": "Cancel"},
    }
    if danger:
        dialog["style"] = "danger"
    return dialog


def model_actions(report: dict) -> Block | None:
    """Admin buttons under the status: roll back, and switch to the base model (each with a
    confirmation). The value carries the active version, so a click on an old status message
    after someone else switched does nothing."""
    current = report.get("active_model")
    base = f"base model {report.get('base_model') or ''} + retrieval".replace("  ", " ")
    shown = current or base
    value = str(report.get("active_version_id") or "base")
    elements = []
    target = report.get("rollback_to")
    if target:
        element = button("Roll back", MODEL_ROLLBACK_ACTION, value, "danger")
        element["confirm"] = confirm_dialog(
            "Roll back the model?",
            f"Drafts switch from `{escape(str(shown))}` back to `{escape(str(target))}`. The "
            "switch is audited and announced in the admin channel.", "Roll back")
        elements.append(element)
    if current:
        element = button("Use base model", MODEL_BASE_ACTION, value)
        element["confirm"] = confirm_dialog(
            "Switch to the base model?",
            f"Drafts switch from `{escape(str(current))}` to the `{escape(base)}`. The switch "
            "is audited and announced in the admin channel.", "Use base model")
        elements.append(element)
    if not elements:
        return None
    return {"type": "actions", "block_id": "sop_model_actions", "elements": elements}


# --- sunset: can each configured backend train, and until when --------------------------------


def training_backend_blocks(backends: list[dict]) -> list[Block]:
    """One line per configured fine-tuning backend (from sop_pipeline.training.sunset)."""
    if not backends:
        return []
    lines = []
    for item in backends:
        name = escape(str(item.get("backend", "?")))
        if item.get("can_train"):
            until = (f"until {_when(item['until'])}" if item.get("until")
                     else "no announced end")
            lines.append(f"• *{name}*: can train ({until})")
        else:
            lines.append(f"• *{name}*: cannot train. {escape(str(item.get('reason') or ''))}")
    return sections("*Fine-tuning backends:*\n" + "\n".join(lines))


def how_to_blocks() -> list[Block]:
    return [
        header("SOP Bot"),
        section("I draft Standard Operating Procedures in your house format and learn from "
                "the ones your approvers sign off."),
        section("*Draft an SOP:* type `/sop Write an SOP for cleaning the tablet press` in a "
                "channel I'm in. I reply in a thread with a DRAFT you can review, regenerate "
                "or download as .docx."),
        section("*Approve an SOP as a training example:* approvers react with :white_check_mark:"
                " to a draft or to a compliant SOP posted in a watched channel (text, .txt, .md "
                "or .docx). Removing the reaction retracts it."),
        context("Drafts are never approved documents: review them under your SOP process."),
    ]


def home_view(report: dict | None, *, is_admin: bool, notice: str | None = None) -> dict:
    """App Home: the dashboard for admins, the how-to for everyone else; `notice` (what a
    button click did) on top."""
    blocks = how_to_blocks()
    if is_admin and report is not None:
        blocks = status_blocks(report) + [{"type": "divider"}] + blocks
    if notice:
        blocks = [section(notice)] + blocks
    return {"type": "home", "blocks": blocks[:MAX_HOME_BLOCKS]}


def plain(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Notification text within a sane length."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
