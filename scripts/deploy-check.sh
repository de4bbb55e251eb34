#!/usr/bin/env bash
# Checks the deploy configuration offline: `wrangler deploy --dry-run` against
# the real wrangler.toml (or the file given as $1), with no network and no
# Cloudflare credentials. Run by `make deploy-check` (and so by `make test`).
#
# The dry run validates wrangler.toml, runs its [build] command (which reuses
# edge/build/: PREFOLD_EDGE_PREBUILT=1), bundles the Worker into
# target/deploy-check/bundle and prints the bindings it would upload. It does
# not print the cron triggers, and it accepts a few mistakes that would only
# show once deployed, so this script also fails when:
#   - wrangler warns about the configuration (e.g. a misspelt `[[kv_namespace]]`
#     is ignored with a warning, and the Worker would deploy without its KV);
#   - the KV binding OBJECTS is missing (edge/src reads objects from it);
#   - there is no cron trigger (the pull half of publication needs one);
#   - a [vars] value is not a string (the edge reads vars as text and would
#     silently fall back to the default);
#   - compatibility_date is newer than the workerd wrangler ships (`wrangler
#     dev` and the tests could not run it).
# On success it prints one line naming what the deploy would carry.
set -euo pipefail
cd "$(dirname "$0")/.."

config=${1:-wrangler.toml}
out=target/deploy-check
rm -rf "$out"
mkdir -p "$out"
log=$out/wrangler.log

fail() {
  cat "$log" >&2
  echo "deploy-check: $*" >&2
  exit 1
}

# No metrics, no banner (its update check would reach the npm registry), no
# colours in the log we parse, and no credentials: a dry run needs none.
if ! env -u CLOUDFLARE_API_TOKEN -u CLOUDFLARE_API_KEY -u CLOUDFLARE_EMAIL -u CLOUDFLARE_ACCOUNT_ID \
  WRANGLER_SEND_METRICS=false WRANGLER_HIDE_BANNER=true CI=true NO_COLOR=1 FORCE_COLOR=0 \
  PREFOLD_EDGE_PREBUILT=1 \
  node_modules/.bin/wrangler deploy --dry-run --config "$config" --outdir "$out/bundle" >"$log" 2>&1; then
  fail "wrangler deploy --dry-run failed for $config"
fi
grep -q -- '--dry-run: exiting now' "$log" || fail "wrangler deploy --dry-run did not finish"
if grep -q 'WARNING.*Processing .* configuration' "$log"; then
  fail "wrangler warns about $config (see above)"
fi

# The bindings table: `env.NAME (value)   Resource`.
kv=$(awk '/^env\..*KV Namespace *$/ { sub(/^env\./, ""); print $1 }' "$log" | paste -sd, -)
vars=$(awk '/^env\..*Environment Variable *$/ { sub(/^env\./, ""); print $1 }' "$log" | paste -sd' ' -)
grep -qx 'OBJECTS' <<<"${kv//,/$'\n'}" || fail "no KV namespace bound as OBJECTS in $config"
size=$(sed -n 's/^Total Upload: \(.*\) \/ gzip: \(.*\)$/\1 (gzip \2)/p' "$log")

# What the table leaves out, read by wrangler's own config reader.
extra=$(node -e '
  const { unstable_readConfig } = require("wrangler");
  const { compatibilityDate } = require("workerd");
  const c = unstable_readConfig({ config: process.argv[1] });
  const crons = (c.triggers && c.triggers.crons) || [];
  const bad = Object.entries(c.vars || {}).filter(([, v]) => typeof v !== "string").map(([k]) => k);
  const errors = [];
  if (crons.length === 0) errors.push("no [triggers] crons");
  if (bad.length) errors.push(`[vars] must be strings: ${bad.join(", ")}`);
  if (c.compatibility_date > compatibilityDate)
    errors.push(`compatibility_date ${c.compatibility_date} is newer than workerd ${compatibilityDate}`);
  if (errors.length) { console.error(errors.join("; ")); process.exit(1); }
  console.log(`cron ${crons.map((s) => JSON.stringify(s)).join(", ")}; compatibility_date ${c.compatibility_date}`);
' "$config" 2>"$out/config-check.log") || fail "$(cat "$out/config-check.log")"

echo "deploy-check: wrangler deploy --dry-run ok ($config): upload $size; KV $kv; vars $vars; $extra"
