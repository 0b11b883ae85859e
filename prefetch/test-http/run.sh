#!/usr/bin/env bash
# GraphQL over HTTP conformance of `/graphql` (the graphql-http package's server audits): `npm ci`
# here, then the audit against a real `ringside serve`. Needs a built binary: RINGSIDE_BIN
# (default target/debug/ringside, or $CARGO_TARGET_DIR/debug/ringside when that is set).
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${RINGSIDE_BIN:-}" ]; then
    RINGSIDE_BIN="$(cd ../.. && pwd)/${CARGO_TARGET_DIR:-target}/debug/ringside"
    case "${CARGO_TARGET_DIR:-}" in /*) RINGSIDE_BIN="$CARGO_TARGET_DIR/debug/ringside" ;; esac
    export RINGSIDE_BIN
fi
[ -x "$RINGSIDE_BIN" ] || { echo "no ringside binary at $RINGSIDE_BIN: cargo build -p ringside first" >&2; exit 1; }
npm ci --no-audit --no-fund
npm test
