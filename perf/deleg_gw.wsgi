# The application behind the Apache mod_auth_gssapi gateway of perf/deleg.sh (the competitor's
# best delegated form; Apache's own mod_proxy cannot delegate).
#
# mod_auth_gssapi has checked the client's Basic credentials, done the protocol transition and
# written the user's delegated credentials (S4U2Proxy-capable) to a ccache named by KRB5CCNAME.
# This app calls the lab backend's /whoami as that user with Negotiate and returns the body. Like
# a careful real gateway it keeps backend connections per user: the backend authenticates a
# connection once (GssapiConnectionBound), so a reused connection costs no Kerberos at all, and
# a new one costs one S4U2Proxy + AP-REQ made from the delegated ccache.
import base64
import http.client
import threading

import gssapi

SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
_pool = {}  # user -> idle backend connections (already authenticated as that user)
_lock = threading.Lock()


def _negotiate(ccache, host):
    creds = gssapi.Credentials(usage="initiate", store={b"ccache": ccache.encode()})
    ctx = gssapi.SecurityContext(
        name=gssapi.Name(f"HTTP@{host}", gssapi.NameType.hostbased_service),
        creds=creds, usage="initiate", mech=SPNEGO)
    return "Negotiate " + base64.b64encode(ctx.step()).decode()


def _whoami(conn, headers):
    conn.request("GET", "/whoami", headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def application(environ, start_response):
    user = environ.get("REMOTE_USER", "")
    ccache = environ.get("KRB5CCNAME", "")
    backend = environ["KCD_PERF_BACKEND"]  # host:port
    spn_host = environ["KCD_PERF_BACKEND_HOST"]
    with _lock:
        conns = _pool.get(user)
        conn = conns.pop() if conns else None
    status, body = None, b""
    if conn is not None:
        try:
            status, body = _whoami(conn, {"Host": spn_host})
        except (OSError, http.client.HTTPException):
            conn.close()
            conn, status = None, None
    if conn is None or status == 401:
        if conn is not None:
            conn.close()
        if not ccache:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"no delegated credentials (KRB5CCNAME unset)\n"]
        host, port = backend.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            status, body = _whoami(conn, {"Host": spn_host,
                                          "Authorization": _negotiate(ccache, spn_host)})
        except (OSError, http.client.HTTPException, gssapi.exceptions.GSSError) as e:
            conn.close()
            start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
            return [f"backend: {e}\n".encode()]
    if status == 200:
        with _lock:
            _pool.setdefault(user, []).append(conn)
    else:
        conn.close()
    start_response(f"{status} Backend", [("Content-Type", "text/plain"),
                                         ("Content-Length", str(len(body)))])
    return [body]
