#!/usr/bin/env bash
# The JavaScript SDK's checks, for scripts/test and CI: a clean install from package-lock.json,
# the TypeScript build, then every test against a real `ringside serve` and in headless
# Chromium. Needs the ringside binary: $RINGSIDE_BIN, else $CARGO_TARGET_DIR/debug/ringside,
# else ../../target/debug/ringside (build it with `cargo build -p ringside`).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v npm >/dev/null 2>&1 || ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
    echo "sdk/js/test.sh: needs Node 20 or later with npm (found: $(node --version 2>/dev/null || echo none))" >&2
    exit 1
fi
if [ -z "${CHROMIUM_PATH:-}" ]; then
    # The browser test drives Debian's Chromium (playwright-core downloads no browser).
    ../../scripts/services chromium
fi
npm ci --no-audit --no-fund
npm test
