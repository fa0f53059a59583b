"""Client frame masking with keys from buffered OS randomness.

RFC 6455 section 5.3: a client masks every frame it sends with a fresh 4-byte
key that the server (and anything between) cannot predict. websockets draws
each key with `secrets.token_bytes(4)`, one `getrandom` syscall per frame,
which was a quarter of the worker machinery's CPU under load. Here the keys
still come from `os.urandom`, the same source, but one read of `BUFFER_BYTES`
serves `BUFFER_BYTES // 4` frames.

Only connections opened with `create_connection=MaskedClientConnection` use
this; other users of websockets in the process are untouched.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.extensions import Extension
from websockets.frames import Frame

from connect.websocket import frame_header

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = ["BUFFER_BYTES", "MaskSource", "MaskedClientConnection", "MaskedClientProtocol", "serialize_masked"]

BUFFER_BYTES = 4096


class MaskSource:
    """4-byte masking keys sliced from `os.urandom(size)` reads.

    Every key is fresh OS randomness, exactly as unpredictable as
    `secrets.token_bytes(4)`; no byte is handed out twice. A forked child
    discards the buffer it inherited (otherwise parent and child would send
    the same keys). Not thread-safe, and it need not be: one source belongs
    to one connection, whose frames are all serialized on its loop's thread.
    """

    __slots__ = ("__weakref__", "_buf", "_pos", "_size")

    def __init__(self, size: int = BUFFER_BYTES) -> None:
        if size < 4 or size % 4:
            raise ValueError(f"buffer size must be a positive multiple of 4, not {size}")
        self._size = size
        self._buf = b""
        self._pos = size  # empty: the first key reads the OS
        _sources.add(self)

    def take(self) -> bytes:
        pos = self._pos
        if pos >= self._size:
            self._buf = os.urandom(self._size)
            pos = 0
        self._pos = pos + 4
        return self._buf[pos : pos + 4]

    def _discard(self) -> None:
        self._buf = b""
        self._pos = self._size


_sources: weakref.WeakSet[MaskSource] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for source in list(_sources):
        source._discard()


os.register_at_fork(after_in_child=_after_fork_in_child)


def serialize_masked(frame: Frame, extensions: Sequence[Extension], key: bytes) -> bytes:
    """`Frame.serialize(mask=True)` with a given key (RFC 6455 section 5.2)."""
    frame.check()
    for extension in extensions:
        frame = extension.encode(frame)
    head1 = (
        (0x80 if frame.fin else 0)
        | (0x40 if frame.rsv1 else 0)
        | (0x20 if frame.rsv2 else 0)
        | (0x10 if frame.rsv3 else 0)
        | frame.opcode
    )
    return b"".join((frame_header(head1, len(frame.data), 0x80), key, apply_mask(frame.data, key)))


class MaskedClientProtocol(ClientProtocol):
    """A `ClientProtocol` whose frames are masked with keys from `masks`.

    `send_frame` is the one place the sans-I/O protocol serializes outgoing
    frames (data, control and close alike), so overriding it covers them all.
    """

    masks: MaskSource

    def send_frame(self, frame: Frame) -> None:
        if self.debug:
            self.logger.debug("> %s", frame)
        self.writes.append(serialize_masked(frame, self.extensions, self.masks.take()))


class MaskedClientConnection(ClientConnection):
    """Pass as `websockets.connect(..., create_connection=MaskedClientConnection)`.

    `connect()` builds its `ClientProtocol` itself and offers no hook for the
    protocol class; `create_connection` is its documented escape hatch and
    receives that protocol before the handshake, i.e. before any frame is
    written. The protocol is narrowed to `MaskedClientProtocol`, a subclass
    that adds no state besides its key source and only overrides how frames
    are serialized.
    """

    def __init__(self, protocol: ClientProtocol, **kwargs: Any) -> None:
        protocol.__class__ = MaskedClientProtocol
        assert isinstance(protocol, MaskedClientProtocol)
        protocol.masks = MaskSource()
        super().__init__(protocol, **kwargs)
