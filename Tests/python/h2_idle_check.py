#!/usr/bin/env python3
"""A raw HTTP/2 client that opens a connection and makes no call, to see how the server ends it.

usage: h2_idle_check.py HOST:PORT idle|silent|refused SECONDS
  idle:    the client answers PINGs; the server must send GOAWAY and close within SECONDS.
  silent:  the client never answers a PING; the server must ping it and close within SECONDS.
  refused: the client starts a Health/Check whose message claims 2 GiB and never ends its
           request; the server must answer with a status, then reset the stream (NO_ERROR)
           within SECONDS instead of holding it open.
Prints "h2 idle: ok" (or "h2 refused: ok") on success.
"""
import socket
import struct
import sys
import time


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def split_frames(buffer: bytes) -> tuple[list[tuple[int, int, int, bytes]], bytes]:
    """The whole frames at the start of `buffer` as (type, flags, stream, payload), and the rest."""
    frames = []
    while len(buffer) >= 9:
        length = int.from_bytes(buffer[:3], "big")
        if len(buffer) < 9 + length:
            break
        stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
        frames.append((buffer[3], buffer[4], stream, buffer[9:9 + length]))
        buffer = buffer[9 + length:]
    return frames, buffer


def literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def refused(connection: socket.socket, seconds: float) -> None:
    headers = b"".join(literal(name, value) for name, value in [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/grpc.health.v1.Health/Check"),
        (b":authority", b"localhost"), (b"content-type", b"application/grpc"), (b"te", b"trailers")])
    connection.sendall(frame(1, 4, 1, headers) + frame(0, 0, 1, b"\x00\x7f\xff\xff\xff" + b"x" * 16))
    started = time.monotonic()
    buffer, stream_frames = b"", []
    while time.monotonic() - started < seconds:
        connection.settimeout(max(0.01, seconds - (time.monotonic() - started)))
        try:
            chunk = connection.recv(1 << 16)
        except socket.timeout:
            continue
        if not chunk:
            raise SystemExit(f"refused: the server closed the connection (stream 1 frames: {stream_frames})")
        frames, buffer = split_frames(buffer + chunk)
        for kind, flags, stream, payload in frames:
            if kind == 4 and not flags & 1:
                connection.sendall(frame(4, 1, 0, b""))
            if kind == 6 and not flags & 1:
                connection.sendall(frame(6, 1, 0, payload))
            if stream == 1:
                stream_frames.append(kind)
                if kind == 3:
                    code = int.from_bytes(payload[:4], "big")
                    assert code == 0, f"refused: RST_STREAM with error {code}, not NO_ERROR"
                    assert 1 in stream_frames[:-1], f"refused: reset before any status (stream 1 frames: {stream_frames})"
                    print(f"h2 refused: ok (reset after {time.monotonic() - started:.1f} s)")
                    return
    raise SystemExit(f"refused: stream 1 still open after {seconds} s (its frames: {stream_frames})")


def main() -> None:
    target, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    host, port = target.rsplit(":", 1)
    connection = socket.create_connection((host, int(port)))
    connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
    if mode == "refused":
        refused(connection, seconds)
        return
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
        frames, buffer = split_frames(buffer + chunk)
        for kind, flags, _, payload in frames:
            kinds.append(kind)
            if kind == 4 and not flags & 1:
                connection.sendall(frame(4, 1, 0, b""))
            if kind == 6 and not flags & 1 and mode == "idle":
                connection.sendall(frame(6, 1, 0, payload))
    elapsed = time.monotonic() - started
    if mode == "idle":
        assert 7 in kinds, f"idle: closed without GOAWAY (frames seen: {kinds})"
    else:
        assert 6 in kinds, f"silent: closed without a PING first (frames seen: {kinds})"
    print(f"h2 idle: ok ({mode}, closed after {elapsed:.1f} s)")


if __name__ == "__main__":
    main()
