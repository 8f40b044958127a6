"""ASGI middleware in front of the app: the Host allow-list (DNS rebinding) and the count of requests in flight.

`CheckHost`: a server bound to loopback answers only requests whose `Host` names it (localhost,
127.0.0.1, [::1], or a name given with `--allow-host`) with its own port.  A web page the user
visits can make the browser send requests to 127.0.0.1; with DNS rebinding (evil.example first
resolving to the attacker, then to 127.0.0.1) the page can also read the answers, as same-origin.
The browser still sends `Host: evil.example:PORT`, which is what this refuses.

`CountRequests`: `--limit-concurrency` counts requests being served, never open sockets: uvicorn's
own limit counts connections, so 520 sockets that send nothing made every endpoint, `/health`
included, answer 503.  `/health` is never counted nor refused (a probe must see the worker's state,
not the load).  Idle sockets are closed by the protocol's first-byte and header deadlines (launch).
"""
from __future__ import annotations

from collections.abc import Iterable

from fastapi.responses import JSONResponse

from prp.route.server.schemas import error_body

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
HEALTH_PATH = "/health"


def _refusal(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    # the body may be unread: this connection cannot carry another request
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(error_body(message, kind=kind), status_code=status,
                        headers={"Connection": "close", **(headers or {})})


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header -> (lower-case name, port or None); None if it is malformed.

    >>> split_host("LocalHost:8000"), split_host("[::1]:80"), split_host("127.0.0.1")
    (('localhost', 8000), ('[::1]', 80), ('127.0.0.1', None))
    >>> split_host("a:b") is None, split_host("[::1") is None
    (True, True)
    """
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value.partition("]")
        if not bracket:
            return None
        name += "]"
    else:
        name, _, port = value.partition(":")
        rest = f":{port}" if _ else ""
    if not name:
        return None
    if not rest:
        return name, None
    port = rest[1:]
    if not rest.startswith(":") or not port.isdigit() or len(port) > 5:
        return None
    return name, int(port)


def host_allowed(value: str | None, names: Iterable[str], port: int | None) -> bool:
    """Whether a Host header names this server: an allowed name, and the bound port (or no port
    when the server is on 80, HTTP's default).

    >>> host_allowed("localhost:8000", LOOPBACK_NAMES, 8000), host_allowed("evil.example:8000", LOOPBACK_NAMES, 8000)
    (True, False)
    >>> host_allowed("127.0.0.1:9999", LOOPBACK_NAMES, 8000), host_allowed(None, LOOPBACK_NAMES, 8000)
    (False, False)
    """
    parsed = split_host(value) if value else None
    if parsed is None:
        return False
    name, given = parsed
    if name not in set(names):
        return False
    if port is None:  # the bound port is unknown (no ASGI "server" entry): the name decides
        return True
    return given == port or (given is None and port == 80)


class CheckHost:
    """400 (and the connection closed) for a request whose Host is not this loopback server."""

    def __init__(self, app, *, extra_names: Iterable[str] = ()):
        self.app = app
        self.names = frozenset(LOOPBACK_NAMES) | {n.lower() for n in extra_names}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"host"), None)
            server = scope.get("server")
            if not host_allowed(host, self.names, server[1] if server else None):
                refusal = _refusal(400, "Host header not allowed: this server answers to "
                                        f"{', '.join(sorted(self.names))} on its own port (see --allow-host)")
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


class CountRequests:
    """503 + Retry-After when `limit` requests are already being served; `/health` is exempt."""

    def __init__(self, app, *, limit: int):
        self.app, self.limit, self.in_flight = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:  # one event loop: no lock needed between the check and the count
            refusal = _refusal(503, f"server busy: {self.limit} requests in flight", {"Retry-After": "1"})
            await refusal(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
