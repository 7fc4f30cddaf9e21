"""A loopback stand-in for Amazon Managed Prometheus that checks SigV4 signatures.

Independent of qscale's signer (the aws-sigv4 crate): the signature is recomputed with
botocore's SigV4Auth over the request exactly as received, using only the headers the
client says it signed. A match gets a Prometheus-style one-series vector; anything else
gets 403 with a short reason (never a key or a signature).

usage: sigv4_verify.py PORT ACCESS_KEY SECRET_KEY REGION SERVICE VALUE [SESSION_TOKEN]

Listens on 127.0.0.1:PORT, prints READY once listening, and exits when stdin closes.
"""

import datetime
import hmac
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

MAX_SKEW = datetime.timedelta(minutes=5)
AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;_.-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


class Rejected(Exception):
    pass


def make_handler(access_key, secret_key, region, service, value, session_token):
    credentials = Credentials(access_key, secret_key, session_token or None)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # keep test output quiet
            pass

        def do_GET(self):
            self.handle_query()

        def do_POST(self):
            self.handle_query()

        def handle_query(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                self.verify(body)
            except Rejected as reason:
                print(f"sigv4_verify: rejected {self.command} {self.path}: {reason}",
                      file=sys.stderr, flush=True)
                self.answer(403, {"message": f"signature rejected: {reason}"})
                return
            self.answer(200, {
                "status": "success",
                "data": {
                    "resultType": "vector",
                    "result": [{"metric": {}, "value": [time.time(), value]}],
                },
            })

        def verify(self, body):
            match = AUTH_RE.match(self.headers.get("Authorization", ""))
            if not match:
                raise Rejected("no SigV4 Authorization header")
            if match["key"] != access_key:
                raise Rejected("unknown access key")
            if (match["region"], match["service"]) != (region, service):
                raise Rejected(f"scope is {match['region']}/{match['service']}")
            amz_date = self.headers.get("X-Amz-Date", "")
            try:
                stamp = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
            except ValueError:
                raise Rejected("bad X-Amz-Date")
            now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
            if abs(now - stamp) > MAX_SKEW:
                raise Rejected("X-Amz-Date too far from now")
            if match["date"] != amz_date[:8]:
                raise Rejected("scope date differs from X-Amz-Date")
            signed = match["signed"].split(";")
            for required in ("host", "x-amz-date"):
                if required not in signed:
                    raise Rejected(f"{required} is not signed")
            if session_token:
                if "x-amz-security-token" not in signed:
                    raise Rejected("x-amz-security-token is not signed")
                if self.headers.get("X-Amz-Security-Token") != session_token:
                    raise Rejected("wrong session token")
            headers = {}
            for name in signed:
                if self.headers.get(name) is None:
                    raise Rejected(f"signed header {name} is missing")
                headers[name] = ",".join(self.headers.get_all(name))
            request = AWSRequest(
                method=self.command,
                url=f"http://{self.headers['Host']}{self.path}",
                data=body,
                headers=headers,
            )
            request.context["timestamp"] = amz_date
            auth = SigV4Auth(credentials, service, region)
            canonical = auth.canonical_request(request)
            expected = auth.signature(auth.string_to_sign(request, canonical), request)
            if not hmac.compare_digest(expected, match["signature"]):
                raise Rejected("signature does not match")

        def answer(self, status, document):
            payload = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def main():
    if len(sys.argv) not in (7, 8):
        sys.exit(__doc__)
    port, access_key, secret_key, region, service, value = sys.argv[1:7]
    session_token = sys.argv[7] if len(sys.argv) == 8 else ""
    handler = make_handler(access_key, secret_key, region, service, value, session_token)
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY", flush=True)
    sys.stdin.read()  # returns when the test closes the pipe (or dies)
    server.shutdown()


if __name__ == "__main__":
    main()
