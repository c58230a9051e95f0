//! `discovery = "file"`: a JSON file of instances,
//! `[{"addr": "127.0.0.1:9001", "weight": 1}]` (weight optional, default 1;
//! `host:port` names are resolved on this thread), re-read every [`POLL`]
//! and published when its content changes. An unreadable or invalid file
//! keeps the last good list and says why in the log (once per distinct
//! problem).

use super::super::shared::UpstreamShared;
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_millis(200);

#[derive(Deserialize)]
struct Instance {
    addr: String,
    weight: Option<u32>,
}

/// Parses the file's content into targets.
pub fn parse(text: &[u8]) -> Result<Vec<(SocketAddr, u32)>, String> {
    let list: Vec<Instance> = serde_json::from_slice(text)
        .map_err(|e| format!("not a JSON list of {{\"addr\", \"weight\"}} objects: {e}"))?;
    let mut out = Vec::with_capacity(list.len());
    for i in list {
        let addr = match i.addr.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => i
                .addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("{:?} is not a resolvable host:port", i.addr))?,
        };
        out.push((addr, i.weight.unwrap_or(1)));
    }
    out.sort();
    out.dedup_by_key(|(a, _)| *a);
    Ok(out)
}

/// Watches one file.
pub struct Watcher {
    path: PathBuf,
    last: Option<Vec<u8>>,
    last_error: String,
}

impl Watcher {
    /// A watcher that has not read the file yet.
    pub fn new(path: PathBuf) -> Self {
        Watcher {
            path,
            last: None,
            last_error: String::new(),
        }
    }

    /// Reads the file; publishes when its content changed and is valid.
    pub fn poll(&mut self, shared: &UpstreamShared) {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) => {
                self.fail(shared, format!("cannot read {}: {e}", self.path.display()));
                return;
            }
        };
        if self.last.as_ref() == Some(&text) {
            return;
        }
        match parse(&text) {
            Ok(list) => {
                self.last = Some(text);
                self.last_error.clear();
                super::set_error(shared, None);
                shared.publish(&list);
            }
            Err(e) => self.fail(shared, format!("{}: {e}", self.path.display())),
        }
    }

    fn fail(&mut self, shared: &UpstreamShared, msg: String) {
        if msg != self.last_error {
            tracing::warn!(upstream = %shared.name, "{msg}; keeping the last good list");
            super::set_error(shared, Some(&msg));
            self.last_error = msg;
        }
        // Re-read (and re-publish) once the file is fixed, even if it goes
        // back to the last good content.
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_instances_with_optional_weights() {
        let l = parse(br#"[{"addr": "127.0.0.1:9002", "weight": 3}, {"addr": "127.0.0.1:9001"}]"#)
            .unwrap();
        assert_eq!(
            l,
            vec![
                ("127.0.0.1:9001".parse().unwrap(), 1),
                ("127.0.0.1:9002".parse().unwrap(), 3)
            ]
        );
        assert!(parse(b"{").is_err());
        assert!(parse(br#"[{"addr": "nope"}]"#).is_err());
    }
}
