"""A tenant: a tiny HTTP app that listens on the Unix socket tenement gives it ($SOCKET_PATH)."""

import os
import socketserver
from http.server import BaseHTTPRequestHandler

SOCKET_PATH = os.environ["SOCKET_PATH"]
WHO = f"{os.environ.get('SERVICE_NAME', '?')}:{os.environ.get('INSTANCE_ID', '?')}"
GREETING = os.environ.get("GREETING", "hello")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health":
            body = b"ok\n"
        else:
            body = f"{GREETING} from {WHO}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):  # Unix sockets have no client address
        return "unix"

    def log_message(self, fmt, *args):
        print(f"{WHO} {fmt % args}", flush=True)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128


if os.path.exists(SOCKET_PATH):
    os.unlink(SOCKET_PATH)
with Server(SOCKET_PATH, Handler) as server:
    print(f"{WHO} listening on {SOCKET_PATH}", flush=True)
    server.serve_forever()
