//! `discovery = "dns"`: a name re-resolved every `dns_interval_ms` on the
//! upstream's control thread, never on a worker.
//!
//! - `dns_name = "host:port"`: A and AAAA records, every address on that
//!   port, weight 1. Without `dns_server` the system resolver answers
//!   (`/etc/hosts`, search domains); with it, the query goes there.
//! - `dns_name = "_service._proto.name"`: SRV records of the lowest
//!   priority give ports and weights; their targets are resolved from the
//!   answer's additional section, or with A/AAAA queries. Queries go to
//!   `dns_server`, or the first `nameserver` of `/etc/resolv.conf`.
//!
//! The client is a minimal RFC 1035 one: one question per query over UDP
//! with EDNS(0) (a 1232-byte payload, so answers of a few dozen records fit
//! in one datagram; asked again without it if the server answers FORMERR),
//! name compression understood, and a truncated answer (TC) asked again
//! over TCP, so large SRV sets are never cut short.
//! A failed or empty resolution keeps the last good list and logs why.

use super::super::shared::UpstreamShared;
use crate::config::DnsDiscovery;
use std::io;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// Deadline of one DNS query.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(1000);

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Record type SRV.
pub const TYPE_SRV: u16 = 33;
/// Pseudo-record type OPT (EDNS).
pub const TYPE_OPT: u16 = 41;
/// UDP payload size offered with EDNS(0): large enough for a few dozen
/// SRV records, small enough never to need IP fragmentation.
pub const EDNS_PAYLOAD: u16 = 1232;

/// Resolves `d` once and publishes the result when it is usable.
pub fn refresh(shared: &UpstreamShared, d: &DnsDiscovery) {
    match resolve(d) {
        Ok(list) if !list.is_empty() => {
            super::set_error(shared, None);
            shared.publish(&list);
        }
        Ok(_) => {
            let msg = format!("{} resolved to no address; keeping the last list", d.name);
            tracing::warn!(upstream = %shared.name, "{msg}");
            super::set_error(shared, Some(&msg));
        }
        Err(e) => {
            let msg = format!("resolving {} failed: {e}; keeping the last list", d.name);
            tracing::warn!(upstream = %shared.name, "{msg}");
            super::set_error(shared, Some(&msg));
        }
    }
}

/// The targets `d` names now, sorted.
pub fn resolve(d: &DnsDiscovery) -> io::Result<Vec<(SocketAddr, u32)>> {
    let mut out = match d.port {
        Some(port) => match d.server {
            None => (d.host.as_str(), port)
                .to_socket_addrs()?
                .map(|a| (a, 1))
                .collect(),
            Some(server) => addresses(server, &d.host)?
                .into_iter()
                .map(|ip| (SocketAddr::new(ip, port), 1))
                .collect(),
        },
        None => {
            let server = match d.server {
                Some(s) => s,
                None => system_nameserver()?,
            };
            srv_targets(server, &d.host)?
        }
    };
    out.sort();
    out.dedup_by_key(|(a, _)| *a);
    Ok(out)
}

/// A and AAAA addresses of `host` from `server`.
pub fn addresses(server: SocketAddr, host: &str) -> io::Result<Vec<IpAddr>> {
    let mut ips = Vec::new();
    let mut first_err = None;
    for qtype in [TYPE_A, TYPE_AAAA] {
        match query(server, host, qtype) {
            Ok(ans) => ips.extend(ans.records.iter().filter_map(|r| match r {
                Record::A(_, ip) => Some(IpAddr::V4(*ip)),
                Record::Aaaa(_, ip) => Some(IpAddr::V6(*ip)),
                _ => None,
            })),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    match first_err {
        Some(e) if ips.is_empty() => Err(e),
        _ => Ok(ips),
    }
}

/// SRV targets of `name`: the lowest priority's records, with ports and
/// weights (weight 0 counts as 1).
pub fn srv_targets(server: SocketAddr, name: &str) -> io::Result<Vec<(SocketAddr, u32)>> {
    let ans = query(server, name, TYPE_SRV)?;
    let srvs: Vec<&Srv> = ans
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Srv(_, s) => Some(s),
            _ => None,
        })
        .collect();
    let Some(best) = srvs.iter().map(|s| s.priority).min() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for s in srvs.iter().filter(|s| s.priority == best) {
        let mut ips: Vec<IpAddr> = ans
            .additional
            .iter()
            .filter_map(|r| match r {
                Record::A(n, ip) if n.eq_ignore_ascii_case(&s.target) => Some(IpAddr::V4(*ip)),
                Record::Aaaa(n, ip) if n.eq_ignore_ascii_case(&s.target) => Some(IpAddr::V6(*ip)),
                _ => None,
            })
            .collect();
        if ips.is_empty() {
            ips = match s.target.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => addresses(server, &s.target)?,
            };
        }
        let w = (s.weight as u32).max(1);
        out.extend(ips.into_iter().map(|ip| (SocketAddr::new(ip, s.port), w)));
    }
    Ok(out)
}

/// The first `nameserver` in `/etc/resolv.conf`, port 53.
pub fn system_nameserver() -> io::Result<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf")?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or_else(|| io::Error::other("no nameserver in /etc/resolv.conf"))
}

/// An SRV record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative weight within a priority.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host name (no trailing dot).
    pub target: String,
}

/// One answer record (owner name first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// IPv4 address.
    A(String, Ipv4Addr),
    /// IPv6 address.
    Aaaa(String, Ipv6Addr),
    /// Service record.
    Srv(String, Srv),
}

/// A parsed response.
#[derive(Debug, Default)]
pub struct Answer {
    /// Answer section records of known types.
    pub records: Vec<Record>,
    /// Additional section records of known types.
    pub additional: Vec<Record>,
}

/// Sends one query to `server` and parses the answer: over UDP with
/// EDNS(0) (without it when the server does not understand it), then over
/// TCP when the UDP answer was truncated.
pub fn query(server: SocketAddr, name: &str, qtype: u16) -> io::Result<Answer> {
    let id = query_id();
    let mut msg = exchange_udp(server, id, &encode_query_edns(id, name, qtype)?)?;
    if msg[3] & 0x0f == 1 {
        // FORMERR: a server that does not know EDNS.
        msg = exchange_udp(server, id, &encode_query(id, name, qtype)?)?;
    }
    if msg[2] & 0x02 != 0 {
        // TC: the answer did not fit; TCP carries it whole.
        msg = exchange_tcp(server, id, &encode_query(id, name, qtype)?)?;
    }
    decode_answer(&msg)
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "DNS query timed out")
}

/// One query over UDP; returns the response with the query's id.
fn exchange_udp(server: SocketAddr, id: u16, q: &[u8]) -> io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(QUERY_TIMEOUT))?;
    sock.send(q)?;
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + QUERY_TIMEOUT;
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(timed_out()),
            Err(e) => return Err(e),
        };
        let msg = &buf[..n];
        if msg.len() >= 12 && u16::from_be_bytes([msg[0], msg[1]]) == id {
            return Ok(msg.to_vec());
        }
        if std::time::Instant::now() >= deadline {
            return Err(timed_out());
        }
    }
}

/// One query over TCP (RFC 1035 4.2.2: each message after its 2-byte length).
fn exchange_tcp(server: SocketAddr, id: u16, q: &[u8]) -> io::Result<Vec<u8>> {
    let deadline = std::time::Instant::now() + QUERY_TIMEOUT;
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut s = TcpStream::connect_timeout(&server, QUERY_TIMEOUT)?;
    s.set_write_timeout(Some(left()))?;
    let mut out = Vec::with_capacity(q.len() + 2);
    out.extend_from_slice(&(q.len() as u16).to_be_bytes());
    out.extend_from_slice(q);
    s.write_all(&out)?;
    let read = |s: &mut TcpStream, buf: &mut [u8]| -> io::Result<()> {
        s.set_read_timeout(Some(left()))?;
        s.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => timed_out(),
            _ => e,
        })
    };
    let mut len = [0u8; 2];
    read(&mut s, &mut len)?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    read(&mut s, &mut msg)?;
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err(bad("TCP answer does not match the query"));
    }
    Ok(msg)
}

fn query_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t as u16) ^ NEXT.fetch_add(0x9e37, Ordering::Relaxed)
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// A query message: header (recursion desired), one question.
pub fn encode_query(id: u16, name: &str, qtype: u16) -> io::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    encode_name(&mut q, name)?;
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Ok(q)
}

/// [`encode_query`] plus an OPT pseudo-record offering [`EDNS_PAYLOAD`]
/// bytes of UDP payload (EDNS version 0, no options).
pub fn encode_query_edns(id: u16, name: &str, qtype: u16) -> io::Result<Vec<u8>> {
    let mut q = encode_query(id, name, qtype)?;
    q[11] = 1; // ARCOUNT
    q.push(0); // owner: the root
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes()); // CLASS = payload size
    q.extend_from_slice(&[0, 0, 0, 0]); // TTL = extended rcode, version, flags
    q.extend_from_slice(&[0, 0]); // RDLEN
    Ok(q)
}

/// Appends `name` as DNS labels.
pub fn encode_name(out: &mut Vec<u8>, name: &str) -> io::Result<()> {
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("invalid DNS name"));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// Reads a (possibly compressed) name at `pos`; returns it and the offset
/// after it in the original position.
pub fn decode_name(msg: &[u8], mut pos: usize) -> io::Result<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(pos).ok_or_else(|| bad("name past the end"))? as usize;
        if len & 0xc0 == 0xc0 {
            let lo = *msg
                .get(pos + 1)
                .ok_or_else(|| bad("pointer past the end"))? as usize;
            end.get_or_insert(pos + 2);
            pos = ((len & 0x3f) << 8) | lo;
            continue;
        }
        if len == 0 {
            return Ok((name, end.unwrap_or(pos + 1)));
        }
        let label = msg
            .get(pos + 1..pos + 1 + len)
            .ok_or_else(|| bad("label past the end"))?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label));
        pos += 1 + len;
    }
    Err(bad("name compression loop"))
}

fn u16_at(msg: &[u8], pos: usize) -> io::Result<u16> {
    msg.get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| bad("message too short"))
}

/// Parses a response message.
pub fn decode_answer(msg: &[u8]) -> io::Result<Answer> {
    if msg.len() < 12 {
        return Err(bad("message too short"));
    }
    let rcode = msg[3] & 0x0f;
    match rcode {
        0 => {}
        3 => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such name (NXDOMAIN)",
            ));
        }
        2 => return Err(io::Error::other("server failure (SERVFAIL)")),
        5 => return Err(io::Error::other("query refused (REFUSED)")),
        r => return Err(io::Error::other(format!("DNS error code {r}"))),
    }
    let qd = u16_at(msg, 4)?;
    let an = u16_at(msg, 6)?;
    let ns = u16_at(msg, 8)?;
    let ar = u16_at(msg, 10)?;
    let mut pos = 12;
    for _ in 0..qd {
        pos = decode_name(msg, pos)?.1 + 4;
    }
    let mut out = Answer::default();
    for i in 0..(an as usize + ns as usize + ar as usize) {
        let (owner, p) = decode_name(msg, pos)?;
        let rtype = u16_at(msg, p)?;
        let rdlen = u16_at(msg, p + 8)? as usize;
        let rd = p + 10;
        let data = msg
            .get(rd..rd + rdlen)
            .ok_or_else(|| bad("record past the end"))?;
        pos = rd + rdlen;
        let rec = match (rtype, rdlen) {
            (TYPE_A, 4) => Some(Record::A(
                owner,
                Ipv4Addr::new(data[0], data[1], data[2], data[3]),
            )),
            (TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                Some(Record::Aaaa(owner, Ipv6Addr::from(b)))
            }
            (TYPE_SRV, n) if n >= 7 => Some(Record::Srv(
                owner,
                Srv {
                    priority: u16_at(msg, rd)?,
                    weight: u16_at(msg, rd + 2)?,
                    port: u16_at(msg, rd + 4)?,
                    target: decode_name(msg, rd + 6)?.0,
                },
            )),
            _ => None,
        };
        if let Some(r) = rec {
            if i < an as usize {
                out.records.push(r);
            } else if i >= an as usize + ns as usize {
                out.additional.push(r);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips_through_the_decoder() {
        let q = encode_query(0x1234, "_http._tcp.svc.local", TYPE_SRV).unwrap();
        // A response: the query with QR set, one SRV answer using a
        // compression pointer to the question name, one additional A.
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 1; // ancount
        r[11] = 1; // arcount
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&TYPE_SRV.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
        let mut rd = Vec::new();
        rd.extend_from_slice(&[0, 10, 0, 5, 0x23, 0x29]);
        encode_name(&mut rd, "node1.svc.local").unwrap();
        r.extend_from_slice(&(rd.len() as u16).to_be_bytes());
        r.extend_from_slice(&rd);
        encode_name(&mut r, "node1.svc.local").unwrap();
        r.extend_from_slice(&TYPE_A.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 9]);
        let a = decode_answer(&r).unwrap();
        assert_eq!(
            a.records,
            vec![Record::Srv(
                "_http._tcp.svc.local".into(),
                Srv {
                    priority: 10,
                    weight: 5,
                    port: 9001,
                    target: "node1.svc.local".into()
                }
            )]
        );
        assert_eq!(
            a.additional,
            vec![Record::A(
                "node1.svc.local".into(),
                Ipv4Addr::new(127, 0, 0, 9)
            )]
        );
    }

    #[test]
    fn edns_query_carries_one_opt_record() {
        let q = encode_query_edns(7, "a.test", TYPE_A).unwrap();
        let plain = encode_query(7, "a.test", TYPE_A).unwrap();
        assert_eq!(&q[..10], &plain[..10]);
        assert_eq!(u16::from_be_bytes([q[10], q[11]]), 1, "ARCOUNT");
        assert_eq!(&q[12..plain.len()], &plain[12..]);
        let opt = &q[plain.len()..];
        assert_eq!(opt, &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        // The decoder skips the OPT record a server echoes back.
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        let a = decode_answer(&r).unwrap();
        assert!(a.records.is_empty() && a.additional.is_empty());
    }

    #[test]
    fn errors_and_garbage_are_errors() {
        let mut q = encode_query(1, "x.test", TYPE_A).unwrap();
        q[3] = 3;
        assert_eq!(
            decode_answer(&q).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(decode_answer(&[0; 5]).is_err());
        // A pointer loop.
        let mut l = encode_query(1, "x", TYPE_A).unwrap();
        l[5] = 1;
        l.truncate(12);
        l.extend_from_slice(&[0xc0, 12]);
        assert!(decode_answer(&l).is_err());
    }
}
