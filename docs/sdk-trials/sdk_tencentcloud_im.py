#!/usr/bin/env python3
"""tencentcloud-sdk-python-im 0.9.4 (PyPI) through tim-gateway.

The SDK takes a base URL: TCIMClient(sdk_id, key, admin, tencent_url=...).
Default is "https://console.tim.qq.com/v4". It always signs itself with
TLSSigAPIv2(sdk_id, key): with the gateway the key can be any string.

Run:
  REQUESTS_CA_BUNDLE=/work/sdk-trials/gw.crt venv/bin/python sdk_tencentcloud_im.py
"""
import time

import requests_unixsocket
from tencentcloud_im.tcim_client import TCIMClient

DUMMY_KEY = "not-the-real-key"  # the gateway replaces usersig; this never reaches Tencent

BASES = {
    "http": "http://127.0.0.1:18460/v4",
    "https": "https://127.0.0.1:18463/v4",  # needs REQUESTS_CA_BUNDLE=gw.crt
    # requests has no unix-socket support; requests-unixsocket2 adds the http+unix scheme
    # to the module-level requests.post that the SDK calls.
    "unix": "http+unix://%2Fwork%2Fsdk-trials%2Fgw.sock/v4",
}

requests_unixsocket.monkeypatch()

for name, base in BASES.items():
    client = TCIMClient(1400000000, DUMMY_KEY, "administrator", tencent_url=base)
    user = f"sdkpyim_{name}"
    r = client.add_single_user(user, "Nick " + name, "https://example.invalid/a.png")
    print(f"[{name}] add_single_user -> account_import: HTTP {r.status_code} {r.text}")
    r = client.search_user([user, "nobody_" + name])
    print(f"[{name}] search_user -> account_check:     HTTP {r.status_code} {r.text}")
    time.sleep(1.1)  # get_appid_group_list quota is 1/s per app; the 3 trial gateways share one sandbox
    r = client.get_group()
    print(f"[{name}] get_group -> get_appid_group_list: HTTP {r.status_code} {r.text[:200]}")
