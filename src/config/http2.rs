//! `[server.http2]`: HTTP/2 on the client side (h2c with prior knowledge
//! on plain listeners, ALPN `h2` on TLS listeners) and its limits.
//!
//! Every key has a default; the section may be left out.

use super::Errors;
use serde::Deserialize;

/// `[server.http2]` as written.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Http2File {
    /// Serve HTTP/2 at all.
    pub enabled: Option<bool>,
    /// Streams a client may have open at once (more are refused).
    pub max_concurrent_streams: Option<u64>,
    /// Flow-control window of each stream (request body bytes a client
    /// may send before ringgate passed them on).
    pub initial_window_bytes: Option<u64>,
    /// Flow-control window of the whole connection.
    pub connection_window_bytes: Option<u64>,
    /// Largest decoded header list of a request (431 / refused above).
    pub max_header_list_bytes: Option<u64>,
    /// Largest frame payload ringgate accepts.
    pub max_frame_bytes: Option<u64>,
    /// Streams a client may cancel within 10 s before the connection is
    /// ended with GOAWAY ENHANCE_YOUR_CALM (rapid reset).
    pub max_client_resets: Option<u64>,
}

/// `[server.http2]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Config {
    /// Serve HTTP/2.
    pub enabled: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub initial_window_bytes: u32,
    /// The connection's receive window.
    pub connection_window_bytes: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_bytes: u32,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_bytes: u32,
    /// Client stream cancellations allowed per 10 s.
    pub max_client_resets: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            enabled: true,
            max_concurrent_streams: 128,
            initial_window_bytes: 65_535,
            connection_window_bytes: 1 << 20,
            max_header_list_bytes: 65_536,
            max_frame_bytes: 16_384,
            max_client_resets: 200,
        }
    }
}

/// Largest flow-control window HTTP/2 allows (RFC 9113 6.9.1).
const MAX_WINDOW: u64 = (1 << 31) - 1;

/// Compiles `[server.http2]`.
pub fn compile(f: Option<&Http2File>, errs: &mut Errors) -> Http2Config {
    let d = Http2Config::default();
    let Some(f) = f else { return d };
    let mut range = |key: &str, v: Option<u64>, lo: u64, hi: u64, def: u32, fix: &str| -> u32 {
        match v {
            None => def,
            Some(v) if (lo..=hi).contains(&v) => v as u32,
            Some(v) => {
                errs.push(
                    format!("server.http2.{key}"),
                    format!("{v} is outside {lo}..={hi}"),
                    fix,
                );
                def
            }
        }
    };
    Http2Config {
        enabled: f.enabled.unwrap_or(d.enabled),
        max_concurrent_streams: range(
            "max_concurrent_streams",
            f.max_concurrent_streams,
            1,
            10_000,
            d.max_concurrent_streams,
            "use a count of streams, e.g. 128",
        ),
        initial_window_bytes: range(
            "initial_window_bytes",
            f.initial_window_bytes,
            1024,
            MAX_WINDOW,
            d.initial_window_bytes,
            "use bytes, e.g. 65535",
        ),
        connection_window_bytes: range(
            "connection_window_bytes",
            f.connection_window_bytes,
            65_535,
            MAX_WINDOW,
            d.connection_window_bytes,
            "use bytes, at least 65535, e.g. 1048576",
        ),
        max_header_list_bytes: range(
            "max_header_list_bytes",
            f.max_header_list_bytes,
            1024,
            1 << 24,
            d.max_header_list_bytes,
            "use bytes, e.g. 65536",
        ),
        max_frame_bytes: range(
            "max_frame_bytes",
            f.max_frame_bytes,
            16_384,
            (1 << 24) - 1,
            d.max_frame_bytes,
            "use bytes between 16384 and 16777215, e.g. 16384",
        ),
        max_client_resets: range(
            "max_client_resets",
            f.max_client_resets,
            1,
            1_000_000,
            d.max_client_resets,
            "use a count, e.g. 200",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_range_errors_name_the_key() {
        let mut errs = Errors(Vec::new());
        assert_eq!(compile(None, &mut errs), Http2Config::default());
        let f = Http2File {
            max_frame_bytes: Some(100),
            initial_window_bytes: Some(1 << 31),
            ..Default::default()
        };
        let c = compile(Some(&f), &mut errs);
        assert_eq!(c.max_frame_bytes, 16_384);
        let keys: Vec<_> = errs.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.http2.initial_window_bytes",
                "server.http2.max_frame_bytes"
            ]
        );
    }
}
