//! Read deadlines without a timer per read.
//!
//! Every read on the proxy path waits under a deadline (header, idle,
//! upstream try and body timeouts). A runtime timer per read costs a timer
//! wheel insertion and removal, a clock read and a larger future on every
//! request. The worker's [`Watchdog`] instead keeps one small table of
//! armed reads: arming and disarming are a slot taken from and returned to
//! a free list, and one task per worker ticks every [`TICK`], refreshes the
//! worker's coarse clock and ends each overdue read with `shutdown(fd,
//! SHUT_RD)`. The read then completes (with end-of-file) and its caller
//! sees [`Armed::fired`], so a timed-out read leaves its buffer and socket
//! in a known state; the socket is closed afterwards, never reused.
//!
//! Deadlines are in milliseconds of the worker's coarse clock, which lags
//! real time by at most one tick; a deadline therefore fires within about
//! two ticks of its exact time. Timeouts in ringgate's configuration are
//! at least tens of milliseconds, so the tick is well below their scale.
//!
//! A keep-alive wait (and a new connection's wait for its first request)
//! is armed with a *grace* period too ([`Watchdog::arm_graced`]): a read
//! still waiting when it ends is cancelled through a [`Canceller`] the
//! slot keeps, not shut, so the connection stays open and waits on for
//! readability without a buffer. A cancel that races with arriving bytes
//! loses nothing: the read then completes with them.
//!
//! Draining uses the same table: reads armed as *idle* (a keep-alive
//! connection waiting for its next request) are ended at once by
//! [`Watchdog::wake_idle`], and once no request is in flight
//! [`Watchdog::end_all`] ends the rest (connections that never sent a
//! request).

use monoio::io::{CancelHandle, Canceller};
use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// How often the worker's watchdog runs.
pub const TICK: Duration = Duration::from_millis(10);

#[derive(Clone, Copy)]
struct Slot {
    /// The socket, or -1 for a free slot.
    fd: RawFd,
    /// Deadline on the coarse clock (ms).
    at: u64,
    /// A keep-alive wait a drain may end.
    idle: bool,
    /// A tunnel's idle deadline: kept through a drain's
    /// [`Watchdog::end_all`] (a tunnel is not a connection waiting for a
    /// first request).
    kept: bool,
    /// Ended by the watchdog (deadline passed).
    fired: bool,
    /// End of the grace period on the coarse clock (ms), or `u64::MAX`.
    grace: u64,
    /// Cancelled by the watchdog (grace period over).
    graced: bool,
}

struct Table {
    slots: Vec<Slot>,
    /// No armed slot's deadline or grace end comes before this (a lower
    /// bound: lowered by every arm, recomputed by every scan), so a tick
    /// before it scans nothing. Thousands of idle connections, armed with
    /// their idle timeout, then cost no scan per tick.
    due: u64,
    /// Per slot, the canceller of its graced reads (made on the slot's
    /// first graced read, replaced after each cancel).
    cancellers: Vec<Option<Canceller>>,
    free: Vec<u32>,
    armed: usize,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            due: u64::MAX,
            cancellers: Vec::new(),
            free: Vec::new(),
            armed: 0,
        }
    }
}

/// The armed reads of one worker and its coarse clock.
pub struct Watchdog {
    table: RefCell<Table>,
    epoch: Instant,
    now_ms: Cell<u64>,
}

impl Default for Watchdog {
    fn default() -> Self {
        Self::new()
    }
}

impl Watchdog {
    /// An empty table; the clock starts at 0 now.
    pub fn new() -> Self {
        Watchdog {
            table: RefCell::new(Table::default()),
            epoch: Instant::now(),
            now_ms: Cell::new(0),
        }
    }

    /// The coarse clock: milliseconds since the worker started, as of the
    /// last tick (or [`refresh`](Self::refresh)).
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    /// The deadline `t` from now on the coarse clock.
    #[inline]
    pub fn after(&self, t: Duration) -> u64 {
        self.now_ms
            .get()
            .saturating_add(t.as_millis().min(u64::MAX as u128) as u64)
    }

    /// Reads the real clock into the coarse one; returns it.
    pub fn refresh(&self) -> u64 {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.now_ms.set(ms);
        ms
    }

    /// Arms a deadline for a read on `fd`; the read is ended at `at` (on
    /// the coarse clock) unless the returned guard is dropped first.
    /// `idle`: a keep-alive wait for the next request, which a drain ends.
    #[inline]
    pub fn arm(&self, fd: RawFd, at: u64, idle: bool) -> Armed<'_> {
        let mut t = self.table.borrow_mut();
        let i = t.take(Slot {
            fd,
            at,
            idle,
            kept: false,
            fired: false,
            grace: u64::MAX,
            graced: false,
        });
        Armed { dog: self, i }
    }

    /// Arms the idle deadline of a tunnel's socket `fd`: at `at` (on the
    /// coarse clock) its reads end, unless [`Armed::put_off`] moved it
    /// later first. A drain's [`end_all`](Self::end_all) leaves it armed.
    #[inline]
    pub fn arm_tunnel(&self, fd: RawFd, at: u64) -> Armed<'_> {
        let mut t = self.table.borrow_mut();
        let i = t.take(Slot {
            fd,
            at,
            idle: false,
            kept: true,
            fired: false,
            grace: u64::MAX,
            graced: false,
        });
        Armed { dog: self, i }
    }

    /// Arms a deadline like [`arm`](Self::arm), and a grace period ending
    /// at `grace`: a read made with the returned handle
    /// (`cancelable_read`) and still waiting then is cancelled, and
    /// [`Armed::graced`] says so. The read either ends with
    /// `ECANCELED`, its buffer back and the socket untouched, or, when
    /// bytes arrived first, with them.
    #[inline]
    pub fn arm_graced(
        &self,
        fd: RawFd,
        at: u64,
        idle: bool,
        grace: u64,
    ) -> (Armed<'_>, CancelHandle) {
        let mut t = self.table.borrow_mut();
        let i = t.take(Slot {
            fd,
            at,
            idle,
            kept: false,
            fired: false,
            grace,
            graced: false,
        });
        let h = t.cancellers[i as usize]
            .get_or_insert_with(Canceller::new)
            .handle();
        (Armed { dog: self, i }, h)
    }

    /// Number of armed reads.
    pub fn armed(&self) -> usize {
        self.table.borrow().armed
    }

    /// Refreshes the clock and ends every read whose deadline has passed.
    /// Returns how many were ended.
    pub fn tick(&self) -> usize {
        let now = self.refresh();
        let mut t = self.table.borrow_mut();
        if t.armed == 0 || now < t.due {
            return 0;
        }
        let mut n = 0;
        let mut due = u64::MAX;
        let Table {
            slots, cancellers, ..
        } = &mut *t;
        for (s, c) in slots.iter_mut().zip(cancellers.iter_mut()) {
            if s.fd < 0 || s.fired {
                continue;
            }
            // What this slot still waits for (when it does not fire now),
            // for the next tick's bound.
            if s.at > now {
                due = due.min(s.at);
                if s.grace > now && !s.graced {
                    due = due.min(s.grace);
                }
            }
            if s.at <= now {
                s.fired = true;
                // SAFETY: an armed slot's fd belongs to a socket that is
                // open for as long as the read's guard lives (the guard is
                // dropped before its socket can be).
                unsafe {
                    libc::shutdown(s.fd, libc::SHUT_RD);
                }
                n += 1;
            } else if s.grace <= now && !s.graced {
                s.graced = true;
                // Cancels the read associated with this slot's canceller
                // (none when it already completed); the next graced read
                // on the slot gets a fresh one.
                if let Some(old) = c.take() {
                    *c = Some(old.cancel());
                }
            }
        }
        t.due = due;
        n
    }

    /// Ends every armed read now, idle or not (a drain with no request in
    /// flight: what is left waits for a first request that never came).
    /// The reads see end-of-file, not a fired deadline, so their
    /// connections close without an answer.
    pub fn end_all(&self) {
        let t = self.table.borrow();
        for s in t.slots.iter() {
            if s.fd >= 0 && !s.kept {
                // SAFETY: as in `tick`.
                unsafe {
                    libc::shutdown(s.fd, libc::SHUT_RD);
                }
            }
        }
    }

    /// Ends every idle keep-alive wait now (a drain).
    pub fn wake_idle(&self) {
        let t = self.table.borrow();
        for s in t.slots.iter() {
            if s.fd >= 0 && s.idle {
                // SAFETY: as in `tick`.
                unsafe {
                    libc::shutdown(s.fd, libc::SHUT_RD);
                }
            }
        }
    }
}

/// An armed deadline; dropping it disarms it.
pub struct Armed<'a> {
    dog: &'a Watchdog,
    i: u32,
}

impl Armed<'_> {
    /// Whether the watchdog ended the read (its deadline passed).
    #[inline]
    pub fn fired(&self) -> bool {
        self.dog.table.borrow().slots[self.i as usize].fired
    }

    /// Whether the watchdog cancelled the read (its grace period ended).
    #[inline]
    pub fn graced(&self) -> bool {
        self.dog.table.borrow().slots[self.i as usize].graced
    }

    /// Moves the deadline to `at`, when that is later (the table's lower
    /// bound on deadlines stays true, so nothing else changes). No effect
    /// once the deadline fired.
    #[inline]
    pub fn put_off(&self, at: u64) {
        let mut t = self.dog.table.borrow_mut();
        let s = &mut t.slots[self.i as usize];
        if !s.fired && at > s.at {
            s.at = at;
        }
    }
}

impl Table {
    /// Puts `slot` in a free place; returns its index.
    #[inline]
    fn take(&mut self, slot: Slot) -> u32 {
        self.due = self.due.min(slot.at).min(slot.grace);
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.cancellers.push(None);
                // Keep the free list able to take every slot back without
                // growing on a disarm.
                self.free.reserve(1);
                (self.slots.len() - 1) as u32
            }
        };
        self.armed += 1;
        i
    }
}

impl Drop for Armed<'_> {
    #[inline]
    fn drop(&mut self) {
        let mut t = self.dog.table.borrow_mut();
        t.slots[self.i as usize].fd = -1;
        t.free.push(self.i);
        t.armed -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn a_tunnel_deadline_is_put_off_and_outlives_end_all() {
        let dog = Watchdog::new();
        let (_a, mut b) = pair();
        let g = dog.arm_tunnel(b.as_raw_fd(), dog.now_ms());
        g.put_off(dog.now_ms() + 60_000);
        assert_eq!(dog.tick(), 0, "put off: not due");
        dog.end_all();
        b.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            b.read(&mut byte).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "end_all left the tunnel's socket open"
        );
        drop(g);
        let g = dog.arm_tunnel(b.as_raw_fd(), dog.now_ms());
        assert_eq!(dog.tick(), 1);
        assert!(g.fired());
        g.put_off(dog.now_ms() + 60_000);
        assert!(g.fired(), "a fired deadline stays fired");
        assert_eq!(b.read(&mut byte).unwrap(), 0, "shut for reading");
    }

    #[test]
    fn an_overdue_read_is_ended_and_marked() {
        let dog = Watchdog::new();
        let (_a, mut b) = pair();
        let g = dog.arm(b.as_raw_fd(), dog.now_ms(), false);
        assert_eq!(dog.armed(), 1);
        assert_eq!(dog.tick(), 1);
        assert!(g.fired());
        // The socket's read side is shut: a read returns end-of-file at once.
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).unwrap(), 0);
        // A fired slot is not ended twice.
        assert_eq!(dog.tick(), 0);
        drop(g);
        assert_eq!(dog.armed(), 0);
    }

    #[test]
    fn a_read_before_its_deadline_is_left_alone() {
        let dog = Watchdog::new();
        let (mut a, mut b) = pair();
        let g = dog.arm(b.as_raw_fd(), dog.after(Duration::from_secs(60)), false);
        assert_eq!(dog.tick(), 0);
        assert!(!g.fired());
        std::io::Write::write_all(&mut a, b"x").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).unwrap(), 1);
    }

    /// A tick before the earliest deadline scans nothing, and an arm with
    /// an earlier deadline after a scan is still seen in time.
    #[test]
    fn ticks_skip_the_scan_until_something_is_due() {
        let dog = Watchdog::new();
        let (_a, b) = pair();
        let (_c, d) = pair();
        let far = dog.arm(b.as_raw_fd(), dog.after(Duration::from_secs(60)), true);
        assert_eq!(dog.tick(), 0);
        assert_eq!(dog.table.borrow().due, far_at(&dog, &far));
        let near = dog.arm(d.as_raw_fd(), dog.now_ms(), false);
        assert_eq!(dog.tick(), 1, "the earlier deadline lowered the bound");
        assert!(near.fired() && !far.fired());
        // After that scan, the bound is the far deadline again.
        assert_eq!(dog.table.borrow().due, far_at(&dog, &far));
    }

    fn far_at(dog: &Watchdog, g: &Armed<'_>) -> u64 {
        dog.table.borrow().slots[g.i as usize].at
    }

    #[test]
    fn slots_are_reused_and_a_disarmed_slot_is_never_ended() {
        let dog = Watchdog::new();
        let (_a, b) = pair();
        for _ in 0..1000 {
            let g = dog.arm(b.as_raw_fd(), 0, true);
            drop(g);
        }
        assert_eq!(dog.table.borrow().slots.len(), 1);
        assert_eq!(dog.tick(), 0);
        // A disarmed idle slot is not woken by a drain either.
        dog.wake_idle();
        b.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        let r = (&b).read(&mut buf);
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_grace_period_cancels_and_leaves_the_socket_open() {
        let dog = Watchdog::new();
        let (mut a, mut b) = pair();
        let far = dog.after(Duration::from_secs(60));
        let (g, _cancel) = dog.arm_graced(b.as_raw_fd(), far, true, dog.now_ms());
        // Not ended: the tick only cancels (no read is associated here).
        assert_eq!(dog.tick(), 0);
        assert!(g.graced() && !g.fired());
        // A graced slot is not cancelled twice; its deadline still holds.
        assert_eq!(dog.tick(), 0);
        drop(g);
        // The socket's read side is open: bytes still arrive.
        std::io::Write::write_all(&mut a, b"x").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).unwrap(), 1);
        // The slot is reused by a plain arm, which no grace applies to.
        let g = dog.arm(b.as_raw_fd(), far, false);
        assert_eq!(dog.tick(), 0);
        assert!(!g.graced());
    }

    #[test]
    fn a_drain_ends_idle_waits_only() {
        let dog = Watchdog::new();
        let (_a1, b1) = pair();
        let (_a2, b2) = pair();
        let idle = dog.arm(b1.as_raw_fd(), dog.after(Duration::from_secs(60)), true);
        let busy = dog.arm(b2.as_raw_fd(), dog.after(Duration::from_secs(60)), false);
        dog.wake_idle();
        let mut buf = [0u8; 8];
        assert_eq!((&b1).read(&mut buf).unwrap(), 0);
        b2.set_nonblocking(true).unwrap();
        assert_eq!(
            (&b2).read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        assert!(!idle.fired() && !busy.fired());
    }
}
