#!/usr/bin/env bash
# End-to-end check of tim-gateway's Prometheus side, on 127.0.0.1 only:
#
#   1. promtool checks the alert rules and runs their unit tests; the Grafana dashboard is JSON;
#   2. starts `tim-gateway demo` (gateway + Tencent look-alike) and waits for /readyz;
#   3. sends a few requests (cache miss and hit, a write, a Tencent error, bad requests);
#   4. fetches /metrics, lints it with `promtool check metrics`, and checks that every
#      tim_gateway_* name used by the dashboard and the rules is in the scrape;
#   5. starts a real Prometheus server scraping the gateway every second with the rules loaded,
#      and waits until tim_gateway_requests_total is queryable and up{job="tim-gateway"} is 1;
#   6. checks that every rule evaluates without error and that every dashboard query runs.
#
# Usage: scripts/prometheus-e2e.sh [GATEWAY_BINARY]      (default: target/debug/tim-gateway)
#
# It builds nothing: run `cargo build` first. It needs curl, jq, promtool and prometheus
# (Debian: apt-get install -y prometheus jq). Set PROMETHEUS_E2E_INSTALL=1 to let it install
# missing ones with apt-get, PROMETHEUS_E2E_WAIT=N to wait N seconds (default 30) for the
# scrape, PROMETHEUS_E2E_KEEP=1 to keep its temp dir (logs, scrape, TSDB) for inspection.
# Exits 0 when everything holds, non-zero with a message saying what did not.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-$ROOT/target/debug/tim-gateway}

LISTEN=127.0.0.1:18180
ADMIN=127.0.0.1:18190
SANDBOX=127.0.0.1:18143
PROM=127.0.0.1:19091
WAIT=${PROMETHEUS_E2E_WAIT:-30}

RULES=$ROOT/deploy/prometheus/tim-gateway-rules.yaml
RULE_TESTS=$ROOT/deploy/prometheus/tim-gateway-rules.test.yaml
PROM_CONFIG=$ROOT/deploy/prometheus/prometheus-e2e.yml
DASHBOARD=$ROOT/deploy/grafana/tim-gateway.json

# Families the traffic below must create. Others (coalescing, refreshes, evictions, throttle
# rejections, ...) appear only when that happens, so their absence is reported, not fatal.
REQUIRED_FAMILIES=(
  tim_gateway_requests_total
  tim_gateway_request_duration_seconds
  tim_gateway_requests_in_flight
  tim_gateway_upstream_requests_total
  tim_gateway_upstream_request_duration_seconds
  tim_gateway_tencent_errors_total
  tim_gateway_cache_lookups_total
  tim_gateway_cache_entries
  tim_gateway_cache_bytes
  tim_gateway_throttle_permits_total
  tim_gateway_throttle_wait_seconds
  tim_gateway_throttle_waiters
  tim_gateway_throttle_paused
  tim_gateway_throttle_budget_per_second
  tim_gateway_upstream_quota_per_second
  tim_gateway_usersig_mints_total
  tim_gateway_usersig_expiry_timestamp_seconds
  tim_gateway_build_info
  process_cpu_seconds_total
  process_resident_memory_bytes
  process_open_fds
  process_max_fds
  process_start_time_seconds
)

log() { printf 'prometheus-e2e: %s\n' "$*"; }
fail() {
  printf 'prometheus-e2e: FAIL: %s\n' "$*" >&2
  exit 1
}

TMP=
GW_PID=
PROM_PID=

stop() { # pid: SIGTERM, up to 10 s to exit, then SIGKILL
  local pid=$1 i
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT
  stop "$PROM_PID"
  stop "$GW_PID"
  if [[ -n $TMP && -d $TMP ]]; then
    if ((rc != 0)); then
      for f in gateway.log prometheus.log; do
        if [[ -s $TMP/$f ]]; then
          printf -- '--- last lines of %s ---\n' "$f" >&2
          tail -n 25 "$TMP/$f" >&2
        fi
      done
    fi
    if [[ ${PROMETHEUS_E2E_KEEP:-0} == 1 ]]; then
      log "kept $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- preflight
missing=()
for tool in curl jq promtool prometheus; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  if [[ ${PROMETHEUS_E2E_INSTALL:-0} == 1 ]]; then
    log "installing prometheus and jq with apt-get (missing: ${missing[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus jq curl >/dev/null
  else
    fail "missing ${missing[*]}: apt-get install -y prometheus jq curl (or PROMETHEUS_E2E_INSTALL=1)"
  fi
fi

[[ $BIN == /* ]] || BIN=$PWD/$BIN
[[ -x $BIN ]] || fail "no gateway binary at $BIN: run cargo build (or pass its path as \$1)"

port_in_use() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
for addr in "$LISTEN" "$ADMIN" "$SANDBOX" "$PROM"; do
  if port_in_use "$addr"; then
    fail "something already listens on $addr; stop it first"
  fi
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/prometheus-e2e.XXXXXX")

# ---------------------------------------------------------------- 1. static checks
log "promtool check rules $RULES"
promtool check rules "$RULES" || fail "promtool check rules failed on $RULES"
log "promtool test rules $RULE_TESTS"
promtool test rules "$RULE_TESTS" || fail "promtool test rules failed on $RULE_TESTS"
jq -e '.uid == "tim-gateway" and (.panels | length > 0)' "$DASHBOARD" >/dev/null ||
  fail "$DASHBOARD is not JSON or not the tim-gateway dashboard"

mkdir -p "$TMP/prom"
cp "$RULES" "$TMP/prom/tim-gateway-rules.yaml"
sed "s/127\.0\.0\.1:18190/$ADMIN/" "$PROM_CONFIG" >"$TMP/prom/prometheus.yml"
promtool check config "$TMP/prom/prometheus.yml" >/dev/null ||
  fail "promtool check config failed on $PROM_CONFIG"

# ---------------------------------------------------------------- 2. the gateway
log "starting $BIN demo (client $LISTEN, admin $ADMIN, sandbox $SANDBOX)"
"$BIN" demo --listen "$LISTEN" --admin-listen "$ADMIN" --sandbox-listen "$SANDBOX" \
  </dev/null >"$TMP/gateway.log" 2>&1 &
GW_PID=$!

deadline=$((SECONDS + WAIT))
until curl -fsS --max-time 1 -o /dev/null "http://$ADMIN/readyz" 2>/dev/null; do
  kill -0 "$GW_PID" 2>/dev/null || fail "the gateway exited before it was ready (log below)"
  ((SECONDS < deadline)) || fail "the gateway was not ready on http://$ADMIN/readyz within ${WAIT}s"
  sleep 0.2
done
log "gateway ready"

# ---------------------------------------------------------------- 3. traffic
# request WANT_STATUS LABEL CURL_ARGS...: one client request, its status checked.
request() {
  local want=$1 label=$2 code cache error_code
  shift 2
  code=$(curl -sS --max-time 10 -o "$TMP/body" -D "$TMP/headers" -w '%{http_code}' "$@") ||
    fail "$label: curl failed"
  cache=$(tr -d '\r' <"$TMP/headers" | awk 'tolower($1) == "x-cache:" { print $2 }')
  error_code=$(jq -r '.ErrorCode // "-"' "$TMP/body" 2>/dev/null || echo '?')
  log "  $code X-Cache=${cache:--} ErrorCode=$error_code  $label"
  [[ $code == "$want" ]] || fail "$label: HTTP $code, expected $want: $(head -c 300 "$TMP/body")"
}
C=http://$LISTEN/v4/openim_robot_http_svc
log "sending requests"
request 200 "get_all_robots (cold)" "$C/get_all_robots" -d '{}'
request 200 "get_all_robots (again)" "$C/get_all_robots" -d '{}'
request 200 "GET get_all_robots" "$C/get_all_robots"
request 200 "create_robot" "$C/create_robot" -d '{"UserID":"@RBT#e2e_bot","Nick":"e2e"}'
request 200 "get_all_robots (after the write)" "$C/get_all_robots" -d '{}'
request 200 "create_robot with a bad UserID (a Tencent error)" "$C/create_robot" -d '{"UserID":"e2e_bot"}'
request 400 "create_robot with a body that is not JSON" "$C/create_robot" -d 'not json'
request 404 "a command outside the catalogue" "http://$LISTEN/v4/no_such_svc/no_such_command" -d '{}'

# ---------------------------------------------------------------- 4. /metrics
code=$(curl -sS --max-time 5 -o "$TMP/metrics.txt" -D "$TMP/metrics.headers" -w '%{http_code}' \
  "http://$ADMIN/metrics") || fail "GET http://$ADMIN/metrics failed"
[[ $code == 200 ]] ||
  fail "GET http://$ADMIN/metrics answered HTTP $code, not 200: $(head -c 200 "$TMP/metrics.txt")"
log "GET /metrics: $(wc -l <"$TMP/metrics.txt") lines, $(tr -d '\r' <"$TMP/metrics.headers" | awk 'tolower($1) == "content-type:" { $1 = ""; print }')"

if ! promtool check metrics <"$TMP/metrics.txt" >"$TMP/check-metrics.out" 2>&1; then
  cat "$TMP/check-metrics.out" >&2
  fail "promtool check metrics found problems in the gateway's /metrics (listed above)"
fi
log "promtool check metrics: ok"

has_family() { grep -q "^# TYPE $1 " "$TMP/metrics.txt"; }
has_sample() { grep -Eq "^$1(\{| )" "$TMP/metrics.txt"; }
absent=()
for family in "${REQUIRED_FAMILIES[@]}"; do
  has_family "$family" || absent+=("$family")
done
((${#absent[@]} == 0)) || fail "not in /metrics after the requests above: ${absent[*]}"
log "all ${#REQUIRED_FAMILIES[@]} families that this traffic must create are present"

# Every tim_gateway_* name the dashboard's queries and the rules' expressions use.
referenced=$(
  {
    jq -r '.. | objects | .expr? // empty' "$DASHBOARD"
    jq -r '.templating.list[] | .query | if type == "object" then .query else . end // empty' "$DASHBOARD"
    awk '/^ *expr:/ { on = 1 } /^ *(for|labels|annotations):/ { on = 0 } on' "$RULES"
  } | grep -o 'tim_gateway_[a-z0-9_]*' | sort -u
)
not_scraped=()
for name in $referenced; do
  has_sample "$name" || not_scraped+=("$name")
done
if ((${#not_scraped[@]})); then
  # A labelled family appears only once used, so this light traffic cannot tell a family not
  # used yet from a misspelt name; it fails only on a wrong suffix of an exported family. The
  # strict check (every name exported, after traffic that uses every family) is
  # tests/observability.rs::dashboard_and_alerts_use_only_exported_metrics.
  for name in "${not_scraped[@]}"; do
    base=${name%_bucket}
    base=${base%_sum}
    base=${base%_count}
    if has_family "$name" || has_family "$base"; then
      fail "the dashboard or rules use $name, which /metrics does not export (wrong suffix?)"
    fi
  done
  log "referenced but not in this scrape (not used by this traffic; checked strictly by cargo test): ${not_scraped[*]}"
fi
log "$(wc -w <<<"$referenced") tim_gateway_* names used by the dashboard and the rules checked against the scrape"

# ---------------------------------------------------------------- 5. Prometheus
log "starting prometheus on $PROM, scraping $ADMIN every second as job tim-gateway"
prometheus \
  --config.file="$TMP/prom/prometheus.yml" \
  --storage.tsdb.path="$TMP/prom/data" \
  --web.listen-address="$PROM" \
  --log.level=warn \
  </dev/null >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!

query() { # PROMQL -> the API's JSON answer
  curl -fsS --max-time 5 --get "http://$PROM/api/v1/query" --data-urlencode "query=$1"
}

deadline=$((SECONDS + WAIT))
answered=no
series=0
up=none
while :; do
  kill -0 "$PROM_PID" 2>/dev/null || fail "prometheus exited (log below)"
  if answer=$(query 'tim_gateway_requests_total' 2>/dev/null); then
    answered=yes
    series=$(jq '.data.result | length' <<<"$answer")
    up=$(query 'up{job="tim-gateway"}' | jq -r '.data.result[0].value[1] // "none"')
    if ((series > 0)) && [[ $up == 1 ]]; then
      break
    fi
  fi
  if ((SECONDS >= deadline)); then
    [[ $answered == yes ]] || fail "prometheus did not answer queries on http://$PROM within ${WAIT}s"
    fail "within ${WAIT}s prometheus found $series tim_gateway_requests_total series and up{job=\"tim-gateway\"} = $up (want > 0 and 1)"
  fi
  sleep 0.5
done
log "prometheus scraped the gateway: up{job=\"tim-gateway\"} = 1, $series tim_gateway_requests_total series:"
jq -r '.data.result[] | "    \(.metric.app) \(.metric.command) cache=\(.metric.cache) \(.metric.status_class) = \(.value[1])"' \
  <<<"$answer"

# ---------------------------------------------------------------- 6. rules and dashboard queries
# Wait until every rule has been evaluated at least once, then none may be in error
# (a vector-matching mistake shows up only at evaluation, against real series).
while :; do
  rules=$(curl -fsS --max-time 5 "http://$PROM/api/v1/rules")
  total=$(jq '[.data.groups[] | select(.name == "tim-gateway") | .rules[]] | length' <<<"$rules")
  pending=$(jq '[.data.groups[] | select(.name == "tim-gateway") | .rules[] | select(.health == "unknown")] | length' <<<"$rules")
  if ((total > 0 && pending == 0)); then
    break
  fi
  ((SECONDS < deadline + 10)) || fail "prometheus loaded $total rules in group tim-gateway, $pending never evaluated"
  sleep 0.5
done
broken=$(jq -r '.data.groups[] | select(.name == "tim-gateway") | .rules[] | select(.health != "ok") | "\(.name): \(.lastError)"' <<<"$rules")
[[ -z $broken ]] || fail "rules that fail to evaluate: $broken"
active=$(jq -r '[.data.groups[].rules[] | select(.state != "inactive") | "\(.name) (\(.state))"] | join(", ")' <<<"$rules")
log "prometheus evaluates all $total rules of group tim-gateway without error; active now: ${active:-none}"

# Dashboard queries with Grafana's variables replaced the way Grafana would ("All" = .*).
n=0
with_data=0
while IFS= read -r expr; do
  promql=${expr//\$__rate_interval/1m}
  promql=${promql//\$__range/5m}
  promql=${promql//\$__interval/15s}
  promql=${promql//\$app/.*}
  promql=${promql//\$instance/.*}
  promql=${promql//\$cluster/.*}
  promql=${promql//\$namespace/.*}
  promql=${promql//\$pod/.*}
  if ! answer=$(curl -sS --max-time 5 --get "http://$PROM/api/v1/query" --data-urlencode "query=$promql") ||
    [[ $(jq -r '.status' <<<"$answer") != success ]]; then
    fail "a dashboard query does not run: $promql: $(jq -r '.error // empty' <<<"$answer" 2>/dev/null)"
  fi
  n=$((n + 1))
  if (($(jq '.data.result | length' <<<"$answer") > 0)); then
    with_data=$((with_data + 1))
  fi
done < <(jq -r '.. | objects | .expr? // empty' "$DASHBOARD")
log "all $n dashboard queries run; $with_data return data already (the rest need more time or other traffic)"

log "OK"
