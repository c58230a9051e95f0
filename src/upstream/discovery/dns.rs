//! `discovery = "dns"`: a name re-resolved on the upstream's control
//! thread, never on a worker.
//!
//! - `dns_name = "host:port"`: A and AAAA records, every address on that
//!   port, weight 1.
//! - `dns_name = "_service._proto.name"`: SRV records of the lowest
//!   priority give ports and weights; their targets are resolved from the
//!   answer's additional section, or with A/AAAA queries.
//!
//! Key components: [`DnsResolver`], a hickory resolver driven by a small
//! current-thread tokio runtime that the discovery thread owns (the
//! resolver's futures only ever run inside that thread's `block_on`), and
//! [`refresh`], which resolves once, publishes a usable answer and says
//! when to resolve again.
//!
//! Nameservers: with `dns_server` (one `IP[:port]`, or a list of them) the
//! queries go to those servers only; without it, to every `nameserver` of
//! `/etc/resolv.conf` with its `search`, `ndots`, `timeout` and `attempts`
//! options, after `/etc/hosts`. Each server is asked over UDP with EDNS(0)
//! (asked again without it when a server answers FORMERR); an answer with
//! the TC flag is asked again over TCP, so large SRV sets are never cut
//! short; a server that fails or times out hands the query to the next.
//!
//! When: again after `dns_interval_ms`, or sooner when the records'
//! TTL (the smallest among the records used, SRV and address records
//! alike) runs out first, so a list is never served past its TTL; a TTL
//! under one second counts as one second. Every resolution asks the
//! servers (nothing is answered from a cache).
//! A failed or empty resolution keeps the last good list, logs why and is
//! tried again after `dns_interval_ms`.

use super::super::shared::UpstreamShared;
use crate::config::DnsDiscovery;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Deadline of one query to one server (`dns_server` given; with the
/// system's servers, resolv.conf's `timeout` applies).
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(1000);

/// The shortest wait between resolutions that a TTL can cause.
pub const MIN_TTL_WAIT: Duration = Duration::from_secs(1);

/// A resolver for one upstream, with the runtime that drives it. Lives on
/// the upstream's discovery thread.
pub struct DnsResolver {
    rt: tokio::runtime::Runtime,
    resolver: TokioResolver,
    /// The same servers asked without EDNS(0), for a server that answers
    /// FORMERR to a query carrying it.
    plain: TokioResolver,
}

/// One resolution: the targets, sorted, and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `(address, weight)`, sorted, each address once.
    pub targets: Vec<(SocketAddr, u32)>,
    /// The smallest TTL left among the records the targets came from.
    pub ttl: Duration,
}

impl DnsResolver {
    /// A resolver asking `d`'s nameservers (or the system's).
    pub fn new(d: &DnsDiscovery) -> io::Result<DnsResolver> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let build = |edns: bool| {
            let provider = TokioRuntimeProvider::default();
            let mut builder = if d.servers.is_empty() {
                let mut b = TokioResolver::builder(provider).map_err(io::Error::other)?;
                b.options_mut().use_hosts_file = ResolveHosts::Always;
                b
            } else {
                let servers = d
                    .servers
                    .iter()
                    .map(|s| {
                        let conns = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                            .into_iter()
                            .map(|mut c| {
                                c.port = s.port();
                                c
                            })
                            .collect();
                        NameServerConfig::new(s.ip(), true, conns)
                    })
                    .collect();
                let mut b = TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), servers),
                    provider,
                );
                let o = b.options_mut();
                *o = ResolverOpts::default();
                o.timeout = QUERY_TIMEOUT;
                o.use_hosts_file = ResolveHosts::Never;
                b
            };
            let o = builder.options_mut();
            o.edns0 = edns;
            // Every resolution goes to the servers: the answer's TTL
            // decides the next one, not a cache in between.
            o.cache_size = 0;
            let _in_runtime = rt.enter();
            builder.build().map_err(io::Error::other)
        };
        let resolver = build(true)?;
        let plain = build(false)?;
        Ok(DnsResolver {
            rt,
            resolver,
            plain,
        })
    }

    /// The targets `d` names now.
    pub fn resolve(&self, d: &DnsDiscovery) -> io::Result<Resolved> {
        let now = Instant::now();
        let (mut targets, until) = self
            .rt
            .block_on(async {
                match Self::lookup(&self.resolver, d).await {
                    // A server that does not know EDNS: ask again without it.
                    Err(e) if is_formerr(&e) => Self::lookup(&self.plain, d).await,
                    r => r,
                }
            })
            .map_err(io::Error::other)?;
        targets.sort();
        targets.dedup_by_key(|(a, _)| *a);
        Ok(Resolved {
            targets,
            ttl: until.saturating_duration_since(now),
        })
    }

    async fn lookup(
        r: &TokioResolver,
        d: &DnsDiscovery,
    ) -> Result<(Vec<(SocketAddr, u32)>, Instant), NetError> {
        // Nothing cached may answer (see `new`); clearing also covers a
        // resolver that caches despite a zero size.
        r.clear_cache();
        match d.port {
            Some(port) => {
                let (ips, until) = addresses(r, &d.host).await?;
                let t = ips
                    .into_iter()
                    .map(|ip| (SocketAddr::new(ip, port), 1))
                    .collect();
                Ok((t, until))
            }
            None => srv_targets(r, &d.host).await,
        }
    }
}

fn is_formerr(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::FormErr))
    )
}

/// A and AAAA addresses of `host`, and until when they are valid.
async fn addresses(r: &TokioResolver, host: &str) -> Result<(Vec<IpAddr>, Instant), NetError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((vec![ip], far_future()));
    }
    let l = r.lookup_ip(host).await?;
    Ok((l.iter().collect(), l.valid_until()))
}

/// SRV targets of `name`: the lowest priority's records, with ports and
/// weights (weight 0 counts as 1), and until when they are valid.
async fn srv_targets(
    r: &TokioResolver,
    name: &str,
) -> Result<(Vec<(SocketAddr, u32)>, Instant), NetError> {
    let l = r.lookup(name, RecordType::SRV).await?;
    let mut until = l.valid_until();
    let srvs: Vec<_> = l
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s),
            _ => None,
        })
        .collect();
    let Some(best) = srvs.iter().map(|s| s.priority).min() else {
        return Ok((Vec::new(), until));
    };
    let mut out = Vec::new();
    for s in srvs.iter().filter(|s| s.priority == best) {
        let target = host_of(&s.target.to_ascii());
        let mut ips: Vec<IpAddr> = l
            .additionals()
            .iter()
            .filter(|r| host_of(&r.name.to_ascii()).eq_ignore_ascii_case(&target))
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        if ips.is_empty() {
            let (found, valid) = addresses(r, &target).await?;
            ips = found;
            until = until.min(valid);
        }
        let w = u32::from(s.weight).max(1);
        out.extend(ips.into_iter().map(|ip| (SocketAddr::new(ip, s.port), w)));
    }
    Ok((out, until))
}

/// A name without its trailing root dot.
fn host_of(name: &str) -> String {
    name.trim_end_matches('.').to_string()
}

/// Far enough ahead never to shorten an interval.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// How long to wait before resolving again: `interval`, or the answer's
/// TTL when that runs out first (never less than [`MIN_TTL_WAIT`] on its
/// account).
pub fn next_wait(interval: Duration, ttl: Option<Duration>) -> Duration {
    match ttl {
        Some(t) => interval.min(t.max(MIN_TTL_WAIT)),
        None => interval,
    }
}

/// Resolves `d` once with `r` and publishes the result when it is usable;
/// returns how long to wait before the next resolution.
pub fn refresh(shared: &UpstreamShared, d: &DnsDiscovery, r: &DnsResolver) -> Duration {
    match r.resolve(d) {
        Ok(res) if !res.targets.is_empty() => {
            super::set_error(shared, None);
            shared.publish(&res.targets);
            next_wait(d.interval, Some(res.ttl))
        }
        Ok(_) => {
            let msg = format!("{} resolved to no address; keeping the last list", d.name);
            tracing::warn!(upstream = %shared.name, "{msg}");
            super::set_error(shared, Some(&msg));
            d.interval
        }
        Err(e) => {
            failed(shared, d, &e);
            d.interval
        }
    }
}

/// Records a failed resolution (or a resolver that could not be built).
pub fn failed(shared: &UpstreamShared, d: &DnsDiscovery, e: &io::Error) {
    let msg = format!("resolving {} failed: {e}; keeping the last list", d.name);
    tracing::warn!(upstream = %shared.name, "{msg}");
    super::set_error(shared, Some(&msg));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::sync::{Arc, Mutex};

    /// A nameserver on 127.0.0.1 that answers each UDP query with what
    /// `answer` makes of it (nothing for `None`) and keeps every query.
    struct Server {
        addr: SocketAddr,
        queries: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Server {
        fn start(answer: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> Server {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = sock.local_addr().unwrap();
            let queries = Arc::new(Mutex::new(Vec::new()));
            let q = queries.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while let Ok((n, from)) = sock.recv_from(&mut buf) {
                    q.lock().unwrap().push(buf[..n].to_vec());
                    if let Some(r) = answer(&buf[..n]) {
                        let _ = sock.send_to(&r, from);
                    }
                }
            });
            Server { addr, queries }
        }

        fn discovery(&self, name: &str, port: Option<u16>) -> DnsDiscovery {
            DnsDiscovery {
                name: name.to_string(),
                host: name.to_string(),
                port,
                interval: Duration::from_secs(5),
                servers: vec![self.addr],
            }
        }
    }

    /// Where the question of `q` ends, and its type.
    fn question_end(q: &[u8]) -> (usize, u16) {
        let mut pos = 12;
        while q[pos] != 0 {
            pos += 1 + q[pos] as usize;
        }
        (pos + 5, u16::from_be_bytes([q[pos + 1], q[pos + 2]]))
    }

    fn put_name(out: &mut Vec<u8>, name: &str) {
        for l in name.split('.') {
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
    }

    /// The header and question of a response to `q` with `rcode` and the
    /// given section counts.
    fn response(q: &[u8], rcode: u8, an: u16, ar: u16) -> Vec<u8> {
        let (end, _) = question_end(q);
        let mut r = q[..2].to_vec();
        r.extend_from_slice(&[0x85, 0x80 | rcode, 0, 1]);
        r.extend_from_slice(&an.to_be_bytes());
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(&ar.to_be_bytes());
        r.extend_from_slice(&q[12..end]);
        r
    }

    /// An SRV answer whose owner is a compression pointer to the question
    /// and whose target's address comes in the additional section: read
    /// whole, with no further query for the target.
    #[test]
    fn srv_answer_with_compressed_names_and_additional_records() {
        let srv = Server::start(|q| {
            let (_, qtype) = question_end(q);
            if qtype != 33 {
                return Some(response(q, 3, 0, 0));
            }
            let mut r = response(q, 0, 1, 1);
            r.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 30]);
            let mut rd = vec![0, 10, 0, 5, 0x23, 0x29];
            put_name(&mut rd, "node1.svc.local");
            r.extend_from_slice(&(rd.len() as u16).to_be_bytes());
            r.extend_from_slice(&rd);
            put_name(&mut r, "node1.svc.local");
            r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 9]);
            Some(r)
        });
        let d = srv.discovery("_http._tcp.svc.local", None);
        let res = DnsResolver::new(&d).unwrap().resolve(&d).unwrap();
        assert_eq!(
            res.targets,
            vec![(SocketAddr::from(([127, 0, 0, 9], 9001)), 5)]
        );
        assert!(
            res.ttl <= Duration::from_secs(31) && res.ttl > Duration::from_secs(20),
            "{:?}",
            res.ttl
        );
        let queries = srv.queries.lock().unwrap();
        assert!(
            queries.iter().all(|q| question_end(q).1 == 33),
            "the target was asked for although the answer carried it"
        );
    }

    /// Queries offer EDNS(0): one OPT pseudo-record after the question.
    #[test]
    fn queries_carry_one_opt_record() {
        let srv = Server::start(|q| {
            let mut r = response(q, 0, 1, 0);
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 3]);
            Some(r)
        });
        let d = srv.discovery("a.test", Some(80));
        let r = DnsResolver::new(&d).unwrap();
        let res = r.resolve(&d).unwrap();
        assert!(
            res.targets
                .contains(&(SocketAddr::from(([127, 0, 0, 3], 80)), 1)),
            "{res:?}"
        );
        let queries = srv.queries.lock().unwrap();
        assert!(!queries.is_empty());
        for q in queries.iter() {
            assert_eq!(u16::from_be_bytes([q[10], q[11]]), 1, "ARCOUNT");
            let (end, _) = question_end(q);
            // Owner: the root; type OPT.
            assert_eq!(&q[end..end + 3], &[0, 0, 41], "{q:?}");
        }
    }

    /// A server that does not know EDNS answers FORMERR to a query with an
    /// OPT record; the query is asked again without it.
    #[test]
    fn formerr_to_edns_is_asked_again_without_it() {
        let srv = Server::start(|q| {
            if u16::from_be_bytes([q[10], q[11]]) > 0 {
                return Some(response(q, 1, 0, 0));
            }
            let mut r = response(q, 0, 1, 0);
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 4]);
            Some(r)
        });
        let d = srv.discovery("old.test", Some(80));
        let res = DnsResolver::new(&d).unwrap().resolve(&d).unwrap();
        assert!(
            res.targets
                .contains(&(SocketAddr::from(([127, 0, 0, 4], 80)), 1)),
            "{res:?}"
        );
    }

    /// NXDOMAIN, SERVFAIL, a compression loop and garbage are errors (the
    /// caller keeps the last list).
    #[test]
    fn errors_and_garbage_are_errors() {
        let nx = Server::start(|q| Some(response(q, 3, 0, 0)));
        let d = nx.discovery("_http._tcp.x.test", None);
        assert!(DnsResolver::new(&d).unwrap().resolve(&d).is_err());

        let fail = Server::start(|q| Some(response(q, 2, 0, 0)));
        let d = fail.discovery("x.test", Some(80));
        assert!(DnsResolver::new(&d).unwrap().resolve(&d).is_err());

        let r#loop = Server::start(|q| {
            let mut r = response(q, 0, 1, 0);
            // An owner name pointing at itself.
            let at = r.len() as u8;
            r.extend_from_slice(&[0xc0, at, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1]);
            Some(r)
        });
        let d = r#loop.discovery("x.test", Some(80));
        assert!(DnsResolver::new(&d).unwrap().resolve(&d).is_err());

        let garbage = Server::start(|q| Some(q[..5].to_vec()));
        let d = garbage.discovery("x.test", Some(80));
        assert!(DnsResolver::new(&d).unwrap().resolve(&d).is_err());
    }

    #[test]
    fn the_ttl_shortens_the_interval_but_never_below_a_second() {
        let s = Duration::from_secs;
        assert_eq!(next_wait(s(5), None), s(5));
        assert_eq!(next_wait(s(5), Some(s(30))), s(5));
        assert_eq!(next_wait(s(5), Some(s(2))), s(2));
        assert_eq!(next_wait(s(5), Some(Duration::ZERO)), MIN_TTL_WAIT);
        // An interval under a second is kept as configured.
        let fast = Duration::from_millis(50);
        assert_eq!(next_wait(fast, Some(Duration::ZERO)), fast);
    }

    #[test]
    fn ip_literals_resolve_without_a_query() {
        let d = DnsDiscovery {
            name: String::from("127.0.0.7:80"),
            host: String::from("127.0.0.7"),
            port: Some(80),
            interval: Duration::from_secs(5),
            // A server nobody answers at: a query would time out.
            servers: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
        };
        let r = DnsResolver::new(&d).unwrap();
        let res = r.resolve(&d).unwrap();
        assert_eq!(
            res.targets,
            vec![(SocketAddr::from(([127, 0, 0, 7], 80)), 1)]
        );
    }
}
