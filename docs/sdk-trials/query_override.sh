#!/bin/sh
# What does the gateway do with query parameters the client sends itself?
# gw-capture.toml points a gateway (127.0.0.1:18466) at capture_upstream.py, which records
# the exact path+query that reaches "Tencent" in capture.jsonl.
cd /work/sdk-trials
rm -f capture.jsonl
for q in "" "?sdkappid=1&identifier=mallory&usersig=BOGUS&random=42&contenttype=json" "?contenttype=xml" "?foo=bar" "?usersig=A&usersig=B"; do
  echo "client sent: /v4/im_open_login_svc/account_check$q"
  curl -s "http://127.0.0.1:18466/v4/im_open_login_svc/account_check$q" -d '{"CheckItem":[{"UserID":"alice"}]}' >/dev/null
  python3 -c "import json;r=[json.loads(l) for l in open('capture.jsonl')][-1];print('upstream got:', r['path'], '| Host:', r['host'])"
done
