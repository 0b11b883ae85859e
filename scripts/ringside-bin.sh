# Sourced by the JavaScript test scripts (console/test/run.sh, prefetch/test-http/run.sh):
# exports RINGSIDE_BIN, the binary they run, when it is not set: the debug build in
# $CARGO_TARGET_DIR (absolute, or relative to the repository) or in target/. Stops the script
# when there is no binary there.
if [ -z "${RINGSIDE_BIN:-}" ]; then
    ringside_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    case "${CARGO_TARGET_DIR:-target}" in
        /*) RINGSIDE_BIN="$CARGO_TARGET_DIR/debug/ringside" ;;
        *) RINGSIDE_BIN="$ringside_repo/${CARGO_TARGET_DIR:-target}/debug/ringside" ;;
    esac
    export RINGSIDE_BIN
fi
[ -x "$RINGSIDE_BIN" ] || { echo "no ringside binary at $RINGSIDE_BIN: cargo build -p ringside first" >&2; exit 1; }
