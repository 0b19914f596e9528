"""The yardstick for benchmarks/load.py: a textbook Bolt app doing the same work as SOP Bot.

`/sop`: ack, then (a lazy listener) a parent message, a placeholder reply in its thread, one
streamed chat completion from the provider, the final text as blocks. A ✅ reaction: ack,
then (lazy) read the message, store it once (a unique key on the Slack ts, so Slack's
re-delivery stores nothing twice) and confirm in the thread. Served as Bolt's docs show: HTTP
through `slack_bolt.adapter.asgi.SlackRequestHandler` on uvicorn, or Bolt's SocketModeHandler
when SLACK_APP_TOKEN is set (then uvicorn answers only /healthz, on $PORT).

Environment: SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET, SLACK_API_URL, SLACK_APP_TOKEN (optional),
OPENAI_API_KEY, OPENAI_BASE_URL, PORT, TEXTBOOK_DB (a SQLite file).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

CONFIRMATION = "Added as training example"


def build() -> object:
    from openai import OpenAI
    from slack_bolt import App
    from slack_sdk import WebClient

    client = WebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"])
    app = App(client=client, signing_secret=os.environ.get("SLACK_SIGNING_SECRET", ""),
              process_before_response=True)
    provider = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"])
    database = sqlite3.connect(os.environ["TEXTBOOK_DB"], check_same_thread=False)
    database.execute("CREATE TABLE IF NOT EXISTS example (ts TEXT PRIMARY KEY, text TEXT)")
    lock = threading.Lock()

    def ack_now(ack) -> None:  # noqa: ANN001
        ack()

    def draft(body: dict, client) -> None:  # noqa: ANN001
        channel, user, text = body["channel_id"], body["user_id"], body["text"]
        parent = client.chat_postMessage(channel=channel,
                                         text=f"SOP draft requested by <@{user}>: {text}")
        reply = client.chat_postMessage(channel=channel, thread_ts=parent["ts"], text="Drafting…")
        stream = provider.chat.completions.create(
            model="gpt-4o-mini-2024-07-18", stream=True,
            messages=[{"role": "user", "content": text}])
        answer = "".join(chunk.choices[0].delta.content or "" for chunk in stream
                         if chunk.choices)
        client.chat_update(channel=channel, ts=reply["ts"], text=answer[:3000],
                           blocks=[{"type": "section",
                                    "text": {"type": "mrkdwn", "text": answer[:3000] or "-"}}])

    def approve(body: dict, client) -> None:  # noqa: ANN001
        item = body["event"]["item"]
        history = client.conversations_history(channel=item["channel"], latest=item["ts"],
                                               oldest=item["ts"], inclusive=True, limit=1)
        text = history["messages"][0]["text"] if history["messages"] else ""
        with lock:
            stored = database.execute("INSERT OR IGNORE INTO example VALUES (?, ?)",
                                      (item["ts"], text)).rowcount
            database.commit()
        if stored:
            client.chat_postMessage(channel=item["channel"], thread_ts=item["ts"],
                                    text=f"{CONFIRMATION} (textbook).")

    app.command("/sop")(ack=ack_now, lazy=[draft])
    app.event("reaction_added")(ack=ack_now, lazy=[approve])
    return app


def main() -> None:
    import uvicorn
    from slack_bolt.adapter.asgi import SlackRequestHandler

    logging.basicConfig(level=logging.WARNING)
    app = build()
    slack = SlackRequestHandler(app)  # type: ignore[arg-type]

    async def asgi(scope, receive, send):  # noqa: ANN001, ANN202
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await slack(scope, receive, send)

    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=int(os.environ["PORT"]),
                                           http="h11", ws="none", lifespan="off",
                                           log_level="warning", access_log=False))
    if os.environ.get("SLACK_APP_TOKEN"):
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        SocketModeHandler(app, os.environ["SLACK_APP_TOKEN"]).connect()  # type: ignore[arg-type]
    print("SOP Bot listening (textbook app)", flush=True)
    server.run()


if __name__ == "__main__":
    main()
