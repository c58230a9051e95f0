//! The reconciler: a control-plane thread that keeps each key's limit
//! whole across the workers (and, for `scope = "global"`, across
//! instances, through the Redis lease thread).
//!
//! How it works. Every sync interval each worker sends a [`Report`]: per
//! key it touched, the requests it saw (demand) and admitted (spends). The
//! reconciler folds the spends into the key's *instance-wide* state (the
//! algorithm run on the sum), then sends every worker holding the key an
//! [`Update`]: its share `s_w` of the key, proportional to its recent
//! demand, and the instance state scaled by `s_w`, less what the worker
//! spent since it reported. The shares of a key add up to 1, so the
//! workers' capacities and refill rates add up to the limit whichever way
//! the traffic is spread. A worker meeting a key it never saw starts with
//! share `1/N` of a fresh key; that much stays reserved for each worker
//! that has not reported the key, and once the key is in use the
//! reconciler installs it on those workers so the reservation is released
//! (see [`Reconciler::reconcile_key`]).
//!
//! Reports are numbered; an update says which report of the worker it
//! includes, so spends are never counted twice or missed. Channels are
//! bounded crossbeam channels; workers only `try_send`/`try_recv`.
//!
//! Reloads. Each generation of the limits has its own reconciler (and
//! lease thread). A reload that keeps a limit's definition carries the
//! limit's state: the workers share their key tables into the new
//! generation's shards, and the old reconciler, once every worker has left
//! it (their links closed, see `Shard::detach`), hands its instance-wide
//! state of those limits to the new one ([`Handoff`]) and ends. Until it
//! arrives the new reconciler holds the reports of carried limits back
//! (the workers go on with the shares they had), then folds them into the
//! handed-over state; a generation that ended before its own predecessor
//! handed over waits for it first, so the chain stays whole.
//!
//! Urgent exchanges. A worker that would refuse a request while part of
//! the key is held elsewhere (its update says so: `Update::reserved`:
//! parts held for workers that have not reported the key or for old
//! views, or another holder's whole requests beyond its floor when that
//! holder's last report had no refusals, so a flood is never held up)
//! lets the request wait, up to the limit's `rebalance_wait_ms`, and
//! reports at once with `Report::urgent`. The reconciler acks every report
//! at once, and reconciles the touched keys on an urgent one, but never
//! sooner than `Limits::reconcile_gap` (two polls) after its last round;
//! a worker whose old view holds quota back is asked to report at once
//! (`Batch::report`), and a worker given an install reports it at once.
//!
//! Global keys wait the same way for credit: while another worker holds
//! some, or the store may lease more (`Update::retry_at`: until then the
//! store has said the quota is used up, so a flood is refused at once). A
//! report of requests waiting for credit (`ReportItem::waiting`, a first
//! touch included) asks for a lease at once, and the reconciler, woken by
//! the lease thread's answer as by a report, hands it out in a round of
//! that key alone.
//!
//! Views. Each update round is numbered; a batch says the latest round it
//! carries and a report the latest round its worker had taken. A worker's
//! old view counts as spendable until the worker reports having taken the
//! round that replaced it, so what it spends from a view just before it
//! takes the next one is never handed out twice (see `reconcile_key`).
//! A batch a worker's full channel refuses is kept for the next send.
//!
//! The bound. For one key over one window, with N workers:
//!
//! ```text
//! limit − N·[wait ran out]  ≤  admitted  ≤  limit + (N − 1)·[share·burst < 1] + refill
//! ```
//!
//! The lower side: a worker refuses only what the instance has spent,
//! unless the urgent exchange takes longer than `rebalance_wait_ms` (or
//! that is 0). Under demand that lasts a few sync intervals the whole
//! limit is used as well: what a key has left is handed out in whole
//! requests (largest remainder, see `whole_parts`), so rounding strands
//! no request — a limit of 3 over two workers admits 3, not the 1.5 + 1.5
//! rounded down to 2. On the upper side, the middle term is rounding: a
//! worker whose share is worth less than one request may still hold one
//! (otherwise a burst of 1 spread over N workers could never pass); only
//! what a bucket refills between a worker's polls can slip past besides —
//! under one request for most limits. `tests/rate_limit.rs` measures it
//! (token bucket of 60, two workers: 60 pinned, 60 spread; the naive
//! designs give 30 pinned for limit/N per worker and 120 spread for the
//! full limit per worker; two instances over Redis: 300 of 300; a burst
//! of five on a limit of 3: 3).

use super::algo::{Algorithm, Params, State};
use super::redis_store::{LeaseReq, LeaseResp};
use super::shard::IdMap;
use super::{Limits, Scope};
use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Requests admitted, by window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Spends {
    /// Window of `cur` (0 for buckets).
    pub win: u64,
    /// Admitted in window `win`.
    pub cur: u32,
    /// Admitted in window `win - 1`.
    pub prev: u32,
}

impl Spends {
    pub fn add(&mut self, win: u64) {
        self.add_n(win, 1);
    }

    /// Counts `n` requests admitted in window `win`.
    pub fn add_n(&mut self, win: u64, n: u32) {
        if n == 0 {
            return;
        }
        if self.cur == 0 && self.prev == 0 {
            self.win = win;
        }
        if win == self.win {
            self.cur = self.cur.saturating_add(n);
        } else if win == self.win + 1 {
            self.prev = self.cur;
            self.cur = n;
            self.win = win;
        } else if win > self.win {
            self.prev = 0;
            self.cur = n;
            self.win = win;
        } else if win + 1 == self.win {
            self.prev = self.prev.saturating_add(n);
        }
    }

    /// Adds `other`'s counts (spends of an earlier report).
    pub fn merge(&mut self, other: &Spends) {
        if other.win > 0 {
            self.add_n(other.win - 1, other.prev);
        }
        self.add_n(other.win, other.cur);
    }

    /// Subtracts these spends from a state's quota.
    pub fn apply(&self, st: &mut State, p: &Params) {
        if self.cur > 0 {
            st.spend(p, self.cur as f64, self.win);
        }
        if self.prev > 0 && self.win > 0 {
            st.spend(p, self.prev as f64, self.win - 1);
        }
    }
}

/// One key in a worker's report.
#[derive(Debug)]
pub(crate) struct ReportItem {
    pub limit: u16,
    pub key: u64,
    pub tier: u8,
    pub demand: u32,
    /// Of `demand`, requests that were refused and wait for more.
    pub waiting: u32,
    pub spends: Spends,
    pub key_bytes: Option<Box<[u8]>>,
}

/// A worker's report for one sync interval.
#[derive(Debug)]
pub(crate) struct Report {
    pub worker: u16,
    pub seq: u32,
    pub items: Vec<ReportItem>,
    pub evicted: Vec<(u16, u64)>,
    /// A request waits on it, or it answers an install: reconcile its keys
    /// now rather than at the next interval.
    pub urgent: bool,
    /// The latest reconciliation round whose batch the worker had taken
    /// when it made this report: what it spent from views older than that
    /// round's is all reported.
    pub applied: u64,
}

/// Keys whose quota is at most this many requests are hinted to the
/// workers that do not hold them ([`Update::hint`]): one request the
/// header does not count is a tenth of such a limit or more. Larger
/// limits are not worth the extra updates under a flood of keys.
pub(crate) const HINT_MAX_QUOTA: f64 = 10.0;

/// New state for one key on one worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Update {
    pub limit: u16,
    pub key: u64,
    pub tier: u8,
    pub share: f64,
    /// The worker's part of the key, at `now`.
    pub state: State,
    /// The whole key, instance-wide, at `now` (every report folded in):
    /// what the worker's `RateLimit` headers count down from. `None` for
    /// credit (a global key's count lives in the store).
    pub whole: Option<State>,
    pub now: u64,
    /// Waiting for a lease: requests wait rather than fail.
    pub awaiting: bool,
    /// More of the key may come to this worker: part of it is held for a
    /// worker that has not reported it or for an old view, or another
    /// holder has spare whole requests. A refusal may wait for a round.
    pub reserved: bool,
    /// Global keys: from this time (clock ns) a lease may grant more, so a
    /// refusal may wait for one; before it, the store has said the quota
    /// is used up. 0 when the store has not said so.
    pub retry_at: u64,
    /// Create the key if the worker does not hold it.
    pub install: bool,
    /// Only `whole`, for a worker that does not hold the key: kept aside
    /// so that, if a request meets the key there, its `RateLimit` headers
    /// count what the other workers spent (a small limit only, see
    /// [`HINT_MAX_QUOTA`]).
    pub hint: bool,
    /// Only create it; a worker that holds the key keeps its state.
    pub only_install: bool,
}

/// What the reconciler sends a worker each interval.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The worker's last report folded into these states.
    pub acked: u32,
    /// The latest reconciliation round these updates come from.
    pub round: u64,
    /// Report at once: part of a key is held back for what this worker
    /// may still spend from an older view.
    pub report: bool,
    /// The Redis store answers.
    pub store_ok: bool,
    pub updates: Vec<Update>,
}

/// What an ending reconciler hands the next generation's: every limit's
/// keys, by limit identity ([`super::LimitDef::id`]); the successor keeps
/// those of the limits it carries.
#[derive(Debug)]
pub(crate) struct Handoff {
    limits: Vec<(u64, IdMap<GKey>)>,
}

/// How a reconciler follows its predecessor and precedes its successor.
#[derive(Debug)]
pub(crate) struct Succession {
    /// The predecessor's hand-over, and the predecessor itself (kept until
    /// it has handed over, so it can still read its limits then).
    pub inherit: Option<(Receiver<Handoff>, Arc<Limits>)>,
    /// By limit: carried, and its state not handed over yet.
    pub waiting: Vec<bool>,
    /// Where this reconciler hands over when it ends.
    pub handoff: Sender<Handoff>,
}

#[derive(Debug)]
struct Holder {
    worker: u16,
    /// Demand, decayed by half each time the key is reconciled.
    demand: f64,
    /// Has reported the key (an installed key counts once reported).
    acked: bool,
    /// Quota in the view last sent to it (its first-touch part before
    /// any), and spends it reported since.
    alloc: f64,
    spent_since: f64,
    /// The largest view the worker may still be spending from, other than
    /// the last one sent, until it reports having taken round
    /// `pending_round` (see [`Reconciler::reconcile_key`]).
    pending: f64,
    pending_round: u64,
    /// Its last report of the key had refusals: it wants more than it has,
    /// so none of its part is spare for another worker.
    refused: bool,
}

#[derive(Debug, Default)]
struct Lease {
    in_flight: bool,
    /// Not before (after the store said the quota is used up).
    next_at: u64,
    /// Requests the workers refused or held back for want of credit since
    /// the last lease was asked: ask one at the next round, not at the
    /// next interval.
    wanted: f64,
    /// Instance demand, requests per tick (EWMA).
    rate: f64,
    demand_tick: u64,
    idle_ticks: u32,
    /// Redis window the balance belongs to (windowed algorithms).
    win: u64,
    expires_at: u64,
}

#[derive(Debug)]
struct GKey {
    tier: u8,
    state: State,
    holders: Vec<Holder>,
    last_active: u64,
    key_bytes: Option<Box<[u8]>>,
    lease: Lease,
    /// Global key running on local state while the store is down.
    fallback: bool,
    /// A worker refused requests for it (it wants more than its share).
    pressed: bool,
}

pub(crate) struct Reconciler {
    limits: Weak<Limits>,
    workers: usize,
    rx: Receiver<Report>,
    txs: Vec<Sender<Batch>>,
    acked: Vec<u32>,
    acked_sent: Vec<u32>,
    keys: Vec<IdMap<GKey>>,
    touched: Vec<(u16, u64)>,
    redis: Option<(Sender<LeaseReq>, Receiver<LeaseResp>)>,
    store_ok: bool,
    store_ok_sent: bool,
    out: Vec<Vec<Update>>,
    ticks: u64,
    /// Reconciliation rounds so far, and by worker the latest one it
    /// reported having taken.
    round: u64,
    applied: Vec<u64>,
    /// Workers asked to report at once.
    ask: Vec<bool>,
    succession: Succession,
    /// Reports' parts on limits still waiting for their handed-over state.
    held: Vec<Report>,
}

impl Reconciler {
    pub fn new(
        limits: &Arc<Limits>,
        workers: usize,
        rx: Receiver<Report>,
        txs: Vec<Sender<Batch>>,
        redis: Option<(Sender<LeaseReq>, Receiver<LeaseResp>)>,
        succession: Succession,
    ) -> Reconciler {
        Reconciler {
            limits: Arc::downgrade(limits),
            workers,
            rx,
            txs,
            acked: vec![0; workers],
            acked_sent: vec![0; workers],
            keys: limits.defs.iter().map(|_| IdMap::default()).collect(),
            touched: Vec::new(),
            redis,
            store_ok: true,
            store_ok_sent: true,
            out: (0..workers).map(|_| Vec::new()).collect(),
            ticks: 0,
            round: 0,
            applied: vec![0; workers],
            ask: vec![false; workers],
            succession,
            held: Vec::new(),
        }
    }

    /// Runs until every worker is gone (they switched to another
    /// generation, or the limits were dropped), then hands over.
    pub fn run(mut self) {
        self.serve();
        self.finish();
    }

    fn serve(&mut self) {
        let Some(l) = self.limits.upgrade() else {
            return;
        };
        let tick = Duration::from_nanos(l.tick_ns);
        let gap = l.reconcile_gap();
        drop(l);
        let mut next = Instant::now() + tick;
        // When the keys were last reconciled, and when an urgent report
        // wants them reconciled again (not sooner than `gap` after).
        let mut last = Instant::now();
        let mut urgent_at: Option<Instant> = None;
        // Lease answers wake the reconciler too: a request may wait on one.
        let reports = self.rx.clone();
        let mut leases = self.redis.as_ref().map(|(_, rx)| rx.clone());
        let mut lease_gone = false;
        loop {
            if lease_gone {
                leases = None;
            }
            let due = urgent_at.map_or(next, |u| u.min(next));
            let timeout = due.saturating_duration_since(Instant::now());
            let mut sel = Select::new();
            let on_report = sel.recv(&reports);
            if let Some(rx) = &leases {
                sel.recv(rx);
            }
            match sel.select_timeout(timeout) {
                Ok(op) if op.index() == on_report => {
                    let Ok(r) = op.recv(&reports) else { return };
                    let Some(l) = self.limits.upgrade() else {
                        return;
                    };
                    if r.urgent && urgent_at.is_none() {
                        urgent_at = Some(last + gap);
                    }
                    self.fold(&l, r);
                    // The ack goes at once, so the worker's next report
                    // (an urgent one, perhaps) need not wait for the interval.
                    self.send();
                    continue;
                }
                Ok(op) => {
                    let rx = leases.as_ref().expect("selected");
                    let Ok(r) = op.recv(rx) else {
                        // The lease thread is gone; intervals go on.
                        lease_gone = true;
                        continue;
                    };
                    let Some(l) = self.limits.upgrade() else {
                        return;
                    };
                    let now = l.clock.now();
                    if let Some((li, key)) = self.take_lease(&l, now, r) {
                        // Credit a request may wait on goes out at once,
                        // and more is asked for if it did not cover them.
                        self.round += 1;
                        self.reconcile_key(&l, li, key, now);
                        self.send();
                        self.lease_for_refusals(&l, li, key, now);
                    }
                    continue;
                }
                Err(_) => {}
            }
            let now_i = Instant::now();
            let Some(l) = self.limits.upgrade() else {
                return;
            };
            if now_i < next {
                if urgent_at.is_some_and(|u| u <= now_i) {
                    urgent_at = None;
                    last = now_i;
                    self.reconcile_touched(&l, l.clock.now());
                    self.send();
                    // The interval's step keeps the gap too.
                    next = next.max(last + gap);
                }
                continue;
            }
            next += tick;
            if next < now_i {
                next = now_i + tick;
            }
            urgent_at = None;
            last = now_i;
            self.look_for_handoff(&l);
            self.step(&l);
        }
    }

    /// Takes the predecessor's state when it has handed it over (or ended
    /// without).
    fn look_for_handoff(&mut self, l: &Limits) {
        let got = match &self.succession.inherit {
            None => return,
            Some((rx, _)) => match rx.try_recv() {
                Ok(h) => Some(h),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => None,
            },
        };
        self.inherit(l, got);
    }

    /// Installs the handed-over keys of the carried limits, then folds the
    /// reports held back for them.
    fn inherit(&mut self, l: &Limits, h: Option<Handoff>) {
        self.succession.inherit = None;
        if let Some(h) = h {
            for (id, mut keys) in h.limits {
                let Some(li) = l.defs.iter().position(|d| d.id == id) else {
                    continue;
                };
                if !self.succession.waiting[li] {
                    continue;
                }
                for g in keys.values_mut() {
                    // The predecessor's lease thread answers it, not ours.
                    g.lease.in_flight = false;
                    // Every worker took the predecessor's last updates
                    // before leaving it, and reports to this reconciler
                    // what it spent from them; its rounds mean nothing here.
                    for h in &mut g.holders {
                        h.pending = 0.0;
                        h.pending_round = 0;
                    }
                }
                self.keys[li] = keys;
            }
        }
        self.succession.waiting.fill(false);
        for r in std::mem::take(&mut self.held) {
            self.fold_parts(l, r);
        }
    }

    /// The workers are gone: takes the predecessor's state if it is still
    /// to come (waiting for it to end), then hands everything to the
    /// successor, when one took this generation's hand-over channel.
    fn finish(mut self) {
        // No lease is asked or applied any more: the lease thread ends now.
        self.redis = None;
        let Some(l) = self.limits.upgrade() else {
            // Dropped: no successor waits for this generation (one that
            // does keeps it alive until it has handed over).
            return;
        };
        if let Some((rx, _)) = &self.succession.inherit {
            let h = rx.recv().ok();
            self.inherit(&l, h);
        }
        let unclaimed = super::lock(&l.handoff).take();
        if unclaimed.is_some() {
            return; // no generation carries anything from this one
        }
        let limits = l
            .defs
            .iter()
            .zip(std::mem::take(&mut self.keys))
            .map(|(d, keys)| (d.id, keys))
            .collect();
        let _ = self.succession.handoff.try_send(Handoff { limits });
    }

    /// Folds one report into the instance state.
    fn fold(&mut self, l: &Limits, mut r: Report) {
        let w = r.worker as usize;
        if w >= self.workers {
            return;
        }
        if r.seq > self.acked[w] {
            self.acked[w] = r.seq;
        }
        self.applied[w] = self.applied[w].max(r.applied);
        if self.succession.waiting.contains(&true) {
            // Carried limits wait for their handed-over state.
            let waiting = &self.succession.waiting;
            let wait = |li: u16| waiting.get(li as usize).copied().unwrap_or(false);
            let (held, items): (Vec<_>, Vec<_>) =
                r.items.into_iter().partition(|it| wait(it.limit));
            let (held_ev, evicted): (Vec<_>, Vec<_>) =
                r.evicted.into_iter().partition(|&(li, _)| wait(li));
            if !held.is_empty() || !held_ev.is_empty() {
                self.held.push(Report {
                    worker: r.worker,
                    seq: r.seq,
                    items: held,
                    evicted: held_ev,
                    urgent: false,
                    applied: r.applied,
                });
            }
            r.items = items;
            r.evicted = evicted;
        }
        self.fold_parts(l, r);
    }

    /// Folds a report's items and evictions (its number is already
    /// counted).
    fn fold_parts(&mut self, l: &Limits, r: Report) {
        let now = l.clock.now();
        for it in r.items {
            let li = it.limit as usize;
            let Some(def) = l.defs.get(li) else { continue };
            let Some(tier) = def.tiers.get(it.tier as usize) else {
                continue;
            };
            let p = &tier.params;
            let global = def.scope == Scope::Global && self.redis.is_some();
            let store_ok = self.store_ok;
            let g = self.keys[li].entry(it.key).or_insert_with(|| GKey {
                tier: it.tier,
                state: if global && store_ok {
                    State::Credit { balance: 0.0 }
                } else {
                    p.fresh(1.0, now)
                },
                holders: Vec::new(),
                last_active: now,
                key_bytes: None,
                lease: Lease::default(),
                fallback: global && !store_ok,
                pressed: false,
            });
            let refused = it.waiting > 0 || it.demand > it.spends.cur + it.spends.prev;
            if refused {
                g.pressed = true;
            }
            let wants_credit = it.waiting > 0 && matches!(g.state, State::Credit { .. });
            if wants_credit {
                g.lease.wanted += it.waiting as f64;
            }
            if g.key_bytes.is_none() {
                g.key_bytes = it.key_bytes;
            }
            g.state.advance(p, 1.0, now);
            it.spends.apply(&mut g.state, p);
            g.last_active = now;
            g.lease.demand_tick += it.demand as u64;
            let spent = (it.spends.cur + it.spends.prev) as f64;
            let first_view = first_touch_view(&g.state, p, self.workers);
            match g.holders.iter_mut().find(|h| h.worker == r.worker) {
                Some(h) => {
                    h.demand += it.demand as f64;
                    h.acked = true;
                    h.spent_since += spent;
                    h.refused = refused;
                }
                // Until it takes an update, the worker spends from the
                // first-touch part it made the key with.
                None => g.holders.push(Holder {
                    worker: r.worker,
                    demand: it.demand as f64,
                    acked: true,
                    alloc: first_view,
                    spent_since: spent,
                    pending: 0.0,
                    pending_round: 0,
                    refused,
                }),
            }
            self.touched.push((it.limit, it.key));
            if wants_credit {
                self.lease_for_refusals(l, it.limit, it.key, now);
            }
        }
        for (li, key) in r.evicted {
            let Some(m) = self.keys.get_mut(li as usize) else {
                continue;
            };
            if let Some(g) = m.get_mut(&key) {
                g.holders.retain(|h| h.worker != r.worker);
                // No worker holds it and it holds no lease: forget it.
                let busy = g.lease.in_flight
                    || matches!(g.state, State::Credit { balance } if balance >= 1.0);
                if g.holders.is_empty() && !busy {
                    m.remove(&key);
                }
            }
        }
    }

    /// One sync interval: leases, shares, updates out.
    fn step(&mut self, l: &Limits) {
        self.ticks += 1;
        let now = l.clock.now();
        self.take_leases(l, now);
        self.manage_leases(l, now);
        self.reconcile_touched(l, now);
        self.send();
        if self.ticks % 20 == 0 || self.keys.iter().any(|m| m.len() > 1 << 20) {
            self.expire(l, now);
        }
    }

    /// Reconciles every key a report touched since the last time.
    fn reconcile_touched(&mut self, l: &Limits, now: u64) {
        self.round += 1;
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for &(li, key) in &touched {
            self.lease_for_refusals(l, li, key, now);
            self.reconcile_key(l, li, key, now);
        }
        touched.clear();
        self.touched = touched;
    }

    /// Computes shares for one key and queues an update per holder.
    ///
    /// A worker that has not reported the key may meet it at any moment
    /// and admit up to its first-touch share (`1/N` of a fresh key) before
    /// its report arrives, so that much stays *reserved* per such worker:
    /// the reporting holders share what is left. Once a key has used half a
    /// first-touch share, it is installed on the other workers (as a
    /// first touch would create it); each then reports it and becomes a
    /// holder, which releases its reservation. Credit (global keys) needs
    /// no reservation: a worker without credit waits for it.
    fn reconcile_key(&mut self, l: &Limits, li: u16, key: u64, now: u64) {
        let def = &l.defs[li as usize];
        let n = self.workers;
        let Some(g) = self.keys[li as usize].get_mut(&key) else {
            return;
        };
        let p = &def.tiers[g.tier as usize].params;
        g.state.advance(p, 1.0, now);
        let credit = matches!(g.state, State::Credit { .. });
        let first_touch = 1.0 / n as f64;
        let first_view = first_touch_view(&g.state, p, n);
        if !credit && n > 1 && g.holders.len() < n {
            let used = p.fresh_quota() - g.state.available(p, 1.0, now);
            if (used >= 2.0 || g.pressed) && used > 0.5 * first_view {
                for w in 0..n as u16 {
                    if !g.holders.iter().any(|h| h.worker == w) {
                        g.holders.push(Holder {
                            worker: w,
                            demand: 0.0,
                            acked: false,
                            alloc: first_view,
                            spent_since: 0.0,
                            pending: 0.0,
                            pending_round: 0,
                            refused: false,
                        });
                    }
                }
            }
        }
        let acked: Vec<usize> = (0..g.holders.len())
            .filter(|&i| g.holders[i].acked)
            .collect();
        // Installs (new, or not yet reported back) get a first-touch state;
        // a worker that already holds the key ignores it.
        let fresh = p.fresh(first_touch, now);
        for hd in g.holders.iter().filter(|h| !h.acked) {
            if let Some(out) = self.out.get_mut(hd.worker as usize) {
                out.push(Update {
                    limit: li,
                    key,
                    tier: g.tier,
                    share: first_touch,
                    state: fresh,
                    whole: (!credit).then_some(g.state),
                    now,
                    awaiting: false,
                    reserved: true,
                    retry_at: 0,
                    install: true,
                    hint: false,
                    only_install: true,
                });
            }
        }
        // The workers that do not hold the key hear what the instance has
        // spent of a small one: a request that meets it there states the
        // instance's remainder, not a fresh key's.
        if !credit && n > 1 && g.holders.len() < n && p.fresh_quota() <= HINT_MAX_QUOTA {
            for w in 0..n {
                if g.holders.iter().any(|h| h.worker as usize == w) {
                    continue;
                }
                if let Some(out) = self.out.get_mut(w) {
                    out.push(Update {
                        limit: li,
                        key,
                        tier: g.tier,
                        share: 0.0,
                        state: g.state,
                        whole: Some(g.state),
                        now,
                        awaiting: false,
                        reserved: false,
                        retry_at: 0,
                        install: false,
                        hint: true,
                        only_install: false,
                    });
                }
            }
        }
        if acked.is_empty() {
            return;
        }
        // What the reporting holders share.
        let unreported = (n - acked.len()) as f64;
        let mut base = g.state;
        if !credit && unreported > 0.0 {
            let reserve = unreported * first_view;
            match &mut base {
                State::Bucket { tokens, .. } => *tokens -= reserve,
                State::Window { cur, .. } => *cur += reserve,
                State::Credit { .. } => {}
            }
        }
        // Shares follow demand. A holder without recent demand keeps a
        // small floor (5 % split among the holders) while that is worth a
        // request or more, so a quiet worker can still admit a request; near
        // the end of the quota the floor goes, so it is not stranded there,
        // and so does it while a holder refuses: quota a quiet worker keeps
        // must not turn a busy one's requests away.
        let total: f64 = acked.iter().map(|&i| g.holders[i].demand).sum();
        let h = acked.len() as f64;
        let avail = base.available(p, 1.0, now).max(0.0);
        let short = acked.iter().any(|&i| g.holders[i].refused);
        let floor = if total <= 0.0 {
            1.0
        } else if avail * 0.05 / h >= 1.0 && !short {
            0.05 * total / h
        } else {
            0.0
        };
        let wsum = total + floor * h;
        // Until a worker takes this update it may spend what is left of its
        // previous view (`old`), in whole requests: a view worth less than
        // one admits nothing (a bucket's refill meanwhile is the bound's
        // `refill` term), so only its whole part counts. The parts are
        // sized such that every worker's larger of old and new still
        // fits: Σ max(old_v, s_v·x) ≤ avail, solved for the common quota
        // `x` by a few fixed-point steps (x only decreases).
        //
        // A worker's view is the last one sent, or, until it reports having
        // taken that round's batch, an older one (`pending`): spends from
        // an older view taken after the last report are not counted in the
        // state yet, so that view's rest still counts.
        let applied = &self.applied;
        let round = self.round;
        let olds: Vec<f64> = acked
            .iter()
            .map(|&i| {
                let hd = &g.holders[i];
                let last = hd.alloc - hd.spent_since;
                let older = if applied[hd.worker as usize] < hd.pending_round {
                    hd.pending - hd.spent_since
                } else {
                    0.0
                };
                last.max(older).max(0.0)
            })
            .collect();
        let shares: Vec<(f64, f64)> = acked
            .iter()
            .zip(&olds)
            .map(|(&i, &old)| {
                let hd = &g.holders[i];
                ((hd.demand + floor) / wsum, (old + 1e-9).floor())
            })
            .collect();
        let mut x = avail;
        for _ in 0..4 {
            let (mut fixed, mut free) = (0.0, 0.0);
            for &(sh, old) in &shares {
                if old > sh * x {
                    fixed += old;
                } else {
                    free += sh;
                }
            }
            let nx = if free > 0.0 {
                ((avail - fixed) / free).clamp(0.0, x)
            } else {
                0.0
            };
            if (x - nx).abs() < 1e-9 {
                break;
            }
            x = nx;
        }
        let lag = avail - x;
        if lag > 0.0 {
            match &mut base {
                State::Bucket { tokens, .. } => *tokens -= lag,
                State::Window { cur, .. } => *cur += lag,
                State::Credit { balance } => *balance -= lag,
            }
        }
        let avail_after = base.available(p, 1.0, now).max(0.0);
        let awaiting = credit && g.lease.in_flight && g.state.available(p, 1.0, now) < 1.0;
        // Until then the store has said a global key's quota is used up: a
        // refusal does not wait for a lease (a flood is refused at once).
        let retry_at = if credit && now < g.lease.next_at {
            g.lease.next_at
        } else {
            0
        };
        let mut share_of: Vec<f64> = shares.iter().map(|&(sh, _)| sh).collect();
        if !credit {
            whole_parts(&mut share_of, &shares, avail_after, avail, |j| {
                g.holders[acked[j]].demand
            });
        }
        // Credit is handed out in whole requests (largest remainder), so a
        // small balance is not lost to rounding.
        let mut credit_parts: Vec<f64> = Vec::new();
        if let State::Credit { balance } = base {
            let b = balance.max(0.0).floor();
            let raw: Vec<f64> = shares.iter().map(|&(sh, _)| b * sh).collect();
            credit_parts = largest_remainder(&raw, b, |j| g.holders[acked[j]].demand);
        }
        // Holders with a whole request beyond their floor that they are not
        // short of themselves: a worker refusing meanwhile may wait for a
        // round to move it (demand moves it; the floor stays where it is).
        let floor_part = floor / wsum * avail_after;
        let spare: Vec<bool> = acked
            .iter()
            .zip(&share_of)
            .map(|(&i, &sh)| !g.holders[i].refused && sh * avail_after - floor_part >= 1.0 - 1e-6)
            .collect();
        for (j, &i) in acked.iter().enumerate() {
            let hd = &mut g.holders[i];
            let share = share_of[j];
            let spare_elsewhere = spare.iter().enumerate().any(|(k, &s)| s && k != j);
            hd.pending = olds[j];
            hd.pending_round = round;
            // The quota held back for this view's rest: the worker is
            // asked to report at once, so it is freed soon.
            if g.pressed && shares[j].1 >= 1.0 && shares[j].1 > share * x {
                if let Some(a) = self.ask.get_mut(hd.worker as usize) {
                    *a = true;
                }
            }
            let state = match base {
                State::Credit { .. } => State::Credit {
                    balance: credit_parts[j],
                },
                st => st.scaled(share),
            };
            hd.alloc = match state {
                State::Credit { balance } => balance,
                _ => share * avail_after,
            };
            hd.spent_since = 0.0;
            if let Some(out) = self.out.get_mut(hd.worker as usize) {
                out.push(Update {
                    limit: li,
                    key,
                    tier: g.tier,
                    share,
                    state,
                    whole: (!credit).then_some(g.state),
                    now,
                    awaiting,
                    // More may come here: parts held for workers that
                    // have not reported, or for old views, or spare whole
                    // requests of other holders (bucket refill makes these
                    // a hair off whole numbers). Under a flood every
                    // holder refuses, so refusals are not held up.
                    // A global key: another worker holds credit (spare,
                    // or an old view's), which a round may move here.
                    reserved: if credit {
                        avail - credit_parts[j] >= 1.0 - 1e-6
                    } else {
                        unreported > 0.0 || lag >= 1.0 - 1e-6 || spare_elsewhere
                    },
                    retry_at,
                    install: false,
                    hint: false,
                    only_install: false,
                });
            }
            hd.demand *= 0.5;
            if hd.demand < 0.01 {
                hd.demand = 0.0;
            }
        }
    }

    /// Sends each worker its batch. A batch the worker's full channel
    /// refuses is kept, whole, to go first in the next one: an update is
    /// never lost, and a worker only reports a round it has taken.
    fn send(&mut self) {
        let store_changed = self.store_ok != self.store_ok_sent;
        let mut all_sent = true;
        for (w, tx) in self.txs.iter().enumerate() {
            let updates = std::mem::take(&mut self.out[w]);
            let report = std::mem::take(&mut self.ask[w]);
            if updates.is_empty()
                && self.acked[w] == self.acked_sent[w]
                && !store_changed
                && !report
            {
                continue;
            }
            let b = Batch {
                acked: self.acked[w],
                round: self.round,
                report,
                store_ok: self.store_ok,
                updates,
            };
            match tx.try_send(b) {
                Ok(()) => self.acked_sent[w] = self.acked[w],
                Err(TrySendError::Full(b)) => {
                    all_sent = false;
                    self.out[w] = b.updates;
                    self.ask[w] |= b.report;
                }
                // The worker left this generation.
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        if all_sent {
            self.store_ok_sent = self.store_ok;
        }
    }

    /// Drops keys nobody used for a while; past twice what the workers can
    /// hold (eviction notices lost under a flood), the least recently
    /// active go too.
    fn expire(&mut self, l: &Limits, now: u64) {
        for (li, m) in self.keys.iter_mut().enumerate() {
            let cap = l.defs[li].max_keys.saturating_mul(self.workers);
            if m.len() > 2 * cap {
                let mut ages: Vec<u64> = m.values().map(|g| g.last_active).collect();
                let cut = ages.len() - cap;
                let (_, &mut nth, _) = ages.select_nth_unstable(cut);
                m.retain(|_, g| g.last_active >= nth);
            }
            let ttl = l.defs[li].ttl_ns;
            m.retain(|_, g| {
                let idle = now.saturating_sub(g.last_active);
                let lease_busy = g.lease.in_flight
                    || matches!(g.state, State::Credit { balance } if balance >= 1.0);
                lease_busy || idle <= 2 * ttl
            });
        }
    }

    /// Applies what the lease thread answered.
    fn take_leases(&mut self, l: &Limits, now: u64) {
        let Some((_, rx)) = &self.redis else { return };
        let resps: Vec<LeaseResp> = rx.try_iter().collect();
        for r in resps {
            // The keys are reconciled with the others this round.
            let _ = self.take_lease(l, now, r);
        }
    }

    /// Applies one answer of the lease thread; returns the key a lease
    /// came for.
    fn take_lease(&mut self, l: &Limits, now: u64, r: LeaseResp) -> Option<(u16, u64)> {
        match r {
            LeaseResp::Granted {
                limit,
                key,
                want,
                granted,
                win,
                reset_ms,
            } => {
                self.set_store(l, true, now);
                if want < 0 {
                    return None; // a give-back
                }
                let g = self.keys[limit as usize].get_mut(&key)?;
                g.lease.in_flight = false;
                g.lease.wanted = (g.lease.wanted - granted as f64).max(0.0);
                let p = l.defs[limit as usize].tiers[g.tier as usize].params;
                if let State::Credit { balance } = &mut g.state {
                    if p.algorithm == Algorithm::FixedWindow
                        || p.algorithm == Algorithm::SlidingWindow
                    {
                        if win != g.lease.win {
                            *balance = balance.min(0.0);
                            g.lease.win = win;
                        }
                        g.lease.expires_at = now + reset_ms * 1_000_000;
                    }
                    *balance += granted as f64;
                }
                if (granted as i64) < want {
                    let wait = (reset_ms * 1_000_000).clamp(l.tick_ns, 1_000_000_000);
                    g.lease.next_at = now + wait;
                }
                self.touched.push((limit, key));
                return Some((limit, key));
            }
            LeaseResp::Failed { limit, key } => {
                if let Some(g) = self.keys[limit as usize].get_mut(&key) {
                    g.lease.in_flight = false;
                }
                self.set_store(l, false, now);
            }
            LeaseResp::Up => self.set_store(l, true, now),
            LeaseResp::Down => self.set_store(l, false, now),
        }
        None
    }

    /// Store up or down: global keys switch between leased credit and a
    /// local fallback (fail open) — or are refused on the workers (fail
    /// closed).
    fn set_store(&mut self, l: &Limits, ok: bool, now: u64) {
        if ok == self.store_ok {
            return;
        }
        self.store_ok = ok;
        tracing::warn!(store_ok = ok, "rate-limit store state changed");
        for (li, m) in self.keys.iter_mut().enumerate() {
            let def = &l.defs[li];
            if def.scope != Scope::Global {
                continue;
            }
            for (&key, g) in m.iter_mut() {
                let p = &def.tiers[g.tier as usize].params;
                if ok && g.fallback {
                    g.state = State::Credit { balance: 0.0 };
                    g.fallback = false;
                    g.lease = Lease::default();
                    self.touched.push((li as u16, key));
                } else if !ok && def.fail_open && !g.fallback {
                    g.state = p.fresh(1.0, now);
                    g.fallback = true;
                    g.lease.in_flight = false;
                    self.touched.push((li as u16, key));
                }
            }
        }
    }

    /// Asks for leases where the balance runs low; returns what idle keys
    /// hold.
    fn manage_leases(&mut self, l: &Limits, now: u64) {
        let Some((tx, _)) = &self.redis else { return };
        if !self.store_ok {
            // The lease thread reconnects on its own and says `Up`.
            return;
        }
        for (li, m) in self.keys.iter_mut().enumerate() {
            let def = &l.defs[li];
            if def.scope != Scope::Global {
                continue;
            }
            for (&key, g) in m.iter_mut() {
                let State::Credit { balance } = &mut g.state else {
                    continue;
                };
                let p = def.tiers[g.tier as usize].params;
                let windowed = matches!(
                    p.algorithm,
                    Algorithm::FixedWindow | Algorithm::SlidingWindow
                );
                if windowed && g.lease.expires_at != 0 && now >= g.lease.expires_at {
                    // Quota of a window that is over.
                    *balance = balance.min(0.0);
                    g.lease.expires_at = 0;
                    self.touched.push((li as u16, key));
                }
                let d = std::mem::take(&mut g.lease.demand_tick) as f64;
                g.lease.rate = 0.5 * g.lease.rate + 0.5 * d;
                if d > 0.0 {
                    g.lease.idle_ticks = 0;
                } else {
                    g.lease.idle_ticks = g.lease.idle_ticks.saturating_add(1);
                }
                let Some(kb) = &g.key_bytes else { continue };
                if g.lease.in_flight {
                    continue;
                }
                // Lease size follows the rate: about four intervals' worth,
                // at most a tenth of the limit (`ask_lease`).
                let low = (g.lease.rate * 2.0).max(1.0);
                if g.lease.idle_ticks >= 4 && *balance >= 1.0 {
                    let back = balance.floor();
                    *balance -= back;
                    let _ = tx.try_send(LeaseReq {
                        limit: li as u16,
                        key,
                        rkey: l.redis_key(li, g.tier, kb),
                        params: p,
                        want: -(back as i64),
                        win: g.lease.win,
                    });
                    self.touched.push((li as u16, key));
                    continue;
                }
                if g.lease.idle_ticks < 2 && *balance < low && now >= g.lease.next_at {
                    let want = (g.lease.rate * 4.0).max(d * 2.0);
                    if ask_lease(tx, l, li as u16, key, g, want) {
                        self.touched.push((li as u16, key));
                    }
                }
            }
        }
    }

    /// A worker refused (or holds back) requests of a global key for want
    /// of credit: asks the store for more at once rather than at the next
    /// interval, unless a lease is on its way or the store has said the
    /// quota is used up (`Lease::next_at`). The answer is taken as soon as
    /// it comes (see `serve`).
    fn lease_for_refusals(&mut self, l: &Limits, li: u16, key: u64, now: u64) {
        let Some((tx, _)) = &self.redis else { return };
        let Some(g) = self.keys[li as usize].get_mut(&key) else {
            return;
        };
        let wanted = g.lease.wanted;
        if wanted <= 0.0 || g.lease.in_flight || !matches!(g.state, State::Credit { .. }) {
            // A lease on its way: asked again when it is answered, if it
            // did not cover them.
            return;
        }
        if !self.store_ok || now < g.lease.next_at {
            // The store is down, or has said the quota is used up: they
            // are refused.
            g.lease.wanted = 0.0;
            return;
        }
        let want = (g.lease.rate * 4.0).max(wanted);
        ask_lease(tx, l, li, key, g, want);
    }
}

/// Sends the lease thread a request for `want` requests of a global key
/// (at least one, at most a tenth of the limit, so one instance does not
/// hold what others need); false when its channel is full.
fn ask_lease(
    tx: &Sender<LeaseReq>,
    l: &Limits,
    li: u16,
    key: u64,
    g: &mut GKey,
    want: f64,
) -> bool {
    let Some(kb) = &g.key_bytes else {
        return false;
    };
    let p = l.defs[li as usize].tiers[g.tier as usize].params;
    let max_lease = (p.limit as f64 / 10.0).max(1.0);
    let req = LeaseReq {
        limit: li,
        key,
        rkey: l.redis_key(li as usize, g.tier, kb),
        params: p,
        want: want.clamp(1.0, max_lease).ceil() as i64,
        win: g.lease.win,
    };
    let sent = tx.try_send(req).is_ok();
    if sent {
        g.lease.in_flight = true;
        g.lease.wanted = 0.0;
    }
    sent
}

/// The quota a worker holds when it makes a key itself (a first touch) or
/// takes an install: `1/N` of a fresh key; none of a global key's credit.
fn first_touch_view(state: &State, p: &Params, workers: usize) -> f64 {
    if matches!(state, State::Credit { .. }) {
        0.0
    } else {
        p.fresh_quota() / workers.max(1) as f64
    }
}

/// Whole parts of `total` (a whole number) in proportion to `raw` (which
/// adds up to about `total`): each part rounded down, then the requests
/// left over one each by largest remainder, ties to the larger `demand`.
fn largest_remainder(raw: &[f64], total: f64, demand: impl Fn(usize) -> f64) -> Vec<f64> {
    let mut parts: Vec<f64> = raw.iter().map(|r| r.floor()).collect();
    let mut left = total - parts.iter().sum::<f64>();
    let mut order: Vec<usize> = (0..raw.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = raw[a] - raw[a].floor();
        let rb = raw[b] - raw[b].floor();
        rb.partial_cmp(&ra)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(
                demand(b)
                    .partial_cmp(&demand(a))
                    .unwrap_or(std::cmp::Ordering::Equal),
            )
    });
    for i in order {
        if left < 1.0 - 1e-9 {
            break;
        }
        parts[i] += 1.0;
        left -= 1.0;
    }
    parts
}

/// Rounds the holders' parts of what a key has left (`avail_after`) to
/// whole requests, so rounding strands no request the limit still allows:
/// with a limit of 3 split over two workers, the parts 1.5/1.5 — and, once
/// each spent one, 0.5/0.5 — would otherwise leave the third request
/// unusable on both for the rest of the window. Whole requests go by
/// largest remainder (ties to the larger demand); the fraction below one
/// request goes with the demand shares. `shares` holds each holder's
/// demand share and old view (what it may still spend until it takes this
/// update); the rounding is only applied when every holder's larger of
/// old view and new part still fits in `avail`, as the unrounded parts do.
fn whole_parts(
    share_of: &mut [f64],
    shares: &[(f64, f64)],
    avail_after: f64,
    avail: f64,
    demand: impl Fn(usize) -> f64,
) {
    if avail_after < 1.0 || share_of.len() < 2 {
        return;
    }
    let raw: Vec<f64> = share_of.iter().map(|s| s * avail_after).collect();
    let whole = avail_after.floor();
    if whole - raw.iter().map(|r| r.floor()).sum::<f64>() < 1.0 - 1e-9 {
        return; // rounding strands nothing
    }
    let parts = largest_remainder(&raw, whole, demand);
    let frac = avail_after - whole;
    let rounded: Vec<f64> = parts
        .iter()
        .zip(share_of.iter())
        .map(|(p, s)| (p + frac * s) / avail_after)
        .collect();
    let worst: f64 = rounded
        .iter()
        .zip(shares)
        .map(|(s, &(_, old))| old.max(s * avail_after))
        .sum();
    if worst <= avail + 1e-9 {
        share_of.copy_from_slice(&rounded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch the worker's full channel refuses is kept, and goes first
    /// in the next: no update is lost, and their order holds.
    #[test]
    fn a_batch_a_full_channel_refuses_goes_first_in_the_next() {
        let cfg = crate::config::Config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.b]\ntargets = [\"127.0.0.1:1\"]\n\
             [rate_limits.a]\nlimit = 10\n[[routes]]\npath = \"/\"\nupstream = \"b\"\nrate_limit = [\"a\"]\n",
        )
        .expect("config");
        let limits = cfg.rate_limits.clone().expect("limits");
        let (_reports, rx) = crossbeam_channel::bounded(1);
        let (tx, batches) = crossbeam_channel::bounded(1);
        let (handoff, _h) = crossbeam_channel::bounded(1);
        let succession = Succession {
            inherit: None,
            waiting: vec![false],
            handoff,
        };
        let mut r = Reconciler::new(&limits, 1, rx, vec![tx], None, succession);
        let update = |key| Update {
            limit: 0,
            key,
            tier: 0,
            share: 1.0,
            state: State::Credit { balance: 0.0 },
            whole: None,
            now: 0,
            awaiting: false,
            reserved: false,
            retry_at: 0,
            install: false,
            hint: false,
            only_install: false,
        };
        let keys = |b: Batch| b.updates.iter().map(|u| u.key).collect::<Vec<_>>();
        r.out[0].push(update(1));
        r.send();
        r.out[0].push(update(2));
        r.ask[0] = true;
        r.send(); // the channel is full: kept
        assert_eq!(r.out[0].len(), 1);
        assert!(r.ask[0]);
        assert_eq!(keys(batches.try_recv().unwrap()), [1]);
        r.out[0].push(update(3));
        r.send();
        let b = batches.try_recv().unwrap();
        assert!(b.report);
        assert_eq!(keys(b), [2, 3]);
        assert!(r.out[0].is_empty() && !r.ask[0]);
    }

    #[test]
    fn parts_are_whole_requests_and_add_up() {
        // One request left, equal shares: it goes whole to one holder
        // (the larger demand).
        let mut s = vec![0.5, 0.5];
        whole_parts(&mut s, &[(0.5, 0.0), (0.5, 0.0)], 1.0, 1.0, |j| {
            [1.0, 2.0][j]
        });
        assert_eq!(s, vec![0.0, 1.0]);
        // 2.5 left over 1/3 and 2/3: 1 and 1.5 whole-ish (2 whole + 0.5).
        let mut s = vec![1.0 / 3.0, 2.0 / 3.0];
        whole_parts(
            &mut s,
            &[(1.0 / 3.0, 0.0), (2.0 / 3.0, 0.0)],
            2.5,
            2.5,
            |_| 1.0,
        );
        let parts: Vec<f64> = s.iter().map(|x| x * 2.5).collect();
        assert!((parts[0] - (1.0 + 0.5 / 3.0)).abs() < 1e-9, "{parts:?}");
        assert!((parts[1] - (1.0 + 1.0 / 3.0)).abs() < 1e-9, "{parts:?}");
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // Nothing stranded: left alone.
        let mut s = vec![0.5, 0.5];
        whole_parts(&mut s, &[(0.5, 0.0), (0.5, 0.0)], 10.0, 10.0, |_| 1.0);
        assert_eq!(s, vec![0.5, 0.5]);
    }

    #[test]
    fn rounding_never_lets_old_views_and_new_parts_exceed_what_is_left() {
        // Both holders may still spend 0.5 from their old views: giving one
        // of them a whole request now could admit more than is left.
        let mut s = vec![0.5, 0.5];
        whole_parts(&mut s, &[(0.5, 0.5), (0.5, 0.5)], 1.0, 1.0, |_| 1.0);
        assert_eq!(s, vec![0.5, 0.5]);
    }

    use super::Spends;

    /// A report the reconciler never got is counted again with the spends
    /// since: merged window by window, older windows dropped.
    #[test]
    fn spends_merge_by_window() {
        let mut lost = Spends::default();
        for w in [9, 10, 10] {
            lost.add(w);
        }
        let mut fresh = Spends::default();
        fresh.add(10);
        fresh.merge(&lost);
        assert_eq!((fresh.win, fresh.cur, fresh.prev), (10, 3, 1));
        // Newer spends move the lost report's windows back (or out).
        let mut later = Spends::default();
        later.add(11);
        later.merge(&lost);
        assert_eq!((later.win, later.cur, later.prev), (11, 1, 2));
        // Buckets count in one window.
        let (mut a, mut b) = (Spends::default(), Spends::default());
        a.add(0);
        b.add(0);
        b.add(0);
        a.merge(&b);
        assert_eq!((a.win, a.cur, a.prev), (0, 3, 0));
    }
}
