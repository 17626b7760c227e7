//! Token-bucket rate limits for a device's queue (`--disk ...,iops=,bw=`,
//! `--net ...,bw=`), so one guest cannot take a host's disk or link.
//!
//! A bucket holds up to one second's worth of tokens and refills
//! continuously at its rate. A request is admitted when the bucket holds
//! what it costs (or, for a request larger than the bucket, when the
//! bucket is full: the request then drives it negative, and the debt is
//! paid back at the rate before the next one). A refused request is not
//! waited for: the device puts its chain back ([`crate::devices::virtio::
//! queue::Step::NotNow`]) and [`RateLimiter`] arms its timerfd for the
//! moment the bucket will hold enough; the thread serving the queue
//! watches that timerfd and resumes the queue when it fires. Nothing spins
//! and nothing sleeps on the event loop.

use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// A device's limits as configured: requests and bytes per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second (disks only).
    pub ops: Option<u64>,
    /// Bytes per second.
    pub bytes: Option<u64>,
}

impl RateLimit {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.ops.is_some() || self.bytes.is_some()
    }
}

/// Parses a rate in units per second: a whole number, with an optional
/// K, M or G (powers of 1024) suffix; zero is refused (no traffic at all
/// would hang the guest, not limit it).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'K' | b'k') => (&t[..t.len() - 1], 10),
        Some(b'M' | b'm') => (&t[..t.len() - 1], 20),
        Some(b'G' | b'g') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{s}' is not a rate: a whole number per second, optionally with K, M or G \
             (e.g. 1000, 64K, 100M)"
        ));
    }
    let n: u64 = digits
        .parse()
        .ok()
        .and_then(|n: u64| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if n == 0 {
        return Err("a rate of 0 would stop the device; leave the key out for no limit".into());
    }
    Ok(n)
}

/// One token bucket: `rate` tokens per second, at most `rate` held.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    /// Tokens held; negative after a request larger than the bucket.
    tokens: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u64, now: Instant) -> Self {
        Self {
            rate,
            tokens: i128::from(rate),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let ns = now.saturating_duration_since(self.last).as_nanos();
        let earned = ns.saturating_mul(u128::from(self.rate)) / 1_000_000_000;
        if earned == 0 {
            return;
        }
        // Advance `last` only by the time the earned tokens took, so
        // fractions of a token are not lost between calls.
        let used_ns = earned.saturating_mul(1_000_000_000) / u128::from(self.rate);
        self.last += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
        let earned = i128::try_from(earned).unwrap_or(i128::MAX);
        self.tokens = self
            .tokens
            .saturating_add(earned)
            .min(i128::from(self.rate));
        if self.tokens == i128::from(self.rate) {
            self.last = now;
        }
    }

    /// How long until `cost` can be taken (zero: now).
    pub fn wait_for(&mut self, cost: u64, now: Instant) -> Duration {
        self.refill(now);
        let need = i128::from(cost.min(self.rate));
        if self.tokens >= need {
            return Duration::ZERO;
        }
        let missing = u128::try_from(need - self.tokens).unwrap_or(u128::MAX);
        // Round up, so the timer never fires a little early and finds the
        // bucket still short.
        let ns = missing
            .saturating_mul(1_000_000_000)
            .div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Takes `cost` tokens; call only after [`Self::wait_for`] said zero.
    pub fn take(&mut self, cost: u64) {
        self.tokens = self.tokens.saturating_sub(i128::from(cost));
    }
}

#[derive(Debug)]
pub struct Error(std::io::Error);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot create the rate limiter's timer: {}", self.0)
    }
}

impl std::error::Error for Error {}

/// The buckets of one queue and the timer that wakes it when throttled.
#[derive(Debug)]
pub struct RateLimiter {
    ops: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    timer: TimerFd,
    /// The timer is armed: the queue waits for it, not for kicks.
    throttled: bool,
    /// Requests refused so far (each refusal, not each request).
    pub throttle_count: u64,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Result<Self, Error> {
        let now = Instant::now();
        let timer =
            TimerFd::new().map_err(|e| Error(std::io::Error::from_raw_os_error(e.errno())))?;
        Ok(Self {
            ops: limit.ops.map(|r| TokenBucket::new(r, now)),
            bytes: limit.bytes.map(|r| TokenBucket::new(r, now)),
            timer,
            throttled: false,
            throttle_count: 0,
        })
    }

    /// Admits one request of `bytes` bytes, or arms the timer for when it
    /// can be and returns false.
    pub fn consume(&mut self, bytes: u64) -> bool {
        let now = Instant::now();
        let wait = [
            self.ops.as_mut().map(|b| b.wait_for(1, now)),
            self.bytes.as_mut().map(|b| b.wait_for(bytes, now)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Duration::ZERO);
        if wait.is_zero() {
            if let Some(b) = self.ops.as_mut() {
                b.take(1);
            }
            if let Some(b) = self.bytes.as_mut() {
                b.take(bytes);
            }
            return true;
        }
        self.throttle_count += 1;
        // A zero duration disarms a timerfd: wait at least a microsecond.
        match self.timer.reset(wait.max(Duration::from_micros(1)), None) {
            Ok(()) => self.throttled = true,
            Err(e) => {
                // Without a timer nothing would resume the queue: admit.
                log::error!("rate limiter: cannot arm the timer ({e}); not limiting");
                return true;
            }
        }
        false
    }

    /// Whether the queue is waiting for the timer.
    pub fn is_throttled(&self) -> bool {
        self.throttled
    }

    /// The timer fired (its fd was readable): the queue may go on.
    pub fn timer_fired(&mut self) {
        let _ = self.timer.wait();
        self.throttled = false;
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_clear_errors() {
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("64K"), Ok(64 << 10));
        assert_eq!(parse_rate("100m"), Ok(100 << 20));
        assert_eq!(parse_rate("2G"), Ok(2 << 30));
        for bad in ["", "K", "1.5M", "-1", "10T", "ten"] {
            assert!(parse_rate(bad).unwrap_err().contains("not a rate"), "{bad}");
        }
        assert!(parse_rate("0").unwrap_err().contains("rate of 0"));
        assert!(parse_rate("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_rate("99999999999G")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert_eq!(b.wait_for(1000, t0), Duration::ZERO);
        b.take(1000);
        // Empty: 500 tokens take half a second.
        assert_eq!(b.wait_for(500, t0), Duration::from_millis(500));
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(b.wait_for(500, t1), Duration::from_millis(250));
        let t2 = t0 + Duration::from_millis(500);
        assert_eq!(b.wait_for(500, t2), Duration::ZERO);
        // Never more than a second's worth.
        let t3 = t0 + Duration::from_secs(60);
        b.take(500);
        assert_eq!(b.wait_for(1000, t3), Duration::ZERO);
        b.take(1000);
        assert_eq!(b.wait_for(1, t3), Duration::from_millis(1));
    }

    #[test]
    fn a_request_larger_than_the_bucket_is_paid_back() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, t0);
        // 300 bytes on a 100 B/s bucket: admitted when full, then 3 s of
        // debt before the next byte.
        assert_eq!(b.wait_for(300, t0), Duration::ZERO);
        b.take(300);
        assert_eq!(b.wait_for(1, t0), Duration::from_millis(2010));
        assert_eq!(
            b.wait_for(300, t0 + Duration::from_secs(2)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_limiter_admits_then_arms_its_timer() {
        let mut l = RateLimiter::new(RateLimit {
            ops: Some(10),
            bytes: Some(1 << 20),
        })
        .unwrap();
        for _ in 0..10 {
            assert!(l.consume(4096));
        }
        assert!(!l.consume(4096), "the eleventh request in a second waits");
        assert!(l.is_throttled());
        assert_eq!(l.throttle_count, 1);
        // The timer fires within ~100 ms (one op at 10/s).
        let mut pfd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let start = Instant::now();
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
        assert_eq!(n, 1);
        let waited = start.elapsed();
        assert!(waited <= Duration::from_millis(150), "{waited:?}");
        l.timer_fired();
        assert!(!l.is_throttled());
        assert!(l.consume(4096));
        // No limit, no throttling.
        let mut free = RateLimiter::new(RateLimit::default()).unwrap();
        assert!((0..10_000).all(|_| free.consume(1 << 20)));
    }
}
