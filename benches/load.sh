#!/usr/bin/env bash
# Cache-hit throughput and p99 of tim-gateway against two anchors, side by side in one run:
#   1. a bare hyper server answering the same bytes (examples/bare_hyper.rs),
#   2. nginx proxy_cache in front of the sandbox (the same upstream the gateway uses),
#      stock and tuned (sendfile off, open_file_cache).
# Each server is pinned to core 0 and wrk to core 1 (taskset), as in PRODUCT.md's notes.
# Usage: [GATEWAY_LOG=info] benches/load.sh [seconds per run, default 10] [connections, default 64]
# GATEWAY_LOG=info turns on the gateway's access log and nginx's (default: both off).
# Needs root for apt-get (it installs wrk and nginx from Debian if they are missing).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNECTIONS=${2:-64}
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
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

KEY=5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e   # the demo key
SANDBOX=127.0.0.1:19443
GATEWAY=127.0.0.1:18080
BARE_ADDR=127.0.0.1:18081
NGINX_STOCK=127.0.0.1:18082
NGINX_TUNED=127.0.0.1:18083
PATH_Q=/v4/openim_robot_http_svc/get_all_robots

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done; echo "no listener on $1" >&2; exit 1; }

# The upstream: the sandbox on a core of its own is not needed, only cache misses reach it.
"$BIN" sandbox --listen "$SANDBOX" --ca-out "$WORK/ca.pem" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$SANDBOX"

cat > "$WORK/gateway.toml" <<TOML
[server]
listen = "$GATEWAY"
admin_listen = "127.0.0.1:18090"
[upstream]
ca_file = "$WORK/ca.pem"
[apps.bench]
sdkappid = 1400000000
endpoint = "https://$SANDBOX"
[[cache.rules]]
command = "openim_robot_http_svc/get_all_robots"
ttl = "1h"
TOML
RUST_LOG=${GATEWAY_LOG:-warn} TIM_GATEWAY_SECRET_KEY=$KEY taskset -c $SERVER_CPU "$BIN" serve --config "$WORK/gateway.toml" 2>"$WORK/gateway.log" & PIDS+=($!)
wait_port "$GATEWAY"
curl -sf "http://$GATEWAY$PATH_Q" -d '{}' > "$WORK/body.json"   # primes the cache
curl -sf "http://$GATEWAY$PATH_Q" -o /dev/null -D - | grep -qi '^x-cache: HIT'

taskset -c $SERVER_CPU "$BARE" "$BARE_ADDR" "$WORK/body.json" & PIDS+=($!)
wait_port "$BARE_ADDR"

# nginx signs with a UserSig minted once (valid 1 h) and caches by URI, like the gateway.
SIG=$(TIM_GATEWAY_SECRET_KEY=$KEY "$BIN" usersig --sdkappid 1400000000 --identifier administrator --expire 3600)
UPSTREAM_URL="https://$SANDBOX$PATH_Q?sdkappid=1400000000&identifier=administrator&usersig=$SIG&random=1&contenttype=json"
mkdir -p "$WORK/cache" "$WORK/tmp"
# Like for like: with the gateway's access log on (GATEWAY_LOG=info), nginx logs every request
# too (buffered, as the gateway's background writer is).
if [ "${GATEWAY_LOG:-warn}" = info ]; then
  NGINX_ACCESS_LOG="access_log $WORK/nginx-access.log combined buffer=64k flush=1s;"
else
  NGINX_ACCESS_LOG="access_log off;"
fi
# The same cached location in both servers; they differ only in the tuning directives.
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
  $NGINX_ACCESS_LOG
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  proxy_cache_path $WORK/cache keys_zone=tim:10m;
  server {
    listen $NGINX_STOCK;
    $CACHED_LOCATION
  }
  server {
    listen $NGINX_TUNED;
    sendfile off;
    open_file_cache max=1000 inactive=1h;
    $CACHED_LOCATION
  }
}
NGINX
taskset -c $SERVER_CPU nginx -c "$WORK/nginx.conf"
wait_port "$NGINX_STOCK"
for addr in $NGINX_STOCK $NGINX_TUNED; do
  curl -sf "http://$addr$PATH_Q" -o /dev/null
  curl -sf "http://$addr$PATH_Q" -o "$WORK/nginx-body.json"
done
cmp -s <(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["Robot_Account"])' "$WORK/body.json") \
       <(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["Robot_Account"])' "$WORK/nginx-body.json") \
  || { echo "nginx does not serve the same answer" >&2; exit 1; }

run() { # name addr → "rps p99_us"
  taskset -c $CLIENT_CPU wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://$2$PATH_Q" > "$WORK/$1.wrk"
  python3 - "$WORK/$1.wrk" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
p99 = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{rps:.0f} {p99:.0f} {errors.group(1) if errors else 0}")
PY
}

# Warm up each server once, then measure.
for addr in $GATEWAY $BARE_ADDR $NGINX_STOCK $NGINX_TUNED; do
  taskset -c $CLIENT_CPU wrk -t1 -c"$CONNECTIONS" -d2s "http://$addr$PATH_Q" >/dev/null
done
read -r G_RPS G_P99 G_ERR < <(run gateway "$GATEWAY")
read -r B_RPS B_P99 B_ERR < <(run bare "$BARE_ADDR")
read -r NS_RPS NS_P99 NS_ERR < <(run nginx_stock "$NGINX_STOCK")
read -r NT_RPS NT_P99 NT_ERR < <(run nginx_tuned "$NGINX_TUNED")

echo
echo "cache-hit GET $PATH_Q, wrk -t1 -c$CONNECTIONS -d${DURATION}s, server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU, access logs ${GATEWAY_LOG:-warn}"
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(uname -r)"
printf '%-26s %12s %10s %8s\n' server "requests/s" "p99 (µs)" errors
printf '%-26s %12s %10s %8s\n' "tim-gateway (cache hit)" "$G_RPS" "$G_P99" "$G_ERR"
printf '%-26s %12s %10s %8s\n' "bare hyper (same bytes)" "$B_RPS" "$B_P99" "$B_ERR"
printf '%-26s %12s %10s %8s\n' "nginx proxy_cache (stock)" "$NS_RPS" "$NS_P99" "$NS_ERR"
printf '%-26s %12s %10s %8s\n' "nginx proxy_cache (tuned)" "$NT_RPS" "$NT_P99" "$NT_ERR"
python3 - "$G_RPS" "$B_RPS" "$NS_RPS" "$NT_RPS" <<'PY'
import sys
g, b, ns, nt = map(float, sys.argv[1:])
print(f"gateway / bare hyper  = {g / b:.2f}  (target >= 0.80)")
print(f"gateway / nginx stock = {g / ns:.2f}  (target >= 1.00)")
print(f"gateway / nginx tuned = {g / nt:.2f}  (target >= 1.00)")
PY
