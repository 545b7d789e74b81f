# syntax=docker/dockerfile:1
#
# token-store container image: a release build of the `token-store` binary on a distroless
# runtime (glibc + libgcc + CA certificates; no shell, no package manager, no build tools),
# running as the unprivileged `nonroot` user.
#
#   docker build -t token-store .
#   docker compose up --build          # with PostgreSQL and LocalStack KMS (compose.yaml)
#
# Configuration: /etc/token-store/token-store.toml (deploy/token-store.toml) plus
# TOKEN_STORE_* environment variables; infra/README.md lists what ECS sets.

# Matches the toolchain the project is built and tested with (`rustc --version`).
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

COPY Cargo.toml Cargo.lock ./
COPY src ./src
# sqlx::migrate! embeds migrations/ into the binary at compile time.
COPY migrations ./migrations
# Not compiled: cargo only needs every target the manifest names to exist.
COPY tests ./tests

# Dependency caching: the registry and target/ live in BuildKit cache mounts, so a rebuild
# after a source change compiles only this crate. (Cache mounts stay on the builder; a CI
# without a persistent builder recompiles dependencies, correctly, just slower.)
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked --bin token-store \
    && install -D -m 0755 target/release/token-store /out/token-store

FROM gcr.io/distroless/cc-debian12:nonroot

# The RDS CA bundle (AWS's published global bundle), so that infra/ can connect with
# sslmode=verify-full (sslrootcert=/etc/token-store/rds-global-bundle.pem). compose.yaml does
# not need it. World-readable: the process runs as nonroot.
ADD --chmod=0644 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /etc/token-store/rds-global-bundle.pem

COPY --from=builder /out/token-store /usr/local/bin/token-store
COPY deploy/token-store.toml /etc/token-store/token-store.toml

# distroless's nonroot user (uid/gid 65532, in the image's /etc/passwd).
# hadolint ignore=DL3066
USER nonroot
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/token-store"]
CMD ["serve", "--config", "/etc/token-store/token-store.toml"]
