#!/usr/bin/env python3
"""A client that stops reading a server stream: it asks the producer for its Snapshot over raw
HTTP/2, takes what the initial flow-control window allows and never opens it further. The
producer must then hold bounded memory (its Snapshot handler waits), and keep serving others.
Prints "stalled stream: ok" when every check passes.

usage: stalled_stream_check.py HOST:PORT PID
"""
import os
import socket
import struct
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpc_client_check import generate_stubs  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name: str, value: str) -> bytes:
    # HPACK literal header field without indexing, new name, no Huffman (lengths < 127).
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def main() -> None:
    target, pid = sys.argv[1], int(sys.argv[2])
    host, port = target.rsplit(":", 1)
    before = rss_kib(pid)
    connection = socket.create_connection((host, int(port)))
    headers = b"".join([literal(":method", "POST"), literal(":scheme", "http"), literal(":authority", target),
                        literal(":path", "/entitysync.v1.EntityAdmin/Snapshot"),
                        literal("content-type", "application/grpc"), literal("te", "trailers")])
    connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
                       + frame(1, 0x4, 1, headers) + frame(0, 0x1, 1, b"\x00\x00\x00\x00\x00"))
    # Read frames until the default 65,535-byte window is used up; never send WINDOW_UPDATE.
    received, buffer, deadline = 0, b"", time.monotonic() + 30
    while received < 65535:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {received} bytes of the stream arrived within 30 s")
        connection.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = connection.recv(65536)
        if not chunk:
            raise SystemExit("the server closed the connection")
        buffer += chunk
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            if kind == 0:
                received += length
            if kind == 4 and not flags & 1:
                connection.sendall(frame(4, 1, 0, b""))  # acknowledge the server's SETTINGS
            buffer = buffer[9 + length:]
    # The stream is stalled now: the producer's memory must stay put while it waits.
    peak = before
    for _ in range(20):
        peak = max(peak, rss_kib(pid))
        time.sleep(0.1)
    growth = peak - before
    # The snapshot is far larger than that (checked below), so a server that buffered the
    # stream instead of waiting would show it here.
    assert growth < 8 * 1024, f"the producer grew by {growth} KiB while a client did not read its Snapshot"

    with tempfile.TemporaryDirectory() as out:
        generate_stubs(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto"), out)
        sys.path.insert(0, out)
        from entitysync.v1 import services_pb2, services_pb2_grpc
        options = [("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(target, options=options) as channel:
            total = sum(change.ByteSize() for change in
                        services_pb2_grpc.EntityAdminStub(channel).Snapshot(services_pb2.SnapshotRequest(), timeout=120))
    assert total > 16 << 20, f"the snapshot is only {total} bytes: too small to show buffering"
    connection.close()
    print(f"stalled stream: ok (snapshot {total >> 20} MiB; producer grew {growth} KiB while the stream was stalled)")


if __name__ == "__main__":
    main()
