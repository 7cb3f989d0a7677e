//! A TCP proxy between the drive and a test server that misbehaves on demand: it delays bytes,
//! refuses new connections, swallows them (accepts and never answers), or resets every open
//! connection — what a flaky network does. Threads and blocking sockets; one per direction of
//! each connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the proxy treats traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything.
    None,
    /// Forwards, each piece of data held back this long first.
    Delay(Duration),
    /// New connections are closed at once (a refused or dropped connection).
    Refuse,
    /// New connections are accepted and never answered; open ones stop moving bytes.
    Blackhole,
    /// Forwards, but the last byte of every piece of more than 1 KiB from the server to the
    /// client is flipped (past any HTTP header: bodies arrive damaged).
    Corrupt,
}

struct Shared {
    target: SocketAddr,
    fault: Mutex<Fault>,
    /// Delay in milliseconds for [`Fault::Delay`], read on every piece.
    delay_ms: AtomicU64,
    /// 0 forward, 1 stall.
    stalled: AtomicU8,
    /// Whether [`Fault::Corrupt`] is on.
    corrupt: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
    /// Connections accepted so far.
    accepted: AtomicU64,
}

/// A running proxy; stops (and drops every connection) when dropped.
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy on 127.0.0.1 to `target_port` on 127.0.0.1.
    pub fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            fault: Mutex::new(Fault::None),
            delay_ms: AtomicU64::new(0),
            stalled: AtomicU8::new(0),
            corrupt: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("test-proxy".into())
            .spawn(move || accept_loop(listener, s))
            .expect("spawn the proxy");
        Proxy { port, shared }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, f: Fault) {
        *self.shared.fault.lock().unwrap_or_else(|e| e.into_inner()) = f;
        let (delay, stall) = match f {
            Fault::Delay(d) => (d.as_millis() as u64, 0),
            Fault::Blackhole => (0, 1),
            Fault::None | Fault::Refuse | Fault::Corrupt => (0, 0),
        };
        self.shared
            .corrupt
            .store(f == Fault::Corrupt, Ordering::Relaxed);
        self.shared.delay_ms.store(delay, Ordering::Relaxed);
        self.shared.stalled.store(stall, Ordering::Relaxed);
    }

    /// Resets every open connection (both sides see the connection die).
    pub fn reset_all(&self) {
        let conns: Vec<TcpStream> =
            std::mem::take(&mut *self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for c in conns {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.reset_all();
        // Wakes the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept_loop(listener: TcpListener, s: Arc<Shared>) {
    for conn in listener.incoming() {
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(client) = conn else { continue };
        s.accepted.fetch_add(1, Ordering::Relaxed);
        let fault = *s.fault.lock().unwrap_or_else(|e| e.into_inner());
        match fault {
            Fault::Refuse => {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
            Fault::Blackhole => {
                // Held open, never answered, until reset or the proxy stops.
                remember(&s, &client);
                continue;
            }
            Fault::None | Fault::Delay(_) | Fault::Corrupt => {}
        }
        let Ok(server) = TcpStream::connect_timeout(&s.target, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        remember(&s, &client);
        remember(&s, &server);
        for (from, to, to_client) in [(&client, &server, false), (&server, &client, true)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let s = s.clone();
            let _ = std::thread::Builder::new()
                .name("test-proxy-pipe".into())
                .spawn(move || pipe(from, to, to_client, &s));
        }
    }
}

fn remember(s: &Shared, c: &TcpStream) {
    if let Ok(c) = c.try_clone() {
        let mut conns = s.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| c.peer_addr().is_ok());
        conns.push(c);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, to_client: bool, s: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while s.stalled.load(Ordering::Relaxed) == 1 && !s.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let d = s.delay_ms.load(Ordering::Relaxed);
        if d > 0 {
            std::thread::sleep(Duration::from_millis(d));
        }
        if to_client && n > 1024 && s.corrupt.load(Ordering::Relaxed) {
            buf[n - 1] ^= 0x5a;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
