//! Link impairments: the validated [`Impairment`] type and its two encodings —
//! the kernel's `netem` qdisc (`TCA_OPTIONS` = `struct tc_netem_qopt` followed by `TCA_NETEM_*`
//! attributes, exactly as iproute2's `tc qdisc ... netem` sends it) and the `tbf` token bucket
//! for rate shaping. The userspace fallback for kernels without netem lives in [`crate::relay`].
//!
//! Layouts: include/uapi/linux/pkt_sched.h; semantics: net/sched/sch_netem.c, sch_tbf.c;
//! reference encoder: iproute2 tc/q_netem.c, tc/q_tbf.c.

use std::time::Duration;

use crate::error::{NetError, Result};
use crate::netlink::Msg;

const TCA_NETEM_CORR: u16 = 1;
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_CORRUPT: u16 = 4;
const TCA_NETEM_RATE: u16 = 6;
const TCA_NETEM_RATE64: u16 = 8;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;

/// Kernel scheduler ticks are 64 ns (`PSCHED_SHIFT` = 6 in include/net/pkt_sched.h).
const PSCHED_SHIFT: u32 = 6;

/// Largest delay or jitter accepted (anything above is a typo, not a lab).
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Largest rate accepted: 1 Tbit/s.
pub const MAX_RATE_BPS: u64 = 1_000_000_000_000;
/// Smallest rate accepted: 8 kbit/s.
pub const MIN_RATE_BPS: u64 = 8_000;

/// A probability in percent, 0..=100.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percent(f64);

impl Percent {
    /// Zero.
    pub const ZERO: Percent = Percent(0.0);

    /// Validates `p` (finite, 0..=100).
    pub fn new(p: f64) -> Result<Percent> {
        if p.is_finite() && (0.0..=100.0).contains(&p) {
            Ok(Percent(p))
        } else {
            Err(NetError::InvalidImpairment(format!(
                "{p}% is not a percentage in 0..=100"
            )))
        }
    }

    /// Parses `"1.5%"` or `"1.5"`.
    pub fn parse(s: &str) -> Result<Percent> {
        let t = s.trim();
        let t = t.strip_suffix('%').unwrap_or(t).trim();
        let v: f64 = t
            .parse()
            .map_err(|_| NetError::InvalidImpairment(format!("{s:?} is not a percentage")))?;
        Percent::new(v)
    }

    /// The value in percent.
    pub fn get(self) -> f64 {
        self.0
    }

    /// Whether it is zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0.0
    }

    /// The kernel's fixed-point probability: `p/100 * u32::MAX`, rounded half-to-even like
    /// iproute2's `rint()`.
    pub fn to_u32(self) -> u32 {
        let v = (self.0 / 100.0 * u32::MAX as f64).round_ties_even();
        v.clamp(0.0, u32::MAX as f64) as u32
    }
}

/// Parses a duration such as `"20ms"`, `"1.5ms"`, `"500us"`, `"2s"`; negative or unit-less
/// values are rejected.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let bad = |why: &str| NetError::InvalidImpairment(format!("{s:?}: {why}"));
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .ok_or_else(|| bad("missing unit (ns, us, ms, s)"))?;
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| bad("not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad("must not be negative"));
    }
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => return Err(bad("unknown unit (ns, us, ms, s)")),
    };
    let secs = v * scale;
    if secs > MAX_DELAY.as_secs_f64() {
        return Err(bad("longer than 60 s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a rate such as `"10mbit"`, `"1gbit"`, `"512kbit"`, `"1000bit"` into bits/s.
pub fn parse_rate(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let bad = |why: &str| NetError::InvalidImpairment(format!("rate {s:?}: {why}"));
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .ok_or_else(|| bad("missing unit (bit, kbit, mbit, gbit)"))?;
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| bad("not a number"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(bad("must be positive"));
    }
    let scale = match unit {
        "bit" | "bps" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        _ => return Err(bad("unknown unit (bit, kbit, mbit, gbit)")),
    };
    Ok((v * scale).round() as u64)
}

/// Impairments applied to the traffic leaving a port towards its endpoint (netem semantics:
/// impairing both ends of a link impairs both directions). Build with [`Impairment::builder`];
/// every value is validated there, so an `Impairment` is always encodable.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Impairment {
    delay: Duration,
    jitter: Duration,
    delay_correlation: Percent,
    loss: Percent,
    loss_correlation: Percent,
    duplicate: Percent,
    duplicate_correlation: Percent,
    corrupt: Percent,
    corrupt_correlation: Percent,
    reorder: Percent,
    reorder_correlation: Percent,
    rate_bps: Option<u64>,
    limit: u32,
}

/// Builder for [`Impairment`]; `build()` validates.
#[derive(Debug, Default)]
pub struct ImpairmentBuilder {
    i: Impairment,
    err: Option<NetError>,
}

macro_rules! pct_setter {
    ($name:ident, $field:ident) => {
        /// Sets a percentage (0..=100).
        pub fn $name(mut self, p: f64) -> Self {
            match Percent::new(p) {
                Ok(v) => self.i.$field = v,
                Err(e) => {
                    self.err.get_or_insert(NetError::InvalidImpairment(format!(
                        concat!(stringify!($name), ": {}"),
                        e
                    )));
                }
            }
            self
        }
    };
}

impl ImpairmentBuilder {
    /// Fixed one-way delay.
    pub fn delay(mut self, d: Duration) -> Self {
        self.i.delay = d;
        self
    }
    /// Random variation of the delay (uniform ±jitter).
    pub fn jitter(mut self, d: Duration) -> Self {
        self.i.jitter = d;
        self
    }
    pct_setter!(delay_correlation, delay_correlation);
    pct_setter!(loss, loss);
    pct_setter!(loss_correlation, loss_correlation);
    pct_setter!(duplicate, duplicate);
    pct_setter!(duplicate_correlation, duplicate_correlation);
    pct_setter!(corrupt, corrupt);
    pct_setter!(corrupt_correlation, corrupt_correlation);
    pct_setter!(reorder, reorder);
    pct_setter!(reorder_correlation, reorder_correlation);
    /// Rate limit in bits per second.
    pub fn rate_bps(mut self, bps: u64) -> Self {
        self.i.rate_bps = Some(bps);
        self
    }
    /// Queue limit in packets (default 1000, like tc).
    pub fn limit(mut self, packets: u32) -> Self {
        self.i.limit = packets;
        self
    }

    /// Validates and returns the impairment.
    pub fn build(self) -> Result<Impairment> {
        if let Some(e) = self.err {
            return Err(e);
        }
        let mut i = self.i;
        let bad = |m: String| Err(NetError::InvalidImpairment(m));
        if i.delay > MAX_DELAY || i.jitter > MAX_DELAY {
            return bad(format!(
                "delay {:?} / jitter {:?}: more than 60 s",
                i.delay, i.jitter
            ));
        }
        if let Some(r) = i.rate_bps {
            if !(MIN_RATE_BPS..=MAX_RATE_BPS).contains(&r) {
                return bad(format!("rate {r} bit/s outside 8 kbit/s ..= 1 Tbit/s"));
            }
        }
        if !i.reorder.is_zero() && i.delay.is_zero() {
            return bad("reordering needs a delay (packets not reordered are delayed)".into());
        }
        if i.limit == 0 {
            i.limit = 1000;
        }
        if i.limit > 1_000_000 {
            return bad(format!("queue limit {} packets is absurd", i.limit));
        }
        Ok(i)
    }
}

impl Impairment {
    /// Starts a builder with everything off.
    pub fn builder() -> ImpairmentBuilder {
        ImpairmentBuilder::default()
    }

    /// One-way delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }
    /// Jitter.
    pub fn jitter(&self) -> Duration {
        self.jitter
    }
    /// Delay correlation.
    pub fn delay_correlation(&self) -> Percent {
        self.delay_correlation
    }
    /// Loss probability.
    pub fn loss(&self) -> Percent {
        self.loss
    }
    /// Loss correlation.
    pub fn loss_correlation(&self) -> Percent {
        self.loss_correlation
    }
    /// Duplication probability.
    pub fn duplicate(&self) -> Percent {
        self.duplicate
    }
    /// Corruption probability.
    pub fn corrupt(&self) -> Percent {
        self.corrupt
    }
    /// Reordering probability.
    pub fn reorder(&self) -> Percent {
        self.reorder
    }
    /// Reordering correlation.
    pub fn reorder_correlation(&self) -> Percent {
        self.reorder_correlation
    }
    /// Rate limit in bit/s.
    pub fn rate_bps(&self) -> Option<u64> {
        self.rate_bps
    }
    /// Queue limit in packets.
    pub fn limit(&self) -> u32 {
        if self.limit == 0 {
            1000
        } else {
            self.limit
        }
    }

    /// Whether this impairment does nothing.
    pub fn is_none(&self) -> bool {
        self.delay.is_zero()
            && self.jitter.is_zero()
            && self.loss.is_zero()
            && self.duplicate.is_zero()
            && self.corrupt.is_zero()
            && self.reorder.is_zero()
            && self.rate_bps.is_none()
    }

    /// Writes the netem `TCA_OPTIONS` payload: `struct tc_netem_qopt` then the optional
    /// attributes, in iproute2's order (CORR, REORDER, CORRUPT, [LATENCY64, JITTER64], RATE
    /// [RATE64]), so the bytes equal what `tc qdisc replace ... netem ...` sends.
    pub(crate) fn encode_netem(&self, m: &mut Msg) {
        let ticks = |d: Duration| -> (u32, bool) {
            let t = d.as_nanos() >> PSCHED_SHIFT;
            (t.min(u32::MAX as u128) as u32, t > u32::MAX as u128)
        };
        let (latency, lat_big) = ticks(self.delay);
        let (jitter, jit_big) = ticks(self.jitter);
        let gap: u32 = if self.reorder.is_zero() { 0 } else { 1 };
        let mut qopt = Vec::with_capacity(24);
        for v in [
            latency,
            self.limit(),
            self.loss.to_u32(),
            gap,
            self.duplicate.to_u32(),
            jitter,
        ] {
            qopt.extend_from_slice(&v.to_ne_bytes());
        }
        m.raw(&qopt);
        if !(self.delay_correlation.is_zero()
            && self.loss_correlation.is_zero()
            && self.duplicate_correlation.is_zero())
        {
            let mut c = Vec::with_capacity(12);
            for p in [
                self.delay_correlation,
                self.loss_correlation,
                self.duplicate_correlation,
            ] {
                c.extend_from_slice(&p.to_u32().to_ne_bytes());
            }
            m.attr(TCA_NETEM_CORR, &c);
        }
        if !self.reorder.is_zero() {
            let mut r = Vec::with_capacity(8);
            r.extend_from_slice(&self.reorder.to_u32().to_ne_bytes());
            r.extend_from_slice(&self.reorder_correlation.to_u32().to_ne_bytes());
            m.attr(TCA_NETEM_REORDER, &r);
        }
        if !self.corrupt.is_zero() {
            let mut r = Vec::with_capacity(8);
            r.extend_from_slice(&self.corrupt.to_u32().to_ne_bytes());
            r.extend_from_slice(&self.corrupt_correlation.to_u32().to_ne_bytes());
            m.attr(TCA_NETEM_CORRUPT, &r);
        }
        // Only when the 32-bit tick fields overflow (cannot happen within MAX_DELAY, kept for
        // completeness); the kernel then takes the 64-bit nanosecond values.
        if lat_big {
            m.attr_u64(TCA_NETEM_LATENCY64, self.delay.as_nanos() as u64);
        }
        if jit_big {
            m.attr_u64(TCA_NETEM_JITTER64, self.jitter.as_nanos() as u64);
        }
        if let Some(bps) = self.rate_bps {
            let bytes = bps / 8;
            let mut r = [0u8; 16]; // struct tc_netem_rate { rate, packet_overhead, cell_size, cell_overhead }
            let r32 = if bytes >= u32::MAX as u64 {
                u32::MAX
            } else {
                bytes as u32
            };
            r[0..4].copy_from_slice(&r32.to_ne_bytes());
            if bytes >= u32::MAX as u64 {
                m.attr_u64(TCA_NETEM_RATE64, bytes);
            }
            m.attr(TCA_NETEM_RATE, &r);
        }
    }
}

/// A token-bucket shaper (`tbf`), for rate limits with an explicit burst and queue size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    /// Rate in bit/s.
    pub rate_bps: u64,
    /// Bucket size in bytes (at least one MTU-sized frame).
    pub burst_bytes: u32,
    /// Queue size in bytes.
    pub limit_bytes: u32,
}

impl Shaping {
    /// Validates a shaper.
    pub fn new(rate_bps: u64, burst_bytes: u32, limit_bytes: u32) -> Result<Shaping> {
        if !(MIN_RATE_BPS..=MAX_RATE_BPS).contains(&rate_bps) {
            return Err(NetError::InvalidImpairment(format!(
                "rate {rate_bps} bit/s outside 8 kbit/s ..= 1 Tbit/s"
            )));
        }
        if burst_bytes < 1600 {
            return Err(NetError::InvalidImpairment(format!(
                "burst {burst_bytes} bytes is smaller than one frame"
            )));
        }
        if limit_bytes < burst_bytes {
            return Err(NetError::InvalidImpairment(format!(
                "limit {limit_bytes} bytes is smaller than the burst"
            )));
        }
        Ok(Shaping {
            rate_bps,
            burst_bytes,
            limit_bytes,
        })
    }

    /// Writes the tbf `TCA_OPTIONS` payload: `TCA_TBF_PARMS` (`struct tc_tbf_qopt`, with the
    /// rate spec marked link-layer Ethernet so the kernel needs no rate table), optional
    /// `TCA_TBF_RATE64`, and `TCA_TBF_BURST` (bytes; the kernel derives the bucket time).
    pub(crate) fn encode_tbf(&self, m: &mut Msg) {
        let bytes = self.rate_bps / 8;
        let r32 = if bytes >= u32::MAX as u64 {
            u32::MAX
        } else {
            bytes as u32
        };
        let mut q = [0u8; 36];
        // struct tc_ratespec { u8 cell_log; u8 linklayer; u16 overhead; s16 cell_align; u16 mpu; u32 rate }
        q[0] = 3; // cell_log, as tc computes for mtu 2047
        q[1] = 1; // TC_LINKLAYER_ETHERNET
        q[4..6].copy_from_slice(&(-1i16).to_ne_bytes()); // cell_align
        q[8..12].copy_from_slice(&r32.to_ne_bytes());
        // peakrate (12 bytes) stays zero
        q[24..28].copy_from_slice(&self.limit_bytes.to_ne_bytes());
        // buffer: bucket size as transmit time in ticks at `rate`.
        let ns = self.burst_bytes as u128 * 1_000_000_000 / bytes.max(1) as u128;
        let ticks = (ns >> PSCHED_SHIFT).min(u32::MAX as u128) as u32;
        q[28..32].copy_from_slice(&ticks.to_ne_bytes());
        m.attr(TCA_TBF_PARMS, &q);
        if bytes >= u32::MAX as u64 {
            m.attr_u64(TCA_TBF_RATE64, bytes);
        }
        m.attr_u32(TCA_TBF_BURST, self.burst_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtnl::qdisc_msg;

    /// Parses strace's `\xNN` dump into bytes.
    fn hex(s: &str) -> Vec<u8> {
        s.split("\\x")
            .filter(|p| !p.is_empty())
            .map(|p| u8::from_str_radix(p, 16).unwrap())
            .collect()
    }

    // Reference bytes: the payload (after nlmsghdr) of the RTM_NEWQDISC that iproute2 6.1's
    // `tc qdisc replace dev <ifindex 3> root handle 1: netem ...` sends, captured with
    // `strace -e sendmsg -xx` on this machine.

    #[test]
    fn netem_delay_matches_tc() {
        // tc qdisc replace dev kbv0 root handle 1: netem delay 50ms
        let tc = hex(concat!(
            "\\x00\\x00\\x00\\x00\\x03\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\xff\\xff\\xff\\xff\\x00\\x00\\x00\\x00",
            "\\x0a\\x00\\x01\\x00\\x6e\\x65\\x74\\x65\\x6d\\x00\\x00\\x00",
            "\\x1c\\x00\\x02\\x00\\xc2\\xeb\\x0b\\x00\\xe8\\x03\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00",
            "\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
        ));
        let i = Impairment::builder()
            .delay(Duration::from_millis(50))
            .build()
            .unwrap();
        let m = qdisc_msg(3, 0x10000, 0xffff_ffff, "netem", |m| i.encode_netem(m));
        assert_eq!(m.payload(), &tc[..]);
    }

    #[test]
    fn netem_full_matches_tc() {
        // tc qdisc replace dev kbv0 root handle 1: netem limit 1000 delay 50ms 10ms 25%
        //   loss 1% 30% duplicate 2% corrupt 0.5% reorder 10% 50% rate 1mbit
        let tc = hex(concat!(
            "\\x00\\x00\\x00\\x00\\x03\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\xff\\xff\\xff\\xff\\x00\\x00\\x00\\x00",
            "\\x0a\\x00\\x01\\x00\\x6e\\x65\\x74\\x65\\x6d\\x00\\x00\\x00",
            "\\x58\\x00\\x02\\x00\\xc2\\xeb\\x0b\\x00\\xe8\\x03\\x00\\x00\\x29\\x5c\\x8f\\x02\\x01\\x00\\x00\\x00",
            "\\x52\\xb8\\x1e\\x05\\x5a\\x62\\x02\\x00",
            "\\x10\\x00\\x01\\x00\\x00\\x00\\x00\\x40\\xcc\\xcc\\xcc\\x4c\\x00\\x00\\x00\\x00",
            "\\x0c\\x00\\x03\\x00\\x9a\\x99\\x99\\x19\\x00\\x00\\x00\\x80",
            "\\x0c\\x00\\x04\\x00\\x14\\xae\\x47\\x01\\x00\\x00\\x00\\x00",
            "\\x14\\x00\\x06\\x00\\x48\\xe8\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
        ));
        let i = Impairment::builder()
            .limit(1000)
            .delay(Duration::from_millis(50))
            .jitter(Duration::from_millis(10))
            .delay_correlation(25.0)
            .loss(1.0)
            .loss_correlation(30.0)
            .duplicate(2.0)
            .corrupt(0.5)
            .reorder(10.0)
            .reorder_correlation(50.0)
            .rate_bps(1_000_000)
            .build()
            .unwrap();
        let m = qdisc_msg(3, 0x10000, 0xffff_ffff, "netem", |m| i.encode_netem(m));
        assert_eq!(m.payload(), &tc[..]);
    }

    #[test]
    fn netem_sub_tick_truncates_like_tc() {
        // tc ... netem delay 1500us  ->  latency 23437 ticks (0x5b8d)
        let i = Impairment::builder()
            .delay(Duration::from_micros(1500))
            .build()
            .unwrap();
        let mut m = Msg::new(0, 0);
        i.encode_netem(&mut m);
        assert_eq!(&m.payload()[0..4], &0x5b8du32.to_ne_bytes());
    }

    #[test]
    fn tbf_parms_match_tc() {
        // tc qdisc replace dev kbv0 root handle 1: tbf rate 1mbit burst 32kb limit 100kb
        // (tc also appends a 1 KiB TCA_TBF_RTAB, which the kernel ignores for
        // link-layer-aware rate specs; we leave it out.)
        let tc = hex(concat!(
            "\\x28\\x00\\x01\\x00\\x03\\x01\\x00\\x00\\xff\\xff\\x00\\x00\\x48\\xe8\\x01\\x00",
            "\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00",
            "\\x00\\x90\\x01\\x00\\x00\\x80\\x3e\\x00\\x00\\x00\\x00\\x00",
            "\\x08\\x00\\x06\\x00\\x00\\x80\\x00\\x00"
        ));
        let s = Shaping::new(1_000_000, 32 * 1024, 100 * 1024).unwrap();
        let mut m = Msg::new(0, 0);
        s.encode_tbf(&mut m);
        assert_eq!(m.payload(), &tc[..]);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Impairment::builder().loss(-1.0).build().is_err());
        assert!(Impairment::builder().loss(101.0).build().is_err());
        assert!(Impairment::builder().loss(f64::NAN).build().is_err());
        assert!(Impairment::builder()
            .delay(Duration::from_secs(3600))
            .build()
            .is_err());
        assert!(Impairment::builder().rate_bps(1).build().is_err());
        assert!(Impairment::builder().reorder(5.0).build().is_err());
        assert!(parse_duration("-5ms").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("2h").is_err());
        assert_eq!(
            parse_duration("1.5ms").unwrap(),
            Duration::from_micros(1500)
        );
        assert_eq!(parse_rate("10mbit").unwrap(), 10_000_000);
        assert!(parse_rate("-1mbit").is_err());
        assert!(Percent::parse("150%").is_err());
        assert_eq!(Percent::parse("1%").unwrap().to_u32(), 42949673);
        assert!(Shaping::new(1_000_000, 100, 1000).is_err());
    }
}
