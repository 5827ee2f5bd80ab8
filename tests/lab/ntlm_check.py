#!/usr/bin/python3
"""NTLMv2 checks for the kcdproxy lab (stdlib only; Debian's OpenSSL 3 has no MD4, so it is here).

  ntlm_check.py nthash PASSWORD
      prints the NT hash (hex) of PASSWORD: MD4 of its UTF-16LE encoding.
  ntlm_check.py winbind USER DOMAIN PASSWORD SERVER_NETBIOS -- NTLM_AUTH_CMD...
      plays the proxy's part exactly as kcdproxy will: issues a fresh 8-byte server challenge,
      builds the client's NTLMv2 response for USER/PASSWORD, hands both to
      `ntlm_auth --helper-protocol=ntlm-server-1` (winbind) and checks the verdict.  On success
      it also checks that the user session key winbind returns equals the one computed here.
      Exit 0 = authenticated (and the key matched), 1 = refused, 2 = usage or helper failure.
      The verdict and winbind's reason are printed on one line.
"""
import hmac
import os
import struct
import subprocess
import sys
import time


def _md4(data: bytes) -> bytes:
    """RFC 1320 MD4 (hashlib.new('md4') is unavailable under OpenSSL 3's default provider)."""
    def f(x, y, z): return (x & y) | (~x & z)
    def g(x, y, z): return (x & y) | (x & z) | (y & z)
    def h(x, y, z): return x ^ y ^ z
    def rotl(v, s): return ((v << s) | (v >> (32 - s))) & 0xFFFFFFFF

    msg = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for off in range(0, len(msg), 64):
        x = struct.unpack("<16I", msg[off:off + 64])
        aa, bb, cc, dd = a, b, c, d
        for i in range(16):
            k, s = i, (3, 7, 11, 19)[i % 4]
            a, b, c, d = d, rotl((a + f(b, c, d) + x[k]) & 0xFFFFFFFF, s), b, c
        for i in range(16):
            k, s = (i % 4) * 4 + i // 4, (3, 5, 9, 13)[i % 4]
            a, b, c, d = d, rotl((a + g(b, c, d) + x[k] + 0x5A827999) & 0xFFFFFFFF, s), b, c
        for i in range(16):
            k = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)[i]
            s = (3, 9, 11, 15)[i % 4]
            a, b, c, d = d, rotl((a + h(b, c, d) + x[k] + 0x6ED9EBA1) & 0xFFFFFFFF, s), b, c
        a, b, c, d = [(v + w) & 0xFFFFFFFF for v, w in ((a, aa), (b, bb), (c, cc), (d, dd))]
    return struct.pack("<4I", a, b, c, d)


def nt_hash(password: str) -> bytes:
    return _md4(password.encode("utf-16-le"))


def _hmac_md5(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, "md5").digest()


def _av_pair(av_id: int, value: bytes) -> bytes:
    return struct.pack("<HH", av_id, len(value)) + value


def ntlmv2_response(user, domain, password, server_challenge, server_netbios):
    """Returns (NT response, user session key) as MS-NLMP 3.3.2 defines them."""
    v2_hash = _hmac_md5(nt_hash(password), (user.upper() + domain).encode("utf-16-le"))
    filetime = int((time.time() + 11644473600) * 10_000_000)
    target_info = (
        _av_pair(2, domain.upper().encode("utf-16-le"))            # MsvAvNbDomainName
        + _av_pair(1, server_netbios.upper().encode("utf-16-le"))  # MsvAvNbComputerName
        + _av_pair(7, struct.pack("<Q", filetime))                 # MsvAvTimestamp
        + _av_pair(0, b"")                                         # MsvAvEOL
    )
    blob = (b"\x01\x01" + b"\x00" * 6 + struct.pack("<Q", filetime) + os.urandom(8)
            + b"\x00" * 4 + target_info + b"\x00" * 4)
    proof = _hmac_md5(v2_hash, server_challenge + blob)
    return proof + blob, _hmac_md5(v2_hash, proof)


def winbind_check(user, domain, password, server_netbios, helper_cmd):
    challenge = os.urandom(8)
    response, session_key = ntlmv2_response(user, domain, password, challenge, server_netbios)
    request = (f"Username: {user}\nNT-Domain: {domain}\nLANMAN-Challenge: {challenge.hex()}\n"
               f"NT-Response: {response.hex()}\nRequest-User-Session-Key: Yes\n.\n")
    try:
        out = subprocess.run(helper_cmd + ["--helper-protocol=ntlm-server-1"], input=request,
                             capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        print("helper timed out after 20 s (winbindd not answering?)")
        return 2
    fields = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key] = value.strip()
    if "Authenticated" not in fields:
        print(f"no verdict from ntlm_auth (rc={out.returncode}): "
              f"{(out.stdout + out.stderr).strip()[-400:]}")
        return 2
    if fields["Authenticated"] != "Yes":
        print(f"refused: {fields.get('Authentication-Error', 'no reason given')}")
        return 1
    got = fields.get("User-Session-Key", "").lower()
    if got != session_key.hex():
        print(f"authenticated, but user session key {got or '(none)'} != expected {session_key.hex()}")
        return 2
    print("authenticated; user session key matches")
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "nthash":
        print(nt_hash(argv[2]).hex())
        return 0
    if len(argv) > 7 and argv[1] == "winbind" and argv[6] == "--":
        return winbind_check(argv[2], argv[3], argv[4], argv[5], argv[7:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
