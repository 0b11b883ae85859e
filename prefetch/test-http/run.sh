#!/usr/bin/env bash
# GraphQL over HTTP conformance of `/graphql` (the graphql-http package's server audits): `npm ci`
# here, then the audit against a real `ringside serve`. Needs a built binary: RINGSIDE_BIN
# (default target/debug/ringside, or $CARGO_TARGET_DIR/debug/ringside when that is set).
set -euo pipefail
cd "$(dirname "$0")"
source ../../scripts/ringside-bin.sh
npm ci --no-audit --no-fund
npm test
