#!/usr/bin/env python3
"""The Python grpcio anchor for `scripts/bench query`, and the reply check it runs on every server.

  query_server.py serve PORT [USERS]     UserQuery.GetUser from a dict of USERS users (default 20000;
                                         u1 is in group g1) and Health.Check, on 127.0.0.1:PORT,
                                         grpc.aio, until killed
  query_server.py check NAME=HOST:PORT... calls GetUser(id="u1") once on each server and checks that
                                         the reply decodes to user u1 at version >= 1 with group g1;
                                         NAME+health=HOST:PORT also checks Health.Check is SERVING.
                                         Prints one line per server; exits 1 if any check fails.

h2load counts a call that fails with a grpc-status as a success, hence the check. Stubs are
generated from proto/ at run time, as Tests/python/grpc_client_check.py does.
"""
import asyncio
import importlib.util
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")
GET_USER = "/entitysync.v1.UserQuery/GetUser"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def generate_stubs(out: str):
    """Generates the message modules into `out`; returns (entities_pb2, services_pb2, health_pb2)."""
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = ["entitysync/v1/entities.proto", "entitysync/v1/services.proto", "grpc/health/v1/health.proto"]
    status = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", *files])
    if status != 0:
        raise SystemExit(f"protoc failed with {status}")
    sys.path.insert(0, out)
    from entitysync.v1 import entities_pb2, services_pb2
    # grpc/health/v1/health_pb2.py cannot be imported by its package name: `grpc` is grpcio.
    spec = importlib.util.spec_from_file_location("health_pb2", os.path.join(out, "grpc/health/v1/health_pb2.py"))
    health_pb2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health_pb2)
    return entities_pb2, services_pb2, health_pb2


async def serve(port: int, users: int, entities_pb2, services_pb2, health_pb2) -> None:
    group = entities_pb2.Group(id="g1", name="Group 1", member_ids=["u1"], version=1)
    replies = {}
    for index in range(users):
        user = entities_pb2.User(id=f"u{index}", name=f"User {index}", email=f"u{index}@example.com",
                                 status=entities_pb2.USER_STATUS_ACTIVE, version=1)
        replies[user.id] = services_pb2.UserWithGroups(user=user, groups=[group] if user.id == "u1" else [])
    serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def get_user(request, context):
        reply = replies.get(request.id)
        if reply is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no user {request.id!r}")
        return reply

    async def check(request, context):
        return serving

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler("entitysync.v1.UserQuery", {
            "GetUser": grpc.unary_unary_rpc_method_handler(
                get_user, request_deserializer=services_pb2.GetRequest.FromString,
                response_serializer=services_pb2.UserWithGroups.SerializeToString)}),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString)}),
    ])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def check(targets, services_pb2, health_pb2) -> bool:
    passed = True
    for target in targets:
        name, address = target.split("=", 1)
        with_health = name.endswith("+health")
        name = name.removesuffix("+health")
        try:
            with grpc.insecure_channel(address) as channel:
                call = channel.unary_unary(GET_USER, request_serializer=services_pb2.GetRequest.SerializeToString,
                                           response_deserializer=services_pb2.UserWithGroups.FromString)
                reply = call(services_pb2.GetRequest(id="u1"), timeout=10)
                problems = []
                if reply.user.id != "u1" or reply.user.version < 1:
                    problems.append(f"user {reply.user.id!r} at version {reply.user.version}")
                if [group.id for group in reply.groups] != ["g1"]:
                    problems.append(f"groups {[group.id for group in reply.groups]}, not ['g1']")
                health = ""
                if with_health:
                    call = channel.unary_unary(HEALTH_CHECK,
                                               request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                               response_deserializer=health_pb2.HealthCheckResponse.FromString)
                    status = call(health_pb2.HealthCheckRequest(), timeout=10).status
                    if status != health_pb2.HealthCheckResponse.SERVING:
                        problems.append(f"health status {status}")
                    health = ", Health/Check SERVING"
            if problems:
                passed = False
                print(f"{name}: GetUser reply wrong: {'; '.join(problems)}")
            else:
                print(f"{name}: GetUser ok ({reply.ByteSize()}-byte reply){health}")
        except grpc.RpcError as error:
            passed = False
            print(f"{name}: {error.code().name}: {error.details()}")
    return passed


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("serve", "check"):
        raise SystemExit(__doc__)
    with tempfile.TemporaryDirectory() as out:
        entities_pb2, services_pb2, health_pb2 = generate_stubs(out)
        if sys.argv[1] == "check":
            sys.exit(0 if check(sys.argv[2:], services_pb2, health_pb2) else 1)
        users = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
        try:
            asyncio.run(serve(int(sys.argv[2]), users, entities_pb2, services_pb2, health_pb2))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
