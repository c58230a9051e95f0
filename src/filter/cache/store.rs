//! One worker's stored responses: a slab of entries on an intrusive
//! least-recently-used list, found through a map from the key's hash to a
//! short chain of entries (the `Vary` variants of one key, and any hash
//! collisions), bounded by bytes.
//!
//! Performance notes: a lookup hashes the key's pieces where they lie in
//! the request buffer, walks the chain comparing bytes, and moves the entry
//! to the front of the list: no allocation. Inserting allocates the entry's
//! key and variant values (the response was allocated by the
//! fill); evicting frees them.

use super::policy::Storable;
use crate::http::message::OwnedResponse;
use crate::http::name_eq;
use crate::http::parse::HeaderLine;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

const NIL: u32 = u32::MAX;

/// Bytes counted per entry on top of its key, variant values and response
/// (the slot, the map slot, allocation headers).
pub const ENTRY_OVERHEAD: usize = 160;

/// Most variants (`Vary`) kept for one key; the oldest goes first.
pub const MAX_VARIANTS: usize = 16;

/// A stored response, shared with the writes in flight that send it.
#[derive(Debug)]
pub struct Stored {
    /// The response: status and header fields, as any transport serves it.
    pub head: OwnedResponse,
    /// The body.
    pub body: Box<[u8]>,
    /// `ETag` value, if any.
    pub etag: Option<Box<[u8]>>,
    /// The head rendered once for HTTP/1 when stored (status line, fields,
    /// `Content-Length`; no blank line: per-request lines go there), so a
    /// hit is one `writev` of it, those lines and the body.
    h1_head: Box<[u8]>,
}

impl Stored {
    /// A stored response.
    pub fn new(head: OwnedResponse, body: Box<[u8]>, etag: Option<Box<[u8]>>) -> Stored {
        let mut h1 = Vec::with_capacity(64 + head.headers.len() * 32);
        head.render_h1(body.len(), &mut h1);
        Stored {
            head,
            body,
            etag,
            h1_head: h1.into(),
        }
    }

    /// Status code.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The head as HTTP/1 writes it (without the blank line).
    pub fn h1_head(&self) -> &[u8] {
        &self.h1_head
    }
}

/// The pieces of a cache key as they lie in a request.
#[derive(Clone, Copy)]
pub struct KeyRef<'a> {
    /// The route's name.
    pub route: &'a [u8],
    /// Host (compared without case).
    pub host: &'a [u8],
    /// Path and query as the client sent them.
    pub path_query: &'a [u8],
}

/// The process's cache-key hash seed: paths are chosen by clients, so an
/// unkeyed hash would let one fill a bucket chain on purpose (the stores
/// chain entries whose hashes collide).
fn key_seed() -> &'static std::collections::hash_map::RandomState {
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    SEED.get_or_init(std::collections::hash_map::RandomState::new)
}

impl KeyRef<'_> {
    /// SipHash, keyed once per process, over the pieces (host lower-cased),
    /// with separators.
    pub fn hash(&self) -> u64 {
        self.hash_with(key_seed())
    }

    /// [`KeyRef::hash`] under the given keys.
    pub fn hash_with(&self, seed: &impl std::hash::BuildHasher) -> u64 {
        use std::hash::Hasher;
        let mut h = seed.build_hasher();
        h.write(self.route);
        h.write_u8(0xff);
        let mut lower = [0u8; 64];
        for part in self.host.chunks(lower.len()) {
            let l = &mut lower[..part.len()];
            l.copy_from_slice(part);
            l.make_ascii_lowercase();
            h.write(l);
        }
        h.write_u8(0xff);
        h.write(self.path_query);
        h.finish()
    }

    /// The key as one owned buffer.
    pub fn to_key(self) -> OwnedKey {
        let mut bytes =
            Vec::with_capacity(self.route.len() + self.host.len() + self.path_query.len());
        bytes.extend_from_slice(self.route);
        bytes.extend(self.host.iter().map(u8::to_ascii_lowercase));
        bytes.extend_from_slice(self.path_query);
        OwnedKey {
            bytes: bytes.into(),
            route_len: self.route.len(),
            host_len: self.host.len(),
            hash: self.hash(),
        }
    }
}

/// A key copied out of the request (route, lower-case host, path and query).
#[derive(Debug, Clone)]
pub struct OwnedKey {
    bytes: Box<[u8]>,
    route_len: usize,
    host_len: usize,
    /// [`KeyRef::hash`] of it.
    pub hash: u64,
}

impl OwnedKey {
    /// The lower-case host.
    pub fn host(&self) -> &[u8] {
        &self.bytes[self.route_len..self.route_len + self.host_len]
    }

    /// Path and query.
    pub fn path_query(&self) -> &[u8] {
        &self.bytes[self.route_len + self.host_len..]
    }

    /// True when it is `k`.
    pub fn is(&self, k: &KeyRef<'_>) -> bool {
        self.route_len == k.route.len()
            && self.host_len == k.host.len()
            && self.bytes.len() == k.route.len() + k.host.len() + k.path_query.len()
            && &self.bytes[..self.route_len] == k.route
            && self.host().eq_ignore_ascii_case(k.host)
            && self.path_query() == k.path_query
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// A request's headers as forwarded: its own lines that are not dropped,
/// then the lines the gateway added (`Name: value\r\n`).
#[derive(Clone, Copy)]
pub struct Forwarded<'a> {
    /// The request buffer the lines point into.
    pub buf: &'a [u8],
    /// The request's header lines.
    pub lines: &'a [HeaderLine],
    /// Lines the filters and transform added.
    pub extra: &'a [u8],
}

impl<'a> Forwarded<'a> {
    /// Every value of header `lower_name`, trimmed, in order.
    pub fn values(self, lower_name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let own = self
            .lines
            .iter()
            .filter(move |l| l.role.forwarded() && name_eq(l.name.of(self.buf), lower_name))
            .map(move |l| l.value.of(self.buf).trim_ascii());
        let added = self.extra.split(|&b| b == b'\n').filter_map(move |l| {
            let i = l.iter().position(|&b| b == b':')?;
            name_eq(l[..i].trim_ascii(), lower_name).then(|| l[i + 1..].trim_ascii())
        });
        own.chain(added)
    }

    /// The values of `lower_name` joined with `", "`, `None` when absent.
    pub fn joined(self, lower_name: &[u8]) -> Option<Box<[u8]>> {
        let name: Box<[u8]> = lower_name.into();
        let mut out: Option<Vec<u8>> = None;
        for v in self.values(&name) {
            let o = out.get_or_insert_with(Vec::new);
            if !o.is_empty() {
                o.extend_from_slice(b", ");
            }
            o.extend_from_slice(v);
        }
        out.map(Into::into)
    }

    /// True when the joined values of `lower_name` are `stored`
    /// (`None` = the header is absent), without building the join.
    pub fn matches(self, lower_name: &'a [u8], stored: Option<&[u8]>) -> bool {
        let mut rest = match stored {
            Some(s) => s,
            None => return self.values(lower_name).next().is_none(),
        };
        let mut first = true;
        for v in self.values(lower_name) {
            if !first {
                match rest.strip_prefix(b", ") {
                    Some(r) => rest = r,
                    None => return false,
                }
            }
            match rest.strip_prefix(v) {
                Some(r) => rest = r,
                None => return false,
            }
            first = false;
        }
        !first && rest.is_empty()
    }
}

/// A `Vary` header's lower-case name and the request's joined values
/// (`None`: the request did not have it).
pub type VaryValue = (Box<[u8]>, Option<Box<[u8]>>);

/// One stored response and what it is stored under.
#[derive(Debug)]
pub struct Entry {
    /// Its key.
    pub key: OwnedKey,
    /// `(lower-case name, joined request value)` for each `Vary` name.
    pub vary: Box<[VaryValue]>,
    /// The response.
    pub resp: Rc<Stored>,
    /// When it was stored.
    pub stored_at: Instant,
    /// Its age when it arrived, seconds.
    pub initial_age: u64,
    /// Fresh until `stored_at + fresh_for`.
    pub fresh_for: Duration,
    /// Served stale (with a background refresh) this long after that.
    pub stale_while_revalidate: Duration,
    /// Served stale when the backend fails this long after that.
    pub stale_if_error: Duration,
    size: usize,
}

/// Where an entry stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Age in seconds (the `Age` header).
    pub age: u64,
    /// Fresh.
    pub fresh: bool,
    /// Stale, within the stale-while-revalidate window.
    pub revalidate: bool,
    /// Stale, within the stale-if-error window.
    pub if_error: bool,
}

impl Entry {
    /// Builds an entry for `key` from a storable response and the request
    /// it answered.
    pub fn new(key: OwnedKey, mut s: Storable, req: Forwarded<'_>, now: Instant) -> Entry {
        let resp_size = s.size();
        let vary: Box<[_]> = std::mem::take(&mut s.vary)
            .into_iter()
            .map(|name| {
                let v = req.joined(&name);
                (name, v)
            })
            .collect();
        let size = ENTRY_OVERHEAD
            + key.len()
            + resp_size
            + s.etag.as_ref().map_or(0, |e| e.len())
            + vary
                .iter()
                .map(|(n, v)| n.len() + v.as_ref().map_or(0, |v| v.len()) + 48)
                .sum::<usize>();
        Entry {
            key,
            vary,
            resp: Rc::new(Stored::new(s.head, s.body.into(), s.etag)),
            stored_at: now,
            initial_age: s.initial_age,
            fresh_for: s.fresh_for,
            stale_while_revalidate: s.stale_while_revalidate,
            stale_if_error: s.stale_if_error,
            size,
        }
    }

    /// Bytes counted against the bound.
    pub fn size(&self) -> usize {
        self.size
    }

    /// True when the request's headers match this variant.
    pub fn vary_matches(&self, req: Forwarded<'_>) -> bool {
        self.vary.iter().all(|(n, v)| req.matches(n, v.as_deref()))
    }

    /// Where it stands at `now`.
    pub fn standing(&self, now: Instant) -> Standing {
        let held = now.saturating_duration_since(self.stored_at);
        let age = self.initial_age.saturating_add(held.as_secs());
        let stale_by = held.checked_sub(self.fresh_for);
        Standing {
            age,
            fresh: stale_by.is_none(),
            revalidate: stale_by.is_some_and(|d| d < self.stale_while_revalidate),
            if_error: stale_by.is_some_and(|d| d < self.stale_if_error),
        }
    }

    /// True when nothing can serve it any more.
    pub fn is_dead(&self, now: Instant) -> bool {
        let s = self.standing(now);
        !(s.fresh || s.revalidate || s.if_error)
    }

    fn same_variant_names(&self, other: &Entry) -> bool {
        self.vary.len() == other.vary.len()
            && self
                .vary
                .iter()
                .zip(other.vary.iter())
                .all(|(a, b)| a.0 == b.0)
    }
}

struct Slot {
    entry: Option<Entry>,
    prev: u32,
    next: u32,
    chain: u32,
}

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The entries of one worker.
pub struct Store {
    map: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    bytes: usize,
    len: usize,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            map: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            len: 0,
        }
    }
}

impl Store {
    /// Bytes held (as counted against the bound).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry in `slot`.
    pub fn get(&self, slot: u32) -> &Entry {
        self.slots[slot as usize]
            .entry
            .as_ref()
            .expect("slot holds an entry")
    }

    /// Finds the variant of `key` that matches `req` and marks it used.
    pub fn lookup(&mut self, hash: u64, key: &KeyRef<'_>, req: Forwarded<'_>) -> Option<u32> {
        let mut s = *self.map.get(&hash)?;
        while s != NIL {
            let slot = &self.slots[s as usize];
            let e = slot.entry.as_ref().expect("chained slot holds an entry");
            if e.key.is(key) && e.vary_matches(req) {
                self.unlink(s);
                self.push_front(s);
                return Some(s);
            }
            s = slot.chain;
        }
        None
    }

    /// Stores `entry` in front of its key's chain (it matches first),
    /// replacing the same variant and variants stored under other `Vary`
    /// names; then evicts least recently used entries until at most
    /// `max_bytes` are held. Returns the number evicted for space.
    pub fn insert(&mut self, entry: Entry, max_bytes: usize) -> usize {
        let hash = entry.key.hash;
        // Older variants this one replaces.
        let mut variants = 0;
        let mut s = self.map.get(&hash).copied().unwrap_or(NIL);
        let mut doomed = Vec::new();
        while s != NIL {
            let slot = &self.slots[s as usize];
            let e = slot.entry.as_ref().expect("chained slot holds an entry");
            if e.key.bytes == entry.key.bytes {
                if !e.same_variant_names(&entry) || e.vary == entry.vary {
                    doomed.push(s);
                } else {
                    variants += 1;
                    if variants >= MAX_VARIANTS {
                        doomed.push(s);
                    }
                }
            }
            s = slot.chain;
        }
        for s in doomed {
            self.remove(s);
        }
        let size = entry.size;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].entry = Some(entry);
                i
            }
            None => {
                self.slots.push(Slot {
                    entry: Some(entry),
                    prev: NIL,
                    next: NIL,
                    chain: NIL,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let first = self.map.insert(hash, slot).unwrap_or(NIL);
        self.slots[slot as usize].chain = first;
        self.push_front(slot);
        self.bytes += size;
        self.len += 1;
        let mut evicted = 0;
        while self.bytes > max_bytes && self.tail != NIL {
            self.remove(self.tail);
            evicted += 1;
        }
        evicted
    }

    /// Removes the entry in `slot`.
    pub fn remove(&mut self, slot: u32) {
        let Some(e) = self.slots[slot as usize].entry.take() else {
            return;
        };
        self.unlink(slot);
        // Unchain.
        let hash = e.key.hash;
        let next = self.slots[slot as usize].chain;
        match self.map.get(&hash).copied() {
            Some(first) if first == slot => {
                if next == NIL {
                    self.map.remove(&hash);
                } else {
                    self.map.insert(hash, next);
                }
            }
            Some(mut s) => {
                while s != NIL {
                    let c = self.slots[s as usize].chain;
                    if c == slot {
                        self.slots[s as usize].chain = next;
                        break;
                    }
                    s = c;
                }
            }
            None => {}
        }
        self.slots[slot as usize].chain = NIL;
        self.bytes -= e.size;
        self.len -= 1;
        self.free.push(slot);
    }

    /// Removes every variant stored under `key`; returns how many.
    pub fn remove_key(&mut self, key: &OwnedKey) -> usize {
        let mut s = self.map.get(&key.hash).copied().unwrap_or(NIL);
        let mut doomed = Vec::new();
        while s != NIL {
            let slot = &self.slots[s as usize];
            if slot
                .entry
                .as_ref()
                .is_some_and(|e| e.key.bytes == key.bytes)
            {
                doomed.push(s);
            }
            s = slot.chain;
        }
        let n = doomed.len();
        for d in doomed {
            self.remove(d);
        }
        n
    }

    /// Removes every entry for which `doomed` is true; returns how many.
    pub fn remove_where(&mut self, mut doomed: impl FnMut(&Entry) -> bool) -> usize {
        let mut n = 0;
        for i in 0..self.slots.len() {
            if self.slots[i].entry.as_ref().is_some_and(&mut doomed) {
                self.remove(i as u32);
                n += 1;
            }
        }
        n
    }

    fn unlink(&mut self, s: u32) {
        let (prev, next) = {
            let slot = &self.slots[s as usize];
            (slot.prev, slot.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else if self.head == s {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else if self.tail == s {
            self.tail = prev;
        }
        let slot = &mut self.slots[s as usize];
        slot.prev = NIL;
        slot.next = NIL;
    }

    fn push_front(&mut self, s: u32) {
        let old = self.head;
        {
            let slot = &mut self.slots[s as usize];
            slot.prev = NIL;
            slot.next = old;
        }
        if old != NIL {
            self.slots[old as usize].prev = s;
        }
        self.head = s;
        if self.tail == NIL {
            self.tail = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storable(body: &[u8], vary: &[&[u8]]) -> Storable {
        Storable {
            head: OwnedResponse::new(200),
            body: body.to_vec(),
            vary: vary.iter().map(|v| Box::from(*v)).collect(),
            fresh_for: Duration::from_secs(10),
            initial_age: 0,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            etag: None,
        }
    }

    fn key(p: &str) -> KeyRef<'_> {
        KeyRef {
            route: b"r",
            host: b"Host",
            path_query: p.as_bytes(),
        }
    }

    /// The key hash is keyed: the same key hashes alike under one seed
    /// (host case aside) and differently under another, so clients cannot
    /// pick paths that collide (the unkeyed FNV-1a it replaced let them).
    #[test]
    fn key_hash_is_keyed_and_ignores_host_case() {
        use std::collections::hash_map::RandomState;
        let long_host = "A".repeat(150);
        let lower_host = long_host.to_ascii_lowercase();
        let a = KeyRef {
            route: b"r",
            host: long_host.as_bytes(),
            path_query: b"/x",
        };
        let b = KeyRef {
            host: lower_host.as_bytes(),
            ..a
        };
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash(), a.hash());
        let (s1, s2) = (RandomState::new(), RandomState::new());
        let differ = (0..8)
            .filter(|i| {
                let p = format!("/p{i}");
                let k = key(&p);
                k.hash_with(&s1) != k.hash_with(&s2)
            })
            .count();
        assert_eq!(differ, 8, "two seeds gave the same hashes");
        // Separators: the pieces cannot slide into each other.
        let x = KeyRef {
            route: b"ab",
            host: b"c",
            path_query: b"/",
        };
        let y = KeyRef {
            route: b"a",
            host: b"bc",
            path_query: b"/",
        };
        assert_ne!(x.hash(), y.hash());
    }

    fn parse(req: &str) -> (Vec<u8>, Vec<HeaderLine>) {
        let buf = req.as_bytes().to_vec();
        let mut h = crate::http::parse::RequestHead::default();
        let mut l = Vec::new();
        crate::http::parse::parse_request(&buf, 100, 8192, &mut h, &mut l).unwrap();
        (buf, l)
    }

    #[test]
    fn lru_eviction_keeps_the_bound() {
        let mut s = Store::default();
        let (buf, lines) = parse("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let req = Forwarded {
            buf: &buf,
            lines: &lines,
            extra: b"",
        };
        let now = Instant::now();
        let one = Entry::new(key("/0").to_key(), storable(&[0; 1000], &[]), req, now).size();
        let max = one * 3 + one / 2;
        for i in 0..5 {
            let p = format!("/{i}");
            s.insert(
                Entry::new(key(&p).to_key(), storable(&[0; 1000], &[]), req, now),
                max,
            );
            assert!(s.bytes() <= max);
            if i == 2 {
                // Touch /0 so /1 is the least recently used.
                assert!(s.lookup(key("/0").hash(), &key("/0"), req).is_some());
            }
        }
        assert_eq!(s.len(), 3);
        let found = |s: &mut Store, p: &str| s.lookup(key(p).hash(), &key(p), req).is_some();
        assert!(found(&mut s, "/0"));
        assert!(!found(&mut s, "/1"));
        assert!(!found(&mut s, "/2"));
        assert!(found(&mut s, "/3"));
        assert!(found(&mut s, "/4"));
        assert_eq!(s.remove_where(|_| true), 3);
        assert_eq!(s.bytes(), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn variants_by_vary() {
        let mut s = Store::default();
        let now = Instant::now();
        let (b_en, l_en) = parse("GET / HTTP/1.1\r\nHost: h\r\nAccept-Language: en\r\n\r\n");
        let (b_de, l_de) = parse(
            "GET / HTTP/1.1\r\nHost: h\r\nAccept-Language: de\r\nAccept-Language: at\r\n\r\n",
        );
        let (b_no, l_no) = parse("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let en = Forwarded {
            buf: &b_en,
            lines: &l_en,
            extra: b"",
        };
        let de = Forwarded {
            buf: &b_de,
            lines: &l_de,
            extra: b"",
        };
        let no = Forwarded {
            buf: &b_no,
            lines: &l_no,
            extra: b"",
        };
        let k = key("/p");
        s.insert(
            Entry::new(k.to_key(), storable(b"en", &[b"accept-language"]), en, now),
            1 << 20,
        );
        s.insert(
            Entry::new(k.to_key(), storable(b"de", &[b"accept-language"]), de, now),
            1 << 20,
        );
        let body = |s: &mut Store, r: Forwarded<'_>| {
            s.lookup(k.hash(), &k, r)
                .map(|i| s.get(i).resp.body.to_vec())
        };
        assert_eq!(body(&mut s, en).as_deref(), Some(&b"en"[..]));
        assert_eq!(body(&mut s, de).as_deref(), Some(&b"de"[..]));
        assert_eq!(body(&mut s, no), None);
        // A value added by the gateway counts as the request's.
        let added = Forwarded {
            buf: &b_no,
            lines: &l_no,
            extra: b"Accept-Language: en\r\n",
        };
        assert_eq!(body(&mut s, added).as_deref(), Some(&b"en"[..]));
        // The same variant again replaces it; a response without Vary
        // replaces all variants.
        s.insert(
            Entry::new(k.to_key(), storable(b"en2", &[b"accept-language"]), en, now),
            1 << 20,
        );
        assert_eq!(s.len(), 2);
        s.insert(
            Entry::new(k.to_key(), storable(b"all", &[]), en, now),
            1 << 20,
        );
        assert_eq!(s.len(), 1);
        assert_eq!(body(&mut s, de).as_deref(), Some(&b"all"[..]));
    }

    #[test]
    fn standing_windows() {
        let now = Instant::now();
        let (b, l) = parse("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let req = Forwarded {
            buf: &b,
            lines: &l,
            extra: b"",
        };
        let mut st = storable(b"x", &[]);
        st.initial_age = 3;
        st.stale_while_revalidate = Duration::from_secs(5);
        st.stale_if_error = Duration::from_secs(20);
        let e = Entry::new(key("/").to_key(), st, req, now);
        let at = |s: u64| e.standing(now + Duration::from_secs(s));
        assert_eq!(
            at(0),
            Standing {
                age: 3,
                fresh: true,
                revalidate: false,
                if_error: false
            }
        );
        assert!(at(12).revalidate && at(12).if_error && !at(12).fresh);
        assert!(!at(16).revalidate && at(16).if_error);
        assert!(e.is_dead(now + Duration::from_secs(31)));
    }
}
