#!/usr/bin/env bash
# Run the standard load matrix against one SMTP target and print one line per run.
#
#   bash benchmarks/run_matrix.sh NAME PORT [MAILDIR_ROOT]
#
#   NAME          label for the results (postfix, mailhub, null, ...)
#   PORT          SMTP port on 127.0.0.1
#   MAILDIR_ROOT  optional: also wait until every message is a file in this Maildir tree
#
# Environment: REPEATS (default 3), CASES (default "4096:20:5000 4096:1:2000 262144:20:1000",
# each SIZE:CONNECTIONS:MESSAGES), BETWEEN (a command run before every run, e.g.
# "bash benchmarks/setup_postfix.sh empty-mail"), OUT (JSON lines file, default
# /var/tmp/mailhub-bench-results/NAME-<date>.jsonl), EXTRA (more smtp_load.py options),
# QUIET (default 90: before each run wait, up to 5 minutes, until the machine has been at least
# this % idle for 3 s -- the machine has 2 cores and is often shared; 0 turns the wait off).
# The last column is the idle % before the run / in the second after it: a low second figure
# means something else was using the CPU when the run ended, so distrust that run.
set -euo pipefail
NAME=${1:?usage: run_matrix.sh NAME PORT [MAILDIR_ROOT]}
PORT=${2:?usage: run_matrix.sh NAME PORT [MAILDIR_ROOT]}
ROOT=${3:-}
REPEATS=${REPEATS:-3}
CASES=${CASES:-"4096:20:5000 4096:1:2000 262144:20:1000"}
OUT=${OUT:-/var/tmp/mailhub-bench-results/$NAME-$(date +%Y%m%d-%H%M%S).jsonl}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$(dirname "$OUT")"

idle_pct() {  # machine-wide idle % over the next $1 seconds
    local a b
    read -ra a < <(head -1 /proc/stat)
    sleep "$1"
    read -ra b < <(head -1 /proc/stat)
    local tot=0 i
    for i in 1 2 3 4 5 6 7 8; do tot=$((tot + b[i] - a[i])); done
    echo $(( (100 * (b[4] - a[4] + b[5] - a[5])) / (tot > 0 ? tot : 1) ))
}
wait_quiet() {
    local want=${QUIET:-90} t0=$SECONDS idle
    while idle=$(idle_pct 3) && [ "$idle" -lt "$want" ]; do
        if [ $((SECONDS - t0)) -gt 300 ]; then
            echo "warning: machine only ${idle}% idle before this run (other load?)" >&2
            break
        fi
    done
    echo "$idle"
}

printf '%-8s %7s %5s %6s %3s %9s %8s %9s %8s %7s %7s %7s %s\n' target size conns msgs run \
    "ack/s" "ackMB/s" "mdir/s" "mdirMB/s" "p50ms" "p99ms" "cpuus" "idle%"
for case in $CASES; do
    IFS=: read -r size conns msgs <<<"$case"
    for run in $(seq "$REPEATS"); do
        if [ -n "${BETWEEN:-}" ]; then bash -c "$BETWEEN" >/dev/null; fi
        pre=$(wait_quiet)
        # shellcheck disable=SC2086
        line=$(python3 "$HERE/smtp_load.py" --port "$PORT" --messages "$msgs" --size "$size" \
            --connections "$conns" --rcpt-domain example.com --json --label "$NAME" \
            ${ROOT:+--maildir-root "$ROOT"} ${EXTRA:-}) || echo "run failed: $line" >&2
        post=$(idle_pct 1)
        echo "$line" >>"$OUT"
        python3 -c '
import json, sys
o = json.loads(sys.argv[1]); m = o.get("maildir") or {}
print("%-8s %7d %5d %6d %3s %9.1f %8.2f %9s %8s %7.2f %7.2f %7.0f %s" % (
    o["label"], o["size"], o["connections"], o["messages"], sys.argv[2],
    o["acked_msgs_per_s"], o["acked_MB_per_s"],
    m.get("msgs_per_s", "-"), m.get("MB_per_s", "-"),
    o["latency_ms"]["p50"], o["latency_ms"]["p99"], o["generator_cpu_us_per_msg"],
    sys.argv[3]))
' "$line" "$run" "$pre/$post"
    done
done
echo "results: $OUT"
