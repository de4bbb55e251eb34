#!/usr/bin/env bash
# `make run`: one origin with the embedded store in ./data on 127.0.0.1:8080,
# and the edge under `wrangler dev` on 127.0.0.1:8787 (its KV state in
# ./data/edge). Loads the demo objects in scripts/demo/ when the store is
# empty. Ctrl-C (or SIGTERM) stops both: the origin drains its pending writes
# to the store before it exits.
set -euo pipefail
cd "$(dirname "$0")/.."

ORIGIN_ADDR=${PREFOLD_LISTEN:-127.0.0.1:8080}
EDGE_PORT=${PREFOLD_EDGE_PORT:-8787}
DATA=${PREFOLD_DATA:-data}

cargo build --release --locked -p prefold-origin
scripts/build-edge.sh
mkdir -p "$DATA/edge"

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping…"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
  echo "stopped"
}
trap stop INT TERM EXIT

target/release/prefold-origin --listen "$ORIGIN_ADDR" --data "$DATA" &
pids+=($!)
PREFOLD_EDGE_PREBUILT=1 node_modules/.bin/wrangler dev \
  --ip 127.0.0.1 --port "$EDGE_PORT" --persist-to "$DATA/edge" \
  --var "PREFOLD_ORIGINS:origin-1=http://$ORIGIN_ADDR" &
pids+=($!)

wait_for() { # url, what
  for _ in $(seq 1 600); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not come up at $1" >&2
  return 1
}
wait_for "http://$ORIGIN_ADDR/readyz" "the origin"
wait_for "http://127.0.0.1:$EDGE_PORT/healthz" "the edge"

if [ -z "$(find "$DATA/store" -type f -print -quit 2>/dev/null)" ]; then
  for f in scripts/demo/*.json; do
    key=$(basename "$f" .json | tr '+' '/')
    curl -fsS -o /dev/null -X PUT -H 'content-type: application/json' \
      --data-binary "@$f" "http://127.0.0.1:$EDGE_PORT/o/$key"
  done
  echo "loaded the demo objects from scripts/demo/"
fi

cat <<MSG

  prefold is running
    edge   (wrangler dev): http://127.0.0.1:$EDGE_PORT/o/page/home
    origin (direct):       http://$ORIGIN_ADDR/o/page/home
    origin metrics:        http://$ORIGIN_ADDR/metrics

  try:
    curl -X POST 'http://127.0.0.1:$EDGE_PORT/o/page/home?op=increment&path=/views' \\
         -H 'content-type: application/json' -d 1
    curl -X PATCH http://127.0.0.1:$EDGE_PORT/o/page/home \\
         -H 'content-type: application/merge-patch+json' -d '{"title":"Hello again"}'

  Ctrl-C stops both.

MSG
wait -n || true
