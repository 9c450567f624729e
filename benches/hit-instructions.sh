#!/usr/bin/env bash
# Instructions per cache hit, counted by valgrind's callgrind: repeatable where wall-clock
# throughput on a shared 2-core VM is not (wrk rounds spread 35-70% there).
#
# Usage: [HIT_CONNECTIONS=16] [KEEP_PROFILES=DIR] benches/hit-instructions.sh BIN [BIN...]
#
# For each binary: a gateway (default config, access log on) in front of the sandbox runs
# under callgrind; a keep-alive client POSTs `{}` to the cached get_all_robots N times; the
# process's total instructions for N = 1000 and N = 3000 are subtracted, so startup and
# shutdown cancel out, and divided by 2000. The environment reaches the gateway, so
# `RUST_LOG=info,tim_gateway::access=warn` measures it without the access log.
#
# One client (the default) waits for each answer, so the gateway idles between requests: every
# request pays for waking up and going idle, and the access log hands each line to the writer
# thread on its own. HIT_CONNECTIONS=16 runs that many clients at once, sharing the N requests,
# so the gateway always has work (as under load) and access lines go in batches.
# KEEP_PROFILES=DIR keeps each run's callgrind file there (NAME-N.out) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
KEY=5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e   # the demo key
SANDBOX_BIN=$1

count() { # bin n → total instructions
  local work; work=$(mktemp -d)
  "$SANDBOX_BIN" sandbox --listen 127.0.0.1:19643 --ca-out "$work/ca.pem" >/dev/null 2>&1 &
  local sandbox=$!
  for _ in $(seq 100); do [ -s "$work/ca.pem" ] && break; sleep 0.1; done
  cat > "$work/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:18380"
admin_listen = "127.0.0.1:18390"
[upstream]
ca_file = "$work/ca.pem"
[apps.bench]
sdkappid = 1400000000
endpoint = "https://127.0.0.1:19643"
[[cache.rules]]
command = "openim_robot_http_svc/get_all_robots"
ttl = "1h"
TOML
  TIM_GATEWAY_SECRET_KEY=$KEY valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$1" serve --config "$work/gateway.toml" 2>"$work/log" &
  local gateway=$!
  for _ in $(seq 300); do curl -sf http://127.0.0.1:18390/healthz >/dev/null 2>&1 && break; sleep 0.2; done
  python3 - "$2" "${HIT_CONNECTIONS:-1}" <<'PY'
import http.client, sys, threading
n, connections = int(sys.argv[1]), int(sys.argv[2])
def client(count):
    c = http.client.HTTPConnection("127.0.0.1", 18380)
    for _ in range(count):
        c.request("POST", "/v4/openim_robot_http_svc/get_all_robots", body="{}")
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=client, args=(n // connections,)) for _ in range(connections)]
for t in threads: t.start()
for t in threads: t.join()
PY
  kill -TERM "$gateway"; wait "$gateway" || true
  kill "$sandbox"; wait "$sandbox" 2>/dev/null || true
  awk '/^summary:/ {print $2}' "$work/cg.out"
  if [ -n "${KEEP_PROFILES:-}" ]; then cp "$work/cg.out" "$KEEP_PROFILES/$(basename "$1")-$2.out"; fi
  rm -rf "$work"
}

for bin in "$@"; do
  low=$(count "$bin" 1000)
  high=$(count "$bin" 3000)
  echo "$bin: $(( (high - low) / 2000 )) instructions per cache hit, ${HIT_CONNECTIONS:-1} client(s)"
done
