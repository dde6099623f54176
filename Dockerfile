# syntax=docker/dockerfile:1
#
# The dualwrite image. One binary is both the operator (`dualwrite operator`, the control plane)
# and the relay (`dualwrite relay`, the data plane): the operator deploys each pipeline's relay
# with this same image (env RELAY_IMAGE, set by the Helm chart) unless the pipeline overrides it.
#
# Build (BuildKit, for the cache mounts):  docker build -t dualwrite:dev .
# Run a demo relay (memory providers):     docker run --rm -p 8080:8080 dualwrite:dev
#
# Without Docker, hack/build-image builds the same image (binary, libraries, CA certificates, user,
# entrypoint, cmd, env, ports, labels) with crane and a root filesystem it assembles from this
# Debian 12 machine; it is what the test node runs. Keep the two in step: a change here (base,
# user, entrypoint, cmd, labels, native libraries) is a change there. See docs/image.md.
#
# NOTE: this file is not built by the project's checks: the development and CI machines have no
# Docker engine. Keep it in step with Cargo.toml by hand (binary name, native dependencies).

# ---- builder -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# rdkafka-sys builds librdkafka from source with its ./configure script and make: it needs make,
# a C/C++ compiler, the zlib headers and, for rdkafka's `ssl` feature (TLS and SASL PLAIN /
# SCRAM), the OpenSSL headers: librdkafka links the system libssl/libcrypto 3 (found through
# pkg-config by openssl-sys). curl and Cyrus SASL (GSSAPI) are off, so no headers for them.
# The rust:bookworm image has these already; they are listed so a slimmer base keeps working.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make g++ zlib1g-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

# The distroless runtime has no libz.so.1: link zlib statically (libz-sys builds its bundled copy).
ENV LIBZ_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never

WORKDIR /src
COPY . .

# Cache mounts keep the crates.io registry and the target directory between builds; the binary
# is copied out of the (unpersisted) target mount into the layer, without its DWARF (the release
# profile keeps debug = 1 for local profiling; the symbol table stays, so panics name functions).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin dualwrite \
 && objcopy --strip-debug target/release/dualwrite /dualwrite

# ---- runtime -------------------------------------------------------------------------------
# glibc, libgcc, OpenSSL 3 (libssl3: the binary links libssl.so.3 and libcrypto.so.3 dynamically,
# built against the same Debian 12 version) and CA certificates, no shell, no package manager;
# runs as UID 65532 ("nonroot"), which the Helm chart's restricted security context
# (runAsUser 65532) matches. Do not move to a "-nossl" base. The base sets PATH and
# SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt (read by OpenSSL and rustls-native-certs).
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="dualwrite" \
      org.opencontainers.image.description="Kubernetes operator and relay that dual-writes every message to several brokers (memory, NATS JetStream, Kafka)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.dualwrite.cargo-profile="release"

COPY --from=builder /dualwrite /dualwrite

USER 65532:65532
# 8080: relay ingest API (/api/v1/ingest, /health, /ready, /stats, /metrics).
# 8081: operator /healthz, /readyz, /metrics.
EXPOSE 8080 8081
ENTRYPOINT ["/dualwrite"]
# With no arguments: the relay with its built-in pipeline (two memory providers), as a demo.
# The chart runs `operator`; the operator runs `relay --pipeline <namespace>/<name>`.
CMD ["relay"]
