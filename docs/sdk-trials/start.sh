#!/bin/sh
# Start the sandbox, the capture upstream and the five trial gateways (background; pids in *.pid).
# Needs gw.crt/gw.key (see make_cert.sh). Stop with ./stop.sh.
cd /work/sdk-trials
B=/tmp/tg-sdk/tim-gateway
export TIM_GATEWAY_SECRET_KEY=5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e
RUST_LOG=debug $B sandbox --listen 127.0.0.1:9443 --ca-out /work/sdk-trials/ca.pem > sandbox.log 2>&1 & echo $! > sandbox.pid
python3 capture_upstream.py > capture.log 2>&1 & echo $! > capture.pid
sleep 1
for n in http unix tls tls443 capture; do
  RUST_LOG=info $B serve --config gw-$n.toml > gw-$n.log 2>&1 & echo $! > gw-$n.pid
done
sleep 1.5
grep -h "listener bound" gw-*.log
