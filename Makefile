# prefold: the two commands are `make run` and `make test`.
# Both install what they need first (scripts/tools.sh): idempotent, and quick
# when everything is present.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO_BIN := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin

# worker-build would fetch these from GitHub; hand it local ones.
export WASM_BINDGEN_BIN := $(CARGO_BIN)/wasm-bindgen
export ESBUILD_BIN := $(CURDIR)/node_modules/.bin/esbuild
export WASM_OPT_BIN := $(CURDIR)/node_modules/.bin/wasm-opt
export WRANGLER_SEND_METRICS := false

.PHONY: run test tools edge deploy-check deploy-validate lint unit wasm e2e bench bench-full bench-prep

## make run: origin on 127.0.0.1:8080 (embedded store in ./data), edge under
## wrangler dev on 127.0.0.1:8787. Ctrl-C stops both cleanly. `make run
## ORIGINS=3`: three origins (8080, 8081, 8082) over the one store.
ORIGINS ?= 1
run: tools
	ORIGINS=$(ORIGINS) scripts/run.sh

## make test: everything CI runs.
test: tools lint unit wasm edge deploy-check deploy-validate e2e
	@echo "make test: all checks passed"

tools:
	scripts/tools.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --exclude prefold-edge --all-targets --locked -- -D warnings
	cargo clippy -p prefold-edge -p prefold-core --target wasm32-unknown-unknown --locked -- -D warnings
	cargo test -p prefold-origin --test layers --locked

unit:
	cargo test --workspace --exclude prefold-edge --exclude prefold-e2e --all-targets --locked

## The shared crate must build for wasm32 without tokio, mio or moka, and must
## route exactly as it does natively (golden vectors run under node).
wasm:
	cargo build -p prefold-core --target wasm32-unknown-unknown --locked
	@deps=$$(cargo tree -p prefold-core --target wasm32-unknown-unknown -e normal,build --prefix none --locked | awk '{print $$1}' | sort -u); \
	  bad=$$(grep -xE 'tokio|mio|moka' <<<"$$deps" || true); \
	  if [ -n "$$bad" ]; then echo "prefold-core pulls $$bad into wasm32" >&2; exit 1; fi; \
	  echo "prefold-core wasm32 dependencies: $$(tr '\n' ' ' <<<"$$deps")"
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(CARGO_BIN)/wasm-bindgen-test-runner \
	  cargo test -p prefold-core --target wasm32-unknown-unknown --test golden --locked

edge:
	scripts/build-edge.sh
	@raw=$$(stat -c %s edge/build/index_bg.wasm); gz=$$(gzip -9c edge/build/index_bg.wasm | wc -c); \
	  echo "edge wasm: $$raw bytes raw, $$gz bytes gzip"; \
	  if [ "$$gz" -gt 204800 ]; then echo "edge wasm is over its 200 KiB gzip budget" >&2; exit 1; fi

## `wrangler deploy --dry-run` on the real wrangler.toml, offline and without
## credentials, reusing edge/build/; prints one line naming the bindings and
## the cron trigger (scripts/deploy-check.sh).
deploy-check: edge
	scripts/deploy-check.sh

## The origin's deployment files (deploy/: container image, Kubernetes,
## systemd), offline: kubernetes-validate, hadolint, systemd-analyze, and
## every setting against `prefold-origin --help` (scripts/validate-deploy.sh).
deploy-validate:
	scripts/validate-deploy.sh

e2e: edge
	cargo build -p prefold-origin -p prefold-bench --bin prefold-origin --bin prefold-gen --locked
	PREFOLD_EDGE_PREBUILT=1 cargo test -p prefold-e2e --locked

## make bench: every benchmark, quick (about 14 minutes); make bench-full: the
## long run whose results are committed (about 40). Both write
## bench/results/latest.md, storage.md and views.md.
bench: bench-prep
	cargo bench --locked -p prefold-bench --bench micro -- --warm-up-time 1 --measurement-time 2
	PREFOLD_ORIGIN_BIN=$(CURDIR)/target/release/prefold-origin target/release/prefold-bench

bench-full: bench-prep
	cargo bench --locked -p prefold-bench --bench micro -- --warm-up-time 3 --measurement-time 5
	PREFOLD_ORIGIN_BIN=$(CURDIR)/target/release/prefold-origin target/release/prefold-bench --full

bench-prep: tools edge
	scripts/bench-tools.sh
	cargo build --release --locked -p prefold-origin -p prefold-bench
