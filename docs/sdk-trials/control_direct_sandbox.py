#!/usr/bin/env python3
"""Control: the same SDK straight at the sandbox (no gateway).

Shows the dummy key is refused upstream, so the OK answers through the
gateway come from the gateway's own usersig, not the SDK's.
Run: REQUESTS_CA_BUNDLE=/work/sdk-trials/ca.pem venv/bin/python control_direct_sandbox.py
"""
from tencentcloud_im.tcim_client import TCIMClient

REAL_DEMO_KEY = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e"
for label, key in (("dummy key", "not-the-real-key"), ("demo key", REAL_DEMO_KEY)):
    c = TCIMClient(1400000000, key, "administrator", tencent_url="https://127.0.0.1:9443/v4")
    r = c.search_user(["sdkpyim_http"])
    print(f"direct to sandbox, {label}: HTTP {r.status_code} {r.text}")
