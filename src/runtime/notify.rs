//! Telling systemd how the process stands (sd_notify(3)), without linking libsystemd.
//!
//! Why: the unit is `Type=notify` (`dist/kcdproxy.service`), so systemd counts the proxy as
//! started, and starts the units ordered after it, only when it says `READY=1` — sent once every
//! worker runs on its bound listening sockets, not when the process merely exists (a
//! `Type=simple` unit is "started" before a single certificate is loaded). `STOPPING=1` at the
//! start of a drain lets `systemctl status` show the proxy as deactivating while in-flight
//! requests finish.
//!
//! The protocol (sd_notify(3)): one datagram of newline-separated `KEY=VALUE` lines on the
//! `AF_UNIX` socket named by `$NOTIFY_SOCKET`; a name starting with `@` is in the abstract
//! namespace (the `@` stands for the leading NUL byte). Without `$NOTIFY_SOCKET` (not started
//! by systemd, or not `Type=notify`) nothing is sent and nothing fails. A send that fails is
//! logged, never fatal: serving matters more than telling systemd about it.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services (sd_notify(3)).
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A way to send notifications to the service manager.
pub struct Notifier {
    sock: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// The notifier of `$NOTIFY_SOCKET`; None when it is unset or empty. An unusable value (a
    /// relative path, a socket that cannot be made) is logged and also gives None: the proxy
    /// serves regardless.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os(NOTIFY_SOCKET)?;
        if value.is_empty() {
            return None;
        }
        match Notifier::new(&value) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(notify_socket = ?value, error = %e, "cannot notify systemd");
                None
            }
        }
    }

    /// A notifier sending to the socket `name` (a `$NOTIFY_SOCKET` value).
    pub fn new(name: &OsStr) -> io::Result<Notifier> {
        Ok(Notifier {
            sock: UnixDatagram::unbound()?,
            to: address(name)?,
        })
    }

    /// `READY=1`: every worker is serving on its listening sockets.
    pub fn ready(&self, status: &str) {
        self.send(&ready_message(std::process::id(), status));
    }

    /// `STOPPING=1`: a drain has started.
    pub fn stopping(&self, status: &str) {
        self.send(&stopping_message(status));
    }

    fn send(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.to) {
            tracing::warn!(error = %e, message = msg, "cannot notify systemd");
        }
    }
}

/// The socket address of a `$NOTIFY_SOCKET` value: an absolute path, or `@name` for the
/// abstract name `name` (sd_notify(3) accepts nothing else).
fn address(name: &OsStr) -> io::Result<SocketAddr> {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(name),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor @abstract",
        )),
    }
}

/// `READY=1` with the main PID (so that systemd knows which process is the service even if it
/// was started through a wrapper) and a human-readable status line.
fn ready_message(pid: u32, status: &str) -> String {
    format!("READY=1\nMAINPID={pid}\nSTATUS={}\n", one_line(status))
}

fn stopping_message(status: &str) -> String {
    format!("STOPPING=1\nSTATUS={}\n", one_line(status))
}

/// A status value must stay on its line: a newline would start another `KEY=VALUE`.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn messages_are_newline_separated_assignments() {
        assert_eq!(
            ready_message(42, "serving on 127.0.0.1:80"),
            "READY=1\nMAINPID=42\nSTATUS=serving on 127.0.0.1:80\n"
        );
        assert_eq!(
            stopping_message("draining\nREADY=1"),
            "STOPPING=1\nSTATUS=draining READY=1\n"
        );
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let path = address(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abs = address(OsStr::new("@kcd/notify")).unwrap();
        assert_eq!(abs.as_abstract_name(), Some(&b"kcd/notify"[..]));
        assert_eq!(abs.as_pathname(), None);
        for bad in ["relative/notify", "", "notify"] {
            assert_eq!(
                address(OsStr::new(bad)).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        let name = format!("kcdproxy-notify-unit-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::new(OsStr::new(&format!("@{name}")))
            .unwrap()
            .stopping("draining");
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining\n");
    }
}
