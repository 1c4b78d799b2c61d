"""A webhook receiver on loopback for tests: records every POST, answers `fail_first` attempts of each event with
500, and verifies signatures with the secret it is given."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from app.services import webhooks


@dataclass
class Received:
    event_id: str
    attempt: int
    body: bytes
    headers: dict[str, str]
    answered: int
    verified: bool
    at: float = field(default_factory=time.monotonic)


class Receiver:
    def __init__(self, *, fail_first: int = 0, secret: str | None = None) -> None:
        self.fail_first, self.secret = fail_first, secret
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                event_id = headers.get("backprop-event-id", "")
                with receiver.lock:
                    seen = sum(r.event_id == event_id for r in receiver.received)
                    code = 500 if seen < receiver.fail_first else 200
                    verified = receiver.secret is not None and webhooks.verify(
                        receiver.secret,
                        body,
                        signature=headers.get("backprop-signature", ""),
                        timestamp=headers.get("backprop-timestamp", ""),
                    )
                    receiver.received.append(
                        Received(event_id, int(headers.get("backprop-attempt", "0")), body, headers, code, verified)
                    )
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.answered == 200]
