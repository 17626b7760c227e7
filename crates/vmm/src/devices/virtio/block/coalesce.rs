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
//! A window only pays when the guest has more requests to post; for a
//! guest at queue depth 1, which waits for each completion, it is pure
//! latency. So windows start only on evidence of depth: a batch of two or
//! more requests (the guest posted again before the last one was served).
//! They go on while they catch requests; [`MISSES_TOLERATED`] windows in a
//! row that catch nothing are let pass, the next one ends them until the
//! next such batch. A guest that never has two requests waiting never gets
//! a window, and the clock is not read for it. A guest that posts a few
//! requests at once and then waits for them all (a split I/O, a write and
//! its flush) shows depth without gaining from a window: each time the
//! windows end without having caught anything, that many more batches of
//! depth (1, 2, 4, ... up to [`MAX_REARM_SKIP`]) are let pass before they
//! start again; a window that catches something forgets this.
//!
//! The window is half the time between batches, an average of recent gaps
//! that includes the windows themselves, so it settles near the guest's own
//! time between posts; a fast guest is held for less, and never longer than
//! [`MAX_WINDOW`]; a window under [`MIN_WINDOW`] is not worth a sleep, and
//! such batches are not held.

use std::time::{Duration, Instant};

/// The longest an interrupt is held back.
pub const MAX_WINDOW: Duration = Duration::from_micros(200);
/// Shorter windows are not used: the sleep itself would cost about as much.
pub const MIN_WINDOW: Duration = Duration::from_micros(20);
/// Windows in a row that catch nothing and do not yet end the windows.
pub const MISSES_TOLERATED: u32 = 2;
/// The most batches of depth let pass before windows start again.
pub const MAX_REARM_SKIP: u32 = 256;
/// A gap longer than this (the guest was idle) counts as this much, so one
/// pause does not stretch the average for long.
const MAX_GAP: Duration = Duration::from_millis(2);

/// When to hold the queue's interrupt back, and for how long.
#[derive(Debug, Default)]
pub struct Coalesce {
    /// Windows are on: a batch showed depth, and windows since caught
    /// requests (or missed no more than tolerated).
    armed: bool,
    /// The average time between the batches the clock was read for
    /// (exponentially weighted, 1/8 per reading).
    gap: Duration,
    /// When the clock was last read.
    last: Option<Instant>,
    /// Batches that wanted an interrupt since then.
    batches: u32,
    /// Windows in a row that caught nothing.
    misses: u32,
    /// Batches of depth still to let pass before windows start again.
    rearm_skip: u32,
    /// What `rearm_skip` becomes when windows next end without a catch.
    backoff: u32,
}

impl Coalesce {
    /// A batch of `served` requests that wants an interrupt has been
    /// served, and the queue is empty: how long to hold the interrupt
    /// back, if at all. `now` reads the clock; it is called only when
    /// windows are on.
    pub fn window(&mut self, served: usize, now: impl FnOnce() -> Instant) -> Option<Duration> {
        self.batches = self.batches.saturating_add(1);
        if served >= 2 && !self.armed {
            if self.rearm_skip > 0 {
                self.rearm_skip -= 1;
                return None;
            }
            self.armed = true;
            self.misses = 0;
        }
        if !self.armed {
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
            self.backoff = 0;
            return;
        }
        self.misses = self.misses.saturating_add(1);
        if self.misses > MISSES_TOLERATED {
            self.armed = false;
            self.misses = 0;
            self.backoff = self.backoff.saturating_mul(2).clamp(1, MAX_REARM_SKIP);
            self.rearm_skip = self.backoff;
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

    /// `n` batches of `served` requests, `gap` apart after `*t` (which ends
    /// at the last one); returns their windows.
    fn batches(
        c: &mut Coalesce,
        t: &mut Instant,
        served: usize,
        gap: Duration,
        n: usize,
    ) -> Vec<Option<Duration>> {
        (0..n)
            .map(|_| {
                *t += gap;
                c.window(served, || *t)
            })
            .collect()
    }

    /// A coalescer that has seen depth and a steady 400 us pace.
    fn armed(t: &mut Instant) -> Coalesce {
        let mut c = Coalesce::default();
        c.window(2, || *t);
        batches(&mut c, t, 2, us(400), 1);
        c
    }

    #[test]
    fn single_requests_never_hold_or_read_the_clock() {
        let mut c = Coalesce::default();
        for _ in 0..1000 {
            assert_eq!(c.window(1, || panic!("clock read at queue depth 1")), None);
        }
    }

    #[test]
    fn depth_arms_the_window_once_the_pace_is_known() {
        let mut t = Instant::now();
        let mut c = Coalesce::default();
        // The first batch with depth: no pace known yet.
        assert_eq!(c.window(2, || t), None);
        // 100 us later: a 50 us window; single batches are held now too.
        assert_eq!(
            batches(&mut c, &mut t, 1, us(100), 3),
            vec![Some(us(50)); 3]
        );
        assert_eq!(c.gap(), us(100));
    }

    #[test]
    fn window_is_half_the_gap_within_bounds() {
        let mut t = Instant::now();
        // Slow batches: the window stops at MAX_WINDOW.
        let mut c = armed(&mut t);
        let w = batches(&mut c, &mut t, 1, us(1500), 40);
        assert_eq!(w.last().copied().flatten(), Some(MAX_WINDOW));

        // A long idle gap counts as MAX_GAP only.
        let mut c = Coalesce::default();
        c.window(2, || t);
        c.window(2, || t + Duration::from_secs(5));
        assert_eq!(c.gap(), MAX_GAP);

        // Fast batches: no window (under MIN_WINDOW).
        let mut c = Coalesce::default();
        c.window(2, || t);
        let w = batches(&mut c, &mut t, 2, us(30), 20);
        assert!(w.iter().all(Option::is_none), "{w:?}");
    }

    #[test]
    fn gap_is_a_moving_average() {
        let mut t = Instant::now();
        let mut c = Coalesce::default();
        c.window(2, || t);
        batches(&mut c, &mut t, 2, us(800), 1);
        batches(&mut c, &mut t, 2, us(0), 1);
        // 800 * 7/8 + 0.
        assert_eq!(c.gap(), us(700));
    }

    #[test]
    fn misses_end_the_windows_until_depth_shows_again() {
        let mut t = Instant::now();
        let mut c = armed(&mut t);
        let gap = us(400);
        // The tolerated misses: every batch is still held.
        for _ in 0..MISSES_TOLERATED {
            assert!(batches(&mut c, &mut t, 1, gap, 1)[0].is_some());
            c.caught(0);
        }
        // A catch starts the count again.
        assert!(batches(&mut c, &mut t, 1, gap, 1)[0].is_some());
        c.caught(3);
        for _ in 0..MISSES_TOLERATED {
            assert!(batches(&mut c, &mut t, 1, gap, 1)[0].is_some());
            c.caught(0);
        }
        // One more miss: single batches are not held, nor is the clock read.
        assert!(batches(&mut c, &mut t, 1, gap, 1)[0].is_some());
        c.caught(0);
        for _ in 0..10 {
            assert_eq!(c.window(1, || panic!("clock read while off")), None);
        }
        // The first batch of two after that is let pass (windows that
        // caught nothing end for one batch of depth), the next is held,
        // its gap shared by the batches since the last reading (12
        // batches in 12 * 400 us: 400 us each).
        assert_eq!(
            c.window(2, || panic!("clock read for a skipped batch")),
            None
        );
        t += gap * 12;
        assert_eq!(c.window(2, || t), Some(MAX_WINDOW));
        assert_eq!(c.gap(), gap);
    }

    /// `n` batches of two, each held one a miss (or a catch when `catch`
    /// says so, by index); whether each was held.
    fn depth_batches(
        c: &mut Coalesce,
        t: &mut Instant,
        n: usize,
        catch: impl Fn(usize) -> bool,
    ) -> Vec<bool> {
        (0..n)
            .map(|i| {
                let held = batches(c, t, 2, us(400), 1)[0].is_some();
                if held {
                    c.caught(usize::from(catch(i)));
                }
                held
            })
            .collect()
    }

    /// Lengths of the runs of `want` in `held`.
    fn runs(held: &[bool], want: bool) -> Vec<usize> {
        held.split(|&h| h != want)
            .filter(|r| !r.is_empty())
            .map(<[bool]>::len)
            .collect()
    }

    #[test]
    fn bursts_that_never_catch_back_off_and_a_catch_resets() {
        let mut t = Instant::now();
        let mut c = armed(&mut t);
        // Batches of two whose windows never catch: three held, then 1, 2,
        // 4, ... 256 let pass between each three held.
        let held = depth_batches(&mut c, &mut t, 2000, |_| false);
        assert_eq!(
            runs(&held, false)[..10],
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 256]
        );
        let on = runs(&held, true);
        assert!(on.iter().all(|&n| n == 3), "{on:?}");
        // A catch forgets it: after the next three misses one batch passes.
        while batches(&mut c, &mut t, 2, us(400), 1)[0].is_none() {}
        c.caught(1);
        let held = depth_batches(&mut c, &mut t, 5, |_| false);
        assert_eq!(held, [true, true, true, false, true]);
    }
}
