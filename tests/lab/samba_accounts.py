#!/usr/bin/python3
"""Creates the lab's AD accounts in a freshly provisioned (not yet started) Samba DC database.

  samba_accounts.py SMB_CONF SECRETS_FILE NT_HASH_FILE

SECRETS_FILE holds KEY=VALUE lines: ALICE, ALICE_PASSWORD, BOB, BOB_PASSWORD, CAROL, CAROL_PASSWORD, PROXY_ACCOUNT,
PROXY_PASSWORD, BACKEND_ACCOUNT, BACKEND_PASSWORD, PROXY_SPN, BACKEND_SPN, OTHER_SPN.

One process does what a dozen samba-tool calls would (each costs a second of Python start-up):
  - users alice, bob and carol (a second delegable user); bob is "sensitive and cannot be delegated" (UF_NOT_DELEGATED);
  - svc-proxy with SPN HTTP/proxy..., msDS-AllowedToDelegateTo = the backend SPN only, and
    "trusted to authenticate for delegation" (protocol transition, UF_TRUSTED_TO_AUTH_FOR_DELEGATION);
  - svc-backend with the backend SPN and a second SPN nobody may delegate to;
  - msDS-SupportedEncryptionTypes = 24 (AES128|AES256) on every lab account: without it Samba
    4.17 issues RC4 service tickets.
Prints "KVNO <account> <n>" lines (the keytab entries need them) and writes the users' NT hashes,
read back from the directory (unicodePwd), to NT_HASH_FILE as "user:hex" lines.
"""
import sys

import ldb
from samba import dsdb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB

AES_ONLY = "24"


def main(conf, secrets_path, hash_path):
    s = dict(line.rstrip("\n").split("=", 1) for line in open(secrets_path) if "=" in line)
    lp = LoadParm()
    lp.load(conf)
    samdb = SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)
    base = str(samdb.domain_dn())

    accounts = [
        (s["ALICE"], s["ALICE_PASSWORD"]),
        (s["BOB"], s["BOB_PASSWORD"]),
        (s["CAROL"], s["CAROL_PASSWORD"]),
        (s["PROXY_ACCOUNT"], s["PROXY_PASSWORD"]),
        (s["BACKEND_ACCOUNT"], s["BACKEND_PASSWORD"]),
    ]
    for name, password in accounts:
        samdb.newuser(name, password)

    def modify(name, **attrs):
        msg = ldb.Message()
        msg.dn = ldb.Dn(samdb, f"CN={name},CN=Users,{base}")
        for attr, (flag, values) in attrs.items():
            attr = attr.replace("_", "-")
            msg[attr] = ldb.MessageElement(values, flag, attr)
        samdb.modify(msg)

    add, replace = ldb.FLAG_MOD_ADD, ldb.FLAG_MOD_REPLACE
    for name, _ in accounts:
        modify(name, msDS_SupportedEncryptionTypes=(replace, [AES_ONLY]))
    modify(s["PROXY_ACCOUNT"],
           servicePrincipalName=(add, [s["PROXY_SPN"]]),
           msDS_AllowedToDelegateTo=(add, [s["BACKEND_SPN"]]))
    modify(s["BACKEND_ACCOUNT"], servicePrincipalName=(add, [s["BACKEND_SPN"], s["OTHER_SPN"]]))
    samdb.toggle_userAccountFlags(f"(sAMAccountName={s['PROXY_ACCOUNT']})",
                                  dsdb.UF_TRUSTED_TO_AUTHENTICATE_FOR_DELEGATION, on=True)
    samdb.toggle_userAccountFlags(f"(sAMAccountName={s['BOB']})", dsdb.UF_NOT_DELEGATED, on=True)

    hashes = []
    for name, _ in accounts:
        res = samdb.search(base, scope=ldb.SCOPE_SUBTREE, expression=f"(sAMAccountName={name})",
                           attrs=["msDS-KeyVersionNumber", "unicodePwd"])
        if len(res) != 1:
            raise SystemExit(f"account {name} not found after creation")
        print(f"KVNO {name} {res[0]['msDS-KeyVersionNumber'][0]}")
        if name in (s["ALICE"], s["BOB"], s["CAROL"]):
            hashes.append(f"{name}:{bytes(res[0]['unicodePwd'][0]).hex()}")
    with open(hash_path, "w") as out:
        out.write(f"# NT hashes (MD4 of the UTF-16LE password) of the lab's AD users, read from the DC.\n"
                  f"# Format: user:hex. Domain {lp.get('workgroup')}, realm {lp.get('realm')}.\n")
        out.write("\n".join(hashes) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
