//! Packet capture to pcapng from any interface of any namespace, with no tools in guests:
//! an `AF_PACKET` socket opened inside the namespace and bound to the interface sees every
//! frame in both directions; a writer thread turns them into pcapng blocks and flushes after
//! each one, so `kobako capture ... | wireshark -k -i -` shows packets live.
//!
//! Format: pcapng (draft-ietf-opsawg-pcapng): Section Header Block, one Interface Description
//! Block (LINKTYPE_ETHERNET, nanosecond timestamps), then one Enhanced Packet Block per frame.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{NetError, Result};
use crate::netns::{Netns, NsThread};
use crate::types::IfName;

const ETH_P_ALL: u16 = 0x0003;
const LINKTYPE_ETHERNET: u16 = 1;

/// Writes pcapng blocks.
#[derive(Debug)]
pub struct PcapngWriter<W: Write> {
    w: W,
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

fn block(ty: u32, body: &[u8]) -> Vec<u8> {
    let total = (12 + body.len()) as u32;
    let mut b = Vec::with_capacity(total as usize);
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&total.to_le_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&total.to_le_bytes());
    b
}

impl<W: Write> PcapngWriter<W> {
    /// Writes the section header and one Ethernet interface description named `ifname`.
    pub fn new(mut w: W, ifname: &str, snaplen: u32) -> io::Result<Self> {
        let mut shb = Vec::new();
        shb.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes()); // byte-order magic
        shb.extend_from_slice(&1u16.to_le_bytes()); // major
        shb.extend_from_slice(&0u16.to_le_bytes()); // minor
        shb.extend_from_slice(&(-1i64).to_le_bytes()); // section length unknown
        w.write_all(&block(0x0A0D_0D0A, &shb))?;

        let mut idb = Vec::new();
        idb.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&snaplen.to_le_bytes());
        // if_name (2)
        idb.extend_from_slice(&2u16.to_le_bytes());
        idb.extend_from_slice(&(ifname.len() as u16).to_le_bytes());
        idb.extend_from_slice(ifname.as_bytes());
        pad4(&mut idb);
        // if_tsresol (9) = 9: nanoseconds
        idb.extend_from_slice(&9u16.to_le_bytes());
        idb.extend_from_slice(&1u16.to_le_bytes());
        idb.extend_from_slice(&[9, 0, 0, 0]);
        // opt_endofopt
        idb.extend_from_slice(&[0, 0, 0, 0]);
        w.write_all(&block(1, &idb))?;
        w.flush()?;
        Ok(PcapngWriter { w })
    }

    /// Writes one Enhanced Packet Block.
    pub fn packet(&mut self, ts: SystemTime, data: &[u8], orig_len: u32) -> io::Result<()> {
        let ns = ts.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        let mut epb = Vec::with_capacity(20 + data.len() + 4);
        epb.extend_from_slice(&0u32.to_le_bytes()); // interface id
        epb.extend_from_slice(&((ns >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(ns as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&orig_len.to_le_bytes());
        epb.extend_from_slice(data);
        pad4(&mut epb);
        self.w.write_all(&block(6, &epb))?;
        self.w.flush()
    }

    /// Returns the inner writer.
    pub fn into_inner(self) -> W {
        self.w
    }
}

/// Capture options.
#[derive(Debug, Clone, Copy)]
pub struct CaptureOptions {
    /// Bytes kept per frame.
    pub snaplen: u32,
    /// Stop after this many frames.
    pub max_packets: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            snaplen: 65535,
            max_packets: None,
            duration: None,
        }
    }
}

/// A running capture; stop it with [`Capture::stop`] (or let it end by its options).
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    packets: Arc<AtomicU64>,
    thread: NsThread<io::Result<u64>>,
}

impl Capture {
    /// Frames written so far.
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }

    /// Whether the capture ended on its own (limit, duration or write error).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the capture, flushes, and returns the number of frames written.
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join()?.map_err(NetError::io("write capture"))
    }

    /// Waits for the capture to end by its own limits.
    pub fn wait(self) -> Result<u64> {
        self.thread.join()?.map_err(NetError::io("write capture"))
    }
}

pub(crate) const SOL_PACKET: i32 = 263;
pub(crate) const PACKET_AUXDATA: i32 = 8;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;

/// Receives one frame with `recvmsg` and returns its length (with `MSG_TRUNC`: the original
/// length) and the 802.1Q TCI the kernel took out of the frame into metadata (VLAN
/// acceleration), from `PACKET_AUXDATA`. `None` when nothing was read (this also consumes a
/// pending socket error such as ENETDOWN after the interface went down).
pub(crate) fn recv_packet(
    fd: &OwnedFd,
    buf: &mut [u8],
    flags: i32,
) -> Option<(usize, Option<u16>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: msghdr is POD; zeroed is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: valid fd and a msghdr pointing at live buffers.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | flags) };
    if n <= 0 {
        return None;
    }
    let mut tci = None;
    // SAFETY: walking the control messages the kernel wrote into `cbuf` with the libc macros;
    // the auxdata payload is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                let aux = libc::CMSG_DATA(c) as *const libc::tpacket_auxdata;
                let aux = std::ptr::read_unaligned(aux);
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                    tci = Some(aux.tp_vlan_tci);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((n as usize, tci))
}

/// Opens an `AF_PACKET` socket bound to `ifname` in the calling thread's namespace.
pub(crate) fn open_packet_socket_here(ifindex: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is checked and owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            ETH_P_ALL.to_be() as i32,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is POD; zeroed is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: valid fd and sockaddr_ll of the passed size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

pub(crate) fn packet_socket_in(ns: &Netns, ifindex: u32) -> Result<OwnedFd> {
    ns.enter(move || open_packet_socket_here(ifindex))?
        .map_err(NetError::io(format!("open packet socket in {}", ns.name())))
}

/// Starts capturing `ifname` in `ns` into `sink` as pcapng.
pub fn start<W: Write + Send + 'static>(
    ns: &Netns,
    ifname: &IfName,
    sink: W,
    opts: CaptureOptions,
) -> Result<Capture> {
    let rt = crate::rtnl::Rtnl::open(ns)?;
    let link = rt.require(ifname.as_str())?;
    let fd = packet_socket_in(ns, link.index)?;
    let one: libc::c_int = 1;
    // SAFETY: valid fd; pointer to a live c_int of the given size.
    if unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_AUXDATA,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    } != 0
    {
        return Err(NetError::io("enable PACKET_AUXDATA")(
            std::io::Error::last_os_error(),
        ));
    }
    let mut writer = PcapngWriter::new(sink, ifname.as_str(), opts.snaplen)
        .map_err(NetError::io("write pcapng header"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let packets = Arc::new(AtomicU64::new(0));
    let (stop2, packets2) = (stop.clone(), packets.clone());
    let thread = ns.spawn("kb-capture", move || -> io::Result<u64> {
        let started = Instant::now();
        let mut buf = vec![0u8; 65536 + 64];
        let mut n_out = 0u64;
        loop {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            if opts.max_packets.is_some_and(|m| n_out >= m) {
                break;
            }
            if opts.duration.is_some_and(|d| started.elapsed() >= d) {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, 50) };
            if r <= 0 {
                continue;
            }
            let Some((orig, tci)) = recv_packet(&fd, &mut buf, libc::MSG_TRUNC) else {
                continue;
            };
            let got = orig.min(buf.len());
            let ts = SystemTime::now();
            match tci {
                // Put back the VLAN tag the kernel moved into metadata, as libpcap does.
                Some(tci) if got >= 12 => {
                    let mut f = Vec::with_capacity(got + 4);
                    f.extend_from_slice(&buf[..12]);
                    f.extend_from_slice(&[0x81, 0x00]);
                    f.extend_from_slice(&tci.to_be_bytes());
                    f.extend_from_slice(&buf[12..got]);
                    let kept = f.len().min(opts.snaplen as usize);
                    writer.packet(ts, &f[..kept], (orig + 4) as u32)?;
                }
                _ => {
                    let kept = got.min(opts.snaplen as usize);
                    writer.packet(ts, &buf[..kept], orig as u32)?;
                }
            }
            n_out += 1;
            packets2.store(n_out, Ordering::Relaxed);
        }
        writer.into_inner().flush()?;
        Ok(n_out)
    })?;
    Ok(Capture {
        stop,
        packets,
        thread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_layout() {
        let mut w = PcapngWriter::new(Vec::new(), "eth0", 65535).unwrap();
        w.packet(
            UNIX_EPOCH + Duration::from_nanos(0x1_0000_0002),
            &[1, 2, 3],
            3,
        )
        .unwrap();
        let b = w.into_inner();
        // SHB 28 bytes, IDB 20 + 8 (name) + 8 (tsresol) + 4 (end) = 40, EPB 32 + 4 (data padded).
        assert_eq!(&b[0..4], &0x0A0D0D0Au32.to_le_bytes());
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 28);
        let idb = &b[28..];
        assert_eq!(u32::from_le_bytes(idb[0..4].try_into().unwrap()), 1);
        let idb_len = u32::from_le_bytes(idb[4..8].try_into().unwrap()) as usize;
        assert_eq!(idb_len, 40);
        let epb = &idb[idb_len..];
        assert_eq!(u32::from_le_bytes(epb[0..4].try_into().unwrap()), 6);
        assert_eq!(u32::from_le_bytes(epb[4..8].try_into().unwrap()), 36);
        assert_eq!(u32::from_le_bytes(epb[12..16].try_into().unwrap()), 1); // ts high
        assert_eq!(u32::from_le_bytes(epb[16..20].try_into().unwrap()), 2); // ts low
        assert_eq!(&epb[28..31], &[1, 2, 3]);
        assert_eq!(b.len(), 28 + 40 + 36);
    }
}
