//! Userspace port relay: the fallback datapath for kernels built without `netem` or bridge
//! VLAN filtering (such as the minimal host kernels kobako runs on in CI).
//!
//! A relay sits between a lab port (tap or veth, taken out of its bridge) and one or more
//! "legs" — veth pairs whose other end is enslaved to a bridge. It copies frames both ways with
//! `AF_PACKET` sockets (with `PACKET_VNET_HDR`, so GSO super-frames pass through intact):
//! - towards the port (= towards the endpoint, netem's direction) it applies the [`Impairment`]
//!   with netem's semantics (delay ± uniform jitter, correlated loss, duplication, single-bit
//!   corruption, reordering by sending some packets early, rate as serialisation time,
//!   queue limit);
//! - for trunk ports each leg stands for one VLAN: frames from the leg are tagged with its VLAN
//!   id on the way to the port, and frames from the port are untagged and sent to the leg of
//!   their VLAN (frames of VLANs not carried are dropped), which is what an 802.1Q trunk on a
//!   VLAN-filtering bridge does.
//!
//! One thread per relay, inside the lab namespace; it ends when the handle is dropped/stopped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::impair::Impairment;
use crate::netns::{Netns, NsThread};

use crate::capture::{recv_packet, PACKET_AUXDATA, SOL_PACKET};

const PACKET_VNET_HDR: i32 = 15;
const PACKET_IGNORE_OUTGOING: i32 = 23;
const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;

/// One leg of a relay: a socket on a veth end plus the VLAN it stands for (`None`: untagged).
pub(crate) struct Leg {
    pub(crate) vid: Option<u16>,
    pub(crate) ifindex: u32,
}

/// An open leg: its VLAN and its packet socket.
type LegSocket = (Option<u16>, OwnedFd);

/// A running relay.
#[derive(Debug)]
pub(crate) struct Relay {
    stop: Arc<AtomicBool>,
    params: Arc<Mutex<Option<Impairment>>>,
    thread: Option<NsThread<()>>,
}

impl Relay {
    /// Changes the impairment live.
    pub(crate) fn set(&self, imp: Option<Impairment>) {
        *self.params.lock().unwrap_or_else(|e| e.into_inner()) = imp;
    }

    /// Asks the thread to stop without waiting (drop waits); lets many relays stop at once.
    pub(crate) fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn setopt(fd: &OwnedFd, level: i32, opt: i32, val: i32) -> io::Result<()> {
    // SAFETY: valid fd; pointer to a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&val as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn relay_socket(ifindex: u32) -> io::Result<OwnedFd> {
    let fd = crate::capture::open_packet_socket_here(ifindex)?;
    setopt(&fd, SOL_PACKET, PACKET_AUXDATA, 1)?;
    setopt(&fd, SOL_PACKET, PACKET_VNET_HDR, 1)?;
    // Without this we would read back every frame we send (kernel >= 4.20).
    setopt(&fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
    Ok(fd)
}

/// Starts a relay between `port` and `legs` inside `ns`.
/// `transparent`: the port has no VLAN role (one untagged leg); frames pass with their tags.
pub(crate) fn start(
    ns: &Netns,
    port_ifindex: u32,
    legs: Vec<Leg>,
    transparent: bool,
    imp: Option<Impairment>,
) -> Result<Relay> {
    let stop = Arc::new(AtomicBool::new(false));
    let params = Arc::new(Mutex::new(imp));
    let (stop2, params2) = (stop.clone(), params.clone());
    // Open the sockets up front (in the namespace) so errors are reported to the caller.
    let socks = ns.enter(move || -> io::Result<(OwnedFd, Vec<LegSocket>)> {
        let p = relay_socket(port_ifindex)?;
        let mut l = Vec::new();
        for leg in legs {
            l.push((leg.vid, relay_socket(leg.ifindex)?));
        }
        Ok((p, l))
    })?;
    let (port, legs) = socks.map_err(crate::error::NetError::io(format!(
        "open relay sockets in {}",
        ns.name()
    )))?;
    let thread = ns.spawn("kb-relay", move || {
        run(port, legs, transparent, stop2, params2)
    })?;
    Ok(Relay {
        stop,
        params,
        thread: Some(thread),
    })
}

/// xorshift64* — fast, good enough for impairment decisions, no dependency.
struct Rng(u64);
impl Rng {
    fn u32(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
}

/// netem's correlated random number (`get_crandom` in sch_netem.c).
#[derive(Default)]
struct Crandom {
    last: u32,
}
impl Crandom {
    fn next(&mut self, rng: &mut Rng, rho: u32) -> u32 {
        let v = rng.u32();
        if rho == 0 {
            return v;
        }
        let rho = rho as u64 + 1;
        let out = ((v as u64 * ((1u64 << 32) - rho) + self.last as u64 * rho) >> 32) as u32;
        self.last = out;
        out
    }
}

struct Pending {
    due: Instant,
    seq: u64,
    frame: Vec<u8>,
}
impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

struct State {
    rng: Rng,
    delay_c: Crandom,
    loss_c: Crandom,
    dup_c: Crandom,
    corrupt_c: Crandom,
    reorder_c: Crandom,
    queue: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    rate_tail: Option<Instant>,
}

fn send_frame(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: valid fd and buffer; errors (link down, queue full) mean the frame is lost,
    // exactly as on a real wire.
    unsafe {
        libc::send(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT,
        );
    }
}

/// Moves the checksum-start / header-length hints of the vnet header by `delta` bytes.
fn shift_vnet(frame: &mut [u8], delta: i32) {
    if frame.len() < VNET_HDR_LEN {
        return;
    }
    if frame[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        let cs = u16::from_ne_bytes([frame[6], frame[7]]) as i32 + delta;
        frame[6..8].copy_from_slice(&(cs.max(0) as u16).to_ne_bytes());
    }
    let hl = u16::from_ne_bytes([frame[2], frame[3]]) as i32;
    if hl != 0 {
        frame[2..4].copy_from_slice(&((hl + delta).max(0) as u16).to_ne_bytes());
    }
}

/// Splits an inline 802.1Q tag off `frame` (vnet header + Ethernet), returning its VLAN id.
fn strip_tag(frame: &mut Vec<u8>) -> Option<u16> {
    let e = VNET_HDR_LEN;
    if frame.len() >= e + 18 && frame[e + 12] == 0x81 && frame[e + 13] == 0x00 {
        let vid = u16::from_be_bytes([frame[e + 14], frame[e + 15]]) & 0x0fff;
        frame.drain(e + 12..e + 16);
        shift_vnet(frame, -4);
        return Some(vid);
    }
    None
}

/// Inserts an 802.1Q tag with `tci` (priority + VLAN id) after the MAC addresses.
fn insert_tag(frame: &mut Vec<u8>, tci: u16) {
    let e = VNET_HDR_LEN;
    if frame.len() < e + 14 {
        return;
    }
    let t = tci.to_be_bytes();
    let tag = [0x81, 0x00, t[0], t[1]];
    frame.splice(e + 12..e + 12, tag);
    shift_vnet(frame, 4);
}

fn run(
    port: OwnedFd,
    legs: Vec<LegSocket>,
    transparent: bool,
    stop: Arc<AtomicBool>,
    params: Arc<Mutex<Option<Impairment>>>,
) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
        | 1;
    let mut st = State {
        rng: Rng(seed),
        delay_c: Crandom::default(),
        loss_c: Crandom::default(),
        dup_c: Crandom::default(),
        corrupt_c: Crandom::default(),
        reorder_c: Crandom::default(),
        queue: BinaryHeap::new(),
        seq: 0,
        rate_tail: None,
    };
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN + 64];
    let mut pfds: Vec<libc::pollfd> = std::iter::once(&port)
        .chain(legs.iter().map(|(_, f)| f))
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Flush what is due.
        while let Some(Reverse(p)) = st.queue.peek() {
            if p.due > now {
                break;
            }
            if let Some(Reverse(p)) = st.queue.pop() {
                send_frame(&port, &p.frame);
            }
        }
        let timeout = st
            .queue
            .peek()
            .map(|Reverse(p)| p.due.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        // Round up so we never spin on a sub-millisecond remainder.
        let ms = (timeout.as_micros().div_ceil(1000)) as i32;
        for p in pfds.iter_mut() {
            p.revents = 0;
        }
        // SAFETY: `pfds` is a live array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as u64, ms) };
        if r <= 0 {
            continue;
        }
        // From the port: untag / pick the leg, forward immediately.
        // POLLERR (e.g. ENETDOWN while a port is cut) is cleared by the next recv.
        let ready = libc::POLLIN | libc::POLLERR;
        if pfds[0].revents & ready != 0 {
            for _ in 0..64 {
                let Some((n, aux_tci)) = recv_packet(&port, &mut buf, 0) else {
                    break;
                };
                let mut f = buf[..n].to_vec();
                if transparent {
                    // A plain port: frames keep whatever tags they carry.
                    if let Some(tci) = aux_tci {
                        insert_tag(&mut f, tci);
                    }
                    if let Some((_, fd)) = legs.first() {
                        send_frame(fd, &f);
                    }
                    continue;
                }
                let vid = aux_tci.map(|t| t & 0x0fff).or_else(|| strip_tag(&mut f));
                if let Some((_, fd)) = legs.iter().find(|(v, _)| *v == vid) {
                    send_frame(fd, &f);
                }
            }
        }
        // From the legs: tag, impair, queue towards the port.
        let imp = params.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (i, (vid, fd)) in legs.iter().enumerate() {
            if pfds[i + 1].revents & ready == 0 {
                continue;
            }
            for _ in 0..64 {
                let Some((n, aux_tci)) = recv_packet(fd, &mut buf, 0) else {
                    break;
                };
                let mut f = buf[..n].to_vec();
                if let Some(v) = vid {
                    insert_tag(&mut f, *v);
                } else if let Some(tci) = aux_tci.filter(|_| transparent) {
                    insert_tag(&mut f, tci);
                }
                match &imp {
                    None => send_frame(&port, &f),
                    Some(imp) => enqueue(&mut st, imp, f, &port),
                }
            }
        }
    }
}

fn enqueue(st: &mut State, imp: &Impairment, mut frame: Vec<u8>, port: &OwnedFd) {
    let now = Instant::now();
    // Loss.
    let loss = imp.loss().to_u32();
    if loss != 0 && loss >= st.loss_c.next(&mut st.rng, imp.loss_correlation().to_u32()) {
        return;
    }
    // Duplication: a second copy takes the same path.
    let dup = imp.duplicate().to_u32();
    let copies = if dup != 0 && dup >= st.dup_c.next(&mut st.rng, 0) {
        2
    } else {
        1
    };
    // Corruption: flip one random bit of the Ethernet frame.
    let cor = imp.corrupt().to_u32();
    if cor != 0 && cor >= st.corrupt_c.next(&mut st.rng, 0) && frame.len() > VNET_HDR_LEN {
        let body = frame.len() - VNET_HDR_LEN;
        let i = VNET_HDR_LEN + (st.rng.u32() as usize % body);
        frame[i] ^= 1 << (st.rng.u32() % 8);
    }
    for _ in 0..copies {
        if st.queue.len() >= imp.limit() as usize {
            return;
        }
        // Reordering (gap 1): a reordered packet skips the delay.
        let ro = imp.reorder().to_u32();
        let early = ro != 0
            && ro
                >= st
                    .reorder_c
                    .next(&mut st.rng, imp.reorder_correlation().to_u32());
        let mut delay = if early {
            Duration::ZERO
        } else {
            let d = imp.delay().as_nanos() as i128;
            let j = imp.jitter().as_nanos() as i128;
            let d = if j > 0 {
                let r = st
                    .delay_c
                    .next(&mut st.rng, imp.delay_correlation().to_u32())
                    as i128;
                d - j + (r * 2 * j) / (u32::MAX as i128)
            } else {
                d
            };
            Duration::from_nanos(d.max(0) as u64)
        };
        let mut due = now + delay;
        if let Some(bps) = imp.rate_bps() {
            let len = (frame.len() - VNET_HDR_LEN.min(frame.len())) as u128;
            let tx = Duration::from_nanos((len * 8 * 1_000_000_000 / bps as u128) as u64);
            let start = st.rate_tail.map_or(due, |t| t.max(due));
            due = start + tx;
            st.rate_tail = Some(due);
            delay = due - now;
        }
        if delay.is_zero() && st.queue.is_empty() {
            send_frame(port, &frame);
            continue;
        }
        st.seq += 1;
        st.queue.push(Reverse(Pending {
            due,
            seq: st.seq,
            frame: frame.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_roundtrip_moves_csum_start() {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        f[6..8].copy_from_slice(&34u16.to_ne_bytes());
        f.extend_from_slice(&[0xff; 12]);
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0x00, 0, 0]);
        let orig = f.clone();
        insert_tag(&mut f, 10);
        assert_eq!(&f[VNET_HDR_LEN + 12..VNET_HDR_LEN + 16], &[0x81, 0, 0, 10]);
        assert_eq!(u16::from_ne_bytes([f[6], f[7]]), 38);
        assert_eq!(strip_tag(&mut f), Some(10));
        assert_eq!(f, orig);
    }

    #[test]
    fn correlated_random_is_bounded() {
        let mut r = Rng(42);
        let mut c = Crandom::default();
        for _ in 0..1000 {
            let _ = c.next(&mut r, u32::MAX / 2);
        }
    }
}
