"""Real local receivers for alert tests: an aiosmtpd SMTP server and an HTTP webhook server."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

PASSWORD = "pa:ss@w/rd-CANARY-secret"


# --- real receivers --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    """Messages an aiosmtpd server received, and the credentials clients logged in with."""

    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.content)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=data.password.decode() == PASSWORD)

    def text(self, i: int = 0) -> str:
        part = self.messages[i].get_body(("plain",))
        assert part is not None
        return str(part.get_content())


def run_smtp(**kwargs: Any) -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port, **kwargs)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    """An SMTP server on 127.0.0.1 without TLS or authentication."""
    yield from run_smtp()


@pytest.fixture
def smtp_auth() -> Iterator[Mailbox]:
    """An SMTP server that insists on a login (plain text allowed: it is local)."""
    box = Mailbox(port=free_port())
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=box.port,
        auth_required=True,
        auth_require_tls=False,
        authenticator=box.authenticate,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass
class Hook:
    """Requests an HTTP webhook received; ``fail_first`` answers that many requests with 500; ``delay_s`` holds each
    request that long before answering, as a remote channel would (``most_at_once``: requests held together)."""

    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_first: int = 0
    delay_s: float = 0.0
    in_flight: int = 0
    most_at_once: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, scheme: str = "json", path: str = "/hook") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


@contextmanager
def run_hook() -> Iterator[Hook]:
    """A local HTTP server recording every POST, for as long as the block runs."""
    received = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with received.lock:
                received.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                failing = len(received.requests) <= received.fail_first
                received.in_flight += 1
                received.most_at_once = max(received.most_at_once, received.in_flight)
            time.sleep(received.delay_s)
            with received.lock:
                received.in_flight -= 1
            self.send_response(500 if failing else 200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    received.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    """A local HTTP server recording every POST."""
    with run_hook() as received:
        yield received
