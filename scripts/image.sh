#!/usr/bin/env bash
# Builds the container image from the Dockerfile with podman and checks that it serves:
# installs podman, buildah, mmdebstrap, uidmap and runc with apt if missing; makes the
# Debian 12 base image locally with mmdebstrap (no container registry is needed, only the
# Debian archive; the tar is cached in /var/tmp/steerd-image and reused) and imports it
# as docker.io/library/debian:bookworm-slim; builds the image (tag steerd); trains a tiny
# steering vector with the image's offline `steerd train`; runs the server in a
# container with a read-only root filesystem on the host network on non-default ports
# (127.0.0.1:50151 gRPC, 127.0.0.1:9191 metrics) with a tenants file holding a fresh
# key; waits for gRPC health SERVING; uploads the vector and runs one steered
# generation; checks /metrics; stops the container with SIGTERM (it must drain and exit
# 0), removes it, and prints the times measured and PASS. Not part of CI. Measured on a
# 2-core Debian 12 machine (deploy/README.md, "Built and run here"): about 8 minutes
# the first time (base ~15 s; the image build ~7 min: Debian packages, then steerd and
# steerctl compiled inside; the check ~5 s); after a source change ~4.5 min (the
# package layer is reused). Must run as root (rootful podman). It uses the runc runtime
# because crun fails on hosts with hybrid cgroups, and explicit ulimits because
# podman's defaults exceed what some sandboxes allow (deploy/README.md, "Building with
# podman").
#
# Usage: scripts/image.sh [--no-build]     (--no-build: check an existing steerd image)
# Environment: STEERD_IMAGE (tag, default steerd), STEERD_IMAGE_CACHE (default
# /var/tmp/steerd-image), BUILD_JOBS (parallel compiles in the build, default ninja's),
# BUILD_TIMEOUT (default 4h), GRPC_PORT (50151), METRICS_PORT (9191).
set -euo pipefail
cd "$(dirname "$0")/.."

image=${STEERD_IMAGE:-steerd}
cache=${STEERD_IMAGE_CACHE:-/var/tmp/steerd-image}
build_timeout=${BUILD_TIMEOUT:-4h}
grpc_port=${GRPC_PORT:-50151}
metrics_port=${METRICS_PORT:-9191}
base=docker.io/library/debian:bookworm-slim
base_time=cached build_time=skipped
build=1
if [ "${1:-}" = "--no-build" ]; then build=0; fi

podman=(podman --runtime runc)
ulimits=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
say() { echo "== $(date +%H:%M:%S) $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then fail "run as root (rootful podman)"; fi

# --- tools ------------------------------------------------------------------------------
missing=()
for p in podman buildah mmdebstrap uidmap runc; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# buildah 1.28 (Debian 12) hangs on the second RUN using a cache mount with
# sharing=locked (containers/buildah#4342); the Dockerfile's ccache mount must not use it.
if grep -n 'sharing=locked' Dockerfile; then
  fail "the Dockerfile uses a cache mount with sharing=locked, which hangs buildah 1.28"
fi

# --- base image -------------------------------------------------------------------------
if [ "$build" = 1 ]; then
  if "${podman[@]}" image exists "$base"; then
    say "base image $base is present"
  else
    mkdir -p "$cache"
    tar="$cache/bookworm-minbase.tar"
    if [ -s "$tar" ]; then
      say "base: reusing $tar"
    else
      say "base: mmdebstrap --variant=minbase bookworm (seconds to minutes, by mirror)"
      t0=$SECONDS
      # --format: the name ends in .partial, so mmdebstrap would not guess tar from it.
      mmdebstrap --variant=minbase --format=tar bookworm "$tar.partial"
      mv "$tar.partial" "$tar"
      base_time="$((SECONDS - t0)) s"
      say "base: made in $base_time, $(du -h "$tar" | cut -f1)"
    fi
    "${podman[@]}" import --change 'CMD ["bash"]' "$tar" "$base" >/dev/null
  fi

  # --- build ----------------------------------------------------------------------------
  # --format docker: podman's default, OCI, has no HEALTHCHECK (it would be dropped).
  say "building $image (steerd compiles inside: minutes on 2 cores)"
  t0=$SECONDS
  timeout "$build_timeout" "${podman[@]}" build --format docker "${ulimits[@]}" \
    ${BUILD_JOBS:+--build-arg BUILD_JOBS=$BUILD_JOBS} -t "$image" .
  build_time="$((SECONDS - t0)) s"
  say "build: $build_time"
fi
"${podman[@]}" image exists "$image" || fail "no image $image"
size=$("${podman[@]}" image inspect --format '{{.Size}}' "$image" |
  awk '{printf "%.0f MB", $1 / 1e6}')
say "image $image: $size"

# --- run and check ----------------------------------------------------------------------
work=$(mktemp -d)
container="steerd-image-check-$$"
cleanup() {
  "${podman[@]}" rm -f -v "$container" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

key="sk-steerd-$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
digest=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
printf '{"tenants": [{"name": "check", "api_key_sha256": "%s"}]}\n' "$digest" \
  > "$work/tenants.json"
chmod 0755 "$work"
chmod 0644 "$work/tenants.json"  # read by the image's user 10001; digests only

say "training a tiny steering vector with the image's offline steerd train"
"${podman[@]}" run --rm "${ulimits[@]}" --no-healthcheck --network=none --user 0 \
  -v "$work:/check" --entrypoint steerd "$image" \
  train --model /usr/share/steerd/models/steerd-tiny --task arith --steps 2 \
  --prompts-per-step 2 --rollouts 2 --train-count 50 --eval-count 10 --test-count 10 \
  --threads 1 --out /check/vector.safetensors --quiet
chmod 0644 "$work/vector.safetensors"

say "starting the server: 127.0.0.1:$grpc_port (gRPC), 127.0.0.1:$metrics_port (metrics)"
t0=$SECONDS
# --no-healthcheck: the image's HEALTHCHECK would need systemd timers; health is polled
# below instead.
"${podman[@]}" run -d --name "$container" "${ulimits[@]}" --no-healthcheck \
  --network=host --read-only -v "$work:/check:ro" \
  -v "$work/tenants.json:/etc/steerd/tenants.json:ro" \
  --entrypoint steerd "$image" serve \
  --listen "127.0.0.1:$grpc_port" --metrics-listen "127.0.0.1:$metrics_port" \
  --data-dir /var/lib/steerd --tenants /etc/steerd/tenants.json --threads 2 >/dev/null

# steerctl: the host checkout's build if there is one, else the image's own copy.
if [ -x build/bin/steerctl ]; then
  say "client: build/bin/steerctl"
  steerctl() { build/bin/steerctl "$@"; }
  vector_file="$work/vector.safetensors"
else
  say "client: steerctl inside the container (podman exec)"
  steerctl() { "${podman[@]}" exec "$container" steerctl "$@"; }
  vector_file=/check/vector.safetensors
fi
export STEERD_ADDR="127.0.0.1:$grpc_port" STEERD_API_KEY="$key"
# podman exec does not pass the host's environment: give the flags explicitly.
conn=(--addr "$STEERD_ADDR" --api-key "$key")

serving=0
for _ in $(seq 1 300); do
  if steerctl health "${conn[@]}" --timeout 2 >/dev/null 2>&1; then serving=1; break; fi
  if [ "$("${podman[@]}" inspect --format '{{.State.Running}}' "$container")" != true ]; then
    "${podman[@]}" logs "$container" >&2 || true
    fail "the server exited before it was SERVING"
  fi
  sleep 1
done
if [ "$serving" != 1 ]; then
  "${podman[@]}" logs "$container" >&2 || true
  fail "not SERVING after 300 s"
fi
start_seconds=$((SECONDS - t0))
say "health SERVING $start_seconds s after the start: $(steerctl health "${conn[@]}")"

steerctl models "${conn[@]}"
steerctl vectors create "${conn[@]}" --model steerd-tiny --name image-check \
  --file "$vector_file" --description "scripts/image.sh"
prompt=$'Q: 6*6*2+4+5\nA:'
say "steered generation"
out=$(steerctl generate "${conn[@]}" --model steerd-tiny --vector image-check \
  --prompt "$prompt" --max-new-tokens 16 --temperature 0 --verbose 2>&1)
echo "$out"
grep -q 'vector=image-check@1' <<<"$out" ||
  fail "the generation does not name the vector image-check@1"

metrics=$(curl -fsS "http://127.0.0.1:$metrics_port/metrics" 2>/dev/null ||
  "${podman[@]}" exec "$container" bash -c \
    "exec 3<>/dev/tcp/127.0.0.1/$metrics_port; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3")
grep -E '^steerd_(queue_depth|running_sequences)\{' <<<"$metrics" ||
  fail "/metrics lacks steerd_queue_depth / steerd_running_sequences"

say "stopping with SIGTERM (drain)"
"${podman[@]}" stop -t 40 "$container" >/dev/null
code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$container")
"${podman[@]}" logs "$container" 2>&1 | tail -n 3
[ "$code" = 0 ] || fail "the server exited $code after SIGTERM, not 0"
echo "base: $base_time; build: $build_time; image: $size; start to SERVING: $start_seconds s"
echo PASS
