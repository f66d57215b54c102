"""Binary upgrade, record framing over the handover socketpair (AF_UNIX, SOCK_SEQPACKET, SCM_RIGHTS), and
base64 for the pool records' SCRAM ClientKeys (a client record's prepared statements are encoded by
ClientConn.export_state/restore, which own that record's format).

A record is a JSON object, sent as a 4-byte length + the first chunk (carrying the client's fd, if any) and
raw continuation chunks. Kinds: "pool" (a SCRAM ClientKey a pool needs to log in to PostgreSQL in
passthrough mode), "client" (one fd + its state) and "done" (nothing more will come).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import struct
from typing import Any

log = logging.getLogger("pgdoorman.upgrade")

CHUNK = 32 * 1024
_HEAD = struct.Struct("!I")


def send_record(sock: socket.socket, obj: dict[str, Any], fds: list[int]) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    first = _HEAD.pack(len(data)) + data[:CHUNK]
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sock.sendmsg([first], anc)
    for i in range(CHUNK, len(data), CHUNK):
        sock.sendmsg([data[i : i + CHUNK]])


def recv_record(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """(record, fds); (None, []) at end of stream."""
    msg, fds, flags, _ = socket.recv_fds(sock, CHUNK + _HEAD.size, 4)
    if not msg:
        return None, list(fds)
    if flags & socket.MSG_CTRUNC:
        log.error("handover: file descriptors were dropped by the kernel (fd limit reached?)")
    (total,) = _HEAD.unpack_from(msg, 0)
    body = bytearray(msg[_HEAD.size :])
    out = list(fds)
    while len(body) < total:
        more, fds2, _, _ = socket.recv_fds(sock, CHUNK, 4)
        if not more:
            for fd in out:
                os.close(fd)
            raise EOFError("handover stream ended inside a record")
        body += more
        out += fds2
    return json.loads(bytes(body)), out


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"))
