#!/bin/sh
# Stop what start.sh started, by pid.
cd /work/sdk-trials
for f in gw-http gw-unix gw-tls gw-tls443 gw-capture capture sandbox; do
  [ -f $f.pid ] && kill "$(cat $f.pid)" && rm -f $f.pid
done
