#!/usr/bin/env bash
# Installs the Debian packages thor builds against, if any is missing.
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail
# libsqlite3-dev: the Bible database; unzip, python3-pip: wheels for `thor data build` (dpkg-deb and tar come with Debian).
# iproute2, iptables: emulated nodes (network namespaces, veth links, tbf, random packet drop).
pkgs=(libopenblas-dev libzmq3-dev libprotobuf-c-dev protobuf-c-compiler pkg-config libsqlite3-dev unzip python3-pip iproute2 iptables)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "thor: installing ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -q >/dev/null || $sudo_cmd apt-get update -q
  $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "thor: swift is not on PATH (expected Swift 6 at /opt/swift)" >&2; exit 1; }
