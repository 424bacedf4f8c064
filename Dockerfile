# coffer's container image: `docker build -t registry.example.com/coffer:0.1.0 .` at the
# repository root (deploy/kubernetes/cronjob.yaml runs it). Not built in this project's CI: no
# Docker engine runs there; test/install/image.test.ts checks this file and test/install/
# install.test.ts runs the install it performs (README "Container image").
#
# Pins, so that a rebuild gives the same image or fails loudly:
# - the base image by tag and by manifest-list digest (all architectures). The digest was taken
#   from public Dockerfiles pinning the same tag, not resolved from Docker Hub here (no network);
#   to check or refresh it: `docker buildx imagetools inspect node:20.20.2-bookworm-slim`.
# - the Debian 12 packages by exact version (bookworm and bookworm-security). Debian drops a
#   superseded security version from its mirrors: the build then fails at apt-get install;
#   take the new versions from `apt-cache policy postgresql-client-15 zstd age` on Debian 12.
# - coffer by the version of package.json (COFFER_VERSION): `npm pack` names its tarball after
#   it, so a stale value fails the build instead of shipping another version.
ARG COFFER_VERSION=0.1.0

# Both stages start from this one pinned base.
FROM node:20.20.2-bookworm-slim@sha256:2cf067cfed83d5ea958367df9f966191a942351a2df77d6f0193e162b5febfc0 AS base

# ---- stage 1: the npm package, built from the source as README "Install" does (npm ci, npm pack)
FROM base AS build
ARG COFFER_VERSION
WORKDIR /src
# Dependencies first (a layer that survives source edits); no dependency has an install script,
# and `prepare` (the build) needs src/, which is not there yet.
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json README.md LICENSE ./
COPY bin ./bin
COPY src ./src
# prepack removes dist/ and compiles it again; the tarball holds dist/, bin/, README, LICENSE.
RUN npm pack --pack-destination /tmp \
 && test -f "/tmp/coffer-${COFFER_VERSION}.tgz"

# ---- stage 2: the runtime: Node, the PostgreSQL 15 client, zstd (and pzstd), age, coffer
FROM base
ARG COFFER_VERSION
LABEL org.opencontainers.image.title="coffer" \
      org.opencontainers.image.version="${COFFER_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# postgresql-client-15 for a PostgreSQL 15 server (pg_dump must not be older than the server;
# other majors come from apt.postgresql.org). age only for decrypting by hand: coffer has its own.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      postgresql-client-15=15.20-0+deb12u1 \
      zstd=1.5.4+dfsg2-5+deb12u1 \
      age=1.1.1-1+b3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /tmp/coffer-${COFFER_VERSION}.tgz /tmp/
# Into /usr/local, as README "Install" and deploy/ call it: /usr/local/bin/coffer.
RUN npm install -g --prefix /usr/local --no-audit --no-fund "/tmp/coffer-${COFFER_VERSION}.tgz" \
 && rm "/tmp/coffer-${COFFER_VERSION}.tgz" \
 && npm cache clean --force \
 && rm -rf /root/.npm
# A named user (libpq looks the uid up when PGUSER is unset) with a home, and a private runtime
# directory for the lock files (coffer's default lock directory is $XDG_RUNTIME_DIR/coffer).
# Under a read-only root filesystem, set lockDir to a mounted writable path (the CronJob: /tmp).
RUN groupadd --gid 10001 coffer \
 && useradd --uid 10001 --gid 10001 --home-dir /home/coffer --create-home --shell /usr/sbin/nologin coffer \
 && install -d -o 10001 -g 10001 -m 0700 /run/coffer
ENV HOME=/home/coffer \
    TMPDIR=/tmp \
    XDG_RUNTIME_DIR=/run/coffer
WORKDIR /home/coffer
USER 10001:10001
ENTRYPOINT ["coffer"]
CMD ["--help"]
