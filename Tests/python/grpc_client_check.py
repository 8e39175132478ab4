#!/usr/bin/env python3
"""Calls the EntitySync services with Python's grpcio (not grpc-swift), with stubs generated from
proto/ at run time. Exits 0 and prints "python grpc client: ok" when every check passes.

usage: grpc_client_check.py PRODUCER_HOST:PORT USER_RPC_HOST:PORT TOKEN [CA_PEM]

With CA_PEM, every call goes over TLS and the services' certificates must be signed by that CA.
"""
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc


def generate_stubs(proto_root: str, out: str) -> None:
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = ["entitysync/v1/entities.proto", "entitysync/v1/services.proto", "grpc/health/v1/health.proto"]
    status = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if status != 0:
        raise SystemExit(f"protoc failed with {status}")


def channel_to(target: str, ca_path: str | None) -> grpc.Channel:
    if ca_path is None:
        return grpc.insecure_channel(target)
    with open(ca_path, "rb") as ca:
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca.read()))


def main() -> None:
    producer, user_rpc, token = sys.argv[1:4]
    ca_path = sys.argv[4] if len(sys.argv) > 4 else None
    proto_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
    with tempfile.TemporaryDirectory() as out:
        generate_stubs(proto_root, out)
        sys.path.insert(0, out)
        from entitysync.v1 import entities_pb2, services_pb2, services_pb2_grpc

        with channel_to(producer, ca_path) as channel:
            admin = services_pb2_grpc.EntityAdminStub(channel)
            user = entities_pb2.User(id="py-user", name="From Python", email="py@example.com")
            try:
                admin.CreateUser(services_pb2.CreateUserRequest(user=user))
                raise SystemExit("a mutation without a token succeeded")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.code()
            created = admin.CreateUser(services_pb2.CreateUserRequest(user=user),
                                       metadata=[("authorization", f"Bearer {token}")])
            assert created.version == 1, created
            try:
                admin.GetUser(services_pb2.GetRequest(id=""))
                raise SystemExit("an empty id was accepted")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.code()
            changes = list(admin.Snapshot(services_pb2.SnapshotRequest()))
            assert any(change.entity_id == "py-user" for change in changes), changes

        with channel_to(user_rpc, ca_path) as channel:
            info = services_pb2_grpc.SyncInfoStub(channel)
            reached = info.WaitForVersion(services_pb2.WaitForVersionRequest(
                entity_type=entities_pb2.ENTITY_TYPE_USER, entity_id="py-user", version=1, timeout_ms=10000))
            assert reached.version >= 1, reached
            found = services_pb2_grpc.UserQueryStub(channel).GetUser(services_pb2.GetRequest(id="py-user"))
            assert found.user.name == "From Python", found
    print("python grpc client: ok")


if __name__ == "__main__":
    main()
