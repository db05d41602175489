#!/usr/bin/env bash
# The benchmark suite: mproxy against the kernel's UDP limit and against
# its peers (socat, the published mproxy 0.1.8), all on loopback inside a
# private network namespace, every figure measured in this one invocation.
#
#   bench/run.sh [--quick]
#
# Default: a 128 MiB input of text lines, every figure the median of 3
# runs (about 10 minutes on 2 CPUs). --quick: 32 MiB, 1 run, 2000 latency
# lines. BENCH_RUNS=N, BENCH_MB=M and BENCH_LAT_LINES=L override them;
# BENCH_ONLY=REGEX runs only the rows whose name matches (the targets of
# rows left out print n/a). Release binaries; the published 0.1.8 peers
# are installed on demand with
# `cargo install --root ${MPROXY_PEERS_DIR:-/tmp/mproxy-peers}`.
#
# Every process runs under bench/rusage.py (fork, exec GNU time, which
# forks and execs the process; wait4). Per run:
#   Gbit/s    delivered bytes x 8 / the time from the sender's fork to the
#             last write of any output (its mtime), or to the last datagram
#             counted (udp_limit), or the last read (tcp_sink); with
#             several receivers the mean delivered per receiver (fan-out:
#             the median TCP client). The headline figure: the targets
#             below the table are ratios of it
#   snd-wall  the same over the sender's wall time, fork to exit (start-up
#             included, ~2 ms; an mpx client also lingers >= 300 ms after
#             EOF for repair requests, which this column counts)
#   deliv. %  delivered / sent (x receivers)
#   drops     the namespace's UDP RcvbufErrors: datagrams the kernel
#             dropped at a full receive queue
#   exact     runs whose every output is byte-identical to the input
#   CPU s/GB  user+sys of every process of the case (wait4 rusage, us) /
#             GB (1e9 bytes) delivered, summed over receivers
#   RSS MiB   the largest peak RSS (GNU time %M) among them
# Each column is the median of its own values over the runs. The paced
# mpx rows run at --rate = 70% of the kernel limit measured earlier in the
# same invocation: the sendmmsg/recvmmsg row of the same payload size for
# line-packed datagrams (sizes vary, so no GSO), the better of that and
# the GSO/GRO row for --framing bytes (full-size datagrams, GSO runs). No
# CPU pinning: processes share the machine's CPUs as the scheduler places
# them.
#
# Rows: the kernel limit (examples/udp_limit); mproxy-client ->
# mproxy-server(s) raw and --mpx, unicast and multicast (1, 3 receivers),
# lines and --framing bytes; the same through mproxy-proxy; client ->
# proxy -> reverseproxy -> TCP reader; reverseproxy fan-out to 1 and 32 TCP clients (examples/tcp_sink),
# unpaced and paced at one --rate for both (600mbit, BENCH_FANOUT_RATE);
# socat -> socat; the published mproxy 0.1.8. Then one-way latency of
# 100-byte lines at 1000/s (examples/latency): p50/p99/p99.9/max per path.
# Last, a targets block: the issue 6 targets as ratios of this run's rows.
#
# Network: everything runs in a private network namespace (unshare --net;
# lo up, 224.0.0.0/4 routed to lo), loopback only, so no datagram reaches
# the host's network. Every process has a timeout; the script stops by
# itself and removes its processes and temp files on exit or interrupt.
#
# Progress and per-run figures go to stderr; the table to stdout. The logs
# of every run that lost data or whose sender failed are kept (in
# BENCH_LOGDIR, default /dev/shm/mproxy-bench-logs.TIME).
set -euo pipefail
export LC_ALL=C
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
ROOT=$PWD

QUICK=0
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "bench: unknown argument '$arg' (usage: bench/run.sh [--quick])" >&2
            exit 2
            ;;
    esac
done
if [ "$QUICK" = 1 ]; then RUNS=${BENCH_RUNS:-1}; MB=${BENCH_MB:-32}; else RUNS=${BENCH_RUNS:-3}; MB=${BENCH_MB:-128}; fi
PEERS_DIR=${MPROXY_PEERS_DIR:-/tmp/mproxy-peers}
PEER_VERSION=0.1.8
RUSAGE=$ROOT/bench/rusage.py

log() { echo "bench $(date +%T): $*" >&2; }
die() {
    echo "bench: $*" >&2
    exit 2
}

peers_installed() {
    [ -x "$PEERS_DIR/bin/mproxy-client" ] && [ -x "$PEERS_DIR/bin/mproxy-server" ] \
        && grep -q "\"mproxy-client $PEER_VERSION " "$PEERS_DIR/.crates.toml" 2>/dev/null \
        && grep -q "\"mproxy-server $PEER_VERSION " "$PEERS_DIR/.crates.toml" 2>/dev/null
}

if [ "${MPROXY_BENCH_IN_NETNS:-}" != 1 ]; then
    for tool in cargo ip ss python3 cmp flock; do
        command -v "$tool" >/dev/null || die "'$tool' not found"
    done
    /usr/bin/time --version 2>&1 | grep -q GNU || die "GNU time is needed at /usr/bin/time (apt-get install time)"
    command -v socat >/dev/null || log "socat not found (apt-get install socat): its rows will be skipped"
    log "building release binaries and the bench examples (cargo -j2, target ${CARGO_TARGET_DIR:-target})"
    cargo build --release -j2 --quiet --bins
    cargo build --release -j2 --quiet -p mproxy-common --example udp_limit --example latency --example tcp_sink
    if ! peers_installed; then
        # outside the namespace: cargo needs the network
        log "installing mproxy-client/mproxy-server $PEER_VERSION into $PEERS_DIR"
        mkdir -p "$PEERS_DIR"
        flock "$PEERS_DIR/.lock" cargo install -j1 --quiet --root "$PEERS_DIR" \
            "mproxy-client@$PEER_VERSION" "mproxy-server@$PEER_VERSION" >&2 \
            || log "cargo install failed: the mproxy $PEER_VERSION rows will be skipped"
    fi
    export MPROXY_BENCH_IN_NETNS=1 MPROXY_BENCH_STARTED=$EPOCHREALTIME
    if [ "$(id -u)" = 0 ] && unshare --net true 2>/dev/null; then
        exec unshare --net "$SELF" "$@"
    elif unshare --user --map-root-user --net true 2>/dev/null; then
        exec unshare --user --map-root-user --net "$SELF" "$@"
    fi
    die "cannot create a private network namespace; run as root or enable unprivileged user namespaces"
fi

# --- inside the private namespace from here on ------------------------------
ip link set lo up
ip link set lo multicast on
ip route add 224.0.0.0/4 dev lo
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
UDPL=$BIN/examples/udp_limit
LATENCY=$BIN/examples/latency
TCPSINK=$BIN/examples/tcp_sink
PEER=$PEERS_DIR/bin
TMPBASE=${BENCH_TMPDIR:-/dev/shm}
[ -d "$TMPBASE" ] && [ -w "$TMPBASE" ] || TMPBASE=${TMPDIR:-/tmp}
WORK=$(mktemp -d "$TMPBASE/mproxy-bench.XXXXXX")
RUN=$WORK/run
INPUT=$WORK/input
SEND_TIMEOUT=300 # s, any sender
BG_TIMEOUT=900   # s, any receiver or relay (they are stopped long before)
IDLE_US=1000000  # an output that has not grown for this long is complete
MAX_WAIT_US=60000000
PORT=20000

BG_TPIDS=() # rusage.py pids of the current run's background processes
BG_PIDS=()  # and the pids of their commands
LOGS=${BENCH_LOGDIR:-$TMPBASE/mproxy-bench-logs.$(date +%Y%m%dT%H%M%S)}
KEPT=0 # runs whose logs were kept in LOGS (lossy or failed)
NETNS=$(readlink /proc/$$/ns/net)
# ns_pids: every process of this private network namespace but this shell
# and the subshell running the function; all of them were started by this
# script (the namespace was created for it), including any caught between
# fork and the bookkeeping of start_bg
ns_pids() {
    local d p
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ "$p" = $$ ] || [ "$p" = "$BASHPID" ] && continue
        [ "$(readlink "$d/ns/net" 2>/dev/null)" = "$NETNS" ] && echo "$p"
    done
    return 0
}
cleanup() {
    local p left i
    trap - INT TERM
    # by namespace, not by the recorded pids: those may have been reused
    # by other processes of the host once ours exited
    for i in 1 2 3 4 5; do
        left=$(ns_pids)
        [ -n "$left" ] || break
        for p in $left; do kill -KILL "$p" 2>/dev/null || true; done
        sleep 0.1
    done
    wait 2>/dev/null || true
    [ -z "$left" ] || echo "bench: processes still running after cleanup: $left" >&2
    rm -rf "$WORK"
    if [ "$KEPT" -gt 0 ]; then echo "bench: logs of $KEPT lossy or failed run(s) kept in $LOGS" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_us() {
    local t=$EPOCHREALTIME
    echo "${t/./}"
}

rcvbuf_errors() {
    awk '/^Udp:/ { if (seen) { for (i = 2; i <= NF; i++) if (h[i] == "RcvbufErrors") print $i; exit }
                   for (i = 2; i <= NF; i++) h[i] = $i; seen = 1 }' /proc/net/snmp
}

alive() { # PID: running (not a zombie)
    local state
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

new_run() {
    rm -rf "$RUN"
    mkdir -p "$RUN"
    BG_TPIDS=()
    BG_PIDS=()
    OUTS=()
    R_NOTE=""
    R_GOT=""
    R_LAST=""
    PORT=$((PORT + 10))
    DROPS0=$(rcvbuf_errors)
}

# start_bg NAME CMD...: CMD in the background under rusage.py (usage in
# $RUN/NAME.time, output in NAME.out/.err); sets BG_PID (CMD) and BG_TP
start_bg() {
    local name=$1 child=""
    shift
    "$RUSAGE" --timeout "$BG_TIMEOUT" "$RUN/$name.time" -- "$@" >"$RUN/$name.out" 2>"$RUN/$name.err" &
    BG_TP=$!
    BG_TPIDS+=("$BG_TP")
    for _ in $(seq 500); do
        child=$(cat "$RUN/$name.time.pid" 2>/dev/null || true)
        [ -n "$child" ] && break
        sleep 0.01
    done
    [ -n "$child" ] || die "could not start $name: $(cat "$RUN/$name.err")"
    BG_PID=$child
    BG_PIDS+=("$child")
}

# stop_bg SIG PID TPID: signal PID, wait (at most 10 s, then SIGKILL) for
# its rusage.py to exit
stop_bg() {
    local sig=$1 pid=$2 tp=$3
    kill -"$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        alive "$tp" || break
        sleep 0.1
    done
    if alive "$tp"; then
        log "pid $pid ignored SIG$sig for 10 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$tp" 2>/dev/null || true
}

# wait_exit TPID SECS: wait for a process that stops by itself
wait_exit() {
    local tp=$1 n=$(($2 * 10))
    for _ in $(seq "$n"); do
        alive "$tp" || break
        sleep 0.1
    done
    if alive "$tp"; then
        log "a receiver did not stop within $2 s; killing it"
        kill -INT "$tp" 2>/dev/null || true
    fi
    wait "$tp" 2>/dev/null || true
}

wait_udp() { # PORT COUNT: until COUNT sockets are bound to udp PORT (5 s)
    for _ in $(seq 250); do
        [ "$(ss -Hlun "sport = :$1" | wc -l)" -ge "$2" ] && return 0
        sleep 0.02
    done
    die "nothing listening on udp port $1 after 5 s (see $RUN/*.err)"
}

wait_tcp() { # PORT
    for _ in $(seq 250); do
        [ "$(ss -Hltn "sport = :$1" | wc -l)" -ge 1 ] && return 0
        sleep 0.02
    done
    die "nothing listening on tcp port $1 after 5 s"
}

wait_log() { # FILE STRING (5 s)
    for _ in $(seq 250); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.02
    done
    die "'$2' did not appear in $1 after 5 s"
}

# send_fg NAME CMD...: the sender, under rusage.py: R_WALL, R_T0
send_fg() {
    local name=$1 rc=0
    shift
    # in the background and waited for, so a signal to this script is
    # handled at once rather than when the sender is done
    "$RUSAGE" --timeout "$SEND_TIMEOUT" "$RUN/$name.time" -- "$@" >"$RUN/$name.out" 2>"$RUN/$name.err" &
    BG_TPIDS+=("$!")
    wait "$!" || rc=$?
    read -r R_WALL _ _ _ R_T0 _ <"$RUN/$name.time" || die "$name: no usage record"
    if [ "$rc" != 0 ]; then
        log "$name exited with status $rc: $(tail -2 "$RUN/$name.err" | tr '\n' ' ')"
        R_NOTE+=" sender-exit-$rc"
    fi
}

out_bytes() {
    local t=0 f s
    for f in "${OUTS[@]}"; do
        s=$(stat -c %s "$f" 2>/dev/null || echo 0)
        t=$((t + s))
    done
    echo "$t"
}

# wait_outputs WANT: until the outputs hold WANT bytes in all, or have not
# grown for IDLE_US (at most MAX_WAIT_US); then note the last write time
wait_outputs() {
    local want=$1 last=-1 since start total now
    start=$(now_us)
    since=$start
    while :; do
        total=$(out_bytes)
        now=$(now_us)
        [ "$total" -ge "$want" ] && break
        if [ "$total" != "$last" ]; then
            last=$total
            since=$now
        fi
        [ $((now - since)) -ge "$IDLE_US" ] && break
        if [ $((now - start)) -ge "$MAX_WAIT_US" ]; then
            log "outputs still growing after $((MAX_WAIT_US / 1000000)) s; stopping"
            break
        fi
        sleep 0.05
    done
    R_LAST=$(stat -c %.9Y "${OUTS[@]}" 2>/dev/null | sort -g | tail -1 || true)
}

# finish_run RECEIVERS: totals of the run (R_GOT may be preset)
finish_run() {
    local k=$1 f ok=0

    R_EXP=$((k * LEN))
    [ -n "$R_GOT" ] || R_GOT=$(out_bytes)
    read -r R_CPU R_RSS < <(cat "$RUN"/*.time | awk '{ cpu += $2; if ($3 > rss) rss = $3 } END { printf "%.3f %d\n", cpu, rss }')
    R_DROPS=$(($(rcvbuf_errors) - DROPS0))
    if [ "${#OUTS[@]}" = 0 ]; then
        R_IDENT=-
    else
        for f in "${OUTS[@]}"; do
            if [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" = "$LEN" ] && cmp -s "$INPUT" "$f"; then
                ok=$((ok + 1))
            fi
        done
        R_IDENT=$([ "$ok" = "$k" ] && echo 1 || echo 0)
    fi
    # per run: delivered Gbit/s over the sender's wall time and end to end, %
    R_GBPS=$(awk -v g="$R_GOT" -v k="$k" -v t="$R_WALL" 'BEGIN { printf "%.3f", g / k * 8 / t / 1e9 }')
    R_E2E=$(awk -v g="$R_GOT" -v k="$k" -v t0="$R_T0" -v t1="${R_LAST:-0}" \
        'BEGIN { d = t1 - t0; if (g == 0 || d <= 0) print "-"; else printf "%.3f", g / k * 8 / d / 1e9 }')
    R_PCT=$(awk -v g="$R_GOT" -v e="$R_EXP" 'BEGIN { printf "%.3f", g * 100 / e }')
    R_CPUGB=$(awk -v c="$R_CPU" -v g="$R_GOT" 'BEGIN { if (g == 0) print "-"; else printf "%.3f", c / (g / 1e9) }')
    if [ "$R_GOT" -lt "$R_EXP" ] || [[ $R_NOTE == *sender-exit* ]]; then keep_logs; fi
    log "    run: $R_E2E Gbit/s, over sender wall (${R_WALL}s) $R_GBPS, delivered $R_PCT%, drops $R_DROPS, exact $R_IDENT, cpu ${R_CPU}s, rss ${R_RSS}KiB${R_NOTE}"
}

# keep_logs: copy the current run's logs and usage records (not its data)
# to LOGS, so a lossy or failed run can be looked into afterwards
keep_logs() {
    local dir
    KEPT=$((KEPT + 1))
    dir=$LOGS/$(printf '%03d' "$KEPT")-port$PORT
    mkdir -p "$dir"
    cp "$RUN"/*.err "$RUN"/*.out "$RUN"/*.time "$dir"/ 2>/dev/null || true
    log "    (logs of this run kept in $dir)"
}

# ---------------------------------------------------------------- cases
# Each case function does one run and leaves its figures in R_*.

# case_kernel PAYLOAD OFFLOAD(0|1): udp_limit, sendmmsg/recvmmsg x64 (+GSO/GRO)
case_kernel() {
    local payload=$1 off=() rtp line
    if [ "$2" = 1 ]; then off=(--gso); fi
    new_run
    start_bg recv "$UDPL" recv --addr "127.0.0.1:$PORT" --batch 64 ${off[@]+--gro} --idle-ms 1000 --max-wait-s 30
    rtp=$BG_TP
    wait_udp "$PORT" 1
    send_fg send "$UDPL" send --addr "127.0.0.1:$PORT" --bytes "$LEN" --payload "$payload" --batch 64 ${off[@]+"${off[@]}"}
    "$UDPL" mark --addr "127.0.0.1:$PORT" 2>>"$RUN/send.err" || true
    wait_exit "$rtp" 40
    line=$(grep -h '^udp_limit role=recv' "$RUN/recv.out" || true)
    R_GOT=$(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' <<<"$line")
    R_GOT=${R_GOT:-0}
    R_LAST=$(sed -n 's/.* last_ns=\([0-9]*\).*/\1/p' <<<"$line" | awk '{ if ($1 > 0) printf "%.9f", $1 / 1e9 }')
    R_NOTE+=" $(sed -n 's/.* mode=\([a-z]*\).*/\1/p' "$RUN/send.out")+$(sed -n 's/.* mode=\([a-z]*\).*/\1/p' <<<"$line")"
    if grep -q 'note=' "$RUN/send.out" "$RUN/recv.out" 2>/dev/null; then
        R_NOTE+=" $(grep -ho 'note=[^ ]*' "$RUN/send.out" "$RUN/recv.out" | tr '\n' ' ')"
    fi
    finish_run 1
}

# case_mproxy DEST(uni|mc1|mc3) DATAGRAM WIRE(raw|mpx) [client args...]
case_mproxy() {
    local dest=$1 dg=$2 wire=$3 k=1 addr i
    shift 3
    new_run
    case $dest in
        uni) addr=127.0.0.1:$PORT ;;
        mc1) addr=239.255.10.1:$PORT ;;
        mc3) addr=239.255.10.1:$PORT k=3 ;;
        proxy) addr=127.0.0.1:$((PORT + 1)) ;;
    esac
    local pids=() tps=()
    for i in $(seq "$k"); do
        start_bg "srv$i" "$BIN/mproxy-server" --listen-addr "$addr" --path "$RUN/out$i"
        pids+=("$BG_PID")
        tps+=("$BG_TP")
        OUTS+=("$RUN/out$i")
    done
    local mpx=() px="" pxtp=""
    if [ "$wire" = mpx ]; then mpx=(--mpx); fi
    if [ "$dest" = proxy ]; then
        # client -> proxy (forwards datagrams as they are) -> server
        wait_udp "$((PORT + 1))" 1
        start_bg px "$BIN/mproxy-proxy" --udp-listen-addr "127.0.0.1:$PORT" --udp-downstream-addr "$addr"
        px=$BG_PID pxtp=$BG_TP
        addr=127.0.0.1:$PORT
    fi
    wait_udp "$PORT" "$k"
    send_fg client "$BIN/mproxy-client" --path "$INPUT" --server-addr "$addr" --max-datagram "$dg" \
        ${mpx[@]+"${mpx[@]}"} "$@"
    wait_outputs $((k * LEN))
    if [ -n "$px" ]; then stop_bg INT "$px" "$pxtp"; fi
    for i in $(seq 0 $((k - 1))); do stop_bg INT "${pids[$i]}" "${tps[$i]}"; done
    finish_run "$k"
}

# case_chain DATAGRAM [client args...]: client -> proxy -> reverseproxy
# (UDP in, multicast group, TCP out) -> socat TCP reader -> file
case_chain() {
    local dg=$1 rp rptp px pxtp rd rdtp
    shift
    new_run
    start_bg rp "$BIN/mproxy-reverseproxy" --udp-listen-addr "127.0.0.1:$((PORT + 1))" \
        --multicast-addr "239.255.77.18:$((PORT + 3))" --tcp-output-addr "127.0.0.1:$((PORT + 2))"
    rp=$BG_PID rptp=$BG_TP
    start_bg px "$BIN/mproxy-proxy" --udp-listen-addr "127.0.0.1:$PORT" \
        --udp-downstream-addr "127.0.0.1:$((PORT + 1))"
    px=$BG_PID pxtp=$BG_TP
    wait_udp "$((PORT + 1))" 1
    wait_udp "$PORT" 1
    wait_tcp "$((PORT + 2))"
    OUTS=("$RUN/out1")
    start_bg reader socat -u "TCP:127.0.0.1:$((PORT + 2))" "OPEN:$RUN/out1,creat,trunc"
    rd=$BG_PID rdtp=$BG_TP
    wait_log "$RUN/rp.err" "connected"
    send_fg client "$BIN/mproxy-client" --path "$INPUT" --server-addr "127.0.0.1:$PORT" --max-datagram "$dg" "$@"
    wait_outputs "$LEN"
    stop_bg INT "$px" "$pxtp"
    stop_bg INT "$rp" "$rptp"
    stop_bg TERM "$rd" "$rdtp"
    R_NOTE+=" $(grep -ho '[0-9]* kernel drops' "$RUN/px.err" "$RUN/rp.err" | awk '{ s = s "/" $1 } END { print "proxy/rp-in/rp-out drops " substr(s, 2) }')"
    finish_run 1
}

SOCAT_RCVBUF=rcvbuf=8388608
# case_socat BLOCK: socat -u -b BLOCK file -> UDP -> socat -> file
case_socat() {
    local b=$1 r rtp
    new_run
    OUTS=("$RUN/out1")
    start_bg recv socat -u -b 65536 "UDP-RECV:$PORT,bind=127.0.0.1,$SOCAT_RCVBUF" "OPEN:$RUN/out1,creat,trunc"
    r=$BG_PID rtp=$BG_TP
    wait_udp "$PORT" 1
    send_fg send socat -u -b "$b" "OPEN:$INPUT" "UDP-SENDTO:127.0.0.1:$PORT"
    wait_outputs "$LEN"
    stop_bg TERM "$r" "$rtp"
    finish_run 1
}

# case_peer CLIENT(old|new) SERVER(old|new): the published 0.1.8 binaries,
# and each of them against ours (raw, unicast, unpaced)
case_peer() {
    local c=$1 s=$2 r rtp
    new_run
    OUTS=("$RUN/out1")
    if [ "$s" = old ]; then
        start_bg srv "$PEER/mproxy-server" --path "$RUN/out1" --listen-addr "127.0.0.1:$PORT"
    else
        start_bg srv "$BIN/mproxy-server" --path "$RUN/out1" --listen-addr "127.0.0.1:$PORT"
    fi
    r=$BG_PID rtp=$BG_TP
    wait_udp "$PORT" 1
    if [ "$c" = old ]; then
        send_fg client "$PEER/mproxy-client" --path "$INPUT" --server-addr "127.0.0.1:$PORT"
    else
        send_fg client "$BIN/mproxy-client" --path "$INPUT" --server-addr "127.0.0.1:$PORT"
    fi
    wait_outputs "$LEN"
    # the 0.1.8 server has no clean shutdown (and writes every datagram at once)
    if [ "$s" = old ]; then stop_bg KILL "$r" "$rtp"; else stop_bg INT "$r" "$rtp"; fi
    finish_run 1
}

# case_fanout CLIENTS [client args...]: client (raw, 1472 B, unpaced
# unless the args say --rate) -> reverseproxy (UDP in, group, TCP out) ->
# CLIENTS TCP connections of one tcp_sink process; R_GBPS is the median
# connection's bytes over the time from the sender's fork to the last read
# of any connection. The note says where datagrams were lost: at the
# reverseproxy's UDP input, at its socket on the group (kernel drops from
# its summary), and for slow clients (--client-queue); RPIN[row] sums the
# input's drops over the row's runs
case_fanout() {
    local n=$1 rp rptp sktp line med
    shift
    new_run
    start_bg rp "$BIN/mproxy-reverseproxy" --udp-listen-addr "127.0.0.1:$PORT" \
        --multicast-addr "239.255.77.19:$((PORT + 3))" --tcp-output-addr "127.0.0.1:$((PORT + 2))"
    rp=$BG_PID rptp=$BG_TP
    wait_udp "$PORT" 1
    wait_tcp "$((PORT + 2))"
    start_bg sink "$TCPSINK" --addr "127.0.0.1:$((PORT + 2))" --conns "$n" --idle-ms 1000 --max-wait-s 60
    sktp=$BG_TP
    for _ in $(seq 250); do
        [ "$(grep -c 'connected' "$RUN/rp.err" 2>/dev/null || true)" -ge "$n" ] && break
        sleep 0.02
    done
    [ "$(grep -c 'connected' "$RUN/rp.err" || true)" -ge "$n" ] || die "reverseproxy did not see $n TCP clients (see $RUN/rp.err)"
    send_fg client "$BIN/mproxy-client" --path "$INPUT" --server-addr "127.0.0.1:$PORT" --max-datagram 1472 "$@"
    wait_exit "$sktp" 90
    stop_bg INT "$rp" "$rptp"
    line=$(grep -h '^tcp_sink ' "$RUN/sink.out" || true)
    [ -n "$line" ] || log "tcp_sink printed nothing: $(tail -2 "$RUN/sink.err" | tr '\n' ' ')"
    R_GOT=$(sed -n 's/.* total=\([0-9]*\).*/\1/p' <<<"$line")
    R_GOT=${R_GOT:-0}
    med=$(sed -n 's/.* median=\([0-9]*\).*/\1/p' <<<"$line")
    R_LAST=$(sed -n 's/.* last_ns=\([0-9]*\).*/\1/p' <<<"$line" | awk '{ if ($1 > 0) printf "%.9f", $1 / 1e9 }')
    R_NOTE+=" min/median/max per client $(sed -n 's/.* min=\([0-9]*\) median=\([0-9]*\) max=\([0-9]*\).*/\1\/\2\/\3/p' <<<"$line") B"
    local drops in_drops
    drops=$(grep -ho '[0-9]* kernel drops' "$RUN/rp.err" | awk '{ s = s "/" $1 } END { print substr(s, 2) }')
    in_drops=${drops%%/*}
    R_NOTE+="; rp-in/rp-group drops ${drops:-?}, queue drops $(grep -o '[0-9]* dropped for slow' "$RUN/rp.err" | awk '{ print $1 }')"
    # `name` is the row measure() runs
    RPIN["$name"]=$((${RPIN["$name"]:-0} + ${in_drops:-0}))
    finish_run "$n"
    # per client: the median connection over the fork -> last read time
    R_GBPS=$(awk -v g="${med:-0}" -v t0="$R_T0" -v t1="${R_LAST:-0}" \
        'BEGIN { d = t1 - t0; if (g == 0 || d <= 0) print "0"; else printf "%.3f", g * 8 / d / 1e9 }')
    R_E2E=$R_GBPS
}

LAT_COUNT=5000
# case_latency PATH(udp|client|server|proxy): LAT_COUNT stamped 100-byte
# lines at 1000/s through PATH; L_* are the receiver's figures
#   udp     latency send --udp -> latency recv --udp (no mproxy)
#   client  FIFO -> mproxy-client -> UDP -> latency recv
#   server  FIFO -> mproxy-client -> mproxy-server --path FIFO -> latency recv
#   proxy   FIFO -> mproxy-client -> mproxy-proxy -> UDP -> latency recv
case_latency() {
    local path=$1 rtp ctp stp ptp line
    local c s p
    new_run
    mkfifo "$RUN/in" "$RUN/out"
    case $path in
        udp)
            start_bg recv "$LATENCY" recv --udp "127.0.0.1:$PORT" --count "$LAT_COUNT"
            rtp=$BG_TP
            wait_udp "$PORT" 1
            send_fg send "$LATENCY" send --udp "127.0.0.1:$PORT" --count "$LAT_COUNT" --rate 1000 --size 100
            ;;
        client | proxy)
            start_bg recv "$LATENCY" recv --udp "127.0.0.1:$((PORT + 1))" --count "$LAT_COUNT"
            rtp=$BG_TP
            wait_udp "$((PORT + 1))" 1
            local dst=127.0.0.1:$((PORT + 1))
            if [ "$path" = proxy ]; then
                start_bg proxy "$BIN/mproxy-proxy" --udp-listen-addr "127.0.0.1:$PORT" --udp-downstream-addr "$dst"
                p=$BG_PID ptp=$BG_TP
                wait_udp "$PORT" 1
                dst=127.0.0.1:$PORT
            fi
            start_bg client "$BIN/mproxy-client" --path "$RUN/in" --server-addr "$dst"
            c=$BG_PID ctp=$BG_TP
            send_fg send "$LATENCY" send --file "$RUN/in" --count "$LAT_COUNT" --rate 1000 --size 100
            ;;
        server)
            start_bg recv "$LATENCY" recv --file "$RUN/out" --count "$LAT_COUNT"
            rtp=$BG_TP
            start_bg server "$BIN/mproxy-server" --listen-addr "127.0.0.1:$PORT" --path "$RUN/out"
            s=$BG_PID stp=$BG_TP
            wait_udp "$PORT" 1
            start_bg client "$BIN/mproxy-client" --path "$RUN/in" --server-addr "127.0.0.1:$PORT"
            c=$BG_PID ctp=$BG_TP
            send_fg send "$LATENCY" send --file "$RUN/in" --count "$LAT_COUNT" --rate 1000 --size 100
            ;;
    esac
    wait_exit "$rtp" 10
    if [ -n "${ctp:-}" ]; then stop_bg INT "$c" "$ctp"; fi
    if [ -n "${stp:-}" ]; then stop_bg INT "$s" "$stp"; fi
    if [ -n "${ptp:-}" ]; then stop_bg INT "$p" "$ptp"; fi
    line=$(grep -h '^latency ' "$RUN/recv.out" || true)
    [ -n "$line" ] || die "latency recv printed nothing for path $path: $(tail -2 "$RUN/recv.err" | tr '\n' ' ')"
    L_LOST=$(sed -n 's/.* lost=\([0-9]*\).*/\1/p' <<<"$line")
    L_P50=$(sed -n 's/.* p50_us=\([0-9.NaN]*\).*/\1/p' <<<"$line")
    L_P99=$(sed -n 's/.* p99_us=\([0-9.NaN]*\).*/\1/p' <<<"$line")
    L_P999=$(sed -n 's/.* p999_us=\([0-9.NaN]*\).*/\1/p' <<<"$line")
    L_MAX=$(sed -n 's/.* max_us=\([0-9.NaN]*\).*/\1/p' <<<"$line")
    log "    run: p50 ${L_P50} us, p99 ${L_P99} us, p99.9 ${L_P999} us, max ${L_MAX} us, lost ${L_LOST}"
}

# ------------------------------------------------------------ medians, table
median() { # values... ("-" when any is "-")
    printf '%s\n' "$@" | sort -g | awk '$1 == "-" { dash = 1 } { v[NR] = $1 }
        END { if (dash || NR == 0) { print "-"; exit }
              if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

declare -A G LOSSY PACED # by row name: median Gbit/s, any run lost data, paced row's name
declare -A RPIN           # fan-out rows: datagrams the reverseproxy's UDP input lost, all runs
FMT='%-40s %7s %8s %8s %7s %5s %8s %7s  %s\n'
ROWS=()
row() { # the formatted row, kept for the final table and logged
    local r
    # shellcheck disable=SC2059
    r=$(printf "$FMT" "$@")
    ROWS+=("$r")
    log "ROW $r"
}
section() { ROWS+=("-- $1"); }

# skipped NAME: true when BENCH_ONLY (an extended regex) is set and the row
# NAME does not match it; the kernel rows always run when a paced row may
# need them (BENCH_ONLY='fan-out' runs just the fan-out rows)
skipped() {
    [ -n "${BENCH_ONLY:-}" ] || return 1
    if [[ $1 =~ $BENCH_ONLY ]]; then return 1; fi
    if [[ $1 == sendmmsg/recvmmsg* || $1 == "UDP GSO"* ]] &&
        [[ "mpx, 127.0.0.1, 1472 B, --rate" =~ $BENCH_ONLY ||
            "mpx, 127.0.0.1, 1472 B, --framing bytes, --rate" =~ $BENCH_ONLY ]]; then
        return 1
    fi
    return 0
}

# measure NAME CASE ARGS...: RUNS runs of the case; one row of medians;
# leaves the median Gbit/s in M_GBPS (and G[NAME]) and M_LOSSY=1 (and
# LOSSY[NAME]) when any run lost data
measure() {
    local name=$1 i
    shift
    if skipped "$name"; then return 0; fi
    local gbps=() e2e=() pct=() drops=() cpu=() rss=() ident=0 notes=""
    M_LOSSY=0
    log "$name"
    for i in $(seq "$RUNS"); do
        "$@"
        gbps+=("$R_GBPS")
        e2e+=("$R_E2E")
        pct+=("$R_PCT")
        drops+=("$R_DROPS")
        cpu+=("$R_CPUGB")
        rss+=("$R_RSS")
        if [ "$R_IDENT" = 1 ]; then ident=$((ident + 1)); fi
        if [ "$R_GOT" -lt "$R_EXP" ]; then M_LOSSY=1; fi
        if [ -n "$R_NOTE" ]; then notes=$R_NOTE; fi
    done
    M_GBPS=$(median "${e2e[@]}")
    G["$name"]=$M_GBPS
    if [ "$M_LOSSY" = 1 ]; then LOSSY["$name"]=1; fi
    if [ -n "$RATE_GBPS" ]; then
        notes="$(awk -v a="$(median "${e2e[@]}")" -v r="$RATE_GBPS" 'BEGIN { printf "%.0f%% of --rate (70%% of the kernel limit)", a * 100 / r }')$notes"
    fi
    local exact="$ident/$RUNS"
    if [ "$R_IDENT" = - ]; then exact=-; fi
    row "$name" "$(median "${e2e[@]}")" "$(median "${gbps[@]}")" "$(median "${pct[@]}")" \
        "$(median "${drops[@]}")" "$exact" "$(median "${cpu[@]}")" \
        "$(awk -v k="$(median "${rss[@]}")" 'BEGIN { printf "%.1f", k / 1024 }')" "${notes# }"
}

# measure_latency NAME PATH: RUNS runs of case_latency; one row of medians
LFMT='%-40s %7s %7s %7s %8s %6s  %s\n'
declare -A LAT99 LAT50
measure_latency() {
    local name=$1 i p50=() p99=() p999=() max=() lost=() r
    shift
    if skipped "$name"; then return 0; fi
    log "$name"
    for i in $(seq "$RUNS"); do
        case_latency "$@"
        p50+=("$L_P50")
        p99+=("$L_P99")
        p999+=("$L_P999")
        max+=("$L_MAX")
        lost+=("$L_LOST")
    done
    LAT50["$1"]=$(median "${p50[@]}")
    LAT99["$1"]=$(median "${p99[@]}")
    # shellcheck disable=SC2059
    r=$(printf "$LFMT" "$name" "${LAT50[$1]}" "${LAT99[$1]}" "$(median "${p999[@]}")" \
        "$(median "${max[@]}")" "$(median "${lost[@]}")" "$LAT_COUNT lines at 1000/s")
    ROWS+=("$r")
    log "ROW $r"
}

RATE_GBPS=""
# measure_with_paced NAME KERNEL_ROW CASE ARGS...: the unpaced row, then
# the same paced at 70% of the kernel limit measured above (the issue's
# target: that rate, delivered with zero loss)
measure_with_paced() {
    local name=$1 kernel=$2 mbit
    shift 2
    measure "$name" "$@"
    mbit=$(awk -v k="${G[$kernel]:-0}" 'BEGIN { printf "%d", k * 0.7 * 1000 }')
    if [ "$mbit" -le 0 ]; then
        log "no kernel figure for '$kernel': the paced row is skipped"
        return 0
    fi
    RATE_GBPS=$(awk -v m="$mbit" 'BEGIN { print m / 1000 }')
    PACED["$name"]="$name, --rate ${mbit}mbit"
    measure "${PACED[$name]}" "$@" --rate "${mbit}mbit"
    RATE_GBPS=""
}

# ------------------------------------------------------------------- input
log "input: $MB MiB of text lines (seeded), in $WORK"
python3 - "$INPUT" "$MB" <<'PY'
import random, sys
random.seed(7)
out, size = sys.argv[1], int(sys.argv[2]) << 20
alpha = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789,.;:-+*"
table = bytes(alpha[i % len(alpha)] for i in range(256))
written = n = 0
with open(out, "wb") as f:
    while written < size:
        block = random.randbytes(1 << 20).translate(table)
        parts, pos = [], 0
        while pos < len(block) - 200:
            length = random.randint(20, 180)  # NMEA/CSV-like lines, 30-190 bytes
            parts += [b"%09d," % n, block[pos:pos + length], b"\n"]
            pos += length
            n += 1
        chunk = b"".join(parts)
        if written + len(chunk) >= size:
            chunk = chunk[:size - written - 1] + b"\n"
        f.write(chunk)
        written += len(chunk)
PY
LEN=$(stat -c %s "$INPUT")

# socat gets the same forced 8 MiB receive buffer as mproxy-server when this
# socat knows how to set it (SO_RCVBUFFORCE = 33 at SOL_SOCKET = 1)
if command -v socat >/dev/null; then
    new_run
    start_bg probe socat -u "UDP-RECV:$PORT,bind=127.0.0.1,setsockopt-listen=1:33:8388608" "OPEN:$RUN/x,creat"
    sleep 0.3
    if ss -Hlunm "sport = :$PORT" | grep -q 'rb16777216'; then
        SOCAT_RCVBUF=setsockopt-listen=1:33:8388608
    fi
    stop_bg TERM "$BG_PID" "$BG_TP"
fi

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(now_us)
K1="sendmmsg/recvmmsg x64, 1400 B"
K8="sendmmsg/recvmmsg x64, 8192 B"

section "kernel limit: crates/mproxy-common/examples/udp_limit, unicast 127.0.0.1, unpaced"
for payload in 1400 8192; do
    measure "sendmmsg/recvmmsg x64, $payload B" case_kernel "$payload" 0
    measure "UDP GSO/GRO + mmsg x64, $payload B" case_kernel "$payload" 1
done

# the best the kernel did per payload size, with or without offloads: the
# limit the --framing bytes rows (full-size datagrams, GSO runs) are paced to
best_kernel() { # PAYLOAD -> row name
    awk -v a="${G["sendmmsg/recvmmsg x64, $1 B"]:-0}" -v b="${G["UDP GSO/GRO + mmsg x64, $1 B"]:-0}" -v p="$1" \
        'BEGIN { if (b + 0 > a + 0) print "UDP GSO/GRO + mmsg x64, " p " B"; else print "sendmmsg/recvmmsg x64, " p " B" }'
}
KB1=$(best_kernel 1400)
KB8=$(best_kernel 8192)

section "mproxy 0.2: client -> mproxy-server(s), file -> file; B = --max-datagram; --rate: see notes"
for dg in 1472 8192; do
    for wire in raw mpx; do
        if [ "$wire" = mpx ]; then
            if [ "$dg" = 1472 ]; then kn=$K1; else kn=$K8; fi
            measure_with_paced "$wire, 127.0.0.1, $dg B" "$kn" case_mproxy uni "$dg" "$wire"
        else
            measure "$wire, 127.0.0.1, $dg B" case_mproxy uni "$dg" "$wire"
        fi
        if [ "$dg" = 1472 ]; then
            measure "$wire, multicast x1, $dg B" case_mproxy mc1 "$dg" "$wire"
            measure "$wire, multicast x3, $dg B" case_mproxy mc3 "$dg" "$wire"
        fi
    done
    # --framing bytes: every datagram full-size, so runs of them leave as
    # UDP GSO messages and arrive as GRO batches (lines framing gives
    # datagrams of varying size, which GSO cannot carry)
    if [ "$dg" = 1472 ]; then kn=$KB1; else kn=$KB8; fi
    measure "raw, 127.0.0.1, $dg B, --framing bytes" case_mproxy uni "$dg" raw --framing bytes
    measure_with_paced "mpx, 127.0.0.1, $dg B, --framing bytes" "$kn" case_mproxy uni "$dg" mpx --framing bytes
    if [ "$dg" = 1472 ]; then
        measure "mpx, multicast x3, $dg B, --framing bytes" case_mproxy mc3 "$dg" mpx --framing bytes
    fi
done

section "proxy hop: client -> mproxy-proxy -> mproxy-server, file -> file"
for dg in 1472 8192; do
    measure "raw, via proxy, $dg B" case_mproxy proxy "$dg" raw
    measure "mpx, via proxy, $dg B" case_mproxy proxy "$dg" mpx
    if [ "$dg" = 1472 ]; then
        measure "raw, via proxy, $dg B, --framing bytes" case_mproxy proxy "$dg" raw --framing bytes
        measure "mpx, via proxy, $dg B, --framing bytes" case_mproxy proxy "$dg" mpx --framing bytes
    fi
done
# paced: the same --rate direct and through the proxy (70% of the kernel
# row at 1400 B, the rate of the paced mpx row above): does the hop keep up
# with a stream the direct path carries, and what does it cost then
HOP_MBIT=$(awk -v k="${G[$K1]:-0}" 'BEGIN { printf "%d", k * 0.7 * 1000 }')
if [ "$HOP_MBIT" -gt 0 ]; then
    measure "raw, 127.0.0.1, 1472 B, --rate ${HOP_MBIT}mbit" case_mproxy uni 1472 raw --rate "${HOP_MBIT}mbit"
    for wire in raw mpx; do
        measure "$wire, via proxy, 1472 B, --rate ${HOP_MBIT}mbit" case_mproxy proxy 1472 "$wire" --rate "${HOP_MBIT}mbit"
    done
fi

section "full chain: client -> proxy -> reverseproxy (UDP in, group, TCP out) -> socat TCP reader -> file (raw)"
for dg in 1472 8192; do
    measure "chain, raw, $dg B" case_chain "$dg"
done

section "reverseproxy fan-out: client (raw, 1472 B) -> reverseproxy -> N TCP clients (tcp_sink); Gbit/s per client"
measure "fan-out, 1 TCP client" case_fanout 1
measure "fan-out, 32 TCP clients" case_fanout 32
# Unpaced, the 32 clients' row is overloaded (the reverseproxy's output
# cannot write 32 copies as fast as the client sends one and loses at its
# socket on the group), so its ratio to the single client's compares an
# overloaded state with one that keeps up. Paced at one rate a single
# client receives without loss, the same rate to 1 and to 32 clients
# isolates the cost of the fan-out itself.
FANOUT_RATE=${BENCH_FANOUT_RATE:-600mbit}
measure "fan-out, 1 TCP client, --rate $FANOUT_RATE" case_fanout 1 --rate "$FANOUT_RATE"
measure "fan-out, 32 TCP clients, --rate $FANOUT_RATE" case_fanout 32 --rate "$FANOUT_RATE"

section "socat -u -b B file -> UDP 127.0.0.1 -> socat UDP-RECV -> file ($SOCAT_RCVBUF)"
if command -v socat >/dev/null; then
    for b in 1472 8192; do measure "socat -> socat, -b $b" case_socat "$b"; done
else
    ROWS+=("   (skipped: socat not installed)")
fi

section "published mproxy $PEER_VERSION (client: 8096+96-byte datagrams, unpaced; server: default rcvbuf, write per datagram)"
if [ -x "$PEER/mproxy-client" ] && [ -x "$PEER/mproxy-server" ]; then
    measure "0.1.8 client -> 0.1.8 server" case_peer old old
    measure "0.1.8 client -> 0.2 server" case_peer old new
    measure "0.2 client (raw, 1472) -> 0.1.8 server" case_peer new old
else
    ROWS+=("   (skipped: $PEER/mproxy-client or mproxy-server missing)")
fi

if [ "$QUICK" = 1 ]; then LAT_COUNT=${BENCH_LAT_LINES:-2000}; else LAT_COUNT=${BENCH_LAT_LINES:-5000}; fi
section "latency: 100-byte stamped lines at 1000/s (examples/latency), one-way, CLOCK_MONOTONIC, raw"
# shellcheck disable=SC2059
ROWS+=("$(printf "$LFMT" "path" "p50 us" "p99 us" "p99.9us" "max us" "lost" "")")
measure_latency "UDP socket -> socket (no mproxy)" udp
measure_latency "FIFO -> client -> UDP socket" client
measure_latency "FIFO -> client -> server -> FIFO" server
measure_latency "FIFO -> client -> proxy -> UDP socket" proxy

ELAPSED=$((($(now_us) - T_START) / 1000000))
TOTAL=$(awk -v a="$MPROXY_BENCH_STARTED" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d", b - a }')
echo "mproxy bench: $((LEN >> 20)) MiB of text lines, median of $RUNS run(s)$([ "$QUICK" = 1 ] && echo ' (--quick)'); $(nproc) CPUs, Linux $(uname -r); loadavg $LOAD0 -> $(cut -d' ' -f1-3 /proc/loadavg); cases ${ELAPSED}s, total ${TOTAL}s"
# shellcheck disable=SC2059
printf "$FMT" "case" "Gbit/s" "snd-wall" "deliv. %" "drops" "exact" "CPU s/GB" "RSS MiB" "notes"
for r in "${ROWS[@]}"; do echo "$r"; done

# ------------------------------------------------------------------ targets
ratio() { # A B -> A/B with 2 decimals, "-" when either is missing
    awk -v a="${1:--}" -v b="${2:--}" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
verdict() { # RATIO OP LIMIT -> met / NOT met
    awk -v r="$1" -v op="$2" -v l="$3" 'BEGIN { if (r == "-") { print "n/a"; exit }
        ok = (op == ">=") ? (r + 0 >= l + 0) : (r + 0 <= l + 0); print ok ? "met" : "NOT met" }'
}
target() { # TEXT RATIO OP LIMIT [EXTRA]
    printf '  %-74s %6s  %s %s  %s\n' "$1" "$2" "$3" "$4" "$(verdict "$2" "$3" "$4")${5:+ ($5)}"
}
zero_loss() { # NAME -> "0 loss" or "lossy"
    if [ -z "${G[$1]:-}" ]; then echo "not run"; elif [ -n "${LOSSY[$1]:-}" ]; then echo "lost data in a run"; else echo "0 loss in every run"; fi
}
echo
echo "targets (ratios of the medians above, all from this run):"
# The first target read as the issue states it: an mpx transfer at >= 70%
# of the kernel limit (the unpaced row), and zero loss when paced at that
# rate (the paced row). The paced row's own ratio is shown too: it reaches
# ~98% of its --rate (start-up), so by construction it lands just under 0.70.
mpx_target() { # LABEL UNPACED_ROW KERNEL_ROW
    local pn=${PACED[$2]:-not run}
    target "$1 unpaced / kernel ($3)" "$(ratio "${G[$2]:-}" "${G[$3]:-}")" ">=" 0.70 \
        "$(zero_loss "$2"); paced at 70% (${pn##*--rate }): $(zero_loss "$pn"), $(ratio "${G[$pn]:-}" "${G[$3]:-}") of kernel"
}
for dg in 1472 8192; do
    kn=$K1
    if [ "$dg" = 8192 ]; then kn=$K8; fi
    mpx_target "mpx $dg B" "mpx, 127.0.0.1, $dg B" "$kn"
    gn="UDP GSO/GRO + mmsg x64, ${kn##*x64, }"
    target "  the same / kernel with offloads ($gn)" "$(ratio "${G["mpx, 127.0.0.1, $dg B"]:-}" "${G[$gn]:-}")" ">=" 0.70 "for reference: lines cannot use GSO"
done
for dg in 1472 8192; do
    kn=$KB1
    if [ "$dg" = 8192 ]; then kn=$KB8; fi
    mpx_target "mpx $dg B --framing bytes" "mpx, 127.0.0.1, $dg B, --framing bytes" "$kn"
done
for dg in 1472 8192; do
    peer="0.1.8 client -> 0.1.8 server"
    target "mpx $dg B unpaced / published $peer" "$(ratio "${G["mpx, 127.0.0.1, $dg B"]:-}" "${G[$peer]:-}")" ">=" 5
    target "mpx $dg B unpaced / socat -b $dg" "$(ratio "${G["mpx, 127.0.0.1, $dg B"]:-}" "${G["socat -> socat, -b $dg"]:-}")" ">=" 1
done
for dg in 1472 8192; do
    un="mpx, 127.0.0.1, $dg B, --framing bytes"
    target "mpx $dg B --framing bytes unpaced / published 0.1.8" "$(ratio "${G[$un]:-}" "${G["0.1.8 client -> 0.1.8 server"]:-}")" ">=" 5
    target "mpx $dg B --framing bytes unpaced / socat -b $dg" "$(ratio "${G[$un]:-}" "${G["socat -> socat, -b $dg"]:-}")" ">=" 1
done
for dg in 1472 8192; do
    for wire in raw mpx; do
        r=$(ratio "${G["$wire, via proxy, $dg B"]:-}" "${G["$wire, 127.0.0.1, $dg B"]:-}")
        target "proxy hop, $wire $dg B: via proxy / direct (cost = 1 - ratio <= 15%)" "$r" ">=" 0.85
    done
    if [ "$dg" = 1472 ]; then
        for wire in raw mpx; do
            r=$(ratio "${G["$wire, via proxy, $dg B, --framing bytes"]:-}" "${G["$wire, 127.0.0.1, $dg B, --framing bytes"]:-}")
            target "proxy hop, $wire $dg B --framing bytes: via proxy / direct" "$r" ">=" 0.85
        done
    fi
    if [ "$dg" = 1472 ] && [ "${HOP_MBIT:-0}" -gt 0 ]; then
        for wire in raw mpx; do
            pv="$wire, via proxy, 1472 B, --rate ${HOP_MBIT}mbit" pd="$wire, 127.0.0.1, 1472 B, --rate ${HOP_MBIT}mbit"
            target "proxy hop, $wire 1472 B, both paced at ${HOP_MBIT}mbit: via proxy / direct" "$(ratio "${G[$pv]:-}" "${G[$pd]:-}")" ">=" 0.85 "via proxy: $(zero_loss "$pv")"
        done
    fi
    r=$(ratio "${G["chain, raw, $dg B"]:-}" "${G["raw, 127.0.0.1, $dg B"]:-}")
    target "full chain (proxy + reverseproxy + TCP), raw $dg B / direct (2 hops)" "$r" ">=" 0.7225 "0.85^2"
done
target "fan-out: per-client Gbit/s, 32 clients / 1 client" "$(ratio "${G["fan-out, 32 TCP clients"]:-}" "${G["fan-out, 1 TCP client"]:-}")" ">=" 0.50
f1="fan-out, 1 TCP client"
if [ -n "${G[$f1]:-}" ]; then fin=${RPIN[$f1]:-0}; else fin=-; fi
target "fan-out, 1 TCP client, unpaced: datagrams lost at the reverseproxy's input" "$fin" "<=" 0 "all runs"
fp1="fan-out, 1 TCP client, --rate $FANOUT_RATE" fp32="fan-out, 32 TCP clients, --rate $FANOUT_RATE"
target "fan-out paced (--rate $FANOUT_RATE): per-client Gbit/s, 32 clients / 1 client" "$(ratio "${G[$fp32]:-}" "${G[$fp1]:-}")" ">=" 0.50 \
    "1 client: $(zero_loss "$fp1"); 32: $(zero_loss "$fp32")"
lat_target() { # TEXT PATH
    local v=${LAT99[$2]:--}
    printf '  %-74s %6s  %s %s  %s\n' "$1" "$v" "<" 200 \
        "$(awk -v v="$v" 'BEGIN { if (v == "-") print "n/a"; else print (v + 0 < 200) ? "met" : "NOT met" }')"
}
lat_target "p99 us, one hop: FIFO -> client -> server -> FIFO" server
lat_target "p99 us, client hop alone: FIFO -> client -> UDP socket" client
lat_target "p99 us, client + proxy hop: FIFO -> client -> proxy -> UDP socket" proxy
echo "  (p99 of the same 1000/s stream socket -> socket without mproxy: ${LAT99[udp]:--} us; the machine's floor)"
