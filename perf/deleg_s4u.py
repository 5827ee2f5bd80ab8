#!/usr/bin/python3
"""The KDC's share of a cold user's first delegated request, measured without any proxy.

  deleg_s4u.py KEYTAB LOGIN_PRINCIPAL BACKEND_HOST USERS_FILE

Logs in as the proxy account from KEYTAB once (not timed), then for each user of USERS_FILE
(`user:password` lines; only the names are used) times what a delegating proxy must do for a user
it has never seen: S4U2Self (impersonate: one TGS round trip) and the first backend context
(S4U2Proxy: one TGS round trip, plus building the AP-REQ). Prints one JSON object with the
per-user times in milliseconds. Uses the lab krb5.conf (KRB5_CONFIG) and python3-gssapi.
"""
import json
import sys
import time

import gssapi

KRB5 = gssapi.OID.from_int_seq("1.2.840.113554.1.2.2")


def main(keytab, login, backend_host, users_path):
    users = [l.split(":", 1)[0] for l in open(users_path) if ":" in l and not l.startswith("#")]
    store = {b"client_keytab": keytab.encode(), b"keytab": keytab.encode(),
             b"ccache": b"MEMORY:kcdperf-s4u"}
    proxy = gssapi.Credentials(
        name=gssapi.Name(login, gssapi.NameType.kerberos_principal),
        usage="initiate", store=store)
    target = gssapi.Name(f"HTTP@{backend_host}", gssapi.NameType.hostbased_service)
    # Warm the proxy's own TGT (kinit from the keytab) so it is not charged to the first user.
    gssapi.SecurityContext(name=target, creds=proxy, usage="initiate", mech=KRB5).step()
    s4u2self, s4u2proxy, errors = [], [], []
    for user in users:
        try:
            t0 = time.perf_counter()
            imp = proxy.impersonate(gssapi.Name(user, gssapi.NameType.kerberos_principal),
                                    usage="initiate")
            t1 = time.perf_counter()
            gssapi.SecurityContext(name=target, creds=imp, usage="initiate", mech=KRB5).step()
            t2 = time.perf_counter()
        except gssapi.exceptions.GSSError as e:
            errors.append(f"{user}: {e}")
            continue
        s4u2self.append(round((t1 - t0) * 1000, 3))
        s4u2proxy.append(round((t2 - t1) * 1000, 3))
    print(json.dumps({"s4u2self_ms": s4u2self, "s4u2proxy_ms": s4u2proxy, "errors": errors[:3],
                      "error_count": len(errors)}))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
