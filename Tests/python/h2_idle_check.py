#!/usr/bin/env python3
"""A raw HTTP/2 client that opens a connection and makes no call, to see how the server ends it.

usage: h2_idle_check.py HOST:PORT idle|silent SECONDS
  idle:   the client answers PINGs; the server must send GOAWAY and close within SECONDS.
  silent: the client never answers a PING; the server must ping it and close within SECONDS.
Prints "h2 idle: ok" on success.
"""
import socket
import struct
import sys
import time


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def main() -> None:
    target, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    host, port = target.rsplit(":", 1)
    connection = socket.create_connection((host, int(port)))
    connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
    started = time.monotonic()
    buffer, kinds = b"", []
    while True:
        left = seconds - (time.monotonic() - started)
        if left <= 0:
            raise SystemExit(f"{mode}: the connection is still open after {seconds} s (frames seen: {kinds})")
        connection.settimeout(left)
        try:
            chunk = connection.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        except socket.timeout:
            continue
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags, payload = buffer[3], buffer[4], buffer[9:9 + length]
            kinds.append(kind)
            if kind == 4 and not flags & 1:
                connection.sendall(frame(4, 1, 0, b""))
            if kind == 6 and not flags & 1 and mode == "idle":
                connection.sendall(frame(6, 1, 0, payload))
            buffer = buffer[9 + length:]
    elapsed = time.monotonic() - started
    if mode == "idle":
        assert 7 in kinds, f"idle: closed without GOAWAY (frames seen: {kinds})"
    else:
        assert 6 in kinds, f"silent: closed without a PING first (frames seen: {kinds})"
    print(f"h2 idle: ok ({mode}, closed after {elapsed:.1f} s)")


if __name__ == "__main__":
    main()
