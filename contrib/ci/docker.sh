#!/usr/bin/env bash
# A private Docker engine for remedy's container tests, and the Debian base
# image they build on, on a machine that reaches Debian's package mirror but
# no image registry.
#
#   contrib/ci/docker.sh start   start dockerd (once) on a private socket
#   contrib/ci/docker.sh base    make sure the base image exists: debootstrap
#                                Debian bookworm (minbase) and `docker import`
#                                it under the tag the Dockerfile uses
#   contrib/ci/docker.sh stop    stop that dockerd, by its pid
#   contrib/ci/docker.sh env     print `export DOCKER_HOST=…`
#
# Everything lives under REMEDY_CI_DOCKER (default /var/tmp/remedy-ci-docker):
# the engine's data and exec roots, its pid file and socket, and the cached
# root file system tarball. Needs root and Debian's docker.io, debootstrap.
# The engine runs with the vfs storage driver and no bridge or iptables (what
# works inside these machines); containers use `--network host`.
set -euo pipefail

root=${REMEDY_CI_DOCKER:-/var/tmp/remedy-ci-docker}
sock=$root/docker.sock
pidfile=$root/docker.pid
base_tag=${REMEDY_BASE_IMAGE:-debian:bookworm-slim}
mirror=${REMEDY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
export DOCKER_HOST=unix://$sock

running() { [[ -S $sock ]] && docker version >/dev/null 2>&1; }

start() {
  if running; then return 0; fi
  mkdir -p "$root/data" "$root/exec"
  dockerd --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none \
    --data-root "$root/data" --exec-root "$root/exec" --pidfile "$pidfile" \
    --host "$DOCKER_HOST" >"$root/dockerd.log" 2>&1 &
  for _ in $(seq 60); do running && return 0; sleep 0.5; done
  echo "dockerd did not come up; its log:" >&2
  tail -n 30 "$root/dockerd.log" >&2
  return 1
}

stop() {
  [[ -f $pidfile ]] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  rm -f "$pidfile"
}

base() {
  start
  if docker image inspect "$base_tag" >/dev/null 2>&1; then return 0; fi
  local tarball=$root/bookworm-minbase.tar
  if [[ ! -s $tarball ]]; then
    local dir=$root/rootfs
    rm -rf "$dir"
    debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$root/debootstrap.log" 2>&1 || {
      tail -n 30 "$root/debootstrap.log" >&2
      return 1
    }
    # What a slim image leaves out: apt's package lists and caches.
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin
    tar -C "$dir" -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    rm -rf "$dir"
  fi
  docker import "$tarball" "$base_tag" >/dev/null
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  base) base ;;
  env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
  *) echo "usage: $0 start|base|stop|env" >&2; exit 2 ;;
esac
