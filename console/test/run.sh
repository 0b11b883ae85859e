#!/usr/bin/env bash
# The ops console's end-to-end test in a real browser: installs Debian's chromium when missing,
# then `npm ci && npm test` here. Needs a built binary: RINGSIDE_BIN (default
# target/debug/ringside, or $CARGO_TARGET_DIR/debug/ringside when that is set).
set -euo pipefail
cd "$(dirname "$0")"
../../scripts/services chromium
source ../../scripts/ringside-bin.sh
npm ci --no-audit --no-fund
npm test
