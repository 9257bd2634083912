# steerd server image: Debian 12, CPU (Debian's libtorch is CPU-only).
#
#   docker build -t steerd .                      # BuildKit (the default since Docker 23)
#   docker build --build-arg BUILD_JOBS=4 -t steerd .   # cap parallel compiles (~1.5 GB each)
#
# The image runs `steerd serve` listening on 0.0.0.0:50051 (gRPC) and 0.0.0.0:9090
# (Prometheus /metrics), with its data (the SQLite vector store) in /var/lib/steerd.
# With a shared PostgreSQL store (`--store postgresql://...`, or the STEERD_STORE
# environment variable) the vectors and jobs live in the database: the data directory
# is then unused and needs no volume, and any number of replicas can run (see
# deploy/README.md).
#
# A TENANTS FILE IS REQUIRED. Without --tenants the server only runs its single default
# tenant and refuses to listen on anything but localhost, so the container would exit at
# once. The default arguments (CMD) pass `--tenants /etc/steerd/tenants.json`: mount the
# file there (it holds SHA-256 digests of the API keys, never the keys):
#
#   docker run --rm -p 50051:50051 -p 9090:9090 \
#     -v "$PWD/tenants.json:/etc/steerd/tenants.json:ro" -v steerd-data:/var/lib/steerd steerd
#
# Arguments given to `docker run` (or `args:` in Kubernetes) replace the CMD, so repeat
# `--tenants FILE` there; they come after the ENTRYPOINT's flags. steerd refuses a flag
# given twice: to change one of the ENTRYPOINT's (e.g. `--listen [::]:50051` for IPv6),
# replace the entry point too (`--entrypoint steerd` ... `serve --listen ...`). See
# deploy/README.md; `steerd serve --help` lists every flag.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------
# Build stage: the project's own scripts, release build of the two binaries only.
FROM ${DEBIAN_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
WORKDIR /src/steerd

# Dependencies first, so this (slow, ~460 packages) layer is reused until the script changes.
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*

COPY . .
# Empty: ninja's default (cores + 2). Each libtorch translation unit needs ~1.5 GB of RAM.
ARG BUILD_JOBS=
# The cache mount keeps ccache's objects between builds (CMake uses ccache when present).
RUN --mount=type=cache,target=/root/.cache/ccache \
    bash scripts/build.sh ${BUILD_JOBS:+-j${BUILD_JOBS}} steerd steerctl

# ---------------------------------------------------------------------------------------
# Runtime stage: only the shared libraries the binaries link (found with `ldd` and
# `dpkg -S` against a build), their dependencies, and the embedded default model.
FROM ${DEBIAN_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive

# libtorch1.13             libtorch.so, libtorch_cpu.so, libc10.so (1.13.1, CPU)
# libopenblas0-openmp      BLAS/LAPACK for libtorch: listed so apt picks it over Debian's
#                          reference BLAS (30x slower float32 matmul), same as the build
# libgomp1                 OpenMP runtime (libtorch, openblas, steerd's kernels)
# libgrpc++1.51 libgrpc29  gRPC C++ (with reflection) and core (libgpr, upb, ...)
# libprotobuf32 libabsl20220623 libprometheus-cpp-core1.0
# libsqlite3-0             the vector store with --data-dir (single replica)
# libpq5                   PostgreSQL client: the shared store with --store / STEERD_STORE
# libssl3                  libcrypto: SHA-256 of API keys, key generation; gRPC TLS
# libicu72 libpcre2-8-0    tokenizer: Unicode normalisation and pre-tokenizer regex
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtorch1.13 libopenblas0-openmp libgomp1 \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libprometheus-cpp-core1.0 \
      libsqlite3-0 libpq5 libssl3 libicu72 libpcre2-8-0 \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric UID/GID (10001), used by USER below so Kubernetes' runAsNonRoot can
# verify it, and by deploy/kubernetes (runAsUser / fsGroup).
RUN groupadd --system --gid 10001 steerd \
 && useradd --system --uid 10001 --gid steerd --home-dir /var/lib/steerd --no-create-home \
      --shell /usr/sbin/nologin steerd \
 && install -d -o steerd -g steerd -m 0700 /var/lib/steerd \
 && install -d -m 0755 /etc/steerd

# The binaries go to /usr/bin because the server finds its embedded default model beside
# the executable as ../share/steerd/models/steerd-tiny (server/cli/default_model.cc), i.e.
# /usr/share/steerd/models/steerd-tiny. (STEERD_DEFAULT_MODEL=DIR overrides the lookup.)
COPY --from=build /src/steerd/build/bin/steerd /src/steerd/build/bin/steerctl /usr/bin/
COPY --from=build /src/steerd/models/steerd-tiny /usr/share/steerd/models/steerd-tiny

# Fail the build here, not at deployment, if a shared library is missing or the runtime
# cannot run the default model.
RUN if ldd /usr/bin/steerd /usr/bin/steerctl | grep 'not found'; then exit 1; fi \
 && steerd generate --model /usr/share/steerd/models/steerd-tiny --prompt 'Q: 1+1' \
      --max-new-tokens 2 --threads 1 >/dev/null \
 && steerctl help >/dev/null

USER 10001:10001
VOLUME ["/var/lib/steerd"]
# 50051: gRPC (steerd.v1 services, grpc.health.v1, reflection). 9090: GET /metrics.
EXPOSE 50051 8080 9090

# steerd handles SIGTERM itself (it also works as PID 1): health turns NOT_SERVING, no new
# generations are admitted, in-flight ones finish within --drain-seconds (default 30),
# then it exits 0. Give `docker stop` more than that: `docker stop -t 40`.
STOPSIGNAL SIGTERM
# Docker only (Kubernetes uses the gRPC probes in deploy/kubernetes): SERVING once the
# models are loaded and warm. Assumes the default --listen port and no TLS.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["steerctl", "health", "--addr", "127.0.0.1:50051", "--timeout", "5"]

ENTRYPOINT ["steerd", "serve", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9090", "--data-dir", "/var/lib/steerd"]
CMD ["--tenants", "/etc/steerd/tenants.json"]
