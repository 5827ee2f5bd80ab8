#!/usr/bin/python3
"""Load users for perf/deleg.sh in the running lab's Samba AD (EXAMPLE.TEST).

  deleg_users.py create SMB_CONF PREFIX COUNT USERS_FILE HASH_FILE
  deleg_users.py delete SMB_CONF PREFIX

create: users PREFIX001 … PREFIX<COUNT> with a fixed password each (derived from the name, so a
second run finds the same credentials), AES-only like the lab's own accounts. Users that already
exist are kept as they are (idempotent: the lab is shared and long-lived, creating a user costs
~0.1 s). Writes USERS_FILE (`user:password`, for kcdload --basic-users and curl) and appends the
users' NT hashes, read back from the directory (unicodePwd), to HASH_FILE (`user:hex`, for
kcdproxy --ntlm-hash-file).
delete: removes every user whose name starts with PREFIX.

Opens the DC's sam.ldb directly (as samba-tool does without -H); the running DC sees the changes.
Run with Debian's /usr/bin/python3 (samba's bindings).
"""
import sys

import ldb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB

AES_ONLY = "24"


def password_of(name):
    return f"Perf-{name}-Pw1"


def open_samdb(conf):
    lp = LoadParm()
    lp.load(conf)
    return SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)


def create(conf, prefix, count, users_path, hash_path):
    samdb = open_samdb(conf)
    base = str(samdb.domain_dn())
    made = 0
    users = []
    hashes = []
    for i in range(1, int(count) + 1):
        name = f"{prefix}{i:03d}"
        found = samdb.search(base, scope=ldb.SCOPE_SUBTREE, expression=f"(sAMAccountName={name})",
                             attrs=["unicodePwd"])
        if not found:
            samdb.newuser(name, password_of(name))
            msg = ldb.Message()
            msg.dn = ldb.Dn(samdb, f"CN={name},CN=Users,{base}")
            msg["msDS-SupportedEncryptionTypes"] = ldb.MessageElement(
                [AES_ONLY], ldb.FLAG_MOD_REPLACE, "msDS-SupportedEncryptionTypes")
            samdb.modify(msg)
            found = samdb.search(base, scope=ldb.SCOPE_SUBTREE,
                                 expression=f"(sAMAccountName={name})", attrs=["unicodePwd"])
            made += 1
        users.append(f"{name}:{password_of(name)}")
        hashes.append(f"{name}:{bytes(found[0]['unicodePwd'][0]).hex()}")
    with open(users_path, "w") as out:
        out.write("\n".join(users) + "\n")
    with open(hash_path, "a") as out:
        out.write("\n".join(hashes) + "\n")
    print(f"{made} created, {int(count) - made} already there")


def delete(conf, prefix):
    samdb = open_samdb(conf)
    base = str(samdb.domain_dn())
    res = samdb.search(base, scope=ldb.SCOPE_SUBTREE,
                       expression=f"(&(objectClass=user)(sAMAccountName={prefix}*))", attrs=["dn"])
    for r in res:
        samdb.delete(r.dn)
    print(f"{len(res)} deleted")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "create":
        create(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "delete":
        delete(*sys.argv[2:])
    else:
        raise SystemExit(__doc__)
