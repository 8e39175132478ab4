# syntax=docker/dockerfile:1
# The entity-sync binary in a slim Debian image. Stage 1 builds with the Swift toolchain
# (Swift's runtime linked in statically); stage 2 holds only the C libraries the binary links:
# librabbitmq, SQLite and libnghttp2 (tests check this list against the binary's linked libraries).

FROM swift:6.3-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config librabbitmq-dev libsqlite3-dev libnghttp2-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Package.swift first, so dependency resolution is cached until it changes.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
COPY Benchmarks ./Benchmarks
RUN swift build -c release --product entity-sync --static-swift-stdlib \
 && install -D "$(swift build -c release --show-bin-path)/entity-sync" /out/entity-sync

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends librabbitmq4 libsqlite3-0 libnghttp2-14 libssl3 libstdc++6 zlib1g ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/entity-sync --create-home entitysync \
 && mkdir -p /data && chown entitysync /data
COPY --from=build /out/entity-sync /usr/local/bin/entity-sync
USER entitysync
WORKDIR /var/lib/entity-sync
# Stores live here; mount a volume so they outlive the container.
VOLUME /data
EXPOSE 50051 9090
ENTRYPOINT ["entity-sync"]
CMD ["--help"]
