#!/usr/bin/env bash
# Installs what scopewatch needs to build, test and run on Debian 12:
# Debian packages (OpenCV, mosquitto, SQLite headers, systemd tools, torch for
# the retune's trainer) and the
# ONNX Runtime shared library taken from the npm package onnxruntime-node
# (pinned, sha256-verified). Running it again changes nothing and is quick.
#
# Environment:
#   SCOPEWATCH_SKIP_APT=1   do not touch Debian packages (no root needed)
#   ORT_DIR=DIR             where to unpack ONNX Runtime (default .cache/onnxruntime)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
ORT_VERSION=1.30.0
ORT_TGZ_SHA256=6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75
ORT_DIR=${ORT_DIR:-$here/.cache/onnxruntime}

# python3-torch, -torchvision and -onnx are the retune's trainer
# (models/recipe/finetune.py, run by `tune retune`'s network study as
# /usr/bin/python3) and the recipe's.
packages=(libopencv-dev pkg-config gcc mosquitto mosquitto-clients sqlite3 systemd
  python3-torch python3-torchvision python3-onnx)

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_debian_packages() {
  [ "${SCOPEWATCH_SKIP_APT:-0}" = 1 ] && { log "skipping Debian packages (SCOPEWATCH_SKIP_APT=1)"; return; }
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "Debian packages present"
    return
  fi
  log "installing ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  # mosquitto is started by the tests on a free loopback port; the packaged
  # system service is not needed and would hold port 1883.
  if command -v systemctl >/dev/null && systemctl is-enabled mosquitto >/dev/null 2>&1; then
    as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
  fi
}

ort_arch() {
  case "$(uname -m)" in
    x86_64|amd64) echo x64 ;;
    aarch64|arm64) echo arm64 ;;
    *) log "no ONNX Runtime build for $(uname -m) in onnxruntime-node"; exit 1 ;;
  esac
}

install_onnxruntime() {
  local arch lib stamp
  arch=$(ort_arch)
  lib="$ORT_DIR/$arch/libonnxruntime.so.1"
  stamp="$ORT_DIR/$arch/VERSION"
  if [ -f "$lib" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$ORT_VERSION" ]; then
    log "ONNX Runtime $ORT_VERSION present at $lib"
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  log "fetching onnxruntime-node@$ORT_VERSION from the npm registry"
  (cd "$tmp" && npm pack --silent "onnxruntime-node@$ORT_VERSION" >/dev/null)
  local tgz="$tmp/onnxruntime-node-$ORT_VERSION.tgz"
  echo "$ORT_TGZ_SHA256  $tgz" | sha256sum -c --quiet - || { log "sha256 mismatch for $tgz"; exit 1; }
  tar -xzf "$tgz" -C "$tmp" "package/bin/napi-v6/linux/$arch/libonnxruntime.so.1"
  mkdir -p "$ORT_DIR/$arch"
  install -m 0644 "$tmp/package/bin/napi-v6/linux/$arch/libonnxruntime.so.1" "$lib"
  echo "$ORT_VERSION" >"$stamp"
  log "ONNX Runtime $ORT_VERSION installed at $lib"
}

install_debian_packages
install_onnxruntime
