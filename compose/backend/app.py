"""ImpactBot v2 backend stand-in: a small stdlib HTTP service for the compose environments.

It stands where the real backend runs so the data-lifecycle toolkit can be tested offline:
GET /health checks the database (a real login and `SELECT 1` over the PostgreSQL wire
protocol, SCRAM-SHA-256 / md5 / trust), Redis (PING) and the uploads folder (mounted, writable,
space left; nothing is written into it); 200 when all three pass, 503 otherwise. GET /version names the build.
GET /uploads/<path>/sha256 returns the hash of an uploaded file as the container sees it.

Configuration (environment): POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, POSTGRES_PASSWORD,
POSTGRES_DB, REDIS_HOST, REDIS_PORT, UPLOADS_DIR, PORT. The image variant comes from
IMPACTBOT_BACKEND_VARIANT: "healthy", or "broken" (its /health always fails, for update tests).
"""
# ruff: noqa: E402  (the health check runs before the service's imports, see healthcheck())

from __future__ import annotations

import os
import sys


def healthcheck() -> int:
    """The container's health check (`app.py healthcheck`, every few seconds in every backend container):
    GET /health over a bare socket, before the service's own imports, which cost five times a bare
    interpreter's start (measured in the container: 0.10 s of CPU against 0.02 s)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", int(os.environ.get("PORT", "8000"))), timeout=5) as conn:
            conn.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
    except OSError as exc:  # refused, timed out: unhealthy
        print(exc)
        return 1
    head, _, body = reply.partition(b"\r\n\r\n")
    print(body.decode(errors="replace"))
    status = head.split(b" ", 2)
    return 0 if len(status) > 1 and status[1] == b"200" else 1


if __name__ == "__main__" and sys.argv[1:] == ["healthcheck"]:
    sys.exit(healthcheck())

import base64
import hashlib
import hmac
import json
import secrets
import signal
import socket
import struct
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VARIANT = os.environ.get("IMPACTBOT_BACKEND_VARIANT", "healthy")
VERSION = os.environ.get("IMPACTBOT_BACKEND_VERSION", "0.0.0-standin")
TIMEOUT = 3.0


class CheckFailed(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise CheckFailed("connection closed by the server")
        buf += chunk
    return buf


def _read_msg(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _recv_exact(sock, 5)
    kind, length = head[:1], struct.unpack("!i", head[1:])[0]
    return kind, _recv_exact(sock, length - 4)


def _send(sock: socket.socket, kind: bytes, payload: bytes) -> None:
    sock.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)


def _error_text(payload: bytes) -> str:
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode(errors="replace")
    return fields.get(b"M", "unknown error")


def _scram(sock: socket.socket, password: str, mechanisms: bytes) -> None:
    if b"SCRAM-SHA-256" not in mechanisms.split(b"\0"):
        raise CheckFailed("server offers no SCRAM-SHA-256")
    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    _send(sock, b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
    kind, payload = _read_msg(sock)
    if kind == b"E":
        raise CheckFailed(_error_text(payload))
    if kind != b"R" or struct.unpack("!i", payload[:4])[0] != 11:
        raise CheckFailed("unexpected SCRAM message from the server")
    server_first = payload[4:].decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    if not attrs["r"].startswith(nonce):
        raise CheckFailed("server nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    final_bare = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.digest(stored_key, auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    _send(sock, b"p", f"{final_bare},p={base64.b64encode(proof).decode()}".encode())
    kind, payload = _read_msg(sock)
    if kind == b"E":
        raise CheckFailed(_error_text(payload))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
    if kind != b"R" or payload[4:].decode() != f"v={expected}":
        raise CheckFailed("server signature does not match (wrong server?)")


def check_database() -> str:
    host = os.environ.get("POSTGRES_HOST", "database")
    port = int(os.environ.get("POSTGRES_PORT", "5432"))
    user = os.environ.get("POSTGRES_USER", "postgres")
    password = os.environ.get("POSTGRES_PASSWORD", "")
    dbname = os.environ.get("POSTGRES_DB", user)
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        params = b"user\0" + user.encode() + b"\0database\0" + dbname.encode() + b"\0" \
            + b"application_name\0impactbot-backend-health\0\0"
        sock.sendall(struct.pack("!ii", len(params) + 8, 196608) + params)
        while True:
            kind, payload = _read_msg(sock)
            if kind == b"E":
                raise CheckFailed(_error_text(payload))
            if kind != b"R":
                continue
            code = struct.unpack("!i", payload[:4])[0]
            if code == 0:
                break
            if code == 3:
                _send(sock, b"p", password.encode() + b"\0")
            elif code == 5:
                inner = hashlib.md5((password + user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + payload[4:8]).hexdigest()
                _send(sock, b"p", b"md5" + outer.encode() + b"\0")
            elif code == 10:
                _scram(sock, password, payload[4:])
            else:
                raise CheckFailed(f"unsupported authentication request {code}")
        version = "?"
        while True:
            kind, payload = _read_msg(sock)
            if kind == b"E":
                raise CheckFailed(_error_text(payload))
            if kind == b"S" and payload.startswith(b"server_version\0"):
                version = payload.split(b"\0")[1].decode()
            if kind == b"Z":
                break
        _send(sock, b"Q", b"SELECT 1\0")
        while True:
            kind, payload = _read_msg(sock)
            if kind == b"E":
                raise CheckFailed(_error_text(payload))
            if kind == b"Z":
                break
        _send(sock, b"X", b"")
    return f"PostgreSQL {version}"


def check_redis() -> str:
    host = os.environ.get("REDIS_HOST", "redis")
    port = int(os.environ.get("REDIS_PORT", "6379"))
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(b"PING\r\n")
        answer = sock.recv(64)
    if not answer.startswith(b"+PONG"):
        raise CheckFailed(f"unexpected answer {answer[:40]!r}")
    return "PONG"


def uploads_dir() -> Path:
    return Path(os.environ.get("UPLOADS_DIR", "/app/uploads"))


def check_uploads() -> str:
    """The folder is mounted, listable and writable; nothing is written into it (a probe file could be
    caught by a backup of the uploads)."""
    folder = uploads_dir()
    if not folder.is_dir():
        raise CheckFailed(f"{folder} is not a folder (is the host folder mounted?)")
    if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
        raise CheckFailed(f"{folder} is not writable (read-only mount or wrong owner)")
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free < 16 * 1024 * 1024:
        raise CheckFailed(f"{folder} has only {free} bytes free")
    entries = sum(1 for _ in os.scandir(folder))
    return f"{folder} writable, {entries} entries, {free // (1024 * 1024)} MiB free"


def health() -> tuple[bool, dict[str, object]]:
    if VARIANT == "broken":
        return False, {"status": "fail", "variant": VARIANT,
                       "error": "this build fails its health check on purpose (update rollback tests)"}
    checks: dict[str, object] = {}
    ok = True
    for name, check in (("database", check_database), ("redis", check_redis), ("uploads", check_uploads)):
        try:
            checks[name] = {"ok": True, "detail": check()}
        except (OSError, CheckFailed, ValueError) as exc:
            ok = False
            checks[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    return ok, {"status": "ok" if ok else "fail", "variant": VARIANT, "version": VERSION, "checks": checks}


class Handler(BaseHTTPRequestHandler):
    server_version = "impactbot-backend-standin"

    def _json(self, code: int, body: dict[str, object]) -> None:
        data = json.dumps(body, sort_keys=True).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path == "/health":
            ok, body = health()
            self._json(200 if ok else 503, body)
        elif path == "/version":
            self._json(200, {"variant": VARIANT, "version": VERSION})
        elif path.startswith("/uploads/") and path.endswith("/sha256"):
            root = uploads_dir().resolve()
            target = (root / path[len("/uploads/"):-len("/sha256")]).resolve()
            if root not in target.parents or not target.is_file():
                self._json(404, {"error": "no such upload"})
                return
            self._json(200, {"path": str(target.relative_to(root)),
                             "sha256": hashlib.sha256(target.read_bytes()).hexdigest()})
        else:
            self._json(404, {"error": "not found"})

    def log_message(self, format: str, *args: object) -> None:
        if "/health" not in str(args[0] if args else ""):
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")


def main() -> None:
    port = int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    # PID 1 in its container: without a handler SIGTERM is ignored and `docker stop` waits its full timeout.
    signal.signal(signal.SIGTERM, lambda _s, _f: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"impactbot backend stand-in ({VARIANT}) listening on :{port}", flush=True)
    server.serve_forever()
    server.server_close()
    print("impactbot backend stand-in stopped", flush=True)


if __name__ == "__main__":
    main()
