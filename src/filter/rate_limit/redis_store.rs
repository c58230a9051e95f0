//! The Redis lease thread: takes blocks of quota from Redis (and gives back
//! what an idle instance holds) with one atomic Lua script per key, for
//! the reconciler. It is the only code that talks to Redis; it runs on its
//! own thread with the blocking `redis` client and short timeouts, so a
//! slow or dead Redis never reaches a worker.
//!
//! The script runs the limit's algorithm in Redis on *blocks* of requests:
//! a fixed window is a counter per window (`INCRBY` + `PEXPIRE`), a sliding
//! window weighs the previous window's counter, a token (or leaky) bucket
//! is a hash of tokens and a timestamp refilled with Redis' clock. It
//! grants `min(want, what is left)`; a negative `want` gives quota back.
//! Requests that arrive together go out as one pipeline.
//!
//! When Redis is unreachable every request fails at once (the reconciler
//! then applies `on_store_error`), and the thread reconnects in the
//! background every 250 ms, saying `Up` when it is back.

use super::algo::{Algorithm, Params};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

/// Take (`want > 0`) or give back (`want < 0`) quota of one key.
#[derive(Debug)]
pub(crate) struct LeaseReq {
    pub limit: u16,
    pub key: u64,
    pub rkey: Vec<u8>,
    pub params: Params,
    pub want: i64,
    /// The window the quota given back belongs to.
    pub win: u64,
}

/// What the lease thread answers.
#[derive(Debug)]
pub(crate) enum LeaseResp {
    /// Redis granted `granted` of `want` in window `win`, which ends in
    /// `reset_ms` (for buckets: time until a token is back).
    Granted {
        limit: u16,
        key: u64,
        want: i64,
        granted: u64,
        win: u64,
        reset_ms: u64,
    },
    /// The call failed.
    Failed { limit: u16, key: u64 },
    /// Connected again.
    Up,
    /// Connection lost.
    Down,
}

const SCRIPT: &str = r#"
local mode = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if mode == 3 then
  local burst = tonumber(ARGV[5])
  local rate = tonumber(ARGV[6])
  local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  local tokens = tonumber(v[1]) or burst
  local ts = tonumber(v[2]) or now
  if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
  local grant = 0
  if want < 0 then
    tokens = math.min(burst, tokens - want)
  else
    grant = math.max(0, math.min(want, math.floor(tokens)))
    tokens = tokens - grant
  end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
  local reset = 0
  if tokens < 1 then reset = math.ceil((1 - tokens) / rate) end
  return {grant, 0, reset}
end
local win = math.floor(now / window)
local cur = KEYS[1] .. ':' .. win
local left = window - (now % window)
if want < 0 then
  if tonumber(ARGV[7]) == win then
    local c = tonumber(redis.call('GET', cur) or '0')
    local back = math.min(-want, c)
    if back > 0 then redis.call('DECRBY', cur, back) end
  end
  return {0, win, left}
end
local used = tonumber(redis.call('GET', cur) or '0')
if mode == 2 then
  local prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. (win - 1)) or '0')
  used = used + prev * (left / window)
end
local grant = math.max(0, math.min(want, math.floor(limit - used)))
if grant > 0 then
  redis.call('INCRBY', cur, grant)
  redis.call('PEXPIRE', cur, window * 2 + 1000)
end
return {grant, win, left}
"#;

/// The script's mode and bucket numbers for a limit. A global leaky bucket
/// is metered in Redis as a bucket as deep as its queue (`max_delay_ms` at
/// the leak rate); each worker still paces what it admits.
fn script_args(p: &Params) -> (u8, f64, f64) {
    let rate_ms = p.rate * 1e6;
    match p.algorithm {
        Algorithm::FixedWindow => (1, 0.0, 0.0),
        Algorithm::SlidingWindow => (2, 0.0, 0.0),
        Algorithm::TokenBucket => (3, p.burst, rate_ms),
        Algorithm::LeakyBucket => {
            let depth = 1.0 + (p.max_delay_ns as f64 * p.rate).floor();
            (3, depth, rate_ms)
        }
    }
}

struct Conn {
    conn: redis::Connection,
    sha: String,
}

/// Runs the lease thread until the reconciler hangs up.
pub(crate) fn run(url: String, timeout: Duration, rx: Receiver<LeaseReq>, tx: Sender<LeaseResp>) {
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "redis.url is not usable; global limits apply on_store_error");
            let _ = tx.send(LeaseResp::Down);
            // Answer every request with a failure until shutdown.
            while let Ok(r) = rx.recv() {
                let _ = tx.send(LeaseResp::Failed {
                    limit: r.limit,
                    key: r.key,
                });
            }
            return;
        }
    };
    let mut conn: Option<Conn> = None;
    let mut up = true;
    let mut next_try = Instant::now();
    let connect = |client: &redis::Client| -> redis::RedisResult<Conn> {
        let mut c = client.get_connection_with_timeout(timeout)?;
        c.set_read_timeout(Some(timeout))?;
        c.set_write_timeout(Some(timeout))?;
        let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query(&mut c)?;
        Ok(Conn { conn: c, sha })
    };
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if conn.is_none() && Instant::now() >= next_try {
            match connect(&client) {
                Ok(c) => {
                    conn = Some(c);
                    if !up {
                        tracing::info!("redis reachable again");
                        up = true;
                        let _ = tx.send(LeaseResp::Up);
                    }
                }
                Err(e) => {
                    next_try = Instant::now() + Duration::from_millis(250);
                    if up {
                        tracing::warn!(error = %e, "redis unreachable; reconnecting in the background");
                        up = false;
                        let _ = tx.send(LeaseResp::Down);
                    }
                }
            }
        }
        let Some(first) = first else {
            // Idle: make sure the connection still answers.
            if let Some(c) = conn.as_mut()
                && redis::cmd("PING").query::<String>(&mut c.conn).is_err()
            {
                tracing::warn!("redis stopped answering; reconnecting in the background");
                conn = None;
                if up {
                    up = false;
                    let _ = tx.send(LeaseResp::Down);
                }
            }
            continue;
        };
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(c) = conn.as_mut() else {
            for r in batch {
                let _ = tx.send(LeaseResp::Failed {
                    limit: r.limit,
                    key: r.key,
                });
            }
            continue;
        };
        let mut pipe = redis::pipe();
        for r in &batch {
            let (mode, burst, rate_ms) = script_args(&r.params);
            pipe.cmd("EVALSHA")
                .arg(&c.sha)
                .arg(1)
                .arg(&r.rkey[..])
                .arg(mode)
                .arg(r.want)
                .arg(r.params.limit)
                .arg((r.params.window_ns / 1_000_000).max(1))
                .arg(burst)
                .arg(rate_ms)
                .arg(r.win);
        }
        match pipe.query::<Vec<(i64, i64, i64)>>(&mut c.conn) {
            Ok(out) => {
                for (r, (granted, win, reset)) in batch.into_iter().zip(out) {
                    let _ = tx.send(LeaseResp::Granted {
                        limit: r.limit,
                        key: r.key,
                        want: r.want,
                        granted: granted.max(0) as u64,
                        win: win.max(0) as u64,
                        reset_ms: reset.max(0) as u64,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "redis lease failed; reconnecting in the background");
                conn = None;
                next_try = Instant::now();
                if up {
                    up = false;
                    let _ = tx.send(LeaseResp::Down);
                }
                for r in batch {
                    let _ = tx.send(LeaseResp::Failed {
                        limit: r.limit,
                        key: r.key,
                    });
                }
            }
        }
    }
}
