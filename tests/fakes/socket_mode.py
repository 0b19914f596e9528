"""A fake Slack Socket Mode endpoint: a minimal WebSocket server on 127.0.0.1.

Slack's Socket Mode sends each slash command, event or interaction as a JSON "envelope" over
a WebSocket and expects an acknowledgement carrying the same `envelope_id` (and, for slash
commands, an optional response payload). This server does the RFC 6455 handshake, says
`hello`, lets the test send envelopes and collects what the bot sends back. `cut()` makes the
current connection go silent without a close frame (as a NAT timeout or a network blip does):
nothing is answered on it any more, not even pings, while new connections are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import socket
import struct
import threading

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class FakeSocketMode:
    """Envelopes go to the newest connection, or with `spread` to each open connection in turn
    (Slack delivers each envelope to one of an app's open connections, so several instances
    share the work); `url` is what apps.connections.open hands out."""

    def __init__(self, *, spread: bool = False) -> None:
        self.spread = spread
        self._turn = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)
        self.url = f"ws://127.0.0.1:{self._listener.getsockname()[1]}/link/?ticket=fake"
        self.connected = threading.Event()
        self.connections = 0
        self._changed = threading.Condition()
        self._silent: set[int] = set()  # id() of connections that were cut
        self._open: list[socket.socket] = []
        self._handshaken: list[socket.socket] = []  # connections that completed the handshake
        self.received: queue.Queue[dict] = queue.Queue()
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeSocketMode:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for conn in self._open:
            conn.close()
        self._listener.close()
        self._thread.join(timeout=5)

    # --- what tests call --------------------------------------------------------------------
    def send(self, envelope: dict) -> None:
        """Send an envelope (text frame) to the connected bot."""
        self._frame(0x1, json.dumps(envelope).encode())

    def cut(self) -> None:
        """The current connection goes silent: no close frame, no pongs, nothing delivered."""
        with self._send_lock:
            if self._conn is not None:
                self._silent.add(id(self._conn))
                self._conn = None

    def wait_connections(self, count: int, timeout: float) -> bool:
        """Wait until the bot has opened `count` connections in all."""
        with self._changed:
            return self._changed.wait_for(lambda: self.connections >= count, timeout=timeout)

    def next_message(self, timeout: float = 10) -> dict:
        """The next JSON message the bot sent (acks), or AssertionError after `timeout`."""
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the bot sent nothing over Socket Mode") from None

    # --- the server -------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(None)
            self._open.append(conn)
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            self._handshake(conn)
            with self._send_lock:
                self._conn = conn
                self._handshaken.append(conn)
            with self._changed:
                self.connections += 1
                self._changed.notify_all()
            self.connected.set()
            self._frame(0x1, json.dumps({"type": "hello", "num_connections": 1}).encode())
            self._read_frames(conn)
        except OSError:
            pass
        finally:
            with self._send_lock:
                if conn in self._handshaken:
                    self._handshaken.remove(conn)
            conn.close()

    def _handshake(self, conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                raise OSError("closed during handshake")
            request += chunk
        headers = dict(
            line.split(": ", 1) for line in request.decode().split("\r\n")[1:] if ": " in line
        )
        accept = base64.b64encode(
            hashlib.sha1((headers["Sec-WebSocket-Key"].strip() + GUID).encode()).digest()
        ).decode()
        conn.sendall(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )

    def _frame(self, opcode: int, payload: bytes, conn: socket.socket | None = None) -> None:
        header = bytes([0x80 | opcode])
        size = len(payload)
        if size < 126:
            header += bytes([size])
        elif size < 65536:
            header += bytes([126]) + struct.pack("!H", size)
        else:
            header += bytes([127]) + struct.pack("!Q", size)
        with self._send_lock:
            target = conn or self._next()
            if target is not None and id(target) not in self._silent:
                target.sendall(header + payload)

    def _next(self) -> socket.socket | None:
        """The connection the next envelope goes to (called holding the send lock)."""
        live = [c for c in self._handshaken if id(c) not in self._silent and c.fileno() >= 0]
        if not self.spread or not live:
            return self._conn
        self._turn += 1
        return live[self._turn % len(live)]

    def _read_exact(self, conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _read_frames(self, conn: socket.socket) -> None:
        while not self._stop.is_set():
            first, second = self._read_exact(conn, 2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                size = struct.unpack("!H", self._read_exact(conn, 2))[0]
            elif size == 127:
                size = struct.unpack("!Q", self._read_exact(conn, 8))[0]
            mask = self._read_exact(conn, 4) if second & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self._read_exact(conn, size)))
            if id(conn) in self._silent:
                continue  # a cut connection: whatever the bot sends is lost
            if opcode == 0x8:  # close
                return
            if opcode == 0x9:  # ping -> pong
                self._frame(0xA, data, conn)
            elif opcode == 0x1:
                self.received.put(json.loads(data))
