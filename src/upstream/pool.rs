//! Per-worker keep-alive pools, one LIFO stack of idle connections per
//! target (the most recently used socket is the warmest and the least
//! likely to have been closed by the backend).
//!
//! A pooled connection idle for more than [`CHECK_AFTER_IDLE`] is checked
//! before reuse with a non-blocking `MSG_PEEK` (a closed or garbage-carrying
//! socket is dropped); connections idle past the upstream's
//! `idle_timeout_ms` are closed by the worker's sweeper.

use crate::config::UpstreamConfig;
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Pooled connections idle longer than this are probed before reuse.
pub const CHECK_AFTER_IDLE: Duration = Duration::from_millis(1);

/// An idle upstream connection.
pub struct Pooled {
    /// The socket.
    pub stream: TcpStream,
    /// When it went idle.
    pub since: Instant,
}

/// One target of an upstream, on one worker.
pub struct TargetState {
    /// Its address.
    pub addr: SocketAddr,
    /// Idle connections, most recent last.
    pub idle: RefCell<Vec<Pooled>>,
    /// Requests this worker has in flight to it.
    pub in_flight: Cell<u32>,
}

/// One upstream on one worker.
pub struct UpstreamState {
    /// Targets, in config order.
    pub targets: Vec<TargetState>,
    /// Round-robin cursor.
    pub cursor: Cell<usize>,
    /// Most idle connections kept per target.
    pub max_idle: usize,
    /// Idle timeout.
    pub idle_timeout: Duration,
}

impl UpstreamState {
    /// Worker-local state for an upstream.
    pub fn new(cfg: &UpstreamConfig, worker: usize) -> Self {
        UpstreamState {
            targets: cfg
                .targets
                .iter()
                .map(|&addr| TargetState {
                    addr,
                    idle: RefCell::new(Vec::with_capacity(cfg.max_idle_per_target)),
                    in_flight: Cell::new(0),
                })
                .collect(),
            // Workers start at different targets so they spread load.
            cursor: Cell::new(worker),
            max_idle: cfg.max_idle_per_target,
            idle_timeout: cfg.idle_timeout,
        }
    }

    /// Takes a live idle connection to target `t`, if any.
    pub fn checkout(&self, t: usize, now: Instant) -> Option<TcpStream> {
        let mut idle = self.targets[t].idle.borrow_mut();
        while let Some(p) = idle.pop() {
            let age = now.saturating_duration_since(p.since);
            if age >= self.idle_timeout {
                continue;
            }
            if age >= CHECK_AFTER_IDLE && !is_alive(&p.stream) {
                continue;
            }
            return Some(p.stream);
        }
        None
    }

    /// Returns a connection to the pool (dropped when the pool is full).
    pub fn checkin(&self, t: usize, stream: TcpStream, now: Instant) {
        let mut idle = self.targets[t].idle.borrow_mut();
        if idle.len() < self.max_idle {
            idle.push(Pooled { stream, since: now });
        }
    }

    /// Closes idle connections older than the idle timeout.
    pub fn sweep(&self, now: Instant) {
        for t in &self.targets {
            t.idle
                .borrow_mut()
                .retain(|p| now.saturating_duration_since(p.since) < self.idle_timeout);
        }
    }

    /// Idle connections across targets.
    pub fn idle_count(&self) -> usize {
        self.targets.iter().map(|t| t.idle.borrow().len()).sum()
    }
}

/// A pooled socket is alive when a non-blocking peek finds nothing to read:
/// EOF means the backend closed it; unexpected bytes mean it is out of sync.
fn is_alive(stream: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: recv on a valid fd into a 1-byte stack buffer.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr() as *mut libc::c_void,
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// Connects to `addr` within `timeout`, with `TCP_NODELAY`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(ConnectError::Failed(e)),
        Err(_) => Err(ConnectError::TimedOut),
    }
}

/// Why a connect failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Refused, unreachable, reset.
    Failed(io::Error),
    /// `connect_timeout_ms` passed.
    TimedOut,
}
