#!/usr/bin/env bash
# Checks deploy/ offline: the container image definition, the Kubernetes
# example and the systemd unit. Run by `make deploy-validate` (and so by
# `make test`); nothing here needs a container engine, a cluster or systemd
# running.
#
#   - deploy/container/Containerfile: hadolint;
#   - deploy/kubernetes/*.yaml: kubernetes-validate --strict (unknown fields
#     are errors) against the bundled schemas of the oldest Kubernetes the
#     example supports (1.30: the preStop sleep action) and of the newest
#     one the pinned kubernetes-validate ships;
#   - deploy/systemd/prefold-origin.service: `systemd-analyze verify` (any
#     warning fails) and `systemd-analyze security --offline`, which must
#     rate the sandbox's exposure at most 2.0 (0 is best, 10 worst); the
#     unit's ExecStart is pointed at the binary just built, since verify
#     wants it to exist;
#   - scripts/validate-deploy.py: flags and variables against
#     `prefold-origin --help`, the .dockerignore, what ties the files to each
#     other, and the origin started as each deployment starts it.
#
# The tools come from .venv/ (scripts/venv.sh, quick when present). On
# success it prints one line.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSIONS=(1.30.0 1.37.0)
# systemd-analyze counts exposure in tenths here: 20 is 2.0.
SECURITY_THRESHOLD=20

scripts/venv.sh
cargo build -p prefold-origin --locked --quiet
bin=$PWD/target/debug/prefold-origin
out=target/validate-deploy
rm -rf "$out"
mkdir -p "$out"

fail() {
  [ -s "$out/log" ] && cat "$out/log" >&2
  echo "validate-deploy: $*" >&2
  exit 1
}

.venv/bin/hadolint deploy/container/Containerfile >"$out/log" 2>&1 ||
  fail "hadolint rejects deploy/container/Containerfile"

manifests=(deploy/kubernetes/*.yaml)
for version in "${KUBERNETES_VERSIONS[@]}"; do
  .venv/bin/kubernetes-validate --strict --quiet -k "$version" "${manifests[@]}" >"$out/log" 2>&1 ||
    fail "deploy/kubernetes does not validate against Kubernetes $version"
done

if command -v systemd-analyze >/dev/null 2>&1; then
  unit=$out/prefold-origin.service
  sed "s|^ExecStart=/usr/local/bin/prefold-origin|ExecStart=$bin|" deploy/systemd/prefold-origin.service >"$unit"
  grep -q "^ExecStart=$bin" "$unit" || fail "the unit's ExecStart is not /usr/local/bin/prefold-origin"
  systemd-analyze verify --man=no "$unit" >"$out/log" 2>&1 && [ ! -s "$out/log" ] ||
    fail "systemd-analyze verify rejects deploy/systemd/prefold-origin.service"
  systemd-analyze security --offline=true --threshold="$SECURITY_THRESHOLD" --no-pager "$unit" >"$out/log" 2>&1 ||
    fail "deploy/systemd/prefold-origin.service is exposed more than 2.0 (systemd-analyze security)"
  exposure=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p' "$out/log")
  systemd="systemd-analyze verify ok, exposure $exposure"
else
  # Debian's systemd package has it; without it the names and the stop
  # timeout are still checked by validate-deploy.py.
  systemd="systemd-analyze not found: the unit checked by name only"
fi

rm -f "$out/log"
checks=$(.venv/bin/python scripts/validate-deploy.py "$bin") || exit 1
echo "validate-deploy: ok: hadolint; kubernetes-validate --strict ${KUBERNETES_VERSIONS[*]} (${#manifests[@]} files); $systemd; $checks"
