#!/usr/bin/env python3
"""Run a command and record its wall time and resource usage (bench/run.sh).

    bench/rusage.py [--timeout SECS] OUT -- CMD [ARGS...]

Writes the command's pid to OUT.pid as soon as it is started, and when it
has exited one line to OUT:

    wall_s cpu_s maxrss_kib exit_code start_epoch_s end_epoch_s

wall_s runs from just before fork(2) to the return of wait4(2), so this
wrapper's own start-up is not counted. cpu_s is user + system time of the
command and of every descendant it waited for (wait4's rusage, microsecond
resolution; GNU time prints only hundredths). maxrss_kib is the command's
peak resident set as GNU time (/usr/bin/time, a small C program placed
between this wrapper and the command) reports it: a process's ru_maxrss
includes the image it had before exec(2), so measured straight from this
Python process it could never be below Python's own ~10 MiB.

SIGINT and SIGTERM sent to the wrapper are forwarded to the command. After
--timeout seconds the command gets SIGINT, and SIGKILL 10 s later. The
command starts with SIGINT, SIGQUIT and SIGPIPE at their defaults (a
background job of a script would otherwise inherit them ignored).
"""
import os
import signal
import sys
import time

GNU_TIME = "/usr/bin/time"


def child_of(ppid: int):
    """The pid of a process whose parent is ppid, or None"""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(ppid):
            return int(name)
    return None


def main() -> int:
    args = sys.argv[1:]
    timeout = None
    if args[:1] == ["--timeout"] and len(args) > 1:
        timeout = float(args[1])
        args = args[2:]
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write(__doc__)
        return 2
    out, cmd = args[0], args[2:]
    rss_file = out + ".rss"
    start = time.time()
    timer = os.fork()
    if timer == 0:
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execv(GNU_TIME, [GNU_TIME, "-f", "%M", "-o", rss_file, "--", *cmd])
        except OSError as e:
            sys.stderr.write(f"rusage.py: cannot run {GNU_TIME}: {e}\n")
        os._exit(127)
    # the command is GNU time's child; signals go to it, not to GNU time
    pid = None
    for _ in range(5000):
        pid = child_of(timer)
        # exited already? (WNOWAIT: leave it to wait4 below)
        if pid is not None or os.waitid(os.P_PID, timer, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            break
        time.sleep(0.001)
    if pid is None:
        pid = timer  # already gone (or never started): nothing to signal
    with open(out + ".pid", "w") as f:
        f.write(f"{pid}\n")

    def forward(sig, _frame):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    escalated = []

    def on_alarm(_sig, _frame):
        forward(signal.SIGKILL if escalated else signal.SIGINT, None)
        if not escalated:
            escalated.append(True)
            sys.stderr.write(f"rusage.py: {cmd[0]} still running after {timeout} s; SIGINT\n")
            signal.alarm(10)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    if timeout:
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(max(1, int(timeout)))
    # wait4 is retried after a signal handler ran (PEP 475)
    _, status, ru = os.wait4(timer, 0)
    end = time.time()
    signal.alarm(0)
    # GNU time exits with the command's status (128+N after signal N)
    code = os.waitstatus_to_exitcode(status)
    try:
        with open(rss_file) as f:
            rss = f.read().split()[-1]
    except (OSError, IndexError):
        rss = "0"
    with open(out, "w") as f:
        f.write(f"{end - start:.6f} {ru.ru_utime + ru.ru_stime:.6f} {rss} {code} {start:.6f} {end:.6f}\n")
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
