#!/usr/bin/env bash
# Cache-hit throughput of tim-gateway against its anchors, measured as users see it, in one run:
#   - tim-gateway, default config (access log on) and with the access log off
#     (RUST_LOG=info,tim_gateway::access=warn);
#   - a bare hyper server answering the same bytes (examples/bare_hyper.rs): the limit;
#   - nginx proxy_cache in front of the sandbox, tuned (sendfile off, open_file_cache),
#     access log on (buffered, like the gateway's background writer) and off.
# Every server is pinned to CPU 0 and wrk to CPU 1; clients POST `{}` as SDKs do. Rounds
# alternate the servers (the order rotates every round, so none always runs first or last);
# the table gives medians, the spread (max − min) / median of each, and ratios to the bare
# server and to nginx with its log on, computed from the medians of the same run; the last
# lines give the same ratios round by round (median, lowest, highest), to show the noise.
#
# Usage: benches/load.sh [rounds, default 9] [seconds per run, default 10] [connections, default "64 256"]
# Needs root for apt-get (it installs wrk and nginx from Debian if they are missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-9}
DURATION=${2:-10}
CONNECTION_LEVELS=${3:-"64 256"}
SERVER_CPU=0
CLIENT_CPU=1

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null
fi
cargo build --release --quiet --bin tim-gateway --example bare_hyper
BIN=target/release/tim-gateway
BARE=target/release/examples/bare_hyper

WORK=$(mktemp -d)
# Logs live in memory (tmpfs) and are emptied before each run: written to disk, one server's
# log (a gateway hit's line is about 195 bytes, some 29 MB/s at 150,000 hits/s) would be
# written back while the next server runs, charging it for the previous one's log. Each server
# still formats and writes every line.
LOGS=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "work dir kept: $WORK (logs: $LOGS)" >&2; else rm -rf "$WORK" "$LOGS"; fi
}
trap cleanup EXIT

KEY=5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e   # the demo key
SANDBOX=127.0.0.1:29443
PATH_Q=/v4/openim_robot_http_svc/get_all_robots
# name → address, in the table's order.
NAMES=(bare gateway_log gateway_nolog nginx_log nginx_nolog)
declare -A ADDR=(
  [gateway_log]=127.0.0.1:28080 [gateway_nolog]=127.0.0.1:28084 [bare]=127.0.0.1:28081
  [nginx_log]=127.0.0.1:28082 [nginx_nolog]=127.0.0.1:28083
)
declare -A LABEL=(
  [bare]="bare hyper server, same bytes (the limit)"
  [gateway_log]="tim-gateway, default config (access log on)"
  [gateway_nolog]="tim-gateway, access log off"
  [nginx_log]="nginx proxy_cache, tuned, access log on"
  [nginx_nolog]="nginx proxy_cache, tuned, access log off"
)

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done; echo "no listener on $1" >&2; exit 1; }

# The upstream: only cache misses reach it.
"$BIN" sandbox --listen "$SANDBOX" --ca-out "$WORK/ca.pem" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$SANDBOX"

gateway() { # name addr admin_port [RUST_LOG]
  cat > "$WORK/$1.toml" <<TOML
[server]
listen = "$2"
admin_listen = "127.0.0.1:$3"
[upstream]
ca_file = "$WORK/ca.pem"
[apps.bench]
sdkappid = 1400000000
endpoint = "https://$SANDBOX"
[[cache.rules]]
command = "openim_robot_http_svc/get_all_robots"
ttl = "1h"
TOML
  if [ -n "${4:-}" ]; then export RUST_LOG=$4; else unset RUST_LOG; fi
  TIM_GATEWAY_SECRET_KEY=$KEY taskset -c $SERVER_CPU "$BIN" serve --config "$WORK/$1.toml" 2>>"$LOGS/$1.log" & PIDS+=($!)
  unset RUST_LOG
  wait_port "$2"
  curl -sf "http://$2$PATH_Q" -d '{}' > "$WORK/body.json"   # primes the cache
  curl -sf "http://$2$PATH_Q" -d '{}' -o /dev/null -D - | grep -qi '^x-cache: HIT'
}
gateway gateway_log "${ADDR[gateway_log]}" 28090
gateway gateway_nolog "${ADDR[gateway_nolog]}" 28094 "info,tim_gateway::access=warn"

taskset -c $SERVER_CPU "$BARE" "${ADDR[bare]}" "$WORK/body.json" & PIDS+=($!)
wait_port "${ADDR[bare]}"

# nginx signs with a UserSig minted once (valid 1 h) and caches by URI, like the gateway.
SIG=$(TIM_GATEWAY_SECRET_KEY=$KEY "$BIN" usersig --sdkappid 1400000000 --identifier administrator --expire 3600)
UPSTREAM_URL="https://$SANDBOX$PATH_Q?sdkappid=1400000000&identifier=administrator&usersig=$SIG&random=1&contenttype=json"
mkdir -p "$WORK/cache" "$WORK/tmp"
# One cached, tuned location; the two servers differ only in their access log.
CACHED_LOCATION="location = $PATH_Q {
      proxy_pass $UPSTREAM_URL;
      proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_method POST; proxy_set_body '{}'; proxy_set_header Content-Type application/json;
      proxy_ssl_verify off;
      proxy_cache tim; proxy_cache_methods GET HEAD POST; proxy_cache_key \$uri;
      proxy_cache_valid 200 1h; proxy_cache_lock on;
    }"
cat > "$WORK/nginx.conf" <<NGINX
user root;
worker_processes 1;
worker_cpu_affinity 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  proxy_cache_path $WORK/cache keys_zone=tim:10m;
  sendfile off;
  open_file_cache max=1000 inactive=1h;
  server {
    listen ${ADDR[nginx_log]};
    access_log $LOGS/nginx-access.log combined buffer=64k flush=1s;
    $CACHED_LOCATION
  }
  server {
    listen ${ADDR[nginx_nolog]};
    access_log off;
    $CACHED_LOCATION
  }
}
NGINX
taskset -c $SERVER_CPU nginx -c "$WORK/nginx.conf"
wait_port "${ADDR[nginx_log]}"
for name in nginx_log nginx_nolog; do
  curl -sf "http://${ADDR[$name]}$PATH_Q" -d '{}' -o /dev/null
  curl -sf "http://${ADDR[$name]}$PATH_Q" -d '{}' -o "$WORK/nginx-body.json"
done
cmp -s <(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["Robot_Account"])' "$WORK/body.json") \
       <(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["Robot_Account"])' "$WORK/nginx-body.json") \
  || { echo "nginx does not serve the same answer" >&2; exit 1; }

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{}"
LUA
run() { # addr connections seconds → "rps p99_us non2xx"
  for log in "$LOGS"/*.log; do : > "$log"; done   # appended to (O_APPEND), so emptying is safe
  taskset -c $CLIENT_CPU wrk -t1 -c"$2" -d"${3}s" --latency -s "$WORK/post.lua" "http://$1$PATH_Q" > "$WORK/last.wrk"
  python3 - "$WORK/last.wrk" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
p99 = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{rps:.0f} {p99:.0f} {errors.group(1) if errors else 0}")
PY
}

for name in "${NAMES[@]}"; do run "${ADDR[$name]}" 64 2 >/dev/null; done   # warm-up
RESULTS="$WORK/results.txt"
for connections in $CONNECTION_LEVELS; do
  for round in $(seq "$ROUNDS"); do
    # Rotate the order by one each round.
    order=("${NAMES[@]:$(( (round - 1) % ${#NAMES[@]} ))}" "${NAMES[@]:0:$(( (round - 1) % ${#NAMES[@]} ))}")
    for name in "${order[@]}"; do
      read -r rps p99 errors < <(run "${ADDR[$name]}" "$connections" "$DURATION")
      echo "$connections $round $name $rps $p99 $errors" | tee -a "$RESULTS" >&2
    done
  done
done

echo
echo "POST {} cache hit of $PATH_Q; wrk -t1, ${DURATION}s per run, $ROUNDS alternating rounds; servers on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU"
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(uname -r); $(date -u +%F)"
python3 - "$RESULTS" "$(declare -p LABEL)" "${NAMES[*]}" <<'PY'
import re, statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
labels = dict(re.findall(r'\[(\w+)\]="([^"]*)"', sys.argv[2]))
names = sys.argv[3].split()
levels = sorted({int(r[0]) for r in rows})
def runs(c, name, col):
    return [float(r[col]) for r in rows if int(r[0]) == c and r[2] == name]
med = {(c, n): statistics.median(runs(c, n, 3)) for c in levels for n in names}
head = "| server (one core) |" + "".join(f" rps c{c} | × bare | × nginx log on | spread | p99 µs |" for c in levels)
print(head)
print("|---|" + "---:|---:|---:|---:|---:|" * len(levels))
for n in names:
    cells = []
    for c in levels:
        xs = runs(c, n, 3)
        spread = (max(xs) - min(xs)) / statistics.median(xs)
        cells.append(f" {med[(c, n)]:,.0f} | {med[(c, n)] / med[(c, 'bare')]:.2f} | "
                     f"{med[(c, n)] / med[(c, 'nginx_log')]:.2f} | {spread:.0%} | "
                     f"{statistics.median(runs(c, n, 4)):,.0f} |")
    print(f"| {labels[n]} |" + "".join(cells))
errors = sum(int(r[5]) for r in rows)
print(f"\nnon-2xx answers in all runs: {errors}")
for c in levels:
    g, b, nl = med[(c, 'gateway_log')], med[(c, 'bare')], med[(c, 'nginx_log')]
    off = med[(c, 'gateway_nolog')]
    print(f"c{c}: gateway (log on) / bare = {g / b:.3f} (target >= 0.85); / nginx log on = {g / nl:.3f} "
          f"(target >= 1.3); access log cost = {1 - g / off:.1%} of log-off throughput (target <= 10%)")
# The same ratios taken within each round (servers of one round ran minutes apart at most, so
# the VM's drift between rounds cancels): how far one round's ratio can stray from the medians'.
for c in levels:
    by_round = {}
    for r in rows:
        if int(r[0]) == c:
            by_round.setdefault(r[1], {})[r[2]] = float(r[3])
    def paired(other):
        xs = sorted(v['gateway_log'] / v[other] for v in by_round.values())
        return f"median {statistics.median(xs):.3f}, min {xs[0]:.3f}, max {xs[-1]:.3f}"
    print(f"c{c} per round: gateway (log on) / bare {paired('bare')}; / nginx log on {paired('nginx_log')}")
PY
