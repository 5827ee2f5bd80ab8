//! A tiny HTTP/1.1 origin that records every request head it receives and answers `200` with
//! the body `recorded\n`: what the proxy forwards (identity header, no `Authorization`) is read
//! back from the heads.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::poll_until;

/// A running recorder (keep-alive; request bodies by Content-Length are read and dropped).
pub struct Recorder {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the recorder");
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let h = h.clone();
                std::thread::spawn(move || serve_recorded(stream, &h));
            }
        });
        Recorder { addr, heads }
    }

    /// `http://127.0.0.1:PORT`, as a proxy route's backend.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The heads received whose request line contains `path`, waiting up to 3 s for at least one.
    pub fn heads_for(&self, path: &str) -> Vec<String> {
        let mut found = Vec::new();
        poll_until(Duration::from_secs(3), || {
            found = self
                .heads
                .lock()
                .unwrap()
                .iter()
                .filter(|h| h.lines().next().is_some_and(|l| l.contains(path)))
                .cloned()
                .collect();
            !found.is_empty()
        });
        found
    }
}

/// Header values named `name` in a recorded head.
pub fn head_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn serve_recorded(mut stream: TcpStream, heads: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let len: usize = head_values(&head, "content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len);
        heads.lock().unwrap().push(head);
        let body = b"recorded\n";
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if stream.write_all(resp.as_bytes()).is_err() || stream.write_all(body).is_err() {
            return;
        }
    }
}
