//! Device-level throughput: virtio-blk driven through real virtqueues in guest memory (the
//! test driver), on a raw file and a qcow2 image in the host page cache (so it measures the
//! device and format code, not the disk); virtio-net packets/s through a real tap in a private
//! network namespace (TX: guest frames written to the tap; RX: frames a host AF_PACKET socket
//! sends into the tap, received into guest buffers); virtio-vsock MB/s both ways through a
//! host Unix socket. `cargo bench -p kobako-vmm --bench devices` (root for the tap part).

use std::time::Instant;

use kobako_vmm::devices::virtio::block::{Block, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use kobako_vmm::devices::virtio::mmio::MmioTransport;
use kobako_vmm::devices::virtio::testing::{guest_memory, TestDriver};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DISK: u64 = 256 << 20;

fn bench(path: &std::path::Path, what: &str, req: u32, ty: u32, total: u64) -> f64 {
    let mem = guest_memory(512 << 20);
    let disk = kobako_vmm::devices::virtio::block::disk::open(path, false, None).unwrap();
    let dev = Block::new("bench", disk, false, None).unwrap();
    let mut t = MmioTransport::new(
        Box::new(dev),
        mem.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    let mut d = TestDriver::new(mem.clone());
    d.init(&mut t, u64::MAX, &[256]).unwrap();
    let mut q = d.queues[0].clone();
    let batch: u64 = if req >= 1 << 20 { 16 } else { 64 };
    let hdrs = d.alloc(16 * batch, 16);
    let st = d.alloc(batch, 1);
    let data = d.alloc(u64::from(req) * batch, 4096);
    let reqs = total / u64::from(req);
    let t0 = Instant::now();
    let mut done = 0;
    let mut sector = 0u64;
    while done < reqs {
        for i in 0..batch {
            let h = hdrs + i * 16;
            mem.write_obj(ty, GuestAddress(h)).unwrap();
            mem.write_obj(sector, GuestAddress(h + 8)).unwrap();
            sector = (sector + u64::from(req) / 512) % (DISK / 512 - u64::from(req) / 512);
            q.add(
                &mem,
                &[
                    (h, 16, false),
                    (data + i * u64::from(req), req, ty == VIRTIO_BLK_T_IN),
                    (st + i, 1, true),
                ],
            );
        }
        d.notify(&mut t, 0);
        done += q.take_used(&mem).len() as u64;
    }
    let s = t0.elapsed().as_secs_f64();
    let mbs = (reqs * u64::from(req)) as f64 / s / 1e6;
    println!(
        "{what:<34} {:>5} KiB requests: {mbs:>8.0} MB/s  {:>8.0} req/s",
        req / 1024,
        reqs as f64 / s
    );
    mbs
}

/// virtio-net TX and RX packets/s with `payload`-byte frames on a tap in a private namespace.
fn net_bench(payload: usize, frames: u64) {
    use kobako_vmm::devices::virtio::net::{Net, VNET_HDR_LEN};
    use std::os::fd::AsRawFd;
    let cfg = kobako_vmm::config::NetworkInterface {
        iface_id: "eth0".into(),
        host_dev_name: "kbbench0".into(),
        guest_mac: Some("06:00:AC:10:00:02".into()),
        mtu: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    let dev = Net::from_config(&cfg).unwrap();
    let mem = guest_memory(64 << 20);
    let mut t = MmioTransport::new(
        Box::new(dev),
        mem.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    let mut d = TestDriver::new(mem.clone());
    // No offloads: plain frames.
    d.init(
        &mut t,
        kobako_vmm::devices::virtio::COMMON_FEATURES,
        &[256, 256],
    )
    .unwrap();
    t.process_events();
    let (mut rxq, mut txq) = (d.queues[0].clone(), d.queues[1].clone());
    let host = host_packet_socket("kbbench0");
    let len = VNET_HDR_LEN + 14 + payload;
    let batch = 128u64;
    let bufs = d.alloc(2048 * batch, 64);
    for i in 0..batch {
        let mut f = vec![0u8; len];
        f[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&0x88b5u16.to_be_bytes());
        mem.write_slice(&f, GuestAddress(bufs + i * 2048)).unwrap();
    }
    let t0 = Instant::now();
    let mut done = 0;
    while done < frames {
        for i in 0..batch {
            txq.add(
                &mem,
                &[(bufs + i * 2048, u32::try_from(len).unwrap(), false)],
            );
        }
        d.notify(&mut t, 1);
        done += txq.take_used(&mem).len() as u64;
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "net TX {:>5}-byte frames:            {:>8.0} packets/s  {:>6.0} MB/s",
        payload + 14,
        done as f64 / s,
        (done * (payload as u64 + 14)) as f64 / s / 1e6
    );
    // RX: the host sends a batch into the tap, the device moves it into posted buffers.
    let frame = {
        let mut f = vec![0u8; 14 + payload];
        f[..6].copy_from_slice(&[6, 0, 0xac, 0x10, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        f
    };
    let t0 = Instant::now();
    let mut got = 0u64;
    let mut outstanding = 0u64;
    while got < frames {
        for i in 0..batch - outstanding {
            rxq.add(&mem, &[(bufs + i * 2048, 2048, true)]);
        }
        outstanding = batch;
        d.notify(&mut t, 0);
        for _ in 0..batch {
            // SAFETY: send from a live buffer on our packet socket.
            unsafe {
                libc::send(host.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0);
            }
        }
        let mut idle = 0;
        while idle < 3 {
            t.process_events();
            let n = rxq.take_used(&mem).len() as u64;
            if n == 0 {
                idle += 1;
            } else {
                got += n;
                outstanding -= n;
            }
        }
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "net RX {:>5}-byte frames:            {:>8.0} packets/s  {:>6.0} MB/s  (host AF_PACKET send included)",
        payload + 14,
        got as f64 / s,
        (got * (payload as u64 + 14)) as f64 / s / 1e6
    );
}

/// Brings `name` up and returns an AF_PACKET socket bound to it.
fn host_packet_socket(name: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket/ioctl/bind calls on fds we own, with live, correctly sized ifreq and
    // sockaddr_ll buffers.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let mut ifr = [0u8; 40];
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        libc::ioctl(s, libc::SIOCGIFFLAGS, ifr.as_mut_ptr());
        let fl = i16::from_ne_bytes([ifr[16], ifr[17]]) | i16::try_from(libc::IFF_UP).unwrap();
        ifr[16..18].copy_from_slice(&fl.to_ne_bytes());
        libc::ioctl(s, libc::SIOCSIFFLAGS, ifr.as_mut_ptr());
        libc::close(s);
        let idx = libc::if_nametoindex(std::ffi::CString::new(name).unwrap().as_ptr());
        let p = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        sll.sll_protocol = 0;
        sll.sll_ifindex = i32::try_from(idx).unwrap();
        libc::bind(
            p,
            &sll as *const _ as *const libc::sockaddr,
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
        );
        std::os::fd::OwnedFd::from_raw_fd(p)
    }
}

/// virtio-vsock MB/s: host -> guest and guest -> host through a Unix socket, 64 KiB writes on
/// the host side, 4 KiB RX buffers (as Linux posts them) and 64 KiB TX packets on the guest's.
fn vsock_bench(total: usize) {
    use kobako_vmm::devices::virtio::testing::VsockGuest;
    use kobako_vmm::devices::virtio::vsock::*;
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut g = VsockGuest::new(3, &uds);
    let mut host = std::os::unix::net::UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let req = g.recv()[0].0;
    let pkt = |op: u16, len: u32, fwd: u32| PacketHeader {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 52,
        dst_port: req.src_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 1 << 20,
        fwd_cnt: fwd,
    };
    g.send(pkt(OP_RESPONSE, 0, 0), &[]);
    let mut ok = [0u8; 64];
    let n = host.read(&mut ok).unwrap();
    assert!(ok[..n].starts_with(b"OK "));
    // host -> guest
    let mut w = host.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![7u8; 64 << 10];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
    });
    let t0 = Instant::now();
    let mut got = 0usize;
    while got < total {
        for (h, b) in g.recv() {
            if h.op == OP_RW {
                got += b.len();
            }
        }
        // The guest consumes at once and says so.
        g.send(pkt(OP_CREDIT_UPDATE, 0, u32::try_from(got).unwrap()), &[]);
    }
    writer.join().unwrap();
    let s = t0.elapsed().as_secs_f64();
    println!(
        "vsock host -> guest (4 KiB RX buffers):  {:>6.0} MB/s",
        total as f64 / s / 1e6
    );
    // guest -> host
    let mut r = host.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut b = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < total {
            n += r.read(&mut b).unwrap();
        }
    });
    let data = vec![9u8; 64 << 10];
    let t0 = Instant::now();
    let (mut sent, mut fwd, mut alloc) = (0usize, 0u32, BUF_ALLOC);
    while sent < total {
        let credit = alloc as usize - (sent - fwd as usize);
        if credit == 0 {
            g.pump();
        } else {
            let n = credit.min(data.len()).min(total - sent);
            g.send(
                pkt(
                    OP_RW,
                    u32::try_from(n).unwrap(),
                    u32::try_from(got).unwrap(),
                ),
                &data[..n],
            );
            sent += n;
        }
        for (h, _) in g.recv() {
            fwd = h.fwd_cnt;
            alloc = h.buf_alloc;
        }
    }
    while !reader.is_finished() {
        g.pump();
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "vsock guest -> host (64 KiB packets):    {:>6.0} MB/s",
        total as f64 / s / 1e6
    );
}

fn main() {
    vsock_bench(256 << 20);
    // The tap part in a private network namespace (needs root).
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            println!("net: skipped (cannot unshare a network namespace; needs root)");
            return;
        }
        net_bench(50, 200_000);
        net_bench(1486, 200_000);
    })
    .join()
    .unwrap();
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    for name in ["raw", "qcow2"] {
        for req in [4096u32, 1 << 20] {
            // A fresh image each time, so "first" writes allocate (qcow2) / fill holes (raw).
            let path = dir.path().join(format!("disk.{name}"));
            let _ = std::fs::remove_file(&path);
            if name == "raw" {
                std::fs::File::create(&path).unwrap().set_len(DISK).unwrap();
            } else {
                let st = std::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&path)
                    .arg(DISK.to_string())
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            bench(
                &path,
                &format!("{name} write (first)"),
                req,
                VIRTIO_BLK_T_OUT,
                DISK,
            );
            bench(
                &path,
                &format!("{name} write (overwrite)"),
                req,
                VIRTIO_BLK_T_OUT,
                DISK / 2,
            );
            bench(&path, &format!("{name} read"), req, VIRTIO_BLK_T_IN, DISK);
        }
    }
}
