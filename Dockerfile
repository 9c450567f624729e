# syntax=docker/dockerfile:1
#
# tim-gateway container image.
#
#   docker build -t ghcr.io/example/tim-gateway:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Two stages: a Rust builder, then gcr.io/distroless/cc-debian12:nonroot, which has exactly what
# the binary links against (glibc, libgcc_s, libm) and nothing else: no shell, no package
# manager, no CA bundle (rustls carries its own webpki roots, see README "Pointing it at real
# Tencent regions"). The builder is Debian 12 (bookworm) too, so the binary never needs a newer
# glibc than the runtime image has: the default `rust:1.95` tag follows Debian's current
# release, which may be newer than the distroless base.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
# A failing command anywhere in a pipe fails the RUN.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build

# 1. Dependencies only, in their own layer: it is rebuilt when Cargo.toml or Cargo.lock
#    change, not on every source edit. Cargo has to parse the whole manifest, so every target
#    it names ([lib], [[bin]], [[bench]]) gets a stub. Examples are auto-discovered: without an
#    examples/ directory there are none to stub.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && echo 'fn main() {}' > benches/usersig.rs \
    && echo 'fn main() {}' > benches/gateway.rs \
    && cargo build --release --locked \
    && rm -rf src benches

# 2. The real sources. config/ is needed because src/config.rs include_str!s config/demo.toml;
#    benches/ and examples/ only because Cargo.toml (and auto-discovery) names them.
COPY src ./src
COPY config ./config
COPY benches ./benches
COPY examples ./examples

# COPY keeps the files' modification times from the build context, which can be older than
# the stub build above; cargo would then think the stubs are up to date and ship an empty
# `fn main() {}`. Touching the crate roots forces the real build, and running the result
# (`--version` prints "tim-gateway X.Y.Z"; the stub prints nothing) proves it happened.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -m 0755 target/release/tim-gateway /usr/local/bin/tim-gateway \
    && /usr/local/bin/tim-gateway --version | grep -q '^tim-gateway '

# ---------------------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/example/tim-gateway

LABEL org.opencontainers.image.title="tim-gateway" \
      org.opencontainers.image.description="Caching, signing, quota-keeping reverse proxy for Tencent Cloud Chat's REST API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /usr/local/bin/tim-gateway /usr/local/bin/tim-gateway

# The image's "nonroot" user, written as numbers so that Kubernetes' runAsNonRoot can verify it
# without a runAsUser (a user *name* in the image cannot be checked by the kubelet).
USER 65532:65532

# 18460: client listener. The default config binds it to 127.0.0.1 (it signs every request as
# the app admin), so it is reachable only from inside the pod / container network namespace.
# 18461: admin listener (/metrics, /healthz, /readyz, /cache/purge). Uncommon ports on purpose:
# a sidecar shares the pod's network namespace with an application that may use 8080/9090.
EXPOSE 18460 18461

# No HEALTHCHECK: the image has no shell or curl; Kubernetes probes /healthz and /readyz.
# The process writes nothing to disk (a read-only root filesystem is fine) and logs to stderr.
ENTRYPOINT ["/usr/local/bin/tim-gateway"]
CMD ["serve", "--config", "/etc/tim-gateway/gateway.toml"]
