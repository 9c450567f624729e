#!/usr/bin/env python3
"""timsdk 1.1.12 (PyPI) through tim-gateway.

timsdk hard-codes https://console.tim.qq.com in HttpClient.get_url and has no
base-URL option. Two ways to reach the gateway:

  mode "hosts":    leave the SDK alone; /etc/hosts maps console.tim.qq.com to
                   127.0.0.1, a gateway listens with TLS on 127.0.0.1:443 with
                   allowed_hosts = ["console.tim.qq.com"], and
                   REQUESTS_CA_BUNDLE=/work/sdk-trials/gw.crt.
  mode "subclass": replace HttpClient.get_url with one that points at the
                   plain-HTTP listener (or the unix socket via requests-unixsocket2).

timsdk signs itself (TLSSigAPIv2 with app_key): any string works with the gateway.
Run:
  REQUESTS_CA_BUNDLE=/work/sdk-trials/gw.crt venv/bin/python sdk_timsdk.py hosts
  venv/bin/python sdk_timsdk.py subclass
"""
import sys
import time

import requests_unixsocket
from timsdk import TimClient
from timsdk.http_client import HttpClient

DUMMY_KEY = "not-the-real-key"
mode = sys.argv[1] if len(sys.argv) > 1 else "hosts"


def run(label, client):
    user = f"timsdk_{label}"
    try:
        print(f"[{label}] account_import:", client.im_open_login_svc.account_import(user, nick="T"))
    except Exception as e:
        print(f"[{label}] account_import raised:", repr(e))
    try:
        print(f"[{label}] portrait_get (POST):", client.profile.portrait_get([user], ["Tag_Profile_IM_Nick"]))
    except Exception as e:
        print(f"[{label}] portrait_get raised:", repr(e))
    try:
        # timsdk sends this one as GET: the gateway answers 405 (Tencent itself wants POST)
        print(f"[{label}] account_check (GET):", client.im_open_login_svc.account_check([user]))
    except Exception as e:
        print(f"[{label}] account_check raised:", repr(e))


if mode == "hosts":
    run("hosts443", TimClient(1400000000, DUMMY_KEY, "administrator"))
else:
    # timsdk keeps its own requests.Session() (HttpClient._http); monkeypatch() only covers the
    # module-level requests.* functions, so mount the unix adapter on that session instead.

    def make_get_url(base):
        def get_url(self, path, random_id=None):
            # same query the SDK builds; the gateway throws it away and signs itself
            return (f"{base}/v4/{path}?sdkappid={self._app_id}&identifier={self._identifier}"
                    f"&usersig={self._signature}&random=1&contenttype=json")
        return get_url

    for label, base in (("http", "http://127.0.0.1:18460"),
                        ("unix", "http+unix://%2Fwork%2Fsdk-trials%2Fgw.sock")):
        HttpClient.get_url = make_get_url(base)
        client = TimClient(1400000000, DUMMY_KEY, "administrator")
        client.im_open_login_svc.get_client()._http.mount("http+unix://", requests_unixsocket.UnixAdapter())
        run(label, client)
        time.sleep(0.2)
