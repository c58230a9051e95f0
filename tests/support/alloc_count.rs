//! A global allocator that counts allocations made on gateway worker
//! threads (marked by the `on_worker_start` hook), only while switched on.
//! A test binary installs it with
//! `#[global_allocator] static G: support::alloc_count::Counting = support::alloc_count::Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The counting allocator.
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    static IS_WORKER: Cell<bool> = const { Cell::new(false) };
}

#[inline]
fn note() {
    if COUNTING.load(Ordering::Relaxed) && IS_WORKER.with(|w| w.get()) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(p, l, n) }
    }
}

/// The worker hook that marks a thread as counted.
pub fn mark_worker(_: usize) {
    IS_WORKER.with(|w| w.set(true));
}

/// Hooks that mark every worker thread.
pub fn hooks() -> ringgate::runtime::worker::Hooks {
    ringgate::runtime::worker::Hooks {
        on_worker_start: Some(mark_worker),
    }
}

/// Switches counting on (from zero) or off.
pub fn counting(on: bool) {
    if on {
        ALLOCS.store(0, Ordering::SeqCst);
    }
    COUNTING.store(on, Ordering::SeqCst);
}

/// Allocations counted since counting was last switched on.
pub fn allocs() -> u64 {
    ALLOCS.load(Ordering::SeqCst)
}
