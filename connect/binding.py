"""Why a listening port could not be had, in one line that names the fix.

`connect dev` and `connect serve` stop at start-up when a port they were
given cannot be bound; the line they print comes from `bind_failure`.
"""

from __future__ import annotations

import errno
import logging
import socket


def bind_failure(what: str, flag: str, host: str, port: int, exc: OSError | None = None) -> str:
    """One line: which port (`what`, set by `flag`) failed on `host`, why, and
    what to do. `exc` is the bind error when known; otherwise the port is
    probed once to find it (a port that binds now was taken a moment ago)."""
    if exc is None:
        exc = probe(host, port)
    where = f"{what} port {port} on {host} ({flag})"
    if exc is None or exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use: stop the process that holds it, or choose another port with {flag}"
    if exc.errno == errno.EACCES:
        return f"{where} needs privileges this process lacks: choose a port above 1023 with {flag}"
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
        return f"{where}: {host} is not an address of this machine: choose another with --host"
    return f"{where} cannot be bound: {exc.strerror or exc}"


def probe(host: str, port: int) -> OSError | None:
    """The error binding `host:port` raises now, or None if it binds."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc
    return None


class QuietBindErrors(logging.Filter):
    """Drops uvicorn's own bind error line: `bind_failure` says it once, with the fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "error while attempting to bind" not in record.getMessage()
