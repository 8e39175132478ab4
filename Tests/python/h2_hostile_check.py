#!/usr/bin/env python3
"""Hostile HTTP/2 peers against an EntitySync gRPC server, over raw sockets: a flood of PINGs, a
flood of SETTINGS (each asks for an acknowledgement the peer never reads), and rapid reset
(CVE-2023-44487: streams opened and reset at once). Each connection must be closed by the
server, and the server must keep answering others. Prints "h2 hostile: ok" when all pass.

usage: h2_hostile_check.py HOST:PORT
"""
import socket
import struct
import sys
import time

import grpc

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name: str, value: str) -> bytes:
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def closed_by_server(connection: socket.socket, within: float) -> bool:
    """Reads (and drops) until the server closes the connection; False if it is still open."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        connection.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not connection.recv(1 << 16):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
    return False


def flood(host: str, port: int, what: str, frames: bytes) -> None:
    connection = socket.create_connection((host, port))
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        connection.sendall(PREFACE + frame(4, 0, 0, b""))
        # Send without reading: acknowledgements pile up on the server's side.
        sent = 0
        connection.settimeout(10)
        while sent < len(frames):
            try:
                sent += connection.send(frames[sent:sent + (1 << 16)])
            except (ConnectionResetError, BrokenPipeError, socket.timeout):
                break
        assert closed_by_server(connection, 15), f"{what}: the server kept the connection open"
    finally:
        connection.close()


def serving(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda _: b"",
                                    response_deserializer=lambda raw: raw)
        reply = check(None, timeout=10)
        assert reply == b"\x08\x01", f"health after the flood: {reply!r}"


def main() -> None:
    target = sys.argv[1]
    host, port = target.rsplit(":", 1)
    port = int(port)
    flood(host, port, "PING flood", b"".join(frame(6, 0, 0, struct.pack(">Q", n)) for n in range(20000)))
    serving(target)
    flood(host, port, "SETTINGS flood", frame(4, 0, 0, b"") * 20000)
    serving(target)
    headers = b"".join([literal(":method", "POST"), literal(":scheme", "http"), literal(":authority", target),
                        literal(":path", "/grpc.health.v1.Health/Check"), literal("content-type", "application/grpc"),
                        literal("te", "trailers")])
    resets = b"".join(frame(1, 0x4, stream, headers) + frame(3, 0, stream, struct.pack(">I", 8))
                      for stream in range(1, 2 * 5000, 2))
    flood(host, port, "rapid reset", resets)
    serving(target)
    print("h2 hostile: ok")


if __name__ == "__main__":
    main()
