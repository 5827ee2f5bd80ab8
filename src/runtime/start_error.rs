//! Why the process did not start (or did not run to a clean end): every problem found, each
//! naming the flag, file or part of the process it is about, printed one per line.
//!
//! Start-up checks go on past the first problem where they can, so an operator fixes
//! everything in one go rather than one restart per mistake.

use std::error::Error;
use std::fmt;

/// One problem: what it is about, and why.
#[derive(Debug)]
pub struct StartError {
    /// The flag (`--keytab`), file, address or part of the process (`worker 2`) at fault.
    pub what: String,
    /// Why; `None` when `what` says it all (`worker 2 panicked`).
    pub cause: Option<Box<dyn Error + Send + Sync>>,
}

impl StartError {
    pub fn new(what: impl Into<String>, cause: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        StartError {
            what: what.into(),
            cause: Some(cause.into()),
        }
    }

    /// A problem whose description is complete without a cause.
    pub fn bare(what: impl Into<String>) -> Self {
        StartError {
            what: what.into(),
            cause: None,
        }
    }

    /// The io_uring every worker needs could not be created ([`crate::net::uring_available`]):
    /// one line naming the cause and what an operator changes to fix it.
    pub fn uring_unavailable(err: &std::io::Error) -> Self {
        let fix = match err.raw_os_error() {
            // Denied by a seccomp filter (container runtimes' default profiles) or by the sysctl.
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "allow io_uring_setup, io_uring_enter and io_uring_register in the container's \
                 seccomp profile, or set the sysctl kernel.io_uring_disabled=0 (with 1, only \
                 members of kernel.io_uring_group may use io_uring)"
            }
            Some(libc::ENOSYS) => {
                "kcdproxy needs Linux 5.10 or later built with CONFIG_IO_URING; if the kernel has \
                 it, a seccomp profile hides it: allow io_uring_setup, io_uring_enter and \
                 io_uring_register"
            }
            // Kernels before 5.12 charge the ring to RLIMIT_MEMLOCK.
            Some(libc::ENOMEM) => {
                "raise the locked-memory limit (ulimit -l, or LimitMEMLOCK= in the systemd unit)"
            }
            _ => "kcdproxy needs io_uring (Linux 5.10 or later)",
        };
        StartError::new(
            format!("io_uring is not available (io_uring_setup: {err})"),
            fix,
        )
    }

    /// A message from a module that reports problems as `what: cause` sentences (config, tls,
    /// auth). The text before the first `": "` is what, the rest the cause, so the printed
    /// message is the sentence unchanged.
    pub fn from_message(message: String) -> Self {
        match message.split_once(": ") {
            Some((what, cause)) => StartError::new(what, cause),
            None => StartError::bare(message),
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Some(cause) => write!(f, "{}: {cause}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

impl Error for StartError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause.as_deref().map(|c| c as &(dyn Error + 'static))
    }
}

/// Every problem found, in the order found.
#[derive(Debug, Default)]
pub struct StartErrors(Vec<StartError>);

impl StartErrors {
    pub fn push(&mut self, e: StartError) {
        self.0.push(e);
    }

    /// The value of `r`, or `None` with its errors recorded: for steps that are all tried
    /// before failing, so every problem is reported at once.
    pub fn keep<T, E: Into<StartErrors>>(&mut self, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.extend(e.into());
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, StartError> {
        self.0.iter()
    }

    /// `Ok(value)` when nothing was found, else every problem.
    pub fn or_ok<T>(self, value: T) -> Result<T, StartErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<StartError> for StartErrors {
    fn from(e: StartError) -> Self {
        StartErrors(vec![e])
    }
}

/// The `Vec<String>` of a module that reports every problem as a sentence.
impl From<Vec<String>> for StartErrors {
    fn from(messages: Vec<String>) -> Self {
        StartErrors(messages.into_iter().map(StartError::from_message).collect())
    }
}

impl Extend<StartError> for StartErrors {
    fn extend<I: IntoIterator<Item = StartError>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl<'a> IntoIterator for &'a StartErrors {
    type Item = &'a StartError;
    type IntoIter = std::slice::Iter<'a, StartError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for StartErrors {
    type Item = StartError;
    type IntoIter = std::vec::IntoIter<StartError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// One problem per line.
impl fmt::Display for StartErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl Error for StartErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_what_then_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address in use");
        let e = StartError::new("listen 127.0.0.1:80", io);
        assert_eq!(e.to_string(), "listen 127.0.0.1:80: Address in use");
        assert!(e.source().is_some());
        let e = StartError::bare("worker 2 panicked");
        assert_eq!(e.to_string(), "worker 2 panicked");
        assert!(e.source().is_none());
    }

    #[test]
    fn uring_unavailable_names_the_cause_and_the_fix() {
        let e = StartError::uring_unavailable(&std::io::Error::from_raw_os_error(libc::EPERM));
        let m = e.to_string();
        assert!(
            m.starts_with(
                "io_uring is not available (io_uring_setup: Operation not permitted (os error 1)): \
                 allow io_uring_setup"
            ),
            "{m}"
        );
        assert!(m.contains("seccomp profile"), "{m}");
        assert!(m.contains("kernel.io_uring_disabled=0"), "{m}");
        assert!(!m.contains('\n'), "one line: {m}");

        let m = StartError::uring_unavailable(&std::io::Error::from_raw_os_error(libc::ENOSYS))
            .to_string();
        assert!(m.contains("Function not implemented"), "{m}");
        assert!(m.contains("CONFIG_IO_URING"), "{m}");

        let m = StartError::uring_unavailable(&std::io::Error::from_raw_os_error(libc::ENOMEM))
            .to_string();
        assert!(m.contains("Cannot allocate memory"), "{m}");
        assert!(m.contains("LimitMEMLOCK="), "{m}");

        let m = StartError::uring_unavailable(&std::io::Error::from_raw_os_error(libc::EINVAL))
            .to_string();
        assert!(
            m.ends_with("kcdproxy needs io_uring (Linux 5.10 or later)"),
            "{m}"
        );
    }

    #[test]
    fn messages_print_unchanged() {
        for m in [
            "--keytab `/etc/x.keytab`: No such file or directory (os error 2)",
            "route `/a`: unknown option `x=y`",
            "no TLS certificate configured",
            "--metrics-listen `x`: expected IP:PORT",
        ] {
            let e = StartError::from_message(m.to_string());
            assert_eq!(e.to_string(), m);
        }
        let e = StartError::from_message("--winbind: helper exited: 1".into());
        assert_eq!(e.what, "--winbind");
    }

    #[test]
    fn every_error_is_kept_in_order() {
        let mut errs = StartErrors::from(vec!["a: 1".to_string(), "b".to_string()]);
        errs.push(StartError::bare("c"));
        assert_eq!(errs.len(), 3);
        assert_eq!(errs.to_string(), "a: 1\nb\nc");
        assert!(StartErrors::default().or_ok(()).is_ok());
        assert!(errs.or_ok(()).is_err());
    }
}
