//! The worker's shard: one key table per limit, decisions on the request
//! path, and the exchange with the reconciler on a timer.
//!
//! Key components: [`Shard`] (owned by the worker, `RefCell`s only),
//! [`Table`] (a capped map with CLOCK eviction) and [`Entry`] (one key's
//! local state, its share of the key, and what was spent since the last
//! report).
//!
//! Across a reload: a shard belongs to one generation of the limits. The
//! next generation's shard shares the tables of the limits it carries
//! (`Rc`), so a key's count goes on; the old shard leaves its reconciler
//! ([`Shard::detach`]) and empties the tables nothing carried.
//!
//! Performance notes: a decision is a hash of the key bytes, one map lookup
//! on a pre-hashed `u64`, and a few float operations; nothing is shared
//! with another thread. The exchange with the reconciler (`tick`) runs as a
//! separate task every sync interval and only uses `try_send`/`try_recv`.

use super::Limits;
use super::algo::{Check, Params, State};
use super::reconcile::{Batch, Report, ReportItem, Spends, Update};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::Arc;

/// Identity hasher for keys that already are 64-bit keyed hashes.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// The worker's end of the reconciler channels.
#[derive(Debug)]
pub(crate) struct WorkerLink {
    pub tx: Sender<Report>,
    pub rx: Receiver<Batch>,
}

/// One key on one worker.
#[derive(Debug)]
pub(crate) struct Entry {
    tier: u8,
    /// This worker's share of the key (1/N until the reconciler says).
    share: f64,
    state: State,
    /// The whole key as this worker knows it: the reconciler's
    /// instance-wide state of its last update (a fresh key before one),
    /// less this worker's spends since. Only what other workers admitted
    /// since their last report is missing, so the `RateLimit` remainder
    /// counted from it may over-state by that, never under-state. `None`
    /// where the worker's own state is the key's count (credit, a naive
    /// shard mode, one worker).
    whole: Option<State>,
    /// Spent since the last report.
    fresh: Spends,
    /// Spent in the report numbered `sent_seq` (counted until acked).
    sent: Spends,
    sent_seq: u32,
    /// Requests seen since the last report (admitted or not), and those
    /// of them that waited for more of the key.
    demand: u32,
    waiting: u32,
    dirty: bool,
    /// Used since the CLOCK hand last passed.
    referenced: bool,
    last_seen: u64,
    /// A global key waiting for its first lease.
    awaiting: bool,
    /// More of the key may come to this worker (`Update::reserved`; true
    /// for a first touch): part of it is held for another worker's first
    /// touch or old view, or another worker has spare whole requests. A
    /// refusal may then wait for the reconciler to move quota here.
    reserved: bool,
    /// A global key: from this time a lease may bring more credit
    /// (`Update::retry_at`), so a refusal may wait for one.
    retry_at: u64,
    key_bytes: Option<Box<[u8]>>,
}

/// One limit's keys on one worker.
#[derive(Debug, Default)]
pub(crate) struct Table {
    map: IdMap<Entry>,
    /// Every key of `map`, in CLOCK order.
    ring: VecDeque<u64>,
    /// Keys with something to report.
    dirty: Vec<u64>,
    /// Keys evicted since the last report.
    evicted: Vec<u64>,
}

/// One limit's table, shared by the shards of the generations that carry
/// the limit.
pub(crate) type SharedTable = Rc<RefCell<Table>>;

/// What a check does. A route with one limit checks in one step
/// (`Decide`); with several, every limit is first probed, and only when all
/// admit is each one spent, so a refusal by one spends nothing of the
/// others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Count the request as demand and spend it if admitted.
    Decide,
    /// Count the request as demand; spend nothing.
    Probe,
    /// Spend an already-probed request.
    Spend,
}

/// How a request's check stands to waiting on the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ask {
    /// The request is checked again after waiting. It counts as demand
    /// again (the longer it waits, the more of the key its worker is
    /// given), but as a waiting request once.
    pub again: bool,
    /// A refusal may wait while more of the key may come here.
    pub may_wait: bool,
}

impl Ask {
    /// Decide at once on what the worker holds.
    pub const AT_ONCE: Ask = Ask {
        again: false,
        may_wait: false,
    };
}

/// What a check says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Outcome {
    /// Decided.
    Checked(Check),
    /// A global key with no quota yet, or a refusal while part of the
    /// key is held for other workers: ask again shortly.
    Wait,
    /// The store is down and the limit fails closed.
    StoreDown,
}

/// A worker's limiter state.
#[derive(Debug)]
pub(crate) struct Shard {
    pub limits: Arc<Limits>,
    workers: usize,
    tables: Vec<SharedTable>,
    /// The channels to this generation's reconciler, until the worker
    /// switches to another generation.
    link: RefCell<Option<WorkerLink>>,
    /// Started with a link: global keys are leased.
    linked: bool,
    /// Seq of the last report sent, and of the last one the reconciler
    /// has folded in.
    seq: Cell<u32>,
    acked: Cell<u32>,
    unsent: RefCell<Option<Report>>,
    ticks: Cell<u32>,
    store_ok: Cell<bool>,
    /// A request waits on the reconciler, a key was installed here, or the
    /// reconciler asked: report now rather than at the next tick.
    urgent: Cell<bool>,
    /// The latest reconciliation round whose batch this worker took.
    applied: Cell<u64>,
    /// The instance's state of small keys this worker does not hold, for
    /// their first request's `RateLimit` headers.
    hints: RefCell<Hints>,
    id: usize,
}

/// Hinted whole states ([`super::reconcile::Update::hint`]) of keys a
/// worker does not hold, the latest [`Hints::CAP`] kept.
#[derive(Debug, Default)]
struct Hints {
    map: IdMap<(u16, u8, State)>,
    order: VecDeque<u64>,
}

impl Hints {
    const CAP: usize = 1024;

    /// Map key of a limit's key.
    fn slot(limit: u16, key: u64) -> u64 {
        key ^ (limit as u64).rotate_left(48)
    }

    fn put(&mut self, limit: u16, key: u64, tier: u8, whole: State) {
        let k = Self::slot(limit, key);
        if self.map.insert(k, (limit, tier, whole)).is_none() {
            self.order.push_back(k);
            while self.order.len() > Self::CAP {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    /// The hint for a key of `limit` and `tier`, taken.
    fn take(&mut self, limit: u16, key: u64, tier: u8) -> Option<State> {
        let k = Self::slot(limit, key);
        match self.map.get(&k) {
            Some(&(l, t, w)) if l == limit && t == tier => {
                self.map.remove(&k);
                self.order.retain(|&o| o != k);
                Some(w)
            }
            _ => None,
        }
    }
}

const MAX_EVICTED_REPORTED: usize = 4096;

impl Shard {
    /// A shard of `limits` over `tables` (one per limit, by index).
    pub fn new(
        limits: Arc<Limits>,
        id: usize,
        workers: usize,
        link: Option<WorkerLink>,
        tables: Vec<SharedTable>,
    ) -> Shard {
        debug_assert_eq!(tables.len(), limits.defs.len());
        Shard {
            limits,
            workers: workers.max(1),
            tables,
            linked: link.is_some(),
            link: RefCell::new(link),
            seq: Cell::new(0),
            acked: Cell::new(0),
            unsent: RefCell::new(None),
            ticks: Cell::new(0),
            store_ok: Cell::new(true),
            urgent: Cell::new(false),
            applied: Cell::new(0),
            hints: RefCell::new(Hints::default()),
            id,
        }
    }

    /// Keys held, over all limits.
    pub fn key_count(&self) -> usize {
        self.tables.iter().map(|t| t.borrow().map.len()).sum()
    }

    /// Checks one request against limit `li` for key `key` (tier `tier`)
    /// in phase `phase` (see [`Phase`]). `bytes` names the key (global
    /// limits). With `ask.may_wait`, a refusal of a reconciled key while
    /// part of it is held for other workers (or, for a global key, while
    /// the store may lease more) answers [`Outcome::Wait`] and asks for an
    /// early exchange ([`Shard::poll`]): a short burst then gets the whole
    /// limit, not just this worker's first-touch part.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        li: usize,
        key: u64,
        tier: u8,
        now: u64,
        phase: Phase,
        ask: Ask,
        bytes: impl FnOnce() -> Vec<u8>,
    ) -> Outcome {
        let demand = phase != Phase::Spend;
        let first = demand && !ask.again;
        let commit = phase != Phase::Probe;
        let def = &self.limits.defs[li];
        let p: &Params = &def.tiers[tier as usize].params;
        let global = def.global && self.linked;
        let reconciled = def.reported(self.workers);
        if global && !self.store_ok.get() && !def.fail_open {
            return Outcome::StoreDown;
        }
        let mut t = self.tables[li].borrow_mut();
        let t = &mut *t;
        let e = match t.map.get_mut(&key) {
            Some(e) => {
                e.referenced = true;
                e
            }
            None => {
                let share = if def.mode == super::ShardMode::Full {
                    1.0
                } else {
                    1.0 / self.workers as f64
                };
                let credit = global && self.store_ok.get();
                let e = Entry {
                    tier,
                    share,
                    state: if credit {
                        State::Credit { balance: 0.0 }
                    } else {
                        p.fresh(share, now)
                    },
                    whole: (reconciled && !global).then(|| {
                        // What the instance spent, if the reconciler said.
                        let hint = self.hints.borrow_mut().take(li as u16, key, tier);
                        hint.unwrap_or_else(|| p.fresh(1.0, now))
                    }),
                    fresh: Spends::default(),
                    sent: Spends::default(),
                    sent_seq: 0,
                    demand: 0,
                    waiting: 0,
                    dirty: false,
                    referenced: false,
                    last_seen: now,
                    awaiting: credit,
                    reserved: reconciled && !credit,
                    retry_at: 0,
                    key_bytes: global.then(|| bytes().into_boxed_slice()),
                };
                t.insert(key, e, def.max_keys, now, def.ttl_ns);
                if credit {
                    // Its first lease is asked for as soon as the
                    // reconciler hears of the key.
                    self.urgent.set(true);
                }
                t.map.get_mut(&key).expect("just inserted")
            }
        };
        e.last_seen = now;
        if demand && reconciled {
            e.demand = e.demand.saturating_add(1);
            if !e.dirty {
                e.dirty = true;
                t.dirty.push(key);
            }
        }
        e.state.advance(p, e.share, now);
        let mut c = e.state.check(p, e.share, now, commit);
        if c.admit
            && let Some(whole) = &mut e.whole
        {
            // The remainder of the whole key, not this worker's part
            // scaled up: with two workers a limit of 3 answers 2, 1, 0.
            whole.advance(p, 1.0, now);
            c.remaining = whole.check(p, 1.0, now, commit).remaining;
        }
        if !c.admit && e.awaiting {
            if first {
                e.waiting = e.waiting.saturating_add(1);
            }
            return Outcome::Wait;
        }
        let more = match e.state {
            // Credit may also come from the store, unless it has said the
            // quota is used up (until `retry_at`).
            State::Credit { .. } => e.reserved || now >= e.retry_at,
            _ => e.reserved,
        };
        if !c.admit && ask.may_wait && more {
            if first {
                e.waiting = e.waiting.saturating_add(1);
            }
            self.urgent.set(true);
            return Outcome::Wait;
        }
        if c.admit && commit && reconciled {
            e.fresh.add(window_of(p, now));
            if !e.dirty {
                e.dirty = true;
                t.dirty.push(key);
            }
        }
        Outcome::Checked(c)
    }

    /// Takes the reconciler's updates, if any, and sends an urgent report
    /// if one is due. Runs several times per tick, so the workers' views
    /// of a key change at nearly the same time (the lag between them is
    /// the overshoot term of the bound), and every few milliseconds while
    /// a request waits on the reconciler.
    pub fn poll(&self) {
        if let Some(link) = &*self.link.borrow() {
            while let Ok(b) = link.rx.try_recv() {
                self.apply(b);
            }
            if self.urgent.get() {
                self.report(link, self.ticks.get(), true);
            }
        }
    }

    /// The exchange with the reconciler, plus idle-key sweeping. Runs on
    /// the worker every tick; never blocks.
    pub fn tick(&self, now: u64) {
        let ticks = self.ticks.get().wrapping_add(1);
        self.ticks.set(ticks);
        if let Some(link) = &*self.link.borrow() {
            while let Ok(b) = link.rx.try_recv() {
                self.apply(b);
            }
            self.report(link, ticks, false);
        }
        for (li, t) in self.tables.iter().enumerate() {
            let def = &self.limits.defs[li];
            t.borrow_mut().sweep(now, def.ttl_ns, def.max_keys);
        }
        self.limits.set_key_count(self.id, self.key_count());
    }

    /// The table of the limit with identity `id`, to share with the next
    /// generation's shard.
    pub fn table_of(&self, id: u64) -> Option<SharedTable> {
        let li = self.limits.defs.iter().position(|d| d.id == id)?;
        Some(self.tables[li].clone())
    }

    /// Leaves this generation's reconciler (the worker switches to another
    /// generation): takes the updates already sent, hands the report in
    /// flight to the channel, and closes the link. What the reconciler got
    /// is in the state it hands to its successor; what it did not get (a
    /// report the full channel refused, and everything since) stays in the
    /// entries to be reported to the next generation's reconciler.
    pub fn detach(&self) {
        let Some(link) = self.link.borrow_mut().take() else {
            return;
        };
        while let Ok(b) = link.rx.try_recv() {
            self.apply(b);
        }
        let lost = match self.unsent.borrow_mut().take() {
            Some(r) => link.tx.try_send(r).err().map(|e| e.into_inner()),
            None => None,
        };
        drop(link);
        if let Some(r) = lost {
            for it in r.items {
                let Some(t) = self.tables.get(it.limit as usize) else {
                    continue;
                };
                let mut t = t.borrow_mut();
                let t = &mut *t;
                if let Some(e) = t.map.get_mut(&it.key) {
                    e.fresh.merge(&it.spends);
                    e.demand = e.demand.saturating_add(it.demand);
                    if !e.dirty {
                        e.dirty = true;
                        t.dirty.push(it.key);
                    }
                }
            }
            for (li, key) in r.evicted {
                if let Some(t) = self.tables.get(li as usize) {
                    t.borrow_mut().evicted.push(key);
                }
            }
        }
        // Report numbers start again with the next link.
        for t in &self.tables {
            for e in t.borrow_mut().map.values_mut() {
                e.sent = Spends::default();
                e.sent_seq = 0;
            }
        }
        self.seq.set(0);
        self.acked.set(0);
    }

    /// Empties the tables of the limits `next` (the generation the worker
    /// switches to) does not carry — changed or removed — so their keys'
    /// memory is freed now rather than when the last request of this
    /// generation ends.
    pub fn release_except(&self, next: Option<&Limits>) {
        for (d, t) in self.limits.defs.iter().zip(&self.tables) {
            if !next.is_some_and(|n| n.defs.iter().any(|x| x.id == d.id)) {
                *t.borrow_mut() = Table::default();
            }
        }
    }

    fn apply(&self, b: Batch) {
        if b.acked > self.acked.get() {
            self.acked.set(b.acked);
        }
        if b.report {
            self.urgent.set(true);
        }
        self.store_ok.set(b.store_ok);
        let acked = self.acked.get();
        for u in b.updates {
            self.apply_update(&u, acked);
        }
        self.applied.set(self.applied.get().max(b.round));
    }

    fn apply_update(&self, u: &Update, acked: u32) {
        let li = u.limit as usize;
        let Some(def) = self.limits.defs.get(li) else {
            return;
        };
        let Some(tier) = def.tiers.get(u.tier as usize) else {
            return;
        };
        let p = &tier.params;
        let mut t = self.tables[li].borrow_mut();
        let t = &mut *t;
        if u.hint {
            if !t.map.contains_key(&u.key)
                && let Some(w) = u.whole
            {
                self.hints.borrow_mut().put(u.limit, u.key, u.tier, w);
            }
            return;
        }
        if !t.map.contains_key(&u.key) {
            if !u.install {
                return;
            }
            // Reported next tick, so the reconciler counts this worker as
            // a holder of the key.
            let e = Entry {
                tier: u.tier,
                share: u.share,
                state: u.state,
                whole: u.whole,
                fresh: Spends::default(),
                sent: Spends::default(),
                sent_seq: 0,
                demand: 0,
                waiting: 0,
                dirty: true,
                referenced: false,
                last_seen: u.now,
                awaiting: u.awaiting,
                reserved: u.reserved,
                retry_at: u.retry_at,
                key_bytes: None,
            };
            t.insert(u.key, e, def.max_keys, u.now, def.ttl_ns);
            t.dirty.push(u.key);
            // Reported at once: a request on another worker may be
            // waiting for the reconciler to release this worker's
            // reservation.
            self.urgent.set(true);
            return;
        }
        if u.only_install {
            // Holding the key already, the worker reports it at once all
            // the same: the reconciler waits for that to release its
            // reservation.
            self.urgent.set(true);
            return;
        }
        let e = t.map.get_mut(&u.key).expect("present");
        if e.tier != u.tier {
            return;
        }
        // The reconciler's state at `u.now`, less what this worker spent
        // that the state does not include yet.
        let mut st = u.state;
        if e.sent_seq > acked {
            e.sent.apply(&mut st, p);
        }
        e.fresh.apply(&mut st, p);
        e.state = st;
        // The same for the whole key.
        e.whole = u.whole.map(|mut w| {
            if e.sent_seq > acked {
                e.sent.apply(&mut w, p);
            }
            e.fresh.apply(&mut w, p);
            w
        });
        e.share = u.share;
        e.awaiting = u.awaiting;
        e.reserved = u.reserved;
        e.retry_at = u.retry_at;
    }

    /// Sends what changed since the last report (one report in flight at
    /// a time). An `urgent` report carries every limit's keys, whatever
    /// its interval, and asks the reconciler to answer at once.
    fn report(&self, link: &WorkerLink, ticks: u32, urgent: bool) {
        // A report not yet taken by the channel goes first.
        if let Some(r) = self.unsent.borrow_mut().take() {
            match link.tx.try_send(r) {
                Ok(()) => {}
                Err(TrySendError::Full(r)) | Err(TrySendError::Disconnected(r)) => {
                    *self.unsent.borrow_mut() = Some(r);
                    return;
                }
            }
        }
        if self.seq.get() > self.acked.get() {
            return; // one report in flight at a time
        }
        let seq = self.seq.get() + 1;
        let mut items = Vec::new();
        let mut evicted = Vec::new();
        for (li, t) in self.tables.iter().enumerate() {
            let def = &self.limits.defs[li];
            if !urgent && def.every > 1 && ticks % def.every != 0 {
                continue;
            }
            let mut t = t.borrow_mut();
            let t = &mut *t;
            for key in std::mem::take(&mut t.dirty) {
                let Some(e) = t.map.get_mut(&key) else {
                    continue;
                };
                if !e.dirty {
                    continue;
                }
                e.dirty = false;
                e.sent = std::mem::take(&mut e.fresh);
                e.sent_seq = seq;
                items.push(ReportItem {
                    limit: li as u16,
                    key,
                    tier: e.tier,
                    demand: std::mem::take(&mut e.demand),
                    waiting: std::mem::take(&mut e.waiting),
                    spends: e.sent,
                    key_bytes: e.key_bytes.clone(),
                });
            }
            for key in t.evicted.drain(..) {
                evicted.push((li as u16, key));
            }
        }
        let urgent = urgent || self.urgent.get();
        self.urgent.set(false);
        // An urgent report goes even when empty: it tells the reconciler
        // which round this worker has taken.
        if items.is_empty() && evicted.is_empty() && !urgent {
            return;
        }
        self.seq.set(seq);
        let r = Report {
            worker: self.id as u16,
            seq,
            items,
            evicted,
            urgent,
            applied: self.applied.get(),
        };
        if let Err(TrySendError::Full(r)) | Err(TrySendError::Disconnected(r)) = link.tx.try_send(r)
        {
            *self.unsent.borrow_mut() = Some(r);
        }
    }

    /// Adds credit to a global key (benches and tests without Redis).
    #[doc(hidden)]
    pub fn grant(&self, li: usize, key: u64, balance: f64) {
        if let Some(e) = self.tables[li].borrow_mut().map.get_mut(&key) {
            e.state = State::Credit { balance };
            e.awaiting = false;
        }
    }
}

fn window_of(p: &Params, now: u64) -> u64 {
    match p.algorithm {
        super::algo::Algorithm::FixedWindow | super::algo::Algorithm::SlidingWindow => {
            now / p.window_ns
        }
        _ => 0,
    }
}

impl Table {
    /// Inserts a new key, evicting first when the table is full: CLOCK
    /// (second chance) from the ring's head, so keys used twice outlive a
    /// flood of keys used once.
    fn insert(&mut self, key: u64, e: Entry, cap: usize, now: u64, ttl: u64) {
        if self.map.len() >= cap {
            self.evict_one(now, ttl);
        }
        self.map.insert(key, e);
        self.ring.push_back(key);
        if self.dirty.len() > 2 * cap.max(64) {
            let map = &self.map;
            self.dirty.retain(|k| map.get(k).is_some_and(|e| e.dirty));
            self.dirty.sort_unstable();
            self.dirty.dedup();
        }
    }

    fn evict_one(&mut self, now: u64, ttl: u64) {
        for _ in 0..32 {
            let Some(k) = self.ring.pop_front() else {
                return;
            };
            let Some(e) = self.map.get_mut(&k) else {
                continue;
            };
            if e.referenced && now.saturating_sub(e.last_seen) < ttl {
                e.referenced = false;
                self.ring.push_back(k);
                continue;
            }
            self.remove(k);
            return;
        }
        // Everything was recently used: take the head anyway.
        while let Some(k) = self.ring.pop_front() {
            if self.map.contains_key(&k) {
                self.remove(k);
                return;
            }
        }
    }

    fn remove(&mut self, k: u64) {
        self.map.remove(&k);
        if self.evicted.len() < MAX_EVICTED_REPORTED {
            self.evicted.push(k);
        }
    }

    /// Drops keys idle longer than `ttl`, looking at a slice of the ring
    /// per call so a large table costs little per tick.
    fn sweep(&mut self, now: u64, ttl: u64, cap: usize) {
        let n = (self.ring.len() / 16).clamp(64, 8192).min(self.ring.len());
        for _ in 0..n {
            let Some(k) = self.ring.pop_front() else {
                return;
            };
            let Some(e) = self.map.get_mut(&k) else {
                continue;
            };
            if now.saturating_sub(e.last_seen) > ttl && !e.dirty {
                self.remove(k);
            } else {
                self.ring.push_back(k);
            }
        }
        // A ring left longer than the map by removals elsewhere.
        if self.ring.len() > 2 * cap.max(64) {
            let map = &self.map;
            self.ring.retain(|k| map.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(now: u64) -> Entry {
        Entry {
            tier: 0,
            share: 1.0,
            state: State::Credit { balance: 0.0 },
            whole: None,
            fresh: Spends::default(),
            sent: Spends::default(),
            sent_seq: 0,
            demand: 0,
            waiting: 0,
            dirty: false,
            referenced: false,
            last_seen: now,
            awaiting: false,
            reserved: false,
            retry_at: 0,
            key_bytes: None,
        }
    }

    #[test]
    fn table_stays_under_its_cap_and_keeps_hot_keys() {
        let mut t = Table::default();
        let ttl = 1_000_000_000;
        t.insert(u64::MAX, entry(0), 100, 0, ttl);
        for k in 0..10_000u64 {
            // The hot key is used between every insert.
            if let Some(e) = t.map.get_mut(&u64::MAX) {
                e.referenced = true;
            }
            t.insert(k, entry(k), 100, k, ttl);
            assert!(t.map.len() <= 100);
        }
        assert!(t.map.contains_key(&u64::MAX));
        assert!(t.ring.len() <= 200);
    }

    #[test]
    fn sweep_drops_idle_keys() {
        let mut t = Table::default();
        for k in 0..1000u64 {
            t.insert(k, entry(0), 10_000, 0, 10);
        }
        for _ in 0..20 {
            t.sweep(100, 10, 10_000);
        }
        assert_eq!(t.map.len(), 0);
    }
}
