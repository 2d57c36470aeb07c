# syntax=docker/dockerfile:1
#
# One image with both binaries: `asyncgate-server` (the gateway) and
# `asyncgate` (the CLI; `asyncgate work --queue Q -- CMD` is a worker that
# runs CMD once per task). docker-compose.yml shows both in use.
#
#   docker build -t asyncgate .
#   docker run --rm -p 127.0.0.1:50051:50051 -v asyncgate-data:/data asyncgate \
#       asyncgate-server --insecure
#
# The image listens on 0.0.0.0:50051 and stores tickets in /data (a volume).
# The gateway refuses a non-loopback address without TLS (--tls-cert,
# --tls-key; API keys, --keys, would otherwise cross the network in clear)
# unless told --insecure: choose one.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep the registry and the build between image builds; the
# binaries are copied out because a cache mount is not part of the layer.
# The image's binaries are stripped of symbols and debug info (the server
# measured 13.7 MB so, against 97 MB); build from source for line tables.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked -p asyncgate-server -p asyncgate-cli \
    && mkdir -p /out \
    && cp target/release/asyncgate-server target/release/asyncgate /out/

FROM debian:bookworm-slim
# ca-certificates: the system roots for https:// gateways and rediss:// stores.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 asyncgate \
    && useradd --system --uid 10001 --gid asyncgate --home-dir /data --no-create-home asyncgate \
    && mkdir /data \
    && chown asyncgate:asyncgate /data
COPY --from=build /out/asyncgate-server /out/asyncgate /usr/local/bin/
# Numeric, so that Kubernetes' runAsNonRoot can verify it is not root.
USER 10001:10001
WORKDIR /data
# A new named volume copies this directory's owner, so the gateway (not
# root) can write its store there.
VOLUME /data
ENV ASYNCGATE_LISTEN=0.0.0.0:50051 \
    ASYNCGATE_STORE=/data/asyncgate.redb
EXPOSE 50051
# No HEALTHCHECK here: workers run from this image too and listen on nothing.
# docker-compose.yml gives the gateways one (`asyncgate list`).
CMD ["asyncgate-server"]
