#!/usr/bin/env bash
# Instructions per message of mailhub's reactor thread, one connection per message, counted by
# callgrind: unlike CPU time the count does not move with the machine's load (+-1 % run to run),
# so two trees can be compared on a busy machine (run both, compare the "reactor" lines).
#
#   bash benchmarks/connperf_callgrind.sh [TREE] [SESSIONS] [MESSAGES] [BODY]
#   (environment: PORT, WORKDIR, WARMUP: the listener's port, the directory, the warm-up count;
#   KEEP=1 keeps the directory with the callgrind files)
#
# TREE (default: this checkout) is run as connperf.py runs it: twistd -n mailhub, production
# mode, checks off, only an SMTP listener on 127.0.0.1, a new data directory under
# /var/tmp/connperf-callgrind-<pid>. Under valgrind (~50x slower, about two minutes): 100
# messages of smtp-source to warm up, counters zeroed (callgrind_control -z), MESSAGES more
# (default 300, SESSIONS 20, BODY 3900 octets), counters dumped. Thread 1 is the reactor; the
# others are the store's threads (their work is mostly in the kernel, which callgrind does not see).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TREE=$(cd "${1:-$HERE/..}" && pwd)
SESSIONS=${2:-20}
MESSAGES=${3:-300}
BODY=${4:-3900}
PYTHON=${PYTHON:-/work/main/.venv/bin/python}
WARMUP=${WARMUP:-100}
D=${WORKDIR:-/var/tmp/connperf-callgrind}-$$
PORT=${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mkdir -p "$D"
cat >"$D/mailhub.toml" <<EOF
[server]
hostname = "mx.example.com"
data_dir = "$D/data"
[domains]
local = ["example.com"]
catch_all = ["example.com"]
[listeners]
smtp = ["tcp:$PORT:interface=127.0.0.1"]
[checks]
enabled = false
EOF
cd "$TREE"
valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$D/cg.%p" \
    "$PYTHON" -c "from twisted.scripts.twistd import run; run()" -n --pidfile= \
    --logfile "$D/twistd.log" mailhub --config "$D/mailhub.toml" >"$D/valgrind.log" 2>&1 &
VG=$!
trap 'kill $VG 2>/dev/null || true' EXIT
for _ in $(seq 1 1200); do
    (echo >/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
    sleep 0.25
done
send_mail() {
    smtp-source -s "$SESSIONS" -m "$1" -l "$BODY" -f load@source.bench.invalid \
        -t user1@example.com -M loadgen.source.bench.invalid "127.0.0.1:$PORT"
}
send_mail "$WARMUP"
callgrind_control -z "$VG" >/dev/null 2>&1
send_mail "$MESSAGES"
sleep 1
callgrind_control -d "$VG" >/dev/null 2>&1
sleep 2
kill "$VG"
wait "$VG" 2>/dev/null || true
trap - EXIT
reactor=$(grep -m1 '^summary' "$D/cg.$VG.1-01" | awk '{print $2}')
echo "tree $TREE, $SESSIONS sessions, $MESSAGES messages of $BODY octets"
echo "reactor: $reactor instructions, $((reactor / MESSAGES)) per message"
if [ -n "${KEEP:-}" ]; then
    echo "kept $D (callgrind_annotate $D/cg.$VG.1-01)"
else
    rm -rf "$D"
fi
