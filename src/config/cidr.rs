//! IP networks in CIDR notation (RFC 4632 §3.1 for IPv4, RFC 4291 §2.3 for IPv6 prefixes), for
//! `--proxy-protocol-from`.

use std::fmt;
use std::net::IpAddr;

/// A network: an address and a prefix length, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `ADDR/LEN`, or a bare address (one host: /32 or /128). Host bits set under the prefix are
    /// refused: `10.0.0.1/8` is most likely a typing error, and silently widening it would trust
    /// more than the operator meant.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}`: expected an IPv4 or IPv6 network, e.g. 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && !l.starts_with('+') => n,
                _ => return Err(format!("`{s}`: prefix length must be 0 to {max}")),
            },
        };
        let net = Cidr { addr, prefix };
        if net.masked(addr) != bits(addr) {
            return Err(format!(
                "`{s}`: host bits set (did you mean {}?)",
                net.network()
            ));
        }
        Ok(net)
    }

    /// True when `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
    /// dual-stack socket reports for an IPv4 peer) is matched as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == bits(self.addr)
    }

    fn mask(&self) -> u128 {
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        let host = width - u32::from(self.prefix);
        let ones = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        ones.checked_shl(host).unwrap_or(0) & ones
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        bits(ip) & self.mask()
    }

    fn network(&self) -> Cidr {
        let b = self.masked(self.addr);
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::from((b as u32).to_be_bytes()),
            IpAddr::V6(_) => IpAddr::from(b.to_be_bytes()),
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn membership() {
        let cases = [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("10.0.0.0/8", "::a00:1", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::/0", "::1", true),
            ("::1", "::1", true),
            ("192.168.1.128/25", "192.168.1.200", true),
            ("192.168.1.128/25", "192.168.1.127", false),
        ];
        for (net, addr, want) in cases {
            let n = Cidr::parse(net).unwrap();
            assert_eq!(n.contains(ip(addr)), want, "{net} ∋ {addr}");
        }
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.1/8",
            "2001:db8::1/32",
            "host.example/8",
            "10.0.0.0/8/8",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Cidr::parse("10.0.0.1/8").unwrap_err(),
            "`10.0.0.1/8`: host bits set (did you mean 10.0.0.0/8?)"
        );
        assert_eq!(
            Cidr::parse("127.0.0.1").unwrap().to_string(),
            "127.0.0.1/32"
        );
    }
}
