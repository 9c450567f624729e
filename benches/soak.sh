#!/usr/bin/env bash
# Soak test: `tim-gateway serve` (release build) in front of two `tim-gateway sandbox`es (one
# per app), all real processes on 127.0.0.1 with ports picked by the kernel, under mixed traffic
# from examples/soak.rs for a fixed time. See that file's header for the classes and their
# rates: cache hits, misses over a sliding key window, writes that invalidate, bad bodies, slow
# and vanishing raw clients, and bursts above one command's quota.
#
# The gateway's cache is capped at 4 MiB (cache.max_bytes) and reaches the cap within the first
# ~15 s (and again ~10 s after the once-a-minute write that empties it), so a flat RSS after
# warm-up means memory is bounded, not merely unused yet.
#
# Every 10 s, when the driver prints its counts, this script samples the gateway's RSS
# (VmRSS in /proc/PID/status) and its /metrics (tim_gateway_cache_bytes,
# tim_gateway_cache_entries) and prints a row: elapsed, RSS, cache usage, requests sent and
# their outcomes summed over every class. At the end it prints each class's totals and checks:
#   1. RSS flat after warm-up. Warm-up is the first 20% of the run, at least 30 s. The baseline
#      is the first sample taken at or after the end of warm-up; every later sample (the final
#      one, taken after the traffic stopped, included) must be at most 10% above the baseline.
#      Falling below it is not a failure.
#   2. No panics: no line of the gateway's log contains "panicked".
#   3. No gateway-made 5xx: no answer with an HTTP 5xx status and a JSON ErrorCode in the
#      gateway's 19xxxxx range (Tencent's own errors are HTTP 200), as the driver saw them; and
#      no 5xx in the gateway's own tim_gateway_requests_total, which also counts answers to
#      clients that vanished before reading them.
#   4. Clean shutdown: after the run, SIGTERM makes the gateway exit 0 within 15 s.
# It exits 1 if any check fails.
#
# Usage: benches/soak.sh [seconds, default 600, at least 40]
# KEEP_WORK=1 keeps the work directory (configs, logs, samples). Needs curl and jq.
# SOAK_PROFILE=debug soaks the debug build instead of the release one (CI: its earlier steps
# built it, and a cold release build would take minutes on 2 cores); memory behaviour is the
# same code, the CPU cost per request is higher.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-600}
if ! [[ $DURATION =~ ^[0-9]+$ ]] || ((DURATION < 40)); then
  echo "usage: benches/soak.sh [seconds, at least 40; default 600]" >&2
  exit 2
fi
WARMUP=$((DURATION / 5 > 30 ? DURATION / 5 : 30))
RSS_TOLERANCE_PERCENT=10
CACHE_MAX_BYTES=$((4 * 1024 * 1024))

for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "soak.sh needs $tool" >&2; exit 2; }
done
# The gateway under test is the release build. The driver is a debug build: a client does not
# need optimising at ~700 requests/s, CI's earlier steps have already built it, and a release
# build of an example would also build the dev-dependencies (criterion) in release.
PROFILE=${SOAK_PROFILE:-release}
case $PROFILE in
  release) cargo build --release --quiet --bin tim-gateway ;;
  debug) cargo build --quiet --bin tim-gateway ;;
  *) echo "SOAK_PROFILE is release or debug" >&2; exit 2 ;;
esac
cargo build --quiet --example soak
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE/tim-gateway
DRIVER=${CARGO_TARGET_DIR:-target}/debug/examples/soak

WORK=$(mktemp -d)
PIDS=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

KEY=5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e   # the demo key
export TIM_GATEWAY_SECRET_KEY=$KEY
printf %s d249bf6537b8c7980bc72d154a5c09e93ce107a0e4092a90f408fc152fce7f94 >"$WORK/writer.key"   # the writer app's own key

# wait_for FILE PATTERN: the first line of FILE matching PATTERN, within 10 s.
wait_for() {
  for _ in $(seq 100); do
    if grep -m1 "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1:" >&2
  cat "$1" >&2
  exit 1
}

# The upstreams: one sandbox per app (the gateway refuses two apps with one SDKAppID), and one
# CA file that trusts both. They keep Tencent's quota of 200 calls/s per command; the gateway's
# budget is 5% below it, so they should never answer 60007.
for app in soak writer; do
  if [ "$app" = soak ]; then args=(--sdkappid 1400000000); else
    args=(--sdkappid 1400000001 --key-file "$WORK/writer.key")
  fi
  "$BIN" sandbox --listen 127.0.0.1:0 "${args[@]}" --ca-out "$WORK/ca-$app.pem" \
    >"$WORK/sandbox-$app.out" 2>"$WORK/sandbox-$app.log" & PIDS+=($!)
done
SANDBOX=$(wait_for "$WORK/sandbox-soak.out" 'sandbox listening on' | sed 's/.*listening on //')
SANDBOX_WRITER=$(wait_for "$WORK/sandbox-writer.out" 'sandbox listening on' | sed 's/.*listening on //')
# A sandbox prints its address only after it has written its CA file.
cat "$WORK/ca-soak.pem" "$WORK/ca-writer.pem" >"$WORK/ca.pem"

# get_all_robots: fresh 30 s then stale 30 s (so the hit key is refreshed in the background),
# with the catalogue's quota of 200/s (a budget of 190/s, above the ~155/s of misses);
# account_check: 20/s, far below the throttle class's bursts of 50, with a 500 ms wait so the
# excess gets 429 quickly. The deadline of 6 s is what the slow class's over-long trickle runs
# into (408).
cat >"$WORK/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
default_app = "soak"
shutdown_grace = "10s"

[upstream]
ca_file = "$WORK/ca.pem"
request_timeout = "5s"
deadline = "6s"

[cache]
max_bytes = $CACHE_MAX_BYTES

[[cache.rules]]
command = "openim_robot_http_svc/get_all_robots"
ttl = "30s"
stale_while_revalidate = "30s"
stale_if_error = "1m"
invalidated_by = ["openim_robot_http_svc/create_robot", "openim_robot_http_svc/delete_robot"]

[throttle]
max_wait = "500ms"

[[throttle.quotas]]
command = "im_open_login_svc/account_check"
per_second = 20

[apps.soak]
sdkappid = 1400000000
endpoint = "$SANDBOX"

# Most writes go to this app, so that their invalidations leave the soak app's cache alone
# (see examples/soak.rs).
[apps.writer]
sdkappid = 1400000001
endpoint = "$SANDBOX_WRITER"
secret_key_file = "$WORK/writer.key"
TOML
# Warnings only (the access log would be ~600 lines/s), plus the lines naming the bound ports.
RUST_LOG=warn,tim_gateway::gateway=info "$BIN" serve --config "$WORK/gateway.toml" \
  2>"$WORK/gateway.log" & GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
GATEWAY=$(wait_for "$WORK/gateway.log" 'client listener bound' | sed 's/.*addr=\([0-9.:]*\).*/\1/')
ADMIN=$(wait_for "$WORK/gateway.log" 'admin listener bound' | sed 's/.*addr=\([0-9.:]*\).*/\1/')

echo "soak: ${DURATION}s of mixed traffic, warm-up ${WARMUP}s; gateway $GATEWAY (pid $GATEWAY_PID), admin $ADMIN, sandboxes $SANDBOX $SANDBOX_WRITER"
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(uname -r)"

# sample LINE: appends a row to samples.tsv (elapsed, RSS KiB, cache bytes, cache entries,
# the driver's totals, 5xx in the gateway's metrics) and prints it.
COLUMNS_JQ='[.elapsed_s, .total.sent, .total["2xx"], .total["4xx"], .total["429"], .total["5xx_gateway"], .total["5xx_other"], .total.transport, .total.unexpected] | @tsv'
row() { printf '%9s %8s %12s %8s %9s %9s %7s %7s %7s %9s %9s %10s\n' "$@"; }
row elapsed_s RSS_MiB cache_bytes entries sent 2xx 4xx 429 5xx_gw 5xx_other transport unexpected
sample() {
  local rss_kib=0 metrics cache_bytes cache_entries metric_5xx elapsed sent ok c4 c429 gw5 other5 transport unexpected
  if [ -r "/proc/$GATEWAY_PID/status" ]; then
    rss_kib=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$GATEWAY_PID/status")
  fi
  metrics=$(curl -sf --max-time 5 "http://$ADMIN/metrics" || true)
  printf '%s\n' "$metrics" >"$WORK/metrics-last.txt"   # for KEEP_WORK=1
  cache_bytes=$(awk '$1 == "tim_gateway_cache_bytes" { print $2 }' <<<"$metrics")
  cache_entries=$(awk '$1 == "tim_gateway_cache_entries" { print $2 }' <<<"$metrics")
  metric_5xx=$(awk '/^tim_gateway_requests_total\{/ && /status_class="5xx"/ { n += $2 } END { print n + 0 }' <<<"$metrics")
  IFS=$'\t' read -r elapsed sent ok c4 c429 gw5 other5 transport unexpected < <(jq -r "$COLUMNS_JQ" <<<"$1")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$elapsed" "$rss_kib" "${cache_bytes:-?}" \
    "${cache_entries:-?}" "$sent" "$ok" "$c4" "$c429" "$gw5" "$other5" "$transport" "$unexpected" \
    "$metric_5xx" >>"$WORK/samples.tsv"
  row "$elapsed" "$(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')" \
    "${cache_bytes:-?}" "${cache_entries:-?}" "$sent" "$ok" "$c4" "$c429" "$gw5" "$other5" "$transport" "$unexpected"
}

# The driver prints a line every 10 s and a last one marked "final"; each line is sampled as it
# arrives, so the RSS and the counts in a row are from the same moment.
exec 3< <("$DRIVER" "$GATEWAY" "$DURATION" 2>"$WORK/driver.log")
DRIVER_PID=$!
PIDS+=("$DRIVER_PID")
FINAL=
while IFS= read -r line <&3; do
  sample "$line"
  if [ "$(jq -r .final <<<"$line")" = true ]; then FINAL=$line; fi
done
exec 3<&-
DRIVER_STATUS=0
wait "$DRIVER_PID" || DRIVER_STATUS=$?
if [ -s "$WORK/driver.log" ]; then sed 's/^/driver: /' "$WORK/driver.log"; fi
if [ "$DRIVER_STATUS" -ne 0 ] || [ -z "$FINAL" ]; then
  echo "FAIL: the traffic driver exited with status $DRIVER_STATUS before its final report" >&2
  exit 1
fi

echo
echo "per class, at the end:"
printf '%-9s %9s %9s %7s %7s %7s %9s %9s %10s\n' class sent 2xx 4xx 429 5xx_gw 5xx_other transport unexpected
jq -r '.classes | to_entries[] | [.key, .value.sent, .value["2xx"], .value["4xx"], .value["429"], .value["5xx_gateway"], .value["5xx_other"], .value.transport, .value.unexpected] | @tsv' <<<"$FINAL" \
  | while IFS=$'\t' read -r class sent ok c4 c429 gw5 other5 transport unexpected; do
      printf '%-9s %9s %9s %7s %7s %7s %9s %9s %10s\n' "$class" "$sent" "$ok" "$c4" "$c429" "$gw5" "$other5" "$transport" "$unexpected"
    done

# Shut the gateway down before reading its log, so the log is complete.
kill -TERM "$GATEWAY_PID"
SHUTDOWN_STATUS=timeout
for _ in $(seq 150); do
  if ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
    SHUTDOWN_STATUS=0
    wait "$GATEWAY_PID" || SHUTDOWN_STATUS=$?
    break
  fi
  sleep 0.1
done

echo
FAILED=0
verdict() { # verdict PASS|FAIL TEXT
  echo "$1: $2"
  if [ "$1" != PASS ]; then FAILED=1; fi
}

read -r BASELINE_AT BASELINE_KIB MAX_KIB MAX_AT LATER < <(awk -F'\t' -v warmup="$WARMUP" '
  $1 >= warmup && base == "" { base = $2; base_at = $1; next }
  base != "" { later++; if ($2 > max) { max = $2; max_at = $1 } }
  END { print base_at + 0, base + 0, max + 0, max_at + 0, later + 0 }' "$WORK/samples.tsv")
if ((LATER == 0)); then
  verdict FAIL "RSS flat after warm-up: fewer than two samples at or after ${WARMUP}s"
elif awk -F'\t' '$2 == 0 { found = 1 } END { exit !found }' "$WORK/samples.tsv"; then
  verdict FAIL "RSS flat after warm-up: the gateway was gone for some samples (RSS 0)"
else
  RSS_LINE=$(awk -v b="$BASELINE_KIB" -v m="$MAX_KIB" -v at="$BASELINE_AT" -v mat="$MAX_AT" -v n="$LATER" -v tol="$RSS_TOLERANCE_PERCENT" 'BEGIN {
    growth = (m - b) * 100 / b
    printf "%s RSS flat after warm-up: baseline %.1f MiB at %ss; highest of the %d later samples %.1f MiB at %ss (%+.1f%%, limit +%d%%)",
      (growth <= tol ? "PASS" : "FAIL"), b / 1024, at, n, m / 1024, mat, growth, tol }')
  verdict "${RSS_LINE%% *}" "${RSS_LINE#* }"
fi

PANICS=$(grep -c panicked "$WORK/gateway.log" || true)
if ((PANICS == 0)); then verdict PASS "no panics in the gateway's log"; else
  verdict FAIL "$PANICS line(s) with \"panicked\" in the gateway's log:"
  grep -m5 panicked "$WORK/gateway.log" | sed 's/^/    /'
fi

DRIVER_5XX=$(jq '[.classes[]["5xx_gateway"]] | add' <<<"$FINAL")
METRIC_5XX=$(tail -n1 "$WORK/samples.tsv" | cut -f13)
if ((DRIVER_5XX == 0 && METRIC_5XX == 0)); then
  verdict PASS "no gateway-made 5xx (driver saw 0; tim_gateway_requests_total 5xx: 0)"
else
  verdict FAIL "gateway-made 5xx: the driver saw $DRIVER_5XX; tim_gateway_requests_total counts $METRIC_5XX with status 5xx"
fi

if [ "$SHUTDOWN_STATUS" = 0 ]; then verdict PASS "the gateway exited 0 on SIGTERM"; else
  verdict FAIL "the gateway did not exit cleanly on SIGTERM within 15 s (status: $SHUTDOWN_STATUS)"
fi

# For the reader, not checked: how full the cache got, and anything else the gateway logged.
PEAK_CACHE=$(cut -f3 "$WORK/samples.tsv" | sort -n | tail -n1)
echo "info: cache peak ${PEAK_CACHE} bytes of max_bytes ${CACHE_MAX_BYTES}; unexpected answers: $(jq .total.unexpected <<<"$FINAL")"
WARNINGS=$(grep -cv 'listener bound\|app ready' "$WORK/gateway.log" || true)
if ((WARNINGS > 0)); then
  echo "info: $WARNINGS other line(s) in the gateway's log, first ones:"
  grep -v 'listener bound\|app ready' "$WORK/gateway.log" | head -n5 | sed 's/^/    /'
fi
SANDBOX_PANICS=$(cat "$WORK"/sandbox-*.log | grep -c panicked || true)
if ((SANDBOX_PANICS > 0)); then echo "info: the sandbox's log has $SANDBOX_PANICS line(s) with \"panicked\""; fi
exit "$FAILED"
