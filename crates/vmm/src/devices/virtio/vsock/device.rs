//! The vsock device proper: its three virtqueues (RX, TX, event), the
//! [`VirtioDevice`] implementation, and the transport reset. It moves packets between the
//! queues and the [`Muxer`], which owns the connections.

use std::any::Any;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{Epoll, EventSet};

use super::muxer::{Muxer, TOKEN_LISTENER};
use super::packet::{PacketHeader, EVENT_TRANSPORT_RESET, HDR_LEN, MAX_PKT_PAYLOAD};
use super::{bad_packet, QUEUE_SIZE};
use crate::devices::virtio::device_state::{ActiveState, DeviceState};
use crate::devices::virtio::queue::{ChainReader, ChainWriter};
use crate::devices::virtio::{ActiveContext, VirtioDevice, COMMON_FEATURES, TYPE_VSOCK};

const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;

/// The vsock device's host socket could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on uds_path {}: {source}", uds_path.display())]
pub struct VsockConfigError {
    pub uds_path: PathBuf,
    pub source: io::Error,
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    state: DeviceState,
    muxer: Muxer,
    reset_event_pending: bool,
    /// One packet's payload, either direction.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.muxer.uds_path())
            .field("connections", &self.muxer.connection_count())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// Creates the device and its listener on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Vsock> {
        Ok(Vsock {
            guest_cid,
            state: DeviceState::Inactive,
            muxer: Muxer::new(guest_cid, uds_path)?,
            reset_event_pending: false,
            scratch: vec![0u8; MAX_PKT_PAYLOAD as usize],
        })
    }

    /// From a `PUT /vsock` configuration.
    pub fn from_config(v: &crate::config::Vsock) -> Result<Vsock, VsockConfigError> {
        Vsock::new(u64::from(v.guest_cid), &v.uds_path).map_err(|source| VsockConfigError {
            uds_path: v.uds_path.clone(),
            source,
        })
    }

    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Open connections (for tests and metrics).
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: drops every connection (host sockets closed) and
    /// tells the guest through the event queue (delivered when it has posted an event buffer).
    pub fn transport_reset(&mut self, epoll: &Epoll) {
        self.muxer.drop_all();
        self.reset_event_pending = true;
        self.process_event_queue();
        self.process_rx(epoll);
    }

    /// Takes the guest's packets off the TX queue and hands the valid ones to the muxer.
    fn process_tx(&mut self, epoll: &Epoll) {
        let Some(ActiveState { mem, queues, irq }) = self.state.active_mut() else {
            return;
        };
        let txq = &mut queues[TXQ];
        let mut used = false;
        let mut hdr = [0u8; HDR_LEN];
        loop {
            txq.disable_notification(mem);
            let Some((head, chain)) = txq.pop(mem) else {
                if txq.enable_notification(mem) {
                    continue;
                }
                break;
            };
            txq.add_used(mem, head, 0);
            used = true;
            let Ok(c) = chain else { continue };
            let mut r = ChainReader::new(mem, &c.readable);
            if !r.read_exact(&mut hdr) {
                bad_packet();
                continue;
            }
            let h = match PacketHeader::parse_guest(&hdr, r.remaining(), self.guest_cid) {
                Ok(h) => h,
                Err(e) => {
                    crate::log_debug!("vsock: dropped a packet from the guest: {e}");
                    bad_packet();
                    continue;
                }
            };
            let n = h.len as usize;
            if n > 0 && !r.read_exact(&mut self.scratch[..n]) {
                bad_packet();
                continue;
            }
            self.muxer
                .handle_guest_packet(&h, &self.scratch[..n], epoll);
        }
        if used && txq.needs_notification(mem) {
            irq.signal_used();
        }
    }

    /// Fills RX buffers: control packets first, then data from host sockets with credit.
    fn process_rx(&mut self, epoll: &Epoll) {
        let Some(ActiveState { mem, queues, irq }) = self.state.active_mut() else {
            return;
        };
        let rxq = &mut queues[RXQ];
        let mut used = false;
        // Anything to send?
        while self.muxer.has_rx() {
            let Some((head, chain)) = rxq.pop(mem) else {
                break; // the guest's RX notification brings us back
            };
            let c = match chain {
                Ok(c) if c.writable_len() >= HDR_LEN as u64 => c,
                _ => {
                    bad_packet();
                    rxq.add_used(mem, head, 0);
                    used = true;
                    continue;
                }
            };
            let room =
                u32::try_from((c.writable_len() - HDR_LEN as u64).min(u64::from(MAX_PKT_PAYLOAD)))
                    .unwrap_or(MAX_PKT_PAYLOAD);
            let Some(h) = self.muxer.next_rx(room, &mut self.scratch) else {
                // Nothing after all (would-block or EOF handled): give the buffer back.
                rxq.undo_pop();
                continue;
            };
            let mut w = ChainWriter::new(mem, &c.writable);
            w.write(&h.encode());
            if h.len > 0 {
                w.write(&self.scratch[..h.len as usize]);
            }
            // A header and at most `room` (MAX_PKT_PAYLOAD) bytes.
            let written = u32::try_from(w.written()).unwrap_or(u32::MAX);
            rxq.add_used(mem, head, written);
            used = true;
        }
        if used && rxq.needs_notification(mem) {
            irq.signal_used();
        }
        self.muxer.sync_all(epoll);
    }

    fn process_event_queue(&mut self) {
        let Some(ActiveState { mem, queues, irq }) = self.state.active_mut() else {
            return;
        };
        let evq = &mut queues[EVQ];
        if !self.reset_event_pending {
            return;
        }
        let Some((head, chain)) = evq.pop(mem) else {
            return;
        };
        let len = match chain {
            Ok(c) if c.writable_len() >= 4 => crate::cast::len_u32(
                ChainWriter::new(mem, &c.writable).write(&EVENT_TRANSPORT_RESET.to_le_bytes()),
            ),
            _ => 0,
        };
        evq.add_used(mem, head, len);
        if len == 4 {
            self.reset_event_pending = false;
        }
        if evq.needs_notification(mem) {
            irq.signal_used();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        COMMON_FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let c = self.guest_cid.to_le_bytes();
        crate::devices::virtio::read_config_bytes(&c, offset, data);
    }
    fn activate(
        &mut self,
        ctx: ActiveContext,
        _epoll: &Epoll,
    ) -> Result<(), crate::devices::virtio::ActivateError> {
        crate::devices::virtio::check_queue_count("virtio-vsock", 3, ctx.queues.len())?;
        // No syscalls here (vCPU thread): the queue events the transport raises right after
        // activation run the first RX pass (host connections that waited) on the event loop.
        self.state.activate(ctx);
        Ok(())
    }
    fn reset(&mut self, _epoll: &Epoll) {
        self.state.reset();
        self.muxer.drop_all();
    }
    fn queue_event(&mut self, idx: usize, epoll: &Epoll) {
        match idx {
            RXQ => {}
            TXQ => self.process_tx(epoll),
            EVQ => self.process_event_queue(),
            _ => return,
        }
        self.process_rx(epoll);
    }
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![(self.muxer.listener_fd(), TOKEN_LISTENER)]
    }
    fn event(&mut self, token: u64, epoll: &Epoll) {
        self.event_set(token, EventSet::IN, epoll);
    }
    fn event_set(&mut self, token: u64, events: EventSet, epoll: &Epoll) {
        self.muxer.event(token, events, epoll);
        self.process_rx(epoll);
    }
    fn restored(&mut self, epoll: &Epoll) {
        // Connections lived in the old process: the guest must drop its sockets.
        self.transport_reset(epoll);
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{
        VsockGuest as Guest, VSOCK_RX_BUF as RX_BUF, VSOCK_RX_SLOTS as RX_SLOTS,
    };
    use crate::devices::virtio::vsock::muxer::FIRST_LOCAL_PORT;
    use crate::devices::virtio::vsock::packet::*;
    use crate::devices::virtio::vsock::{BUF_ALLOC, CREDIT_UPDATE_THRESHOLD};
    use std::io::{BufRead, BufReader};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;
    use vm_memory::{Bytes, GuestAddress};

    const CID: u64 = 3;

    fn pkt(src_port: u32, dst_port: u32, op: u16, len: u32, fwd_cnt: u32) -> PacketHeader {
        PacketHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 << 10,
            fwd_cnt,
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| i.to_le_bytes()[0].wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn host_initiated_connection_both_ways_with_credit() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mut g = Guest::new(CID, &uds);
        let mut host = UnixStream::connect(&uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        let p = g.recv();
        assert_eq!(p.len(), 1, "{p:?}");
        let req = p[0].0;
        assert_eq!(
            (req.op, req.dst_port, req.buf_alloc),
            (OP_REQUEST, 52, BUF_ALLOC)
        );
        assert!(req.src_port >= FIRST_LOCAL_PORT);
        let local = req.src_port;
        g.send(pkt(52, local, OP_RESPONSE, 0, 0), &[]);
        let mut line = String::new();
        BufReader::new(host.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, format!("OK {local}\n"));

        // Host -> guest, 200 KiB against a guest buffer of 64 KiB: the device stops at the
        // guest's credit until the guest reports what it consumed.
        let data = pattern(200 << 10, 7);
        let mut w = host.try_clone().unwrap();
        let d2 = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&d2).unwrap());
        let mut got = Vec::new();
        let mut stalls = 0;
        let mut reported = 0usize;
        while got.len() < data.len() {
            let mut progress = false;
            for (h, b) in g.recv() {
                match h.op {
                    OP_RW => {
                        assert_eq!((h.src_port, h.dst_port), (local, 52));
                        got.extend_from_slice(&b);
                        progress = true;
                    }
                    OP_CREDIT_REQUEST => {}
                    op => panic!("unexpected op {op}"),
                }
            }
            assert!(
                got.len() - reported <= 64 << 10,
                "device overran the guest's credit: {} bytes unreported",
                got.len() - reported
            );
            if !progress {
                std::thread::sleep(Duration::from_millis(5));
                if got.len() - reported == 64 << 10 {
                    // Credit exhausted: the guest's reader consumed everything; tell the device.
                    stalls += 1;
                    reported = got.len();
                    g.send(
                        pkt(
                            52,
                            local,
                            OP_CREDIT_UPDATE,
                            0,
                            u32::try_from(reported).unwrap(),
                        ),
                        &[],
                    );
                }
            }
        }
        writer.join().unwrap();
        assert_eq!(got, data, "host -> guest bytes intact");
        assert!(
            stalls >= 2,
            "the 64 KiB guest buffer must have stalled the sender"
        );
        let guest_fwd = u32::try_from(got.len()).unwrap();

        // Guest -> host, 1 MiB honouring the device's credit; the host reads only after the
        // device's buffer filled, so credit updates must arrive to finish.
        let data = pattern(1 << 20, 9);
        let (mut dev_buf_alloc, mut dev_fwd) = (req.buf_alloc, req.fwd_cnt);
        let mut sent = 0usize;
        let mut updates = 0;
        let mut blocked = false;
        let mut reader: Option<std::thread::JoinHandle<Vec<u8>>> = None;
        while sent < data.len() {
            let credit = dev_buf_alloc as usize - (sent - dev_fwd as usize);
            if credit == 0 {
                blocked = true;
                if reader.is_none() {
                    let mut r = host.try_clone().unwrap();
                    let n = data.len();
                    reader = Some(std::thread::spawn(move || {
                        let mut v = vec![0u8; n];
                        r.read_exact(&mut v).unwrap();
                        v
                    }));
                }
                std::thread::sleep(Duration::from_millis(2));
            } else {
                let n = credit.min(4096).min(data.len() - sent);
                g.send(
                    pkt(52, local, OP_RW, u32::try_from(n).unwrap(), guest_fwd),
                    &data[sent..sent + n],
                );
                sent += n;
            }
            for (h, _) in g.recv() {
                assert_ne!(h.op, OP_RST, "device reset the connection");
                if h.op == OP_CREDIT_UPDATE {
                    updates += 1;
                }
                dev_buf_alloc = h.buf_alloc;
                dev_fwd = h.fwd_cnt;
            }
        }
        let reader = reader.expect("credit ran out before the host read");
        assert!(blocked);
        while !reader.is_finished() {
            g.pump();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(reader.join().unwrap(), data, "guest -> host bytes intact");
        assert!(updates > 0, "unsolicited credit updates");
        for (h, _) in g.recv() {
            dev_fwd = h.fwd_cnt;
        }
        // Everything forwarded; the last count the guest heard is within the threshold.
        assert!(data.len() - dev_fwd as usize <= CREDIT_UPDATE_THRESHOLD as usize);

        // The host closes: SHUTDOWN to the guest, which answers RST; the connection is gone.
        drop(host);
        let p = g.recv();
        assert!(
            p.iter()
                .any(|(h, _)| h.op == OP_SHUTDOWN && h.flags == SHUTDOWN_RCV | SHUTDOWN_SEND),
            "{p:?}"
        );
        assert_eq!(g.dev().connection_count(), 1);
        g.send(pkt(52, local, OP_RST, 0, 0), &[]);
        assert_eq!(g.dev().connection_count(), 0);
    }

    #[test]
    fn guest_initiated_connection_and_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(dir.path().join("v.sock_5000")).unwrap();
        let mut g = Guest::new(CID, &uds);
        g.send(pkt(1234, 5000, OP_REQUEST, 0, 0), &[]);
        let p = g.recv();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].0.op, p[0].0.src_port, p[0].0.dst_port),
            (OP_RESPONSE, 5000, 1234)
        );
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(b"hello guest").unwrap();
        let p = g.recv();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].0.op, &p[0].1[..]), (OP_RW, &b"hello guest"[..]));
        g.send(pkt(1234, 5000, OP_RW, 10, 11), b"hello host");
        let mut b = [0u8; 10];
        host.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello host");
        // Guest half-close (SEND): the host sees EOF but can still write.
        let mut sh = pkt(1234, 5000, OP_SHUTDOWN, 0, 11);
        sh.flags = SHUTDOWN_SEND;
        g.send(sh, &[]);
        assert_eq!(host.read(&mut b).unwrap(), 0, "EOF after SHUTDOWN(SEND)");
        host.write_all(b"late").unwrap();
        let p = g.recv();
        assert_eq!((p[0].0.op, &p[0].1[..]), (OP_RW, &b"late"[..]));
        // Full shutdown: RST from the device, connection gone.
        sh.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
        g.send(sh, &[]);
        let p = g.recv();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0.op, OP_RST);
        assert_eq!(g.dev().connection_count(), 0);

        // Nobody listens on 5001: RST.
        g.send(pkt(1235, 5001, OP_REQUEST, 0, 0), &[]);
        let p = g.recv();
        assert_eq!((p[0].0.op, p[0].0.dst_port), (OP_RST, 1235));
        assert_eq!(g.dev().connection_count(), 0);
    }

    #[test]
    fn malformed_packets_are_dropped_without_panic() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let _l = UnixListener::bind(dir.path().join("v.sock_7000")).unwrap();
        let mut g = Guest::new(CID, &uds);
        let bad0 = crate::metrics::METRICS
            .virtio_bad_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        let a = g.tx_area;
        // Header cut short.
        g.mem.write_slice(&[1u8; 20], GuestAddress(a)).unwrap();
        g.send_raw(&[(a, 20, false)]);
        // Length beyond the chain, above the limit, wrong CIDs, wrong type, unknown op.
        g.send(pkt(1, 7000, OP_RW, 100, 0), &[0u8; 10][..0]);
        g.send(pkt(1, 7000, OP_RW, MAX_PKT_PAYLOAD + 1, 0), &[]);
        let mut h = pkt(1, 7000, OP_REQUEST, 0, 0);
        h.src_cid = 99;
        g.send(h, &[]);
        let mut h = pkt(1, 7000, OP_REQUEST, 0, 0);
        h.dst_cid = 7;
        g.send(h, &[]);
        let mut h = pkt(1, 7000, OP_REQUEST, 0, 0);
        h.type_ = 2;
        g.send(h, &[]);
        g.send(pkt(1, 7000, 99, 0, 0), &[]);
        // A device-writable buffer in a TX chain (a malformed chain for this device).
        g.send_raw(&[(a, HDR_LEN_U32, true)]);
        assert!(g.recv().is_empty(), "dropped packets get no answer");
        let bad1 = crate::metrics::METRICS
            .virtio_bad_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(bad1 >= bad0 + 7, "{bad0} -> {bad1}");
        // Data for a connection that does not exist: RST; an RST for one: nothing.
        g.send(pkt(2, 7000, OP_RW, 3, 0), b"abc");
        g.send(pkt(2, 7000, OP_RST, 0, 0), &[]);
        let p = g.recv();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].0.op, p[0].0.dst_port), (OP_RST, 2));
        // An RX buffer too small for a header is returned empty; the next one is used. First
        // use up the posted buffers (32 RSTs), then post a small and a good one.
        for port in 100..100 + u32::try_from(RX_SLOTS).unwrap() {
            g.send(pkt(port, 7000, OP_RW, 1, 0), b"x");
        }
        let used = g.rxq.take_used(&g.mem);
        assert_eq!(used.len(), RX_SLOTS);
        let small = g.d.alloc(16, 8);
        let hs = g.rxq.add(&g.mem, &[(small, 16, true)]);
        let good = g.d.alloc(u64::from(RX_BUF), 8);
        let hg = g.rxq.add(&g.mem, &[(good, RX_BUF, true)]);
        // The device still works.
        g.send(pkt(3, 7000, OP_REQUEST, 0, 0), &[]);
        g.pump();
        let used = g.rxq.take_used(&g.mem);
        assert_eq!(used, vec![(u32::from(hs), 0), (u32::from(hg), HDR_LEN_U32)]);
        let mut b = [0u8; HDR_LEN];
        g.mem.read_slice(&mut b, GuestAddress(good)).unwrap();
        assert_eq!(PacketHeader::decode(&b).unwrap().op, OP_RESPONSE);
        assert_eq!(g.dev().connection_count(), 1);
        // A garbage CONNECT line closes the host connection.
        let mut host = UnixStream::connect(&uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(b"HELLO 52\n").unwrap();
        g.pump();
        let mut b = [0u8; 4];
        assert_eq!(host.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn corrupt_available_index_stops_the_queue_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Guest::new(CID, &dir.path().join("v.sock"));
        // More entries "available" than the ring holds: the device must return, not spin.
        let bogus = g.txq.avail_idx().wrapping_add(1000);
        g.mem
            .write_obj(bogus.to_le(), GuestAddress(g.txq.avail + 2))
            .unwrap();
        g.d.notify(&mut g.t, 1);
        assert!(g.recv().is_empty());
    }

    #[test]
    fn transport_reset_event_drops_connections() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(dir.path().join("v.sock_6000")).unwrap();
        let mut g = Guest::new(CID, &uds);
        let ev = g.d.alloc(8, 8);
        let head = g.evq.add(&g.mem, &[(ev, 4, true)]);
        g.d.notify(&mut g.t, 2);
        g.send(pkt(1, 6000, OP_REQUEST, 0, 0), &[]);
        assert_eq!(g.recv()[0].0.op, OP_RESPONSE);
        let (mut host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        g.d.take_interrupts(&mut g.t);
        g.t.with_device(|d, ep| {
            d.as_any_mut()
                .downcast_mut::<Vsock>()
                .unwrap()
                .transport_reset(ep)
        });
        assert_eq!(g.evq.take_used(&g.mem), vec![(u32::from(head), 4)]);
        let id: u32 = g.mem.read_obj(GuestAddress(ev)).unwrap();
        assert_eq!(id, EVENT_TRANSPORT_RESET);
        assert!(g.d.take_interrupts(&mut g.t) >= 1);
        assert_eq!(g.dev().connection_count(), 0);
        let mut b = [0u8; 1];
        assert_eq!(host.read(&mut b).unwrap(), 0, "host socket closed");
    }
}
