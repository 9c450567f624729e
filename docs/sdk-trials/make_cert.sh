#!/bin/sh
# Self-signed cert for the gateway's HTTPS listener (also used by capture_upstream.py).
cd /work/sdk-trials
openssl req -x509 -newkey rsa:2048 -nodes -keyout gw.key -out gw.crt -days 30 \
  -subj "/CN=tim-gateway-trial" \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:console.tim.qq.com" \
  -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth"
