#!/usr/bin/python3
"""A minimal HTTPS tracker for the tracker client's test.

    https_tracker.py CERT.pem KEY.pem

Listens on 127.0.0.1 (a free port), prints "ready PORT", then one line per
request (its path and query). /announce answers one compact peer
(127.0.0.1:6881) and a warning; /scrape answers an empty file list.
"""
import http.server
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print(self.path, flush=True)
        if self.path.startswith("/announce"):
            body = (b"d8:intervali900e5:peers6:" + bytes([127, 0, 0, 1, 0x1A, 0xE1])
                    + b"15:warning message5:helloe")
        elif self.path.startswith("/scrape"):
            body = b"d5:filesdee"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    cert, key = sys.argv[1], sys.argv[2]
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
