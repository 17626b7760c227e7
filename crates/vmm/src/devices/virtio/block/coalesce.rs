//! Interrupt coalescing for the request queue.
//!
//! The disk thread serves a request as soon as the driver kicks the queue,
//! and then interrupts the guest. When the guest keeps many requests in
//! flight (fio at queue depth 16, readahead) and its own vCPU is the
//! bottleneck, that makes one interrupt per request, and each interrupt
//! costs the guest its injection, the InterruptStatus read and the
//! InterruptACK write (two exits to the VMM on virtio-mmio) and an EOI:
//! more than the request itself where exits are dear (nested, emulated).
//! Holding the interrupt back for a short window lets the requests the
//! guest posts meanwhile be served first, and one interrupt then reports
//! them all.
//!
//! A window that catches nothing is pure latency (a guest at queue depth
//! 1 waits for each completion before it posts the next request). A
//! guest with requests in flight misses now and then too, so
//! [`MISSES_TOLERATED`] misses in a row are let pass; after the next one
//! the following batches are not held: 1, then 2, 4, ... up to
//! [`MAX_SKIP`] batches as the misses go on, so a guest that only ever
//! waits pays a window once in that many requests. The window is
//! half the usual time between batches (an average of recent gaps), so a
//! fast guest is held for less, and never longer than [`MAX_WINDOW`]; a
//! window under [`MIN_WINDOW`] is not worth a sleep, and such batches are
//! not held. The clock is read only for a batch that may be held, not for
//! the batches skipped after misses (where the host's clock is slow, as
//! the rig's HPET is, a read per request would be a cost of its own): the
//! gap is then the time since the last reading shared by the batches
//! since.

use std::time::{Duration, Instant};

/// The longest an interrupt is held back.
pub const MAX_WINDOW: Duration = Duration::from_micros(200);
/// Shorter windows are not used: the sleep itself would cost about as much.
pub const MIN_WINDOW: Duration = Duration::from_micros(20);
/// Batches served without a window after the longest run of misses.
pub const MAX_SKIP: u32 = 256;
/// Misses in a row that do not yet stop the windows.
pub const MISSES_TOLERATED: u32 = 2;
/// A gap longer than this (the guest was idle) counts as this much, so one
/// pause does not stretch the average for long.
const MAX_GAP: Duration = Duration::from_millis(2);

/// When to hold the queue's interrupt back, and for how long.
#[derive(Debug, Default)]
pub struct Coalesce {
    /// The average time between batches that wanted an interrupt
    /// (exponentially weighted, 1/8 per batch).
    gap: Duration,
    /// When the clock was last read for such a batch.
    last: Option<Instant>,
    /// Such batches since then (skipped ones included).
    batches: u32,
    /// Misses in a row (windows that caught no request).
    misses: u32,
    /// Batches still to serve without a window.
    skip: u32,
}

impl Coalesce {
    /// A batch that wants an interrupt has been served, and the queue is
    /// empty: how long to hold the interrupt back, if at all. `now` reads
    /// the clock; it is not called for a batch skipped after misses.
    pub fn window(&mut self, now: impl FnOnce() -> Instant) -> Option<Duration> {
        self.batches = self.batches.saturating_add(1);
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let now = now();
        if let Some(last) = self.last {
            let sample = (now.saturating_duration_since(last) / self.batches).min(MAX_GAP);
            self.gap = match self.gap.is_zero() {
                true => sample,
                false => (self.gap * 7 + sample) / 8,
            };
        }
        self.last = Some(now);
        self.batches = 0;
        let window = (self.gap / 2).min(MAX_WINDOW);
        (window >= MIN_WINDOW).then_some(window)
    }

    /// What the window returned by [`Self::window`] caught: the requests
    /// served after it.
    pub fn caught(&mut self, served: usize) {
        if served > 0 {
            self.misses = 0;
            return;
        }
        self.misses = self.misses.saturating_add(1);
        if let Some(k) = self.misses.checked_sub(MISSES_TOLERATED + 1) {
            self.skip = 1u32.checked_shl(k).map_or(MAX_SKIP, |s| s.min(MAX_SKIP));
        }
    }

    /// The average gap between batches (for the tests).
    #[cfg(test)]
    pub fn gap(&self) -> Duration {
        self.gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// `n` batches `gap` apart after `*t` (which ends at the last one);
    /// returns their windows.
    fn batches(
        c: &mut Coalesce,
        t: &mut Instant,
        gap: Duration,
        n: usize,
    ) -> Vec<Option<Duration>> {
        (0..n)
            .map(|_| {
                *t += gap;
                c.window(|| *t)
            })
            .collect()
    }

    #[test]
    fn no_window_before_the_gap_is_known() {
        let mut c = Coalesce::default();
        assert_eq!(c.window(Instant::now), None);
    }

    #[test]
    fn window_is_half_the_gap_within_bounds() {
        let mut t = Instant::now();
        let mut c = Coalesce::default();
        c.window(|| t);
        // 100 us gaps: 50 us windows.
        let w = batches(&mut c, &mut t, us(100), 3);
        assert_eq!(w, vec![Some(us(50)); 3]);
        assert_eq!(c.gap(), us(100));

        // Slow batches: the window stops at MAX_WINDOW.
        let w = batches(&mut c, &mut t, us(1500), 40);
        assert_eq!(w.last().copied().flatten(), Some(MAX_WINDOW));

        // A long idle gap counts as MAX_GAP only.
        let mut c = Coalesce::default();
        c.window(|| t);
        c.window(|| t + Duration::from_secs(5));
        assert_eq!(c.gap(), MAX_GAP);

        // Fast batches: no window (under MIN_WINDOW).
        let mut c = Coalesce::default();
        c.window(|| t);
        let w = batches(&mut c, &mut t, us(30), 20);
        assert!(w.iter().all(Option::is_none), "{w:?}");
    }

    #[test]
    fn gap_is_a_moving_average() {
        let mut t = Instant::now();
        let mut c = Coalesce::default();
        c.window(|| t);
        batches(&mut c, &mut t, us(800), 1);
        batches(&mut c, &mut t, us(0), 1);
        // 800 * 7/8 + 0.
        assert_eq!(c.gap(), us(700));
    }

    #[test]
    fn misses_back_off_and_a_catch_resets() {
        let mut t = Instant::now();
        let mut c = Coalesce::default();
        c.window(|| t);
        let gap = us(400);
        // The tolerated misses: every batch is still held.
        for _ in 0..MISSES_TOLERATED {
            assert!(batches(&mut c, &mut t, gap, 1)[0].is_some());
            c.caught(0);
        }
        // Held batches between further misses: after the tolerated ones,
        // the k-th miss in a row lets 2^(k-1) batches go without a window.
        for skipped in [1, 2, 4, 8] {
            assert!(batches(&mut c, &mut t, gap, 1)[0].is_some());
            c.caught(0);
            let w = batches(&mut c, &mut t, gap, skipped);
            assert!(w.iter().all(Option::is_none), "after a miss: {w:?}");
        }
        // A window that catches a request starts the count again: the
        // tolerated misses pass, the one after skips one batch.
        assert!(batches(&mut c, &mut t, gap, 1)[0].is_some());
        c.caught(3);
        for _ in 0..=MISSES_TOLERATED {
            assert!(batches(&mut c, &mut t, gap, 1)[0].is_some());
            c.caught(0);
        }
        let w = batches(&mut c, &mut t, gap, 2);
        assert_eq!(w[0], None);
        assert!(w[1].is_some());
    }

    #[test]
    fn skipped_batches_do_not_read_the_clock_and_share_the_next_gap() {
        let mut t = Instant::now();
        let mut c = Coalesce::default();
        c.window(|| t);
        for _ in 0..=MISSES_TOLERATED {
            batches(&mut c, &mut t, us(100), 1);
            c.caught(0);
        }
        // The last of those misses skips one batch: no clock read for it.
        assert_eq!(c.window(|| panic!("clock read for a skipped batch")), None);
        // The batch after reads it once: 2 batches in 400 us are a gap of
        // 200 us each, not one of 400.
        t += us(400);
        let before = c.gap();
        assert_eq!(before, us(100));
        c.window(|| t);
        assert_eq!(c.gap(), (before * 7 + us(200)) / 8);
    }

    #[test]
    fn skip_is_capped() {
        let mut c = Coalesce::default();
        for _ in 0..100 {
            c.caught(0);
        }
        assert_eq!(c.skip, MAX_SKIP);
        c.caught(0);
        assert_eq!(c.skip, MAX_SKIP);
    }
}
