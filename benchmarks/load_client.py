"""The load generator for `benchmarks/load.py`: fires pre-built, pre-signed HTTP requests at the
bot from one asyncio loop in its own process and records each answer's latency.

Why a separate process and raw sockets: a Python client with 50 threads (urllib, signing each
request as it goes) sharing an interpreter lock with the fake Slack and fake OpenAI servers
measures itself. Against a server that answers 200 at once it already showed a p99 of about
50 ms, the very target. Here the requests are built and signed before the clock starts. The
timer runs from the connect call until the whole answer is read: what Slack's side waits for.

    python benchmarks/load_client.py REQUESTS.json RESULTS.json

REQUESTS.json: {"host", "ports", "path", "concurrency", "requests": [{"body", "headers"}]};
RESULTS.json: {"started": time.monotonic() when the first request went out (the same clock in
every process on Linux), "results": [{"status", "ms", "error", "at"}] in request order}, where
"at" is the time.monotonic() at which that request's connect began.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


def raw_request(host: str, port: int, path: str, body: str, headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 POST as bytes (Connection: close, as each Slack delivery is its own)."""
    data = body.encode("utf-8")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
             f"Content-Length: {len(data)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()
              if name.lower() not in ("content-length", "connection", "host")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


async def _send(host: str, port: int, request: bytes, timeout: float) -> dict:
    at, began = time.monotonic(), time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout)  # until the server closes
        writer.close()
    except (TimeoutError, OSError) as exc:
        return {"status": 0, "ms": (time.perf_counter() - began) * 1000,
                "error": f"{type(exc).__name__}: {exc}", "at": at}
    elapsed = (time.perf_counter() - began) * 1000
    status_line = answer.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
    return {"status": status, "ms": elapsed, "error": None if status else "no HTTP answer",
            "at": at}


async def fire(host: str, ports: list[int], requests: list[bytes], concurrency: int,
               timeout: float = 30.0) -> list[dict]:
    """Send every request with at most `concurrency` in flight, to each port in turn (a load
    balancer's round robin); results in request order."""
    slots = asyncio.Semaphore(max(1, concurrency))

    async def one(n: int, request: bytes) -> dict:
        async with slots:
            return await _send(host, ports[n % len(ports)], request, timeout)

    return list(await asyncio.gather(*(one(n, r) for n, r in enumerate(requests))))


def main(argv: list[str]) -> int:
    source, target = argv
    with open(source, encoding="utf-8") as handle:
        spec = json.load(handle)
    host, ports, path = spec["host"], [int(p) for p in spec["ports"]], spec["path"]
    requests = [raw_request(host, ports[n % len(ports)], path, r["body"], r["headers"])
                for n, r in enumerate(spec["requests"])]
    started = time.monotonic()
    results = asyncio.run(fire(host, ports, requests, int(spec["concurrency"])))
    with open(target, "w", encoding="utf-8") as handle:
        json.dump({"started": started, "results": results}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
