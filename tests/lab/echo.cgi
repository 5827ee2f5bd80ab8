#!/usr/bin/python3
"""CGI behind the lab backend: answers with who authenticated and what arrived.

The body is read to EOF in 64 KiB pieces (never held whole), so it serves multi-GiB uploads.
Output lines (stable: tests parse them):
  authenticated as <principal>   | not authenticated
  method=<METHOD>
  path=<request path, no query>
  body_length=<bytes read>
  body_sha256=<hex>
  query=<query string>
  remote=<client address>:<client port>   (tells backend connections apart)
  x_kcd_user=<X-Kcd-User request header>  (the identity kcdproxy passes to non-Kerberos paths)
"""
import hashlib
import os
import sys

user = os.environ.get("REMOTE_USER", "")
digest = hashlib.sha256()
length = 0
stdin = sys.stdin.buffer
remaining = os.environ.get("CONTENT_LENGTH", "")
remaining = int(remaining) if remaining.isdigit() else None  # None: chunked, read to EOF
while remaining is None or remaining > 0:
    chunk = stdin.read(65536 if remaining is None else min(65536, remaining))
    if not chunk:
        break
    digest.update(chunk)
    length += len(chunk)
    if remaining is not None:
        remaining -= len(chunk)

uri = os.environ.get("REQUEST_URI", "")
body = (
    (f"authenticated as {user}\n" if user else "not authenticated\n")
    + f"method={os.environ.get('REQUEST_METHOD', '')}\n"
    + f"path={uri.split('?', 1)[0]}\n"
    + f"body_length={length}\n"
    + f"body_sha256={digest.hexdigest()}\n"
    + f"query={os.environ.get('QUERY_STRING', '')}\n"
    + f"remote={os.environ.get('REMOTE_ADDR', '')}:{os.environ.get('REMOTE_PORT', '')}\n"
    + f"x_kcd_user={os.environ.get('HTTP_X_KCD_USER', '')}\n"
).encode()
out = sys.stdout.buffer
out.write(b"Content-Type: text/plain; charset=utf-8\r\n")
out.write(f"X-Remote-User: {user}\r\n".encode() if user else b"")
out.write(f"Content-Length: {len(body)}\r\n\r\n".encode())
out.write(body)
