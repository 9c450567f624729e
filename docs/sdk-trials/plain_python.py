#!/usr/bin/env python3
"""Baseline: plain requests and httpx against the gateway listeners.

Run with /work/sdk-trials/venv/bin/python plain_python.py
"""
import json
import httpx
import requests

HTTP = "http://127.0.0.1:18460"
HTTPS = "https://127.0.0.1:18463"
SOCK = "/work/sdk-trials/gw.sock"
CERT = "/work/sdk-trials/gw.crt"

IMPORT = ("im_open_login_svc/account_import", {"UserID": "py_plain"})
CHECK = ("im_open_login_svc/account_check", {"CheckItem": [{"UserID": "py_plain"}]})
ROBOTS = ("openim_robot_http_svc/get_all_robots", {})


def show(label, r):
    body = r.json()
    print(f"{label}: HTTP {r.status_code} ErrorCode={body.get('ErrorCode')} {json.dumps(body)[:160]}")


# requests, plain HTTP
for cmd, body in (IMPORT, CHECK, ROBOTS):
    show(f"requests http  {cmd}", requests.post(f"{HTTP}/v4/{cmd}", json=body, timeout=10))

# requests, HTTPS listener (verify= our self-signed cert; REQUESTS_CA_BUNDLE works the same)
for cmd, body in (CHECK,):
    show(f"requests https {cmd}", requests.post(f"{HTTPS}/v4/{cmd}", json=body, verify=CERT, timeout=10))

# httpx, plain HTTP
with httpx.Client(base_url=HTTP, timeout=10) as c:
    for cmd, body in (CHECK, ROBOTS):
        show(f"httpx http     {cmd}", c.post(f"/v4/{cmd}", json=body))

# httpx, unix socket (httpx supports it through HTTPTransport(uds=...))
with httpx.Client(transport=httpx.HTTPTransport(uds=SOCK), base_url="http://localhost", timeout=10) as c:
    for cmd, body in (CHECK, ROBOTS):
        show(f"httpx unix     {cmd}", c.post(f"/v4/{cmd}", json=body))

# httpx, HTTPS listener
with httpx.Client(base_url=HTTPS, verify=CERT, timeout=10) as c:
    for cmd, body in (CHECK,):
        show(f"httpx https    {cmd}", c.post(f"/v4/{cmd}", json=body))
