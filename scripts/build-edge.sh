#!/bin/sh
# Builds the edge Worker (edge/build/) with worker-build. Run by wrangler as its
# [build] command, from edge/, and by `make edge`.
#
# worker-build would download wasm-bindgen, wasm-opt and esbuild from GitHub;
# we hand it local ones instead (installed by scripts/tools.sh): wasm-bindgen
# from `cargo install`, wasm-opt and esbuild from node_modules.
#
# PREFOLD_EDGE_PREBUILT=1 skips the build when edge/build/ exists: the test
# suite builds once and then starts `wrangler dev` many times.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here/edge"
if [ "${PREFOLD_EDGE_PREBUILT:-}" = 1 ] && [ -f build/index.js ]; then
  echo "edge: using the prebuilt edge/build/"
  exit 0
fi
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$cargo_bin/wasm-bindgen}"
export ESBUILD_BIN="${ESBUILD_BIN:-$here/node_modules/.bin/esbuild}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$here/node_modules/.bin/wasm-opt}"
exec "$cargo_bin/worker-build" --profile edge
