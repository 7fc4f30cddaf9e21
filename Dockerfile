# syntax=docker/dockerfile:1
#
# qscale container image: a release build of the one binary on a distroless base.
#
#   docker build -t qscale:dev .
#   docker images qscale:dev          # SIZE: the image size (see "Size" below)
#   docker run --rm qscale:dev --version
#
# Build stage: Debian bookworm with the Rust toolchain. Rust >= 1.94.1 is required (Cargo.toml's
# rust-version). aws-lc-sys (rustls' crypto provider) builds with the C compiler only, from
# pregenerated bindings, on x86_64 and aarch64 Linux: no cmake, clang or Go needed.
# Pin the base images by digest in your own build for reproducibility.
#
# Final stage: gcr.io/distroless/cc-debian12:nonroot, i.e. glibc, libgcc, CA certificates and
# /etc/passwd, nothing else: no shell, no package manager. It matches the builder's glibc
# (Debian 12). The process runs as the fixed UID/GID 65532 ("nonroot") and writes nothing to
# disk, so a read-only root filesystem works (the Deployment in manifests/ sets one).
#
# Size (estimate; no Docker daemon where this was written): about 37 MB uncompressed, i.e. the
# distroless cc base (about 23 MB) plus the qscale binary (13.6 MB: `cargo build --release` of
# qscale 0.1.0 on x86_64, built for size and stripped; 6.0 MB gzipped), so about 15 MB to
# pull. Measure it with `docker images qscale:dev` (SIZE) after a build.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole source tree (see .dockerignore): Cargo.toml may name test and example targets, and
# cargo checks that their files exist even for a build of the binary alone.
COPY . .
# Cache mounts (BuildKit) keep the crate downloads and compiled dependencies between builds;
# the binary is copied out of the cached target directory. The release profile keeps the
# symbol table (build/qscale.order names functions; see build.rs): `install -s` drops it from
# the copy that ships.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin qscale \
    && install -D -s -m 0755 target/release/qscale /out/qscale \
    && /out/qscale --version

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="qscale" \
      org.opencontainers.image.description="Autoscale Kubernetes workloads from queue depth and metrics, without an HPA" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/qscale /usr/local/bin/qscale
USER 65532:65532
# /metrics, /healthz and /readyz.
EXPOSE 9090
ENTRYPOINT ["qscale"]
# The in-cluster defaults; manifests/base/deployment.yaml passes these and leader election.
CMD ["run", "--config-map=qscale-rules/rules.yaml", "--metrics-addr=0.0.0.0:9090", "--log-format=json"]
