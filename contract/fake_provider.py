"""A stand-in OAuth provider for the contract test, on 127.0.0.1 only.

scripts/contract-test.sh configures `[providers.google]` with this server's
`/token` and `/revoke` as endpoints, so that refreshes and revocations the
generated requests trigger succeed instead of failing on an unreachable
provider. That makes the 200 responses of `.../refresh` and of a refreshing
`.../access-token` reachable (a provider that does not answer yields a 503
provider_unavailable by design, which would trip `not_a_server_error`).

Usage: python fake_provider.py PORT_FILE
Binds an ephemeral port, writes it to PORT_FILE, serves until SIGTERM.
Standard library only: runs with any Python 3.
"""

import itertools
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_counter = itertools.count(1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, status, body=b"", content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server naming)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path == "/token":
            # Google's refresh answer; no `scope`: the grant keeps its scopes.
            body = {
                "access_token": f"ya29.contract-refreshed-{next(_counter)}",
                "expires_in": 3600,
                "token_type": "Bearer",
            }
            self._reply(200, json.dumps(body).encode())
        elif self.path == "/revoke":
            self._reply(200, b"{}")
        else:
            self._reply(404, b'{"error":"not_found"}')

    def log_message(self, format, *args):  # noqa: A002 (signature of the base class)
        sys.stderr.write("[fake-provider] " + (format % args) + "\n")


def main():
    port_file = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(port_file + ".tmp", "w") as fd:
        fd.write(str(server.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
