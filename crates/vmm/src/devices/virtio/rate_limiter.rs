//! Firecracker's rate limiter: two token buckets, `bandwidth` (bytes) and `ops` (requests),
//! each `{size, one_time_burst, refill_time}` (refill_time in ms for a full bucket).
//!
//! An operation passes when each configured bucket holds at least `min(cost, size)` tokens;
//! the cost is then taken, which may leave a bucket negative when one request is bigger than
//! the bucket (it waited for a full bucket and pays the rest back before the next one), so the
//! long-run rate is exactly `size / refill_time` however large the requests. `one_time_burst`
//! tokens are spent first and never refilled. A refused operation arms a timerfd for when the
//! missing tokens will be there; the device stops taking requests from that queue until the
//! timer fires (its fd is watched by the device's epoll).

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::config;

/// One bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    refill_ms: u64,
    burst: u64,
    budget: i128,
    last: Instant,
}

impl TokenBucket {
    /// None when the bucket is disabled (size or refill_time 0, as in Firecracker).
    pub fn new(size: u64, one_time_burst: u64, refill_ms: u64) -> Option<TokenBucket> {
        (size > 0 && refill_ms > 0).then(|| TokenBucket {
            size,
            refill_ms,
            burst: one_time_burst,
            budget: i128::from(size),
            last: Instant::now(),
        })
    }

    pub fn from_config(b: &config::TokenBucket) -> Option<TokenBucket> {
        Self::new(b.size, b.one_time_burst.unwrap_or(0), b.refill_time)
    }

    fn replenish(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let period = u128::from(self.refill_ms) * 1_000_000;
        let tokens = elapsed * u128::from(self.size) / period;
        if tokens == 0 {
            return;
        }
        // Advance `last` by exactly the time those tokens took, keeping the remainder.
        let used_ns = tokens * period / u128::from(self.size);
        self.last += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
        self.budget = (self.budget + tokens as i128).min(i128::from(self.size));
        if self.budget == i128::from(self.size) {
            self.last = now;
        }
    }

    /// Tokens still missing for `cost` (0 = it can pass now).
    fn missing(&mut self, cost: u64, now: Instant) -> u64 {
        if cost <= self.burst {
            return 0;
        }
        self.replenish(now);
        let need = i128::from((cost - self.burst).min(self.size));
        u64::try_from((need - self.budget).max(0)).unwrap_or(u64::MAX)
    }

    fn take(&mut self, cost: u64) {
        let from_burst = cost.min(self.burst);
        self.burst -= from_burst;
        self.budget -= i128::from(cost - from_burst);
    }

    fn wait_for(&self, missing: u64) -> Duration {
        let ns =
            u128::from(missing) * u128::from(self.refill_ms) * 1_000_000 / u128::from(self.size);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX).saturating_add(1))
    }
}

/// A device's limiter (one per drive; one per direction for a NIC).
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
}

impl RateLimiter {
    pub fn new(cfg: Option<&config::RateLimiter>) -> std::io::Result<RateLimiter> {
        let timer = TimerFd::new()?;
        super::set_nonblocking(timer.as_raw_fd())?;
        let mut r = RateLimiter {
            bandwidth: None,
            ops: None,
            timer,
            blocked: false,
        };
        r.update(cfg);
        Ok(r)
    }

    /// Replaces the buckets (`PATCH`); a missing section keeps the current bucket, a bucket with
    /// size or refill_time 0 removes it. Unblocks: the new limits apply from now.
    pub fn update(&mut self, cfg: Option<&config::RateLimiter>) {
        if let Some(c) = cfg {
            if let Some(b) = &c.bandwidth {
                self.bandwidth = TokenBucket::from_config(b);
            }
            if let Some(o) = &c.ops {
                self.ops = TokenBucket::from_config(o);
            }
        }
        self.blocked = false;
        let _ = self.timer.clear();
    }

    /// Whether any bucket is configured.
    pub fn is_limited(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Takes `bytes` and one op if both buckets allow; otherwise arms the timer and returns
    /// false (the caller puts the request back and retries on [`RateLimiter::on_timer`]).
    pub fn consume(&mut self, bytes: u64, ops: u64) -> bool {
        if !self.is_limited() {
            return true;
        }
        if self.blocked {
            return false;
        }
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        if let Some(b) = &mut self.bandwidth {
            let m = b.missing(bytes, now);
            if m > 0 {
                wait = wait.max(b.wait_for(m));
            }
        }
        if let Some(b) = &mut self.ops {
            let m = b.missing(ops, now);
            if m > 0 {
                wait = wait.max(b.wait_for(m));
            }
        }
        if wait > Duration::ZERO {
            self.blocked = true;
            crate::metrics::inc(&crate::metrics::METRICS.rate_limited);
            let _ = self.timer.reset(wait, None);
            return false;
        }
        if let Some(b) = &mut self.bandwidth {
            b.take(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.take(ops);
        }
        true
    }

    /// The timer fired: reads it (non-blocking) and unblocks.
    pub fn on_timer(&mut self) {
        let _ = self.timer.wait();
        self.blocked = false;
    }

    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_rate_and_oversized_requests() {
        // 1000 bytes per 100 ms.
        let mut b = TokenBucket::new(1000, 500, 100).unwrap();
        let t0 = Instant::now();
        b.last = t0;
        // Burst first, then the bucket.
        assert_eq!(b.missing(500, t0), 0);
        b.take(500);
        assert_eq!(b.missing(1000, t0), 0);
        b.take(1000);
        assert_eq!(b.missing(1, t0), 1);
        // 50 ms later half the bucket is back.
        assert_eq!(b.missing(500, t0 + Duration::from_millis(50)), 0);
        assert_eq!(b.missing(501, t0 + Duration::from_millis(50)), 1);
        // An oversized request waits for a full bucket, then leaves it negative.
        let mut b = TokenBucket::new(1000, 0, 100).unwrap();
        b.last = t0;
        assert_eq!(b.missing(3000, t0), 0);
        b.take(3000);
        assert_eq!(b.budget, -2000);
        assert_eq!(b.missing(1, t0 + Duration::from_millis(200)), 1);
        assert_eq!(b.missing(1, t0 + Duration::from_millis(201)), 0);
        assert_eq!(b.wait_for(1000), Duration::from_nanos(100_000_001));
    }

    #[test]
    fn limiter_blocks_and_timer_unblocks() {
        let cfg = config::RateLimiter {
            bandwidth: None,
            ops: Some(config::TokenBucket {
                size: 2,
                one_time_burst: None,
                refill_time: 20,
            }),
        };
        let mut r = RateLimiter::new(Some(&cfg)).unwrap();
        assert!(r.consume(4096, 1) && r.consume(4096, 1));
        assert!(!r.consume(4096, 1));
        assert!(r.is_blocked());
        let t = Instant::now();
        let mut pfd = libc::pollfd {
            fd: r.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 1000) }, 1);
        assert!(t.elapsed() >= Duration::from_millis(5));
        r.on_timer();
        assert!(r.consume(4096, 1));
        // PATCH removing the bucket lifts the limit.
        r.update(Some(&config::RateLimiter {
            bandwidth: None,
            ops: Some(config::TokenBucket {
                size: 0,
                one_time_burst: None,
                refill_time: 0,
            }),
        }));
        assert!(!r.is_limited());
        assert!((0..100).all(|_| r.consume(1 << 20, 1)));
    }
}
