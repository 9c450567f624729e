#!/usr/bin/env bash
# A/B regression check: cache-hit throughput of two tim-gateway binaries, side by side.
#
# Usage: benches/ab-gateways.sh OLD_BIN NEW_BIN [rounds, default 5] [seconds per run, default 10]
#        [connections, default 64]
#
# Both gateways run in front of one sandbox with the default config (access log on:
# RUST_LOG unset), get_all_robots cached for an hour and primed. Each is pinned to CPU 0 and
# wrk to CPU 1. Rounds alternate A, B, A, B, ... (B first in odd rounds, so neither always runs
# second), clients POST `{}` as SDKs do. Prints every round, the medians, and B / A.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?old binary}
NEW=${2:?new binary}
ROUNDS=${3:-5}
DURATION=${4:-10}
CONNECTIONS=${5:-64}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

KEY=5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e   # the demo key
SANDBOX=127.0.0.1:19543
PATH_Q=/v4/openim_robot_http_svc/get_all_robots
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done; echo "no listener on $1" >&2; exit 1; }

"$NEW" sandbox --listen "$SANDBOX" --ca-out "$WORK/ca.pem" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$SANDBOX"

start() { # name bin port admin_port
  cat > "$WORK/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$3"
admin_listen = "127.0.0.1:$4"
[upstream]
ca_file = "$WORK/ca.pem"
[apps.bench]
sdkappid = 1400000000
endpoint = "https://$SANDBOX"
[[cache.rules]]
command = "openim_robot_http_svc/get_all_robots"
ttl = "1h"
TOML
  TIM_GATEWAY_SECRET_KEY=$KEY taskset -c 0 "$2" serve --config "$WORK/$1.toml" 2>"$WORK/$1.log" & PIDS+=($!)
  wait_port "127.0.0.1:$3"
  curl -sf "http://127.0.0.1:$3$PATH_Q" -d '{}' -o /dev/null
  curl -sf "http://127.0.0.1:$3$PATH_Q" -d '{}' -o /dev/null -D - | grep -qi '^x-cache: HIT'
}
start old "$OLD" 18180 18190
start new "$NEW" 18280 18290

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{}"
LUA
run() { # port → requests/s
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$WORK/post.lua" "http://127.0.0.1:$1$PATH_Q" \
    | awk '/Requests\/sec/ {print int($2)} /Non-2xx/ {print "errors: " $0 > "/dev/stderr"}'
}
for port in 18180 18280; do taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s -s "$WORK/post.lua" "http://127.0.0.1:$port$PATH_Q" >/dev/null; done

A=(); B=()
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then a=$(run 18180); b=$(run 18280); else b=$(run 18280); a=$(run 18180); fi
  A+=("$a"); B+=("$b")
  printf 'round %d: old %s  new %s\n' "$round" "$a" "$b"
done
python3 - "${A[*]}" "${B[*]}" "$CONNECTIONS" "$DURATION" <<'PY'
import statistics, sys
a = [int(x) for x in sys.argv[1].split()]
b = [int(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
spread = lambda xs: (max(xs) - min(xs)) / statistics.median(xs)
print(f"POST {{}} cache hit, wrk -t1 -c{sys.argv[3]} -d{sys.argv[4]}s, {len(a)} alternating rounds, default config (access log on)")
print(f"old median {ma:.0f} req/s (spread {spread(a):.0%}), new median {mb:.0f} req/s (spread {spread(b):.0%})")
print(f"new / old = {mb / ma:.3f}")
PY
