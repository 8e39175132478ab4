#!/usr/bin/env python3
"""Reply-to-visible latency: creates users through the producer's EntityAdmin at a fixed rate
(open loop: a slow reply does not slow the schedule), and after each reply asks user-rpc and
org-rpc to WaitForVersion the new user. The latency of one mutation is the time from its reply
to the later of the two WaitForVersion replies. Prints one CSV line of results; with --samples,
writes every latency (ms) to a file.

usage: ingest_latency.py PRODUCER USER_RPC ORG_RPC --rate R --count N [--prefix P] [--samples FILE]
"""
import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc


def generate_stubs(proto_root: str, out: str) -> None:
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = ["entitysync/v1/entities.proto", "entitysync/v1/services.proto"]
    if protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *files]) != 0:
        raise SystemExit("protoc failed")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(arguments, entities_pb2, services_pb2, services_pb2_grpc):
    async with grpc.aio.insecure_channel(arguments.producer) as producer_channel, \
            grpc.aio.insecure_channel(arguments.user_rpc) as user_channel, \
            grpc.aio.insecure_channel(arguments.org_rpc) as org_channel:
        admin = services_pb2_grpc.EntityAdminStub(producer_channel)
        waits = [services_pb2_grpc.SyncInfoStub(user_channel), services_pb2_grpc.SyncInfoStub(org_channel)]
        latencies, failures = [], []

        async def one(index):
            user = entities_pb2.User(id=f"{arguments.prefix}{index}", name="Latency", email=f"l{index}@example.com")
            try:
                created = await admin.CreateUser(services_pb2.CreateUserRequest(user=user), timeout=30)
                replied = time.monotonic()
                request = services_pb2.WaitForVersionRequest(entity_type=entities_pb2.ENTITY_TYPE_USER, entity_id=user.id,
                                                             version=created.version, timeout_ms=30000)
                await asyncio.gather(*(stub.WaitForVersion(request, timeout=35) for stub in waits))
                latencies.append((time.monotonic() - replied) * 1000)
            except grpc.aio.AioRpcError as error:
                failures.append(f"{error.code()}: {error.details()}")

        started = time.monotonic()
        tasks = []
        for index in range(arguments.count):
            delay = started + index / arguments.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        return latencies, failures, elapsed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("producer")
    parser.add_argument("user_rpc")
    parser.add_argument("org_rpc")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="lat")
    parser.add_argument("--samples")
    arguments = parser.parse_args()
    proto_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")
    with tempfile.TemporaryDirectory() as out:
        generate_stubs(proto_root, out)
        sys.path.insert(0, out)
        from entitysync.v1 import entities_pb2, services_pb2, services_pb2_grpc
        latencies, failures, elapsed = asyncio.run(run(arguments, entities_pb2, services_pb2, services_pb2_grpc))
    if failures:
        print(f"ingest_latency: {len(failures)} of {arguments.count} mutations failed, e.g. {failures[0]}", file=sys.stderr)
        raise SystemExit(1)
    if arguments.samples:
        with open(arguments.samples, "w") as samples:
            samples.writelines(f"{value:.3f}\n" for value in latencies)
    print(f"rate={arguments.count / elapsed:.0f} p50_ms={statistics.median(latencies):.2f} "
          f"p90_ms={percentile(latencies, 0.90):.2f} p99_ms={percentile(latencies, 0.99):.2f} max_ms={max(latencies):.2f}")


if __name__ == "__main__":
    main()
