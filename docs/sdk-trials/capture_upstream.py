#!/usr/bin/env python3
"""A stand-in 'Tencent' that records exactly what the gateway sends upstream.

HTTPS on 127.0.0.1:19443 with gw.crt/gw.key (SAN 127.0.0.1). For each POST it
appends one JSON line (path, query string, Host, body) to capture.jsonl and
answers {"ActionStatus":"OK","ErrorCode":0,...}. Used only to see which query
parameters reach Tencent when a client sends its own.
"""
import json, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = "/work/sdk-trials/capture.jsonl"


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8", "replace")
        rec = {"path": self.path, "host": self.headers.get("Host"), "body": body}
        with open(LOG, "a") as f:
            f.write(json.dumps(rec) + "\n")
        out = json.dumps({"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0, "Seen": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


srv = ThreadingHTTPServer(("127.0.0.1", 19443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/work/sdk-trials/gw.crt", "/work/sdk-trials/gw.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("capture upstream on https://127.0.0.1:19443", flush=True)
srv.serve_forever()
