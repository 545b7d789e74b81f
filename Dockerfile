# syntax=docker/dockerfile:1
#
# token-store container image: a release build of the `token-store` binary on a distroless
# runtime (glibc + libgcc + CA certificates; no shell, no package manager, no build tools),
# running as the unprivileged `nonroot` user.
#
#   docker build --build-arg RDS_CA_BUNDLE_SHA256=<sha256> -t token-store .   # production (ECS)
#   docker compose up --build          # target `local`: with PostgreSQL and LocalStack KMS
#
# Configuration: /etc/token-store/token-store.toml (deploy/token-store.toml) plus
# TOKEN_STORE_* environment variables; infra/README.md lists what ECS sets.
#
# Base images are pinned by digest (a tag can be moved; a digest cannot). The digests below
# are the multi-platform index digests of these tags as pinned by several public
# repositories; they were not pulled or checked against the registries from the machine
# that wrote this line. Check them before the first build, and refresh both together:
#   docker buildx imagetools inspect rust:1.95.0-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot

# Matches the toolchain the project is built and tested with (`rustc --version`).
FROM rust:1.95.0-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS builder
WORKDIR /build

COPY Cargo.toml Cargo.lock ./
COPY src ./src
# sqlx::migrate! embeds migrations/ into the binary at compile time.
COPY migrations ./migrations
# Not compiled: cargo loads every member of the workspace (the benchmark, the test support)
# and every target the root manifest names (tests/), so they must exist; only the service
# is built.
COPY tests ./tests
COPY bench ./bench
COPY test-support ./test-support

# Dependency caching: the registry and target/ live in BuildKit cache mounts, so a rebuild
# after a source change compiles only this crate. (Cache mounts stay on the builder; a CI
# without a persistent builder recompiles dependencies, correctly, just slower.)
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked -p token-store --bin token-store \
    && install -D -m 0755 target/release/token-store /out/token-store

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f AS runtime

COPY --from=builder /out/token-store /usr/local/bin/token-store
COPY deploy/token-store.toml /etc/token-store/token-store.toml

# distroless's nonroot user (uid/gid 65532, in the image's /etc/passwd).
# hadolint ignore=DL3066
USER nonroot
# 8080: the API (the ALB's target). 9090: /metrics ([server] metrics_listen), scrapers only.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/token-store"]
CMD ["serve", "--config", "/etc/token-store/token-store.toml"]

# compose.yaml builds this target: a local PostgreSQL needs no RDS CA bundle.
FROM runtime AS local

# The production image (the default target), for infra/: the RDS CA bundle (AWS's published
# global bundle) so that the service connects with sslmode=verify-full
# (sslrootcert=/etc/token-store/rds-global-bundle.pem). The download is checked against
# RDS_CA_BUNDLE_SHA256 and the build fails without it or on any other content: a CA bundle
# is a trust anchor, and the URL serves whatever it serves today. No default is committed
# because the checksum could not be obtained where this was written (no network). Obtain
# it once, check the certificates in the file against the RDS documentation's list
# (`openssl crl2pkcs7 -nocrl -certfile global-bundle.pem | openssl pkcs7 -print_certs -noout`),
# then pass it (or commit it here as the ARG's default):
#   curl -fsSL https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem | sha256sum
# AWS adds CAs to the bundle from time to time; a changed file fails the build until the new
# checksum is reviewed and passed.
FROM runtime AS production
ARG RDS_CA_BUNDLE_SHA256
ADD --checksum=sha256:${RDS_CA_BUNDLE_SHA256} --chmod=0644 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /etc/token-store/rds-global-bundle.pem
