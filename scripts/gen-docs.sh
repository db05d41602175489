#!/usr/bin/env bash
# Write the man pages and shell completions of the four binaries, made from
# their clap definitions (the hidden --generate flag), into a folder:
#
#   scripts/gen-docs.sh [OUTDIR]        # default: target/docs
#
#   OUTDIR/man/man1/mproxy-*.1          man ./OUTDIR/man/man1/mproxy-server.1
#   OUTDIR/completions/bash/mproxy-*    -> /usr/share/bash-completion/completions/
#   OUTDIR/completions/zsh/_mproxy-*    -> a directory in $fpath
#   OUTDIR/completions/fish/mproxy-*.fish -> ~/.config/fish/completions/
#
# Set MPROXY_BIN_DIR to use already built binaries (e.g. target/release);
# otherwise this builds them (debug) first. CARGO_TARGET_DIR is honoured.
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
OUT=${1:-$TARGET/docs}
if [ -z "${MPROXY_BIN_DIR:-}" ]; then
    cargo build -j2 --quiet --bins
    MPROXY_BIN_DIR=$TARGET/debug
fi
mkdir -p "$OUT/man/man1" "$OUT/completions/bash" "$OUT/completions/zsh" "$OUT/completions/fish"
for b in mproxy-client mproxy-proxy mproxy-reverseproxy mproxy-server; do
    bin=$MPROXY_BIN_DIR/$b
    [ -x "$bin" ] || { echo "gen-docs: $bin not found" >&2; exit 2; }
    "$bin" --generate man > "$OUT/man/man1/$b.1"
    "$bin" --generate bash > "$OUT/completions/bash/$b"
    "$bin" --generate zsh > "$OUT/completions/zsh/_$b"
    "$bin" --generate fish > "$OUT/completions/fish/$b.fish"
done
echo "gen-docs: man pages and completions in $OUT" >&2
