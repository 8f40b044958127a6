"""uvicorn for the servers: h11 (strict HTTP/1.1 framing), a large backlog, keep-alive, header and
concurrency limits.  Prints `listening on http://HOST:PORT` (the real port for --port 0) once the
socket is bound; scripts and tests wait for that line.
"""
from __future__ import annotations

import asyncio
import logging
import os

from uvicorn.protocols.http.h11_impl import H11Protocol

from prp.route.server.limits import ServeLimits, is_loopback

log = logging.getLogger(__name__)


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus deadlines on bytes that arrive while no request is being served.

    uvicorn closes idle keep-alive connections, but a client that sends one header byte every few
    seconds (or connects and sends nothing, or trickles a body nobody reads) would hold a connection
    forever; with this, a new connection must send its first byte within `first_byte_timeout_s`,
    and the request line and headers must be complete `header_timeout_s` after the connection
    opens or after the first byte of a new request.  A request being served is bounded by the app's
    own timeouts (body, request).  Sockets are never what the server counts against its limit
    (prp.route.server.guards.CountRequests), so idle ones cost a file descriptor each, for seconds.
    """

    header_timeout_s = 10.0
    first_byte_timeout_s = 2.0
    _header_timer: asyncio.TimerHandle | None = None
    _silent = False  # a new connection that has not sent a byte yet
    _opened_at = 0.0

    def _serving(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._silent, self._opened_at = True, self.loop.time()
        self._header_timer = self.loop.call_later(min(self.first_byte_timeout_s, self.header_timeout_s),
                                                  self._header_deadline)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        if self._silent:  # the first byte: from now on the header deadline (from the connection's start) runs
            self._silent = False
            self._disarm()
            self._header_timer = self.loop.call_at(self._opened_at + self.header_timeout_s, self._header_deadline)
        if not self._serving():  # these bytes start (or continue) a request's headers
            self._arm()
        super().data_received(data)
        if self._serving():
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if not self._serving() and not self.transport.is_closing():
            log.info("closing a connection that sent no complete request headers in time")
            self.transport.close()


def exposure_warning(host: str, *, api_key_set: bool) -> str | None:
    """The warning for binding a non-loopback address without a key.

    >>> exposure_warning("127.0.0.1", api_key_set=False) is None, exposure_warning("0.0.0.0", api_key_set=True)
    (True, None)
    >>> exposure_warning("0.0.0.0", api_key_set=False).split(":")[0]
    'serving on 0.0.0.0 without an API key'
    """
    if is_loopback(host) or api_key_set:
        return None
    return (f"serving on {host} without an API key: anyone who can reach this address can use the models "
            "(set one with --api-key-env / --serve-api-key-env)")


def raise_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: every connection is a file descriptor, and
    the common soft default (1024) would let a thousand idle sockets refuse everyone else."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = max(soft, 65536) if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep the limit
        pass


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena and keeps what is freed there: the
    ~40 threads that parse bodies and decode images each kept their share, so two clients sending
    6.6 MB bodies (~165 MB each to parse) grew the router to 10 GB.  A few shared arenas reuse the
    freed memory (what MALLOC_ARENA_MAX=2 does; the variable, when set, still wins).  No-op off glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def serve(app, limits: ServeLimits, host: str, port: int, *, api_key_set: bool) -> None:
    import uvicorn

    warning = exposure_warning(host, api_key_set=api_key_set)
    if warning:
        log.warning(warning)
    protocol = type("Protocol", (HeaderDeadlineH11Protocol,), {"header_timeout_s": limits.header_timeout_s,
                                                               "first_byte_timeout_s": limits.first_byte_timeout_s})
    raise_file_limit()
    limit_malloc_arenas()  # before uvicorn and its thread pool start
    # limit_concurrency=None: uvicorn's limit counts open sockets, which any client can hold idle;
    # the app counts requests instead (prp.route.server.guards.CountRequests, --limit-concurrency)
    config = uvicorn.Config(
        app, host=host, port=port, http=protocol, lifespan="off", backlog=limits.backlog,
        timeout_keep_alive=limits.keep_alive_s, limit_concurrency=None,
        h11_max_incomplete_event_size=64 * 1024, log_level="warning", access_log=False,
        server_header=False,
    )
    config.load()
    sock = config.bind_socket()
    sock.listen(limits.backlog)  # connections made from now on wait in the backlog until uvicorn accepts
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
