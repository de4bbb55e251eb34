#!/usr/bin/env bash
# `make run`: one origin with the embedded store in ./data on 127.0.0.1:8080,
# and the edge under `wrangler dev` on 127.0.0.1:8787 (its KV state in
# ./data/edge). `make run ORIGINS=3` starts three origins instead
# (origin-1 on 8080, origin-2 on 8081, …) over the one store in ./data, each
# with its own log (./data/wal-origin-N), views derived across them. The origin serves the demo model (scripts/demo/model.toml);
# when the store is empty, prefold-gen loads its demo data set at scale 1 (a
# few hundred objects; ids in bench/src/gen.rs). Ctrl-C (or SIGTERM) stops
# both: the origin drains its pending writes to the store before it exits.
#
# Secrets: the first run writes random development secrets to .dev.vars
# (git-ignored), which `wrangler dev` reads for the edge; the origin gets the
# same values from the environment. The origin pushes changed objects to the
# edge, and a development write token is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

ORIGIN_ADDR=${PREFOLD_LISTEN:-127.0.0.1:8080}
ORIGINS=${ORIGINS:-1}
case $ORIGINS in
  '' | *[!0-9]* | 0) echo "ORIGINS must be a number of origins (1 or more), not '$ORIGINS'" >&2; exit 2 ;;
esac
EDGE_PORT=${PREFOLD_EDGE_PORT:-8787}
DATA=${PREFOLD_DATA:-data}

cargo build --release --locked -p prefold-origin -p prefold-bench
scripts/build-edge.sh
mkdir -p "$DATA/edge"

if [ ! -f .dev.vars ]; then
  umask 077
  {
    echo "PREFOLD_TOKEN_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    echo "PREFOLD_CLUSTER_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  } > .dev.vars
  echo "wrote development secrets to .dev.vars"
fi
set -a
# shellcheck disable=SC1091
. ./.dev.vars
set +a

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

ORIGIN_HOST=${ORIGIN_ADDR%:*}
ORIGIN_PORT=${ORIGIN_ADDR##*:}
addr_of() { echo "$ORIGIN_HOST:$((ORIGIN_PORT + $1 - 1))"; }
LIST=""
for i in $(seq 1 "$ORIGINS"); do LIST="${LIST:+$LIST,}origin-$i=http://$(addr_of "$i")"; done

for i in $(seq 1 "$ORIGINS"); do
  cluster=()
  if [ "$ORIGINS" -gt 1 ]; then
    cluster=(--origins "$LIST" --name "origin-$i" --wal-dir "$DATA/wal-origin-$i")
  fi
  target/release/prefold-origin --listen "$(addr_of "$i")" --data "$DATA" "${cluster[@]}" \
    --model scripts/demo/model.toml --edge-url "http://127.0.0.1:$EDGE_PORT" &
  pids+=($!)
done
PREFOLD_EDGE_PREBUILT=1 node_modules/.bin/wrangler dev \
  --ip 127.0.0.1 --port "$EDGE_PORT" --persist-to "$DATA/edge" --test-scheduled \
  --var "PREFOLD_ORIGINS:$LIST" &
pids+=($!)

wait_for() { # url, what
  for _ in $(seq 1 600); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not come up at $1" >&2
  return 1
}
for i in $(seq 1 "$ORIGINS"); do wait_for "http://$(addr_of "$i")/readyz" "origin-$i"; done
wait_for "http://127.0.0.1:$EDGE_PORT/healthz" "the edge"

TOKEN=$(target/release/prefold-token --scope 'write:*' --ttl 12h --sub dev)
if [ -z "$(find "$DATA/store" -type f -print -quit 2>/dev/null)" ]; then
  # Each object to its owner, as the edge routes.
  PREFOLD_TOKEN=$TOKEN target/release/prefold-gen --origins "$LIST" --scale 1
fi

cat <<MSG

  prefold is running
    edge   (wrangler dev): http://127.0.0.1:$EDGE_PORT/o/order_page/o1
    origins (direct):      $LIST
    origin metrics:        http://$ORIGIN_ADDR/metrics

  try (through the edge):
    curl http://127.0.0.1:$EDGE_PORT/o/order_page/o1
    curl http://127.0.0.1:$EDGE_PORT/o/event_page/e1
    curl http://127.0.0.1:$EDGE_PORT/o/event_comments/e1
    curl http://127.0.0.1:$EDGE_PORT/o/events_by_category/music
    curl 'http://127.0.0.1:$EDGE_PORT/o/event_search/_search?q=jazz'
    curl http://127.0.0.1:$EDGE_PORT/o/friends/u1

  writes need a token; this one (write:*, 12 hours) is signed with the
  development secret in .dev.vars:
    export TOKEN=$TOKEN
    curl -X POST 'http://127.0.0.1:$EDGE_PORT/o/event_views/e1?op=increment' \\
         -H "authorization: Bearer \$TOKEN"
    curl -X PATCH http://127.0.0.1:$EDGE_PORT/o/product/p1 -H "authorization: Bearer \$TOKEN" \\
         -H 'content-type: application/merge-patch+json' -d '{"name":"Renamed Widget"}'
    curl http://127.0.0.1:$EDGE_PORT/o/order_page/o1   # an order of p1: the new name,
      (published to the edge's KV within a second or so)
  mint another: PREFOLD_TOKEN_SECRET=... target/release/prefold-token --scope 'write:comment/*'

  Ctrl-C stops everything.

MSG
wait -n || true
