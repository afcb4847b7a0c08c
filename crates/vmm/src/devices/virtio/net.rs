//! virtio-net (type 1) on a Linux tap.
//!
//! The tap (`host_dev_name`) is opened with `TUNSETIFF` in the VMM process's network
//! namespace — the VM's: kobako's supervisor enters the lab namespace before it starts the
//! VMM, as Firecracker's jailer does — with `IFF_NO_PI | IFF_VNET_HDR` and a 12-byte
//! `virtio_net_hdr_v1`, so the guest's offload metadata passes through unchanged: the tap
//! takes partially-checksummed and GSO frames from the guest (CSUM, HOST_TSO4/6, HOST_UFO)
//! and, with the offloads the guest acked (GUEST_CSUM, GUEST_TSO4/6, GUEST_UFO) set by
//! `TUNSETOFFLOAD`, hands it such frames too.
//!
//! Queues: 0 = receive, 1 = transmit (256 entries each). No mergeable receive buffers: a frame
//! goes into one chain (Linux posts 64 KiB chains when it acks GUEST_TSO*); a frame larger than
//! the chain is dropped and counted. When no receive buffer is posted (or the RX limiter is
//! empty) the frame waits and the tap leaves the epoll set until the guest posts buffers (or
//! the limiter's timer fires), so nothing spins. Link state: VIRTIO_NET_F_STATUS, always up (a
//! tap's carrier follows our open fd). Separate RX and TX rate limiters, updatable after boot.

use std::any::Any;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::device_state::{ActiveState, DeviceState};
use super::queue::{ChainReader, ChainWriter};
use super::rate_limiter::RateLimiter;
use super::{ActiveContext, VirtioDevice, COMMON_FEATURES, TYPE_NET};

pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_HOST_UFO: u64 = 1 << 14;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;

/// `virtio_net_hdr_v1` (with num_buffers): what VERSION_1 drivers use.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame + header we move (64 KiB GSO frame + Ethernet + header).
const MAX_FRAME: usize = 65562;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_UFO: u32 = 0x10;

const TOKEN_TAP: u64 = super::DEVICE_TOKEN_BASE;
const TOKEN_RX_LIMITER: u64 = super::DEVICE_TOKEN_BASE + 1;
const TOKEN_TX_LIMITER: u64 = super::DEVICE_TOKEN_BASE + 2;

/// An open tap (non-blocking, vnet header on).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or creates, with CAP_NET_ADMIN) the tap `name` in this thread's namespace.
    pub fn open(name: &str) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "tap name must be 1-15 bytes",
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        let mut ifr = [0u8; 40];
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
        // SAFETY: TUNSETIFF reads/writes a struct ifreq (40 bytes); `ifr` is live and that size.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let sz = libc::c_int::try_from(VNET_HDR_LEN).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer; `sz` outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &sz) } != 0 {
            return Err(io::Error::last_os_error());
        }
        super::set_nonblocking(file.as_raw_fd())?;
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// `TUNSETOFFLOAD`: which offloaded frames the tap may hand us.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes an unsigned int by value; the fd is our tap.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap's file: frames with a `VNET_HDR_LEN`-byte header each way (tests, tools).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Parses `06:00:AC:10:00:02`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Why a network device could not be created from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    /// The tap does not exist or cannot be opened in this network namespace.
    #[error("cannot open tap {name:?} in the VMM's network namespace: {source} (create it there, or run the VMM with CAP_NET_ADMIN)")]
    Tap { name: String, source: io::Error },
    #[error("bad guest_mac {0:?}")]
    BadMac(String),
    #[error("rate limiter: {0}")]
    RateLimiter(io::Error),
}

/// The network device.
pub struct Net {
    tap: Tap,
    mac: Option<[u8; 6]>,
    mtu: Option<u16>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    state: DeviceState,
    /// The tap offloads the driver's features ask for, applied by the event loop after
    /// activation (Some only while activated).
    offload_pending: Option<u32>,
    /// A frame read from the tap that found no receive buffer yet.
    pending: Option<Vec<u8>>,
    tap_watched: bool,
    frame: Vec<u8>,
    /// The MMDS responder, when `PUT /mmds/config` names this interface.
    mmds: Option<crate::mmds::stack::MmdsStack>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("tap", &self.tap.name)
            .field("mac", &self.mac)
            .finish_non_exhaustive()
    }
}

impl Net {
    pub fn new(
        tap: Tap,
        mac: Option<[u8; 6]>,
        mtu: Option<u16>,
        rx: Option<&crate::config::RateLimiter>,
        tx: Option<&crate::config::RateLimiter>,
    ) -> io::Result<Net> {
        Ok(Net {
            tap,
            mac,
            mtu,
            rx_limiter: RateLimiter::new(rx)?,
            tx_limiter: RateLimiter::new(tx)?,
            state: DeviceState::Inactive,
            offload_pending: None,
            pending: None,
            tap_watched: true,
            frame: vec![0u8; MAX_FRAME],
            mmds: None,
        })
    }

    /// Answers the guest's MMDS traffic on this interface (its frames to the MMDS address
    /// never reach the tap).
    pub fn set_mmds(&mut self, stack: crate::mmds::stack::MmdsStack) {
        self.mmds = Some(stack);
    }

    /// From a `PUT /network-interfaces` configuration.
    pub fn from_config(n: &crate::config::NetworkInterface) -> Result<Net, NetConfigError> {
        let tap = Tap::open(&n.host_dev_name).map_err(|source| NetConfigError::Tap {
            name: n.host_dev_name.clone(),
            source,
        })?;
        let mac = match &n.guest_mac {
            Some(m) => Some(parse_mac(m).ok_or_else(|| NetConfigError::BadMac(m.clone()))?),
            None => None,
        };
        let mtu = n.mtu.map(|m| m.min(65535) as u16);
        Net::new(
            tap,
            mac,
            mtu,
            n.rx_rate_limiter.as_ref(),
            n.tx_rate_limiter.as_ref(),
        )
        .map_err(NetConfigError::RateLimiter)
    }

    /// `PATCH /network-interfaces/{id}`.
    pub fn update_limiters(
        &mut self,
        rx: Option<&crate::config::RateLimiter>,
        tx: Option<&crate::config::RateLimiter>,
    ) {
        if rx.is_some() {
            self.rx_limiter.update(rx);
        }
        if tx.is_some() {
            self.tx_limiter.update(tx);
        }
    }

    fn watch_tap(&mut self, epoll: &Epoll, on: bool) {
        if self.tap_watched == on {
            return;
        }
        let ev = if on { EventSet::IN } else { EventSet::empty() };
        if epoll
            .ctl(
                ControlOperation::Modify,
                self.tap.file.as_raw_fd(),
                EpollEvent::new(ev, TOKEN_TAP),
            )
            .is_ok()
        {
            self.tap_watched = on;
        }
    }

    /// Moves frames from the tap into receive buffers until one side runs out.
    fn process_rx(&mut self, epoll: &Epoll) {
        let Some(ActiveState { mem, queues, irq }) = self.state.active_mut() else {
            // Not active: drop what the tap has so it does not stay readable forever.
            while self.tap.file.read(&mut self.frame).is_ok_and(|n| n > 0) {}
            self.pending = None;
            return;
        };
        let rxq = &mut queues[RX];
        let mut used = false;
        let mut stalled = false;
        loop {
            // A frame that waited, then the MMDS's answers, then the tap.
            let mmds_frame = match &mut self.mmds {
                Some(m) if self.pending.is_none() => m.pop_frame().map(|f| {
                    let mut v = vec![0u8; VNET_HDR_LEN];
                    v.extend_from_slice(&f);
                    v
                }),
                _ => None,
            };
            let frame = match self.pending.take().or(mmds_frame) {
                Some(f) => f,
                None => match self.tap.file.read(&mut self.frame) {
                    Ok(n) if n >= VNET_HDR_LEN => self.frame[..n].to_vec(),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break, // WouldBlock (or the tap went away)
                },
            };
            let Some((head, chain)) = rxq.pop(mem) else {
                self.pending = Some(frame);
                stalled = true;
                break;
            };
            if !self
                .rx_limiter
                .consume((frame.len() - VNET_HDR_LEN) as u64, 1)
            {
                rxq.undo_pop();
                self.pending = Some(frame);
                stalled = true;
                break;
            }
            let len = match chain {
                Ok(c) if c.writable_len() >= frame.len() as u64 => {
                    let mut f = frame;
                    // num_buffers = 1 (no mergeable buffers).
                    f[10..12].copy_from_slice(&1u16.to_le_bytes());
                    crate::cast::len_u32(ChainWriter::new(mem, &c.writable).write(&f))
                }
                Ok(_) => {
                    crate::metrics::inc(&crate::metrics::METRICS.virtio_bad_requests);
                    0
                }
                Err(_) => 0,
            };
            rxq.add_used(mem, head, len);
            used = true;
        }
        if used && rxq.needs_notification(mem) {
            irq.signal_used();
        }
        self.watch_tap(epoll, !stalled);
    }

    fn process_tx(&mut self, epoll: &Epoll) {
        let Some(ActiveState { mem, queues, irq }) = self.state.active_mut() else {
            return;
        };
        let txq = &mut queues[TX];
        let mut used = false;
        loop {
            txq.disable_notification(mem);
            while let Some((head, chain)) = txq.pop(mem) {
                if let Ok(c) = &chain {
                    let len = c.readable_len();
                    if !self
                        .tx_limiter
                        .consume(len.saturating_sub(VNET_HDR_LEN as u64), 1)
                    {
                        txq.undo_pop();
                        break;
                    }
                    if (VNET_HDR_LEN as u64..=MAX_FRAME as u64).contains(&len) {
                        let n = ChainReader::new(mem, &c.readable)
                            .read(&mut self.frame[..crate::cast::usize_from(len)]);
                        let to_mmds = self.mmds.as_mut().is_some_and(|m| {
                            m.handle_frame(&self.frame[VNET_HDR_LEN..n])
                                == crate::mmds::stack::Verdict::Taken
                        });
                        if !to_mmds {
                            // A full or vanished tap drops the frame, as a cable would.
                            let _ = self.tap.file.write(&self.frame[..n]);
                        }
                    } else {
                        crate::metrics::inc(&crate::metrics::METRICS.virtio_bad_requests);
                    }
                }
                txq.add_used(mem, head, 0);
                used = true;
            }
            if self.tx_limiter.is_blocked() || !txq.enable_notification(mem) {
                break;
            }
        }
        if used && txq.needs_notification(mem) {
            irq.signal_used();
        }
        if self.mmds.as_ref().is_some_and(|m| m.has_frames()) {
            self.process_rx(epoll);
        }
    }

    fn apply_offload(&mut self) {
        if let Some(flags) = self.offload_pending.take() {
            if let Err(e) = self.tap.set_offload(flags) {
                crate::log_warn!("tap {}: TUNSETOFFLOAD {flags:#x}: {e}", self.tap.name);
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let mut f = COMMON_FEATURES
            | VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
            | VIRTIO_NET_F_GUEST_UFO
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_HOST_UFO
            | VIRTIO_NET_F_STATUS;
        if self.mac.is_some() {
            f |= VIRTIO_NET_F_MAC;
        }
        if self.mtu.is_some() {
            f |= VIRTIO_NET_F_MTU;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status u16 (LINK_UP), max_virtqueue_pairs u16, mtu u16.
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac.unwrap_or_default());
        c[6..8].copy_from_slice(&1u16.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.unwrap_or(1500).to_le_bytes());
        crate::devices::virtio::read_config_bytes(&c, offset, data);
    }
    fn activate(&mut self, ctx: ActiveContext, _epoll: &Epoll) -> Result<(), super::ActivateError> {
        crate::devices::virtio::check_queue_count("virtio-net", 2, ctx.queues.len())?;
        let g = ctx.acked_features;
        let mut off = 0;
        for (bit, tun) in [
            (VIRTIO_NET_F_GUEST_CSUM, TUN_F_CSUM),
            (VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
            (VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
            (VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO),
        ] {
            if g & bit != 0 {
                off |= tun;
            }
        }
        // TSO/UFO need checksum offload too.
        if off & TUN_F_CSUM == 0 {
            off = 0;
        }
        // Activation runs on a vCPU thread (a Status write) whose seccomp filter has no tap
        // ioctls: the event loop applies the offloads at the first queue event, which the
        // transport raises right after activation.
        self.offload_pending = Some(off);
        self.state.activate(ctx);
        Ok(())
    }
    fn reset(&mut self, _epoll: &Epoll) {
        self.state.reset();
        self.offload_pending = None;
        self.pending = None;
    }
    fn queue_event(&mut self, idx: usize, epoll: &Epoll) {
        self.apply_offload();
        match idx {
            RX => self.process_rx(epoll),
            TX => self.process_tx(epoll),
            _ => {}
        }
    }
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![
            (self.tap.file.as_raw_fd(), TOKEN_TAP),
            (self.rx_limiter.timer_fd(), TOKEN_RX_LIMITER),
            (self.tx_limiter.timer_fd(), TOKEN_TX_LIMITER),
        ]
    }
    fn event(&mut self, token: u64, epoll: &Epoll) {
        self.apply_offload();
        match token {
            TOKEN_TAP => self.process_rx(epoll),
            TOKEN_RX_LIMITER => {
                self.rx_limiter.on_timer();
                self.process_rx(epoll);
            }
            TOKEN_TX_LIMITER => {
                self.tx_limiter.on_timer();
                self.process_tx(epoll);
            }
            _ => {}
        }
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::testing::{guest_memory, TestDriver};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const ETHERTYPE: u16 = 0x88b5; // local experimental

    fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Brings `name` up and returns an AF_PACKET socket bound to it (the host side).
    fn host_side(name: &str) -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket/ioctl/bind calls on fds we own, with live, correctly sized
        // ifreq and sockaddr_ll buffers.
        unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            assert!(s >= 0);
            let mut ifr = [0u8; 40];
            ifr[..name.len()].copy_from_slice(name.as_bytes());
            assert_eq!(libc::ioctl(s, libc::SIOCGIFFLAGS, ifr.as_mut_ptr()), 0);
            let fl = i16::from_ne_bytes([ifr[16], ifr[17]]) | i16::try_from(libc::IFF_UP).unwrap();
            ifr[16..18].copy_from_slice(&fl.to_ne_bytes());
            assert_eq!(libc::ioctl(s, libc::SIOCSIFFLAGS, ifr.as_mut_ptr()), 0);
            libc::close(s);
            let idx = libc::if_nametoindex(std::ffi::CString::new(name).unwrap().as_ptr());
            assert!(idx > 0);
            let p = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(u16::try_from(libc::ETH_P_ALL).unwrap().to_be()),
            );
            assert!(p >= 0);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
            sll.sll_protocol = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
            sll.sll_ifindex = idx as i32;
            assert_eq!(
                libc::bind(
                    p,
                    &sll as *const _ as *const libc::sockaddr,
                    u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap()
                ),
                0
            );
            let tv = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            libc::setsockopt(
                p,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                16,
            );
            std::os::fd::OwnedFd::from_raw_fd(p)
        }
    }

    fn recv_ours(p: &std::os::fd::OwnedFd) -> Vec<u8> {
        let mut buf = vec![0u8; 70000];
        loop {
            // SAFETY: recv into a live buffer of the given length.
            let n = unsafe { libc::recv(p.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(
                n > 0,
                "no frame from the guest: {}",
                io::Error::last_os_error()
            );
            let f = &buf[..usize::try_from(n).unwrap()];
            if f.len() >= 14 && u16::from_be_bytes([f[12], f[13]]) == ETHERTYPE {
                return f.to_vec();
            }
        }
    }

    fn send(p: &std::os::fd::OwnedFd, f: &[u8]) {
        // SAFETY: send from a live buffer.
        let n = unsafe { libc::send(p.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        assert_eq!(n, f.len() as isize);
    }

    fn wait_readable(fd: RawFd) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 2000) };
    }

    #[test]
    fn frames_cross_a_tap_both_ways() {
        // Our own network namespace (this thread only), so the tap is private to the test.
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!("skipping: cannot unshare a network namespace (needs root)");
                return;
            }
            let mac = [6, 0, 0xac, 0x10, 0, 2];
            let cfg = crate::config::NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "kbt0".into(),
                guest_mac: Some("06:00:AC:10:00:02".into()),
                mtu: None,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            };
            let dev = Net::from_config(&cfg).unwrap();
            let mem = guest_memory(16 << 20);
            let mut t = MmioTransport::new(
                Box::new(dev),
                mem.clone(),
                EventFd::new(EFD_NONBLOCK).unwrap(),
            )
            .unwrap();
            let mut d = TestDriver::new(mem.clone());
            let feats = d.init(&mut t, u64::MAX, &[0, 0]).unwrap();
            assert_ne!(feats & VIRTIO_NET_F_MAC, 0);
            let mut cfgmac = [0u8; 6];
            d.read_config(&mut t, 0, &mut cfgmac);
            assert_eq!(cfgmac, mac);
            let mut st = [0u8; 2];
            d.read_config(&mut t, 6, &mut st);
            assert_eq!(u16::from_le_bytes(st), 1, "link up");
            let p = host_side("kbt0");
            t.process_events(); // offloads applied on the event loop
            let (mut rxq, mut txq) = (d.queues[0].clone(), d.queues[1].clone());

            // TX: header and frame split over two descriptors.
            let payload: Vec<u8> = (0..1000u32).map(|i| i.to_le_bytes()[0]).collect();
            let f = frame([0xff; 6], mac, &payload);
            let b = d.alloc(2048, 8);
            mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(b))
                .unwrap();
            mem.write_slice(&f, GuestAddress(b + 64)).unwrap();
            let h = txq.add(
                &mem,
                &[
                    (b, u32::try_from(VNET_HDR_LEN).unwrap(), false),
                    (b + 64, u32::try_from(f.len()).unwrap(), false),
                ],
            );
            d.notify(&mut t, 1);
            assert_eq!(txq.take_used(&mem), vec![(h.into(), 0)]);
            assert_eq!(recv_ours(&p), f);
            assert_eq!(d.take_interrupts(&mut t), 1);

            // RX with no buffer posted: the frame waits; then a buffer arrives.
            let f2 = frame(mac, [2, 0, 0, 0, 0, 1], b"hello from the host side");
            send(&p, &f2);
            wait_readable(t.epoll_fd());
            t.process_events();
            let rb = d.alloc(4096, 8);
            let mut got = None;
            for _ in 0..20 {
                let h = rxq.add(&mem, &[(rb, 4096, true)]);
                d.notify(&mut t, 0);
                let used = rxq.take_used(&mem);
                assert_eq!(used.len(), 1);
                assert_eq!(used[0].0, u32::from(h));
                let mut buf = vec![0u8; used[0].1 as usize];
                mem.read_slice(&mut buf, GuestAddress(rb)).unwrap();
                if buf.len() >= VNET_HDR_LEN + 14
                    && buf[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == ETHERTYPE.to_be_bytes()
                {
                    got = Some(buf);
                    break;
                }
                // Something the host kernel sent (IPv6 neighbour discovery): take the next.
                wait_readable(t.epoll_fd());
                t.process_events();
            }
            let got = got.expect("our frame reached the guest");
            assert_eq!(&got[VNET_HDR_LEN..], &f2[..]);
            assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        })
        .join()
        .unwrap();
    }
}
