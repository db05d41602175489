#!/usr/bin/env bash
# Check what packaging ships: the generated man pages render with man(1)
# without warnings, the completions load in bash, and the systemd units in
# examples/systemd pass `systemd-analyze verify` (with ExecStart pointed at
# the built binaries and the man pages on MANPATH, since verify checks
# both). Each example config is checked with --print-config.
#
#   scripts/check-packaging.sh
#
# Needs man-db (man) and systemd (systemd-analyze). As root on Debian,
# MPROXY_INSTALL_PACKAGES=1 installs whichever is missing with apt-get;
# otherwise a missing tool is reported as SKIPPED (and the script fails
# only on a real problem).
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
BIN=${MPROXY_BIN_DIR:-$TARGET/debug}

if [ "${MPROXY_INSTALL_PACKAGES:-}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    command -v man >/dev/null || need+=(man-db)
    command -v systemd-analyze >/dev/null || need+=(systemd)
    if [ ${#need[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
            || echo "check-packaging: could not install ${need[*]}" >&2
    fi
fi

OUT=$(mktemp -d "${TMPDIR:-/tmp}/mproxy-packaging.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
MPROXY_BIN_DIR=${MPROXY_BIN_DIR:-} scripts/gen-docs.sh "$OUT" 2>/dev/null
BIN=${MPROXY_BIN_DIR:-$BIN}
status=0
names=(client proxy reverseproxy server)

if command -v man >/dev/null; then
    for n in "${names[@]}"; do
        page=$OUT/man/man1/mproxy-$n.1
        # man ./FILE reads that file; warnings (-w) go to stderr
        if ! err=$(cd "$(dirname "$page")" && MANPAGER=cat MANWIDTH=80 man --warnings "./mproxy-$n.1" 2>&1 >/dev/null) || [ -n "$err" ]; then
            echo "check-packaging: man ./mproxy-$n.1: ${err:-failed}" >&2; status=1
        else
            echo "check-packaging: man ./mproxy-$n.1 renders" >&2
        fi
    done
else
    echo "SKIPPED: man not found (apt-get install man-db)" >&2
fi

for n in "${names[@]}"; do
    if ! bash -c "source '$OUT/completions/bash/mproxy-$n' && complete -p mproxy-$n" >/dev/null; then
        echo "check-packaging: bash completion of mproxy-$n does not load" >&2; status=1
    fi
    if ! "$BIN/mproxy-$n" --config "examples/systemd/$n-example.toml" --print-config >/dev/null; then
        echo "check-packaging: examples/systemd/$n-example.toml is not a valid config" >&2; status=1
    fi
done

if command -v systemd-analyze >/dev/null; then
    units=()
    for n in "${names[@]}"; do
        sed "s|/usr/local/bin/|$BIN/|" "examples/systemd/mproxy-$n@.service" > "$OUT/mproxy-$n@.service"
        units+=("$OUT/mproxy-$n@example.service")
    done
    # verify wants instance names; the instance file is the template
    for n in "${names[@]}"; do cp "$OUT/mproxy-$n@.service" "$OUT/mproxy-$n@example.service"; done
    if (cd "$OUT" && MANPATH="$OUT/man:" SYSTEMD_LOG_LEVEL=notice systemd-analyze verify "${units[@]}"); then
        echo "check-packaging: systemd-analyze verify passes on ${#units[@]} units ($(systemd-analyze --version | head -1))" >&2
    else
        echo "check-packaging: systemd-analyze verify failed" >&2; status=1
    fi
else
    echo "SKIPPED: systemd-analyze not found (apt-get install systemd)" >&2
fi
exit $status
