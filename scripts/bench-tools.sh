#!/usr/bin/env bash
# Installs the benchmark anchors when missing: nginx and wrk, from Debian's
# packages; and twiggy (`cargo install --locked`, pinned), which attributes the
# edge Wasm's size to crates for the report. Quick when all are present.
set -euo pipefail
TWIGGY_VERSION=0.8.0
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! "$cargo_bin/twiggy" --version 2>/dev/null | grep -qw -- "$TWIGGY_VERSION"; then
  echo "bench-tools: installing twiggy $TWIGGY_VERSION (once)"
  cargo install twiggy --version "$TWIGGY_VERSION" --locked
fi
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -x "${NGINX_BIN:-/usr/sbin/nginx}" ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "bench-tools: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
