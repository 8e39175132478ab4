"""Checks docker-compose.yml and the Dockerfile without a Docker engine.

- `docker-compose config` (Debian's docker-compose) must accept the compose file; the resolved
  configuration must have the broker with management plugin, health check and volume, the
  producer, and two replicas each of user-rpc and org-rpc sharing a store volume, all starting
  only once the broker is healthy, configured through environment variables the binary knows.
- The Dockerfile must be multi-stage (Swift toolchain, then slim Debian), and its runtime stage
  must install the Debian package of every shared library the built binary links, apart from
  the Swift runtime (linked statically there) and what every Debian image has.

Usage: container_files_check.py REPOSITORY_ROOT ENTITY_SYNC_BINARY
Prints "container files: ok" on success; otherwise every problem found, and exits 1.
"""
import os
import re
import subprocess
import sys

import yaml

root, binary = sys.argv[1], sys.argv[2]
problems = []


def check(condition, message):
    if not condition:
        problems.append(message)


# ---- docker-compose.yml
result = subprocess.run(["docker-compose", "-f", os.path.join(root, "docker-compose.yml"), "config"],
                        capture_output=True, text=True, cwd=root,
                        env={**os.environ, "RABBITMQ_PASSWORD": "", "ENTITY_SYNC_TOKEN": ""})
if result.returncode != 0:
    print("docker-compose config rejected docker-compose.yml:\n" + result.stderr)
    sys.exit(1)
compose = yaml.safe_load(result.stdout)
services = compose.get("services", {})
volumes = set((compose.get("volumes") or {}).keys())
for name in ["rabbitmq", "producer", "user-rpc", "org-rpc"]:
    check(name in services, f"compose: no service '{name}'")

def mounts(service):
    """(source, target) of each volume, in either of the forms `config` prints."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            yield volume.get("source"), volume.get("target", "")
        else:
            parts = str(volume).split(":")
            yield (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])


broker = services.get("rabbitmq", {})
check(str(broker.get("image", "")).startswith("rabbitmq:") and "management" in broker.get("image", ""),
      "compose: rabbitmq must use an official rabbitmq image with the management plugin")
check(broker.get("healthcheck", {}).get("test"), "compose: rabbitmq needs a health check")
check(any(target == "/var/lib/rabbitmq" and source in volumes for source, target in mounts(broker)),
      "compose: rabbitmq's /var/lib/rabbitmq must be a named volume")


def known_variables(command):
    text = subprocess.run([binary, command, "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"env:\s+(ENTITY_SYNC_[A-Z_]+)", text))


for name, command, replicas in [("producer", "producer", None), ("user-rpc", "user-rpc", 2), ("org-rpc", "org-rpc", 2)]:
    service = services.get(name, {})
    check(service.get("command") == [command], f"compose: {name} must run `entity-sync {command}`")
    check(os.path.realpath(str(service.get("build", {}).get("context", ""))) == os.path.realpath(root),
          f"compose: {name} must build the image from the repository's Dockerfile")
    check(service.get("depends_on", {}).get("rabbitmq", {}).get("condition") == "service_healthy",
          f"compose: {name} must start only once rabbitmq is healthy")
    environment = service.get("environment", {})
    url = str(environment.get("ENTITY_SYNC_AMQP_URL", ""))
    check(re.match(r"amqps?://[^@]*@rabbitmq:\d+/", url), f"compose: {name}'s ENTITY_SYNC_AMQP_URL must name the rabbitmq service")
    unknown = {key for key in environment if key.startswith("ENTITY_SYNC_")} - known_variables(command)
    check(not unknown, f"compose: {name} sets variables `entity-sync {command}` does not read: {sorted(unknown)}")
    database = str(environment.get("ENTITY_SYNC_DB", ""))
    check(any(database.startswith(target + "/") and source in volumes for source, target in mounts(service)),
          f"compose: {name}'s store ({database or 'ENTITY_SYNC_DB unset'}) must be on a named volume")
    check(service.get("healthcheck", {}).get("test"), f"compose: {name} needs a health check")
    if replicas:
        check(service.get("deploy", {}).get("replicas") == replicas, f"compose: {name} must run {replicas} replicas")
        check("ENTITY_SYNC_PRODUCER" in environment, f"compose: {name} should know the producer (bootstrap of an empty store)")

# ---- docker-compose.cluster.yml: the same services spread out, on a cluster and PostgreSQL
result = subprocess.run(["docker-compose", "-f", os.path.join(root, "docker-compose.cluster.yml"), "config"],
                        capture_output=True, text=True, cwd=root,
                        env={**os.environ, "RABBITMQ_PASSWORD": "", "ENTITY_SYNC_TOKEN": "", "POSTGRES_PASSWORD": ""})
if result.returncode != 0:
    print("docker-compose config rejected docker-compose.cluster.yml:\n" + result.stderr)
    sys.exit(1)
cluster = yaml.safe_load(result.stdout)
cluster_services = cluster.get("services", {})
cluster_volumes = set((cluster.get("volumes") or {}).keys())
nodes = [f"rabbitmq-{n}" for n in (1, 2, 3)]
for node in nodes:
    service = cluster_services.get(node, {})
    check(str(service.get("image", "")).startswith("rabbitmq:"), f"cluster: no RabbitMQ node '{node}'")
    check(service.get("hostname") == node, f"cluster: {node} needs a fixed host name (its data is kept under its node name)")
    check(service.get("healthcheck", {}).get("test"), f"cluster: {node} needs a health check")
    check(any(target == "/var/lib/rabbitmq" and source in cluster_volumes for source, target in mounts(service)),
          f"cluster: {node}'s /var/lib/rabbitmq must be a named volume of its own")
    check(service.get("environment", {}).get("RABBITMQ_ERLANG_COOKIE"), f"cluster: {node} needs the shared Erlang cookie")
postgres = cluster_services.get("postgres", {})
check(str(postgres.get("image", "")).startswith("postgres:"), "cluster: no postgres service")
check(postgres.get("healthcheck", {}).get("test"), "cluster: postgres needs a health check")
check(any(target == "/var/lib/postgresql/data" and source in cluster_volumes for source, target in mounts(postgres)),
      "cluster: postgres's data must be on a named volume")
for name, command in [("producer", "producer"), ("user-rpc", "user-rpc"), ("org-rpc", "org-rpc")]:
    service = cluster_services.get(name, {})
    check(service.get("command") == [command], f"cluster: {name} must run `entity-sync {command}`")
    check(service.get("deploy", {}).get("replicas") == 2, f"cluster: {name} must run 2 replicas")
    check(not service.get("volumes"), f"cluster: {name} must share nothing but PostgreSQL (no volume)")
    environment = service.get("environment", {})
    check(str(environment.get("ENTITY_SYNC_DB", "")).startswith("postgres://"), f"cluster: {name} must keep its store in PostgreSQL")
    urls = str(environment.get("ENTITY_SYNC_AMQP_URL", "")).split(",")
    check([re.sub(r"^amqps?://[^@]*@([^:/]+).*$", r"\1", url) for url in urls] == nodes,
          f"cluster: {name}'s ENTITY_SYNC_AMQP_URL must list the three nodes in order, not {urls}")
    dependencies = service.get("depends_on", {})
    for needed in nodes + ["postgres"]:
        check(dependencies.get(needed, {}).get("condition") == "service_healthy",
              f"cluster: {name} must start only once {needed} is healthy")
    unknown = {key for key in environment if key.startswith("ENTITY_SYNC_")} - known_variables(command)
    check(not unknown, f"cluster: {name} sets variables `entity-sync {command}` does not read: {sorted(unknown)}")
check(os.path.isfile(os.path.join(root, "deploy/cluster/rabbitmq.conf")), "cluster: deploy/cluster/rabbitmq.conf is missing")

# ---- Dockerfile
with open(os.path.join(root, "Dockerfile")) as handle:
    dockerfile = re.sub(r"\\\n", " ", handle.read())
stages = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
check(len(stages) >= 2, "Dockerfile: must be multi-stage (build, then runtime)")
check(stages and stages[0].startswith("swift:"), "Dockerfile: the first stage must build with an official swift image")
check(stages and re.match(r"debian:\S+-slim", stages[-1]), "Dockerfile: the runtime stage must be a slim Debian image")
runtime = dockerfile[dockerfile.rfind("\nFROM"):]
check("--static-swift-stdlib" in dockerfile, "Dockerfile: build with --static-swift-stdlib (the runtime has no Swift)")
check("COPY --from=" in runtime, "Dockerfile: the runtime stage must copy the binary from the build stage")
installed = set()
for command in re.findall(r"apt-get install ([^&\n]*)", runtime):
    installed.update(word for word in command.split() if not word.startswith("-"))

# Every shared library of the binary, except the Swift toolchain's, must come from a package
# the runtime installs (or one every Debian image has).
in_every_image = {"libc6", "libgcc-s1"}
ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
toolchain = os.path.dirname(os.path.dirname(os.path.realpath(subprocess.run(
    ["sh", "-c", "command -v swift"], capture_output=True, text=True).stdout.strip() or "/opt/swift/usr/bin/swift")))
needed = {}
for line in ldd.splitlines():
    match = re.match(r"\s*(\S+) => (/\S+)", line)
    if not match or os.path.realpath(match.group(2)).startswith(toolchain):
        continue
    owner = subprocess.run(["dpkg", "-S", os.path.realpath(match.group(2))], capture_output=True, text=True)
    if owner.returncode != 0:
        owner = subprocess.run(["dpkg", "-S", match.group(2)], capture_output=True, text=True)
    check(owner.returncode == 0, f"binary links {match.group(2)}, which no Debian package owns")
    if owner.returncode == 0:
        needed[owner.stdout.split(":")[0]] = match.group(1)
check("librabbitmq4" in needed and "libsqlite3-0" in needed,
      f"expected the binary to link librabbitmq and SQLite; it links {sorted(needed)}")
for package, library in sorted(needed.items()):
    check(package in installed or package in in_every_image,
          f"Dockerfile: the runtime stage must install {package} (the binary links {library})")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"container files: ok (runtime packages {sorted(installed)} cover {sorted(needed)})")
