# syntax=docker/dockerfile:1
#
# The jobvisor server image: `docker build -t jobvisor .`
# Runs as the non-root user 65532 with only the binary in a distroless
# image (glibc, libgcc, CA certificates; no shell). The Helm chart in
# helm/jobvisor runs it with `serve`.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies first, against placeholder sources, so that a change to src/
# rebuilds only jobvisor itself. The build needs no system packages: protoc
# is vendored (build.rs), SQLite is bundled, ring builds with the image's gcc.
# The workspace's other members (test support and tools, not built here)
# only need their manifests and an empty library for cargo to load it.
COPY Cargo.toml Cargo.lock build.rs ./
COPY crates/testkit/Cargo.toml crates/testkit/
COPY crates/tools/Cargo.toml crates/tools/
COPY proto proto
RUN mkdir -p src crates/testkit/src crates/tools/src \
 && touch crates/testkit/src/lib.rs crates/tools/src/lib.rs \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

COPY src src
COPY migrations migrations
# touch: make sure cargo sees the real sources as newer than the placeholders.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && cp target/release/jobvisor /jobvisor

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /jobvisor /jobvisor
USER 65532:65532
# The nonroot user's home, writable: where the embedded store goes
# (./jobvisor-data) when no DATABASE_URL is given.
WORKDIR /home/nonroot
# gRPC (JobService, health, reflection), Prometheus metrics and the
# HTTP/JSON API with the dashboard, on every interface (the binary alone
# binds loopback). Plaintext on such an address refuses to start: give
# JOBVISOR_TLS_CERT and JOBVISOR_TLS_KEY, or JOBVISOR_INSECURE=true behind a
# mesh that encrypts (the chart does).
ENV JOBVISOR_LISTEN=0.0.0.0:50051 \
    JOBVISOR_METRICS_LISTEN=0.0.0.0:9464 \
    JOBVISOR_HTTP_LISTEN=0.0.0.0:8080
EXPOSE 50051 9464 8080
ENTRYPOINT ["/jobvisor"]
CMD ["serve"]
