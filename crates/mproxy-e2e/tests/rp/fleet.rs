//! Many TCP or TLS readers of one `--tcp-output-addr` in one mio loop,
//! each comparing what it reads with the feed as it goes

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use mproxy_testsupport::ChildGuard;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use super::wait_for_clients;

/// One reader
pub(crate) struct Reader {
    sock: mio::net::TcpStream,
    tls: Option<ClientConnection>,
    /// Bytes read, all equal to the feed's first bytes
    pub(crate) at: usize,
    /// Why it failed: bytes that differ, an error, an unexpected end
    pub(crate) failed: Option<String>,
}

impl Reader {
    fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.is_handshaking())
    }

    fn check(&mut self, data: &[u8], expected: &[u8]) {
        let end = self.at + data.len();
        if expected.get(self.at..end) != Some(data) {
            self.failed = Some(format!("bytes {}..{end} differ from the feed", self.at));
        }
        self.at = end;
    }

    /// Read (and for TLS, write) what the socket allows
    fn pump(&mut self, expected: &[u8], buf: &mut [u8]) {
        while self.failed.is_none() {
            let Some(conn) = self.tls.as_mut() else {
                match self.sock.read(buf) {
                    Ok(0) => self.failed = Some(format!("EOF after {} bytes", self.at)),
                    Ok(n) => self.check(&buf[..n], expected),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => self.failed = Some(format!("read: {e}")),
                }
                continue;
            };
            while conn.wants_write() {
                match conn.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        self.failed = Some(format!("write: {e}"));
                        return;
                    }
                }
            }
            match conn.read_tls(&mut self.sock) {
                Ok(0) => {
                    self.failed = Some(format!("EOF after {} bytes", self.at));
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.failed = Some(format!("read: {e}"));
                    return;
                }
            }
            if let Err(e) = conn.process_new_packets() {
                self.failed = Some(format!("TLS: {e}"));
                return;
            }
            loop {
                let conn = self.tls.as_mut().expect("a TLS reader");
                match conn.reader().read(buf) {
                    Ok(0) => {
                        self.failed = Some(format!("close_notify after {} bytes", self.at));
                        return;
                    }
                    Ok(n) => self.check(&buf[..n], expected),
                    Err(_) => break, // WouldBlock: no plaintext yet
                }
            }
        }
    }
}

/// Readers of one address, driven together
pub(crate) struct Fleet {
    poll: Poll,
    events: Events,
    pub(crate) readers: Vec<Reader>,
    buf: Vec<u8>,
}

impl Fleet {
    /// `n` readers of `to` (TLS with `tls`), connected in waves of at most
    /// `wave` (the proxy must have logged each wave, and for TLS every
    /// handshake of it must be done, before the next starts)
    pub(crate) fn connect(
        p: &ChildGuard,
        to: SocketAddr,
        n: usize,
        tls: Option<&Arc<ClientConfig>>,
        wave: usize,
    ) -> Self {
        let mut fleet = Self {
            poll: Poll::new().unwrap(),
            events: Events::with_capacity(1024),
            readers: Vec::with_capacity(n),
            buf: vec![0; 64 * 1024],
        };
        let before = p.stderr_text().matches(" connected").count();
        while fleet.readers.len() < n {
            let k = wave.min(n - fleet.readers.len());
            for _ in 0..k {
                fleet.open(to, tls);
            }
            wait_for_clients(p, before + fleet.readers.len());
            let deadline = Instant::now() + Duration::from_secs(20);
            while fleet.readers.iter().any(Reader::handshaking) {
                assert!(Instant::now() < deadline, "handshakes not done in 20 s");
                fleet.turn(&[], Duration::from_millis(10));
            }
            if let Some((i, why)) = fleet.failure() {
                panic!("reader {i} failed while connecting: {why}");
            }
        }
        fleet
    }

    fn open(&mut self, to: SocketAddr, tls: Option<&Arc<ClientConfig>>) {
        let sock = TcpStream::connect(to).unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut sock = mio::net::TcpStream::from_std(sock);
        let token = Token(self.readers.len());
        self.poll
            .registry()
            .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
            .unwrap();
        let tls = tls.map(|c| {
            let name = ServerName::IpAddress(to.ip().into());
            let mut conn = ClientConnection::new(Arc::clone(c), name).unwrap();
            // the ClientHello goes out at the first writable event
            conn.writer().flush().unwrap();
            conn
        });
        self.readers.push(Reader {
            sock,
            tls,
            at: 0,
            failed: None,
        });
    }

    /// One wait for readiness (at most `timeout`) and what follows
    pub(crate) fn turn(&mut self, expected: &[u8], timeout: Duration) {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => panic!("poll: {e}"),
        }
        for ev in self.events.iter() {
            if let Some(r) = self.readers.get_mut(ev.token().0) {
                r.pump(expected, &mut self.buf);
            }
        }
    }

    /// Read until every reader has all of `expected` (or failed), or `timeout`
    pub(crate) fn read_all(&mut self, expected: &[u8], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline
            && self
                .readers
                .iter()
                .any(|r| r.failed.is_none() && r.at < expected.len())
        {
            self.turn(expected, Duration::from_millis(50));
        }
    }

    /// The first reader that failed, and why
    pub(crate) fn failure(&self) -> Option<(usize, &str)> {
        self.readers
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.failed.as_deref().map(|f| (i, f)))
    }
}
