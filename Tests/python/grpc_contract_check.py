#!/usr/bin/env python3
"""Checks the gRPC wire contract of the EntitySync server from outside: grpcio for what a client
sees of a call, nghttp (nghttp2-client) for the HTTP/2 frames themselves. Exits 0 and prints
"grpc contract: ok" when every check passes.

usage: grpc_contract_check.py PRODUCER_HOST:PORT USER_RPC_HOST:PORT TOKEN
"""
import importlib.util
import os
import struct
import subprocess
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpc_client_check import generate_stubs  # noqa: E402


def expect_status(call, code, contains=None, what=""):
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == code, f"{what}: expected {code}, got {error.code()}: {error.details()}"
        if contains is not None:
            assert contains in (error.details() or ""), f"{what}: {contains!r} not in {error.details()!r}"
        return error
    raise SystemExit(f"{what}: succeeded, expected {code}")


def framed(message: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BI", 1 if compressed else 0, len(message)) + message


def nghttp(target: str, path: str, body: bytes, headers: list[str]) -> str:
    """One request with nghttp -v; returns its frame log."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as data:
        data.write(body)
        data.flush()
        arguments = ["nghttp", "-v", "-n", "-d", data.name, "-t", "10"]
        for header in headers:
            arguments += ["-H", header]
        completed = subprocess.run(arguments + [f"http://{target}{path}"], capture_output=True, text=True, timeout=20)
        return completed.stdout + completed.stderr


def main() -> None:
    producer, user_rpc, token = sys.argv[1:4]
    authorized = [("authorization", f"Bearer {token}")]
    proto_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
    with tempfile.TemporaryDirectory() as out:
        generate_stubs(proto_root, out)
        sys.path.insert(0, out)
        from entitysync.v1 import entities_pb2, services_pb2, services_pb2_grpc
        # grpc/health/v1/health_pb2.py cannot be imported by its package name: `grpc` is grpcio.
        spec = importlib.util.spec_from_file_location("health_pb2", os.path.join(out, "grpc/health/v1/health_pb2.py"))
        health_pb2 = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(health_pb2)

        with grpc.insecure_channel(producer, options=[("grpc.max_send_message_length", 16 << 20)]) as channel:
            admin = services_pb2_grpc.EntityAdminStub(channel)
            # A status message with non-ASCII text arrives intact (percent-encoded on the wire).
            odd = "ünïcödé ✓ 100% not-an-email"
            user = entities_pb2.User(id="uni", name="x", email=odd)
            expect_status(lambda: admin.CreateUser(services_pb2.CreateUserRequest(user=user), metadata=authorized),
                          grpc.StatusCode.INVALID_ARGUMENT, contains=odd, what="non-ASCII status message")
            # Metadata of any kind, text and binary, reaches the services without upsetting them.
            expect_status(lambda: admin.GetUser(services_pb2.GetRequest(id="nobody"),
                                                metadata=[("x-trace", "abc"), ("x-blob-bin", b"\x00\xff\x10")]),
                          grpc.StatusCode.NOT_FOUND, contains="nobody", what="metadata")
            # A compressed request is refused, not misread.
            expect_status(lambda: admin.GetUser(services_pb2.GetRequest(id="x"), compression=grpc.Compression.Gzip),
                          grpc.StatusCode.UNIMPLEMENTED, contains="compress", what="gzip request")
            # A large request within the limit reaches the service; one over it is refused with the limit.
            big = entities_pb2.User(id="big", name="n" * (3 << 20), email="big@example.com")
            expect_status(lambda: admin.CreateUser(services_pb2.CreateUserRequest(user=big), metadata=authorized),
                          grpc.StatusCode.INVALID_ARGUMENT, what="3 MiB request")
            huge = entities_pb2.User(id="huge", name="n" * (5 << 20), email="huge@example.com")
            expect_status(lambda: admin.CreateUser(services_pb2.CreateUserRequest(user=huge), metadata=authorized),
                          grpc.StatusCode.RESOURCE_EXHAUSTED, contains="4194304", what="5 MiB request")
            # An oversized header list is refused, and the server keeps serving the connection's next calls.
            try:
                admin.GetUser(services_pb2.GetRequest(id="x"), metadata=[("x-big", "v" * 20000)], timeout=5)
                raise SystemExit("a 20 kB header list was accepted")
            except grpc.RpcError as error:
                assert error.code() != grpc.StatusCode.OK
            expect_status(lambda: admin.GetUser(services_pb2.GetRequest(id="nobody")), grpc.StatusCode.NOT_FOUND,
                          what="after an oversized header list")

        with grpc.insecure_channel(user_rpc) as channel:
            info = services_pb2_grpc.SyncInfoStub(channel)
            never = services_pb2.WaitForVersionRequest(entity_type=entities_pb2.ENTITY_TYPE_USER, entity_id="never",
                                                       version=1, timeout_ms=30000)
            # A deadline ends a waiting call.
            started = time.monotonic()
            expect_status(lambda: info.WaitForVersion(never, timeout=0.3), grpc.StatusCode.DEADLINE_EXCEEDED,
                          what="deadline")
            assert time.monotonic() - started < 5, "the deadline was not kept"
            # Cancelled calls free their streams: 150 cancelled waits on one connection (more than
            # its 100 concurrent streams), then calls still go through.
            futures = [info.WaitForVersion.future(never) for _ in range(150)]
            time.sleep(0.3)
            for future in futures:
                future.cancel()
            for future in futures:
                assert future.cancelled() or future.code() == grpc.StatusCode.CANCELLED
            query = services_pb2_grpc.UserQueryStub(channel)
            for _ in range(120):
                expect_status(lambda: query.GetUser(services_pb2.GetRequest(id="nobody"), timeout=5),
                              grpc.StatusCode.NOT_FOUND, what="GetUser after cancellations")
            # Calls answered on the event loop from one socket read share a read transaction: a
            # burst of GetUsers on this one connection, then an update, then another burst. Each
            # burst must see what was committed before it was sent, never an older snapshot.
            with grpc.insecure_channel(producer) as producer_channel:
                writer = services_pb2_grpc.EntityAdminStub(producer_channel)
                for version in (1, 2, 3):
                    name = f"Burst {version}"
                    fresh = entities_pb2.User(id="burst", name=name, email="burst@example.com")
                    if version == 1:
                        writer.CreateUser(services_pb2.CreateUserRequest(user=fresh), metadata=authorized)
                    else:
                        writer.UpdateUser(services_pb2.UpdateUserRequest(user=fresh), metadata=authorized)
                    reached = info.WaitForVersion(services_pb2.WaitForVersionRequest(
                        entity_type=entities_pb2.ENTITY_TYPE_USER, entity_id="burst", version=version, timeout_ms=10000))
                    assert reached.version == version, reached
                    burst = [query.GetUser.future(services_pb2.GetRequest(id="burst"), timeout=5) for _ in range(40)]
                    seen = {(future.result().user.version, future.result().user.name) for future in burst}
                    assert seen == {(version, name)}, f"GetUsers sent after version {version} was applied saw {seen}"
            # The event-loop answers: GetUser and Health/Check, with their errors.
            expect_status(lambda: query.GetUser(services_pb2.GetRequest(id="bad id!")), grpc.StatusCode.INVALID_ARGUMENT,
                          what="GetUser with an invalid id")
            check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                        response_deserializer=health_pb2.HealthCheckResponse.FromString)
            assert check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            expect_status(lambda: check(health_pb2.HealthCheckRequest(service="no.such.Service")),
                          grpc.StatusCode.NOT_FOUND, what="health of an unknown service")

        grpc_headers = ["content-type: application/grpc", "te: trailers"]
        wait_body = framed(never.SerializeToString())
        # The server keeps grpc-timeout itself: DEADLINE_EXCEEDED in its trailers.
        log = nghttp(user_rpc, "/entitysync.v1.SyncInfo/WaitForVersion", wait_body, grpc_headers + ["grpc-timeout: 200m"])
        assert "grpc-status: 4" in log, f"grpc-timeout was not kept by the server:\n{log}"
        # Early errors are trailers-only: one HEADERS frame with END_STREAM and no DATA.
        get_body = framed(services_pb2.GetRequest(id="x").SerializeToString())
        log = nghttp(producer, "/entitysync.v1.NoSuch/Method", get_body, grpc_headers)
        assert "grpc-status: 12" in log and "recv DATA" not in log, f"unknown method:\n{log}"
        # A body that is not gRPC's content type is refused at the HTTP level.
        log = nghttp(producer, "/entitysync.v1.EntityAdmin/GetUser", get_body, ["content-type: text/plain"])
        assert ":status: 415" in log, f"text/plain:\n{log}"
        # An unknown message encoding: UNIMPLEMENTED, naming what the server accepts.
        log = nghttp(producer, "/entitysync.v1.EntityAdmin/GetUser", get_body, grpc_headers + ["grpc-encoding: snappy"])
        assert "grpc-status: 12" in log and "grpc-accept-encoding: identity" in log, f"grpc-encoding:\n{log}"
        # A message flagged compressed without an encoding: UNIMPLEMENTED as well.
        log = nghttp(producer, "/entitysync.v1.EntityAdmin/GetUser", framed(b"\x0a\x01x", compressed=True), grpc_headers)
        assert "grpc-status: 12" in log, f"compressed flag:\n{log}"
    print("grpc contract: ok")


if __name__ == "__main__":
    main()
