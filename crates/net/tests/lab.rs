//! Real-namespace tests of `LabNet` (run as root; they fail, not skip, otherwise).
//! Each test uses its own lab and endpoint names (`kbt*`, `kbe*`), so they can run in parallel,
//! and cleans up through drop guards even when an assertion fails.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use kobako_net::{Impairment, PortVlan};

const T: Duration = Duration::from_millis(400);

fn p2p(lab: &str, a: &str, b: &str) -> (TestLab, Endpoint, Endpoint) {
    let lab = TestLab::new(lab);
    let ea = Endpoint::new(a);
    let eb = Endpoint::new(b);
    lab.net()
        .ensure_bridge(&ifn("l1"), None, None, false)
        .unwrap();
    attach(lab.net(), "l1", "pa", &ea, "10.0.0.1/24", PortVlan::None);
    attach(lab.net(), "l1", "pb", &eb, "10.0.0.2/24", PortVlan::None);
    (lab, ea, eb)
}

#[test]
fn link_ping_delay_loss_clear() {
    let (lab, ea, _eb) = p2p("kbt-imp", "kbe-imp-a", "kbe-imp-b");
    let dst = Ipv4Addr::new(10, 0, 0, 2);
    let r = ea.ping(dst, 3, T);
    assert_eq!(r.received, 3, "plain link must ping: {r:?}");

    // 50 ms each way -> RTT >= 100 ms.
    let d = Impairment::builder()
        .delay(Duration::from_millis(50))
        .build()
        .unwrap();
    lab.net().set_impairment(&ifn("pa"), &d).unwrap();
    lab.net().set_impairment(&ifn("pb"), &d).unwrap();
    let r = ea.ping(dst, 3, Duration::from_millis(1000));
    assert_eq!(r.received, 3, "{r:?}");
    assert!(r.min_rtt().unwrap() >= Duration::from_millis(100), "{r:?}");

    // Re-ensuring an impaired port (reconcile) keeps the impairment and makes no loop.
    attach(lab.net(), "l1", "pb", &_eb, "", PortVlan::None);
    let r = ea.ping(dst, 3, Duration::from_millis(1000));
    assert_eq!(r.received, 3, "{r:?}");
    assert!(r.min_rtt().unwrap() >= Duration::from_millis(100), "{r:?}");

    // Change live: 100% loss on one end -> nothing arrives.
    let l = Impairment::builder().loss(100.0).build().unwrap();
    lab.net().set_impairment(&ifn("pb"), &l).unwrap();
    let r = ea.ping(dst, 5, T);
    assert_eq!(r.received, 0, "100% loss must drop everything: {r:?}");

    // Clear -> back to normal.
    lab.net().clear_impairment(&ifn("pa")).unwrap();
    lab.net().clear_impairment(&ifn("pb")).unwrap();
    lab.net().clear_impairment(&ifn("pb")).unwrap(); // twice is fine
    let r = ea.ping(dst, 3, T);
    assert_eq!(r.received, 3, "{r:?}");
    assert!(r.max_rtt().unwrap() < Duration::from_millis(50), "{r:?}");
}

#[test]
fn link_down_and_up() {
    let (lab, ea, _eb) = p2p("kbt-cut", "kbe-cut-a", "kbe-cut-b");
    let dst = Ipv4Addr::new(10, 0, 0, 2);
    assert_eq!(ea.ping(dst, 2, T).received, 2);
    lab.net().set_link_up(&ifn("pb"), false).unwrap();
    let r = ea.ping(dst, 4, T);
    assert_eq!(r.received, 0, "cut link must not pass traffic: {r:?}");
    lab.net().set_link_up(&ifn("pb"), true).unwrap();
    // Carrier/bridge port state takes a moment to come back.
    let mut ok = 0;
    for _ in 0..10 {
        ok = ea.ping(dst, 1, T).received;
        if ok == 1 {
            break;
        }
    }
    assert_eq!(ok, 1, "healed link must pass traffic again");
    assert_eq!(ea.ping(dst, 3, T).received, 3);
}

/// Sends an ARP request for `target` tagged with `vid` (or untagged) out of `eth0` in `ep`
/// and returns the VLAN ids of the ARP replies from `target` seen within 500 ms.
fn arp_probe(ep: &Endpoint, vid: Option<u16>, target: Ipv4Addr) -> Vec<Option<u16>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let link = ep.rtnl().require("eth0").unwrap();
    let mac = link.mac.unwrap().0;
    ep.ns
        .run(move || {
            // SAFETY: test-only raw socket setup with checked fds and live buffers.
            unsafe {
                let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (0x0003u16).to_be() as i32);
                assert!(raw >= 0);
                let fd = OwnedFd::from_raw_fd(raw);
                let one: i32 = 1;
                libc::setsockopt(fd.as_raw_fd(), 263, 8, (&one as *const i32).cast(), 4); // PACKET_AUXDATA
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = (0x0003u16).to_be();
                sll.sll_ifindex = link.index as i32;
                assert_eq!(
                    libc::bind(
                        fd.as_raw_fd(),
                        (&sll as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32
                    ),
                    0
                );
                let mut f = vec![0xff; 6];
                f.extend_from_slice(&mac);
                if let Some(v) = vid {
                    f.extend_from_slice(&[0x81, 0x00]);
                    f.extend_from_slice(&v.to_be_bytes());
                }
                f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
                f.extend_from_slice(&mac);
                f.extend_from_slice(&[10, 1, 0, 100]);
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&target.octets());
                assert!(libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) > 0);
                let start = std::time::Instant::now();
                let mut out = Vec::new();
                while start.elapsed() < Duration::from_millis(500) {
                    let mut pfd = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    if libc::poll(&mut pfd, 1, 50) <= 0 {
                        continue;
                    }
                    let mut buf = [0u8; 2048];
                    let mut iov = libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: buf.len(),
                    };
                    let mut cbuf = [0u64; 16];
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = &mut iov;
                    msg.msg_iovlen = 1;
                    msg.msg_control = cbuf.as_mut_ptr().cast();
                    msg.msg_controllen = std::mem::size_of_val(&cbuf);
                    let n = libc::recvmsg(fd.as_raw_fd(), &mut msg, 0);
                    if n <= 0 {
                        continue;
                    }
                    let mut b = buf[..n as usize].to_vec();
                    let mut got_vid = None;
                    let mut c = libc::CMSG_FIRSTHDR(&msg);
                    while !c.is_null() {
                        if (*c).cmsg_level == 263 && (*c).cmsg_type == 8 {
                            let aux: libc::tpacket_auxdata =
                                std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                            if aux.tp_status & (1 << 4) != 0 {
                                got_vid = Some(aux.tp_vlan_tci & 0xfff);
                            }
                        }
                        c = libc::CMSG_NXTHDR(&msg, c);
                    }
                    if b.len() > 18 && b[12] == 0x81 && b[13] == 0 {
                        got_vid = Some(u16::from_be_bytes([b[14], b[15]]) & 0xfff);
                        b.drain(12..16);
                    }
                    // ARP reply (op 2) whose sender IP is the target
                    if b.len() >= 42
                        && b[12] == 0x08
                        && b[13] == 0x06
                        && b[21] == 2
                        && b[28..32] == target.octets()
                    {
                        out.push(got_vid);
                    }
                }
                out
            }
        })
        .unwrap()
}

#[test]
fn vlans_isolate_and_trunk_carries_tagged() {
    let lab = TestLab::new("kbt-vlan");
    let net = lab.net();
    net.ensure_bridge(&ifn("lan"), None, None, true).unwrap();
    let v = |n| kobako_net::VlanId::new(n).unwrap();
    let a = Endpoint::new("kbe-vlan-a");
    let b = Endpoint::new("kbe-vlan-b");
    let c = Endpoint::new("kbe-vlan-c");
    let d = Endpoint::new("kbe-vlan-d");
    let t = Endpoint::new("kbe-vlan-t");
    attach(net, "lan", "pa", &a, "10.1.0.1/24", PortVlan::Access(v(10)));
    attach(net, "lan", "pb", &b, "10.1.0.2/24", PortVlan::Access(v(10)));
    attach(net, "lan", "pc", &c, "10.1.0.3/24", PortVlan::Access(v(20)));
    attach(net, "lan", "pd", &d, "10.1.0.4/24", PortVlan::Access(v(20)));
    attach(
        net,
        "lan",
        "pt",
        &t,
        "",
        PortVlan::Trunk {
            tagged: vec![v(10), v(20)],
            native: None,
        },
    );
    // VLAN 1 is the untagged default: a port without a role and an access port in VLAN 1 meet.
    let u = Endpoint::new("kbe-vlan-u");
    let w = Endpoint::new("kbe-vlan-w");
    attach(net, "lan", "pu", &u, "10.1.0.5/24", PortVlan::None);
    attach(net, "lan", "pw", &w, "10.1.0.6/24", PortVlan::Access(v(1)));
    let ip = |x| Ipv4Addr::new(10, 1, 0, x);
    assert_eq!(u.ping(ip(6), 2, T).received, 2, "untagged to VLAN 1");
    assert_eq!(
        u.ping(ip(1), 2, T).received,
        0,
        "untagged must not reach VLAN 10"
    );
    assert_eq!(a.ping(ip(2), 3, T).received, 3, "VLAN 10 to VLAN 10");
    assert_eq!(c.ping(ip(4), 3, T).received, 3, "VLAN 20 to VLAN 20");
    assert_eq!(
        a.ping(ip(3), 3, T).received,
        0,
        "VLAN 10 must not reach VLAN 20"
    );
    assert_eq!(
        d.ping(ip(1), 3, T).received,
        0,
        "VLAN 20 must not reach VLAN 10"
    );
    // The trunk carries both VLANs, tagged.
    assert_eq!(arp_probe(&t, Some(10), ip(2)), vec![Some(10)]);
    assert_eq!(arp_probe(&t, Some(20), ip(4)), vec![Some(20)]);
    // ... and keeps them apart.
    assert!(arp_probe(&t, Some(10), ip(4)).is_empty());
    assert!(arp_probe(&t, Some(20), ip(1)).is_empty());
    assert!(
        arp_probe(&t, None, ip(2)).is_empty(),
        "no native VLAN configured"
    );

    // Impairing a trunk keeps its VLANs apart; clearing keeps the trunk working.
    let d = Impairment::builder()
        .delay(Duration::from_millis(30))
        .build()
        .unwrap();
    net.set_impairment(&ifn("pt"), &d).unwrap();
    assert_eq!(arp_probe(&t, Some(20), ip(3)), vec![Some(20)]);
    assert!(arp_probe(&t, Some(10), ip(3)).is_empty());
    // ... and impairing an access port keeps it in its VLAN.
    net.set_impairment(&ifn("pa"), &d).unwrap();
    let r = a.ping(ip(2), 3, T);
    assert_eq!(r.received, 3, "{r:?}");
    assert!(r.min_rtt().unwrap() >= Duration::from_millis(30), "{r:?}");
    assert_eq!(a.ping(ip(3), 2, T).received, 0);
    net.clear_impairment(&ifn("pt")).unwrap();
    net.clear_impairment(&ifn("pa")).unwrap();
    assert_eq!(arp_probe(&t, Some(10), ip(1)), vec![Some(10)]);
    assert_eq!(a.ping(ip(2), 2, T).received, 2);
}

#[test]
fn overlapping_labs_are_isolated() {
    let l1 = TestLab::new("kbt-ov1");
    let l2 = TestLab::new("kbt-ov2");
    let a1 = Endpoint::new("kbe-ov1-a");
    let b1 = Endpoint::new("kbe-ov1-b");
    let a2 = Endpoint::new("kbe-ov2-a");
    let c2 = Endpoint::new("kbe-ov2-c");
    for (l, x, y, ya) in [
        (&l1, &a1, &b1, "10.9.0.2/24"),
        (&l2, &a2, &c2, "10.9.0.3/24"),
    ] {
        l.net()
            .ensure_bridge(&ifn("br0"), None, Some(cidr("10.9.0.254/24")), false)
            .unwrap();
        attach(l.net(), "br0", "px", x, "10.9.0.1/24", PortVlan::None);
        attach(l.net(), "br0", "py", y, ya, PortVlan::None);
    }
    let ip = |x| Ipv4Addr::new(10, 9, 0, x);
    // Same subnet, same addresses, both labs work ...
    assert_eq!(a1.ping(ip(2), 2, T).received, 2);
    assert_eq!(a2.ping(ip(3), 2, T).received, 2);
    // ... and neither reaches the other.
    let r = a1.ping(ip(3), 5, T);
    assert_eq!(r.received, 0, "lab 1 reached lab 2: {r:?}");
    let r = a2.ping(ip(2), 5, T);
    assert_eq!(r.received, 0, "lab 2 reached lab 1: {r:?}");
}

#[test]
fn jitter_duplication_and_partial_loss() {
    let (lab, ea, _eb) = p2p("kbt-jit", "kbe-jit-a", "kbe-jit-b");
    let net = lab.net();
    let dst = Ipv4Addr::new(10, 0, 0, 2);

    // Jitter: 30 ms ± 20 ms towards B.
    let j = Impairment::builder()
        .delay(Duration::from_millis(30))
        .jitter(Duration::from_millis(20))
        .build()
        .unwrap();
    net.set_impairment(&ifn("pb"), &j).unwrap();
    let r = ea.ping(dst, 12, Duration::from_millis(500));
    assert_eq!(r.received, 12, "{r:?}");
    let (min, max) = (r.min_rtt().unwrap(), r.max_rtt().unwrap());
    assert!(min >= Duration::from_millis(9), "{r:?}");
    assert!(max <= Duration::from_millis(250), "{r:?}");
    assert!(
        max - min >= Duration::from_millis(8),
        "no visible jitter: {r:?}"
    );

    // 50 % loss: some but not all get through (P(all or none of 24) ~ 1e-7).
    let l = Impairment::builder().loss(50.0).build().unwrap();
    net.set_impairment(&ifn("pb"), &l).unwrap();
    let r = ea.ping(dst, 24, Duration::from_millis(150));
    assert!(r.received > 0 && r.received < 24, "{r:?}");

    // 100 % duplication: B sees every echo request twice (captured leaving the port).
    let d = Impairment::builder().duplicate(100.0).build().unwrap();
    net.set_impairment(&ifn("pb"), &d).unwrap();
    let path = std::env::temp_dir().join(format!("kbt-dup-{}.pcapng", std::process::id()));
    let cap = net
        .capture(
            &ifn("pb"),
            std::fs::File::create(&path).unwrap(),
            kobako_net::capture::CaptureOptions::default(),
        )
        .unwrap();
    assert_eq!(ea.ping(dst, 4, T).received, 4);
    std::thread::sleep(Duration::from_millis(100));
    cap.stop().unwrap();
    let out = std::process::Command::new("tshark")
        .args([
            "-r",
            path.to_str().unwrap(),
            "-Y",
            "icmp.type == 8",
            "-T",
            "fields",
            "-e",
            "icmp.seq",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let n = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(
        n,
        8,
        "expected 4 requests twice: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    net.clear_impairment(&ifn("pb")).unwrap();
    assert_eq!(ea.ping(dst, 3, T).received, 3);
}

/// Time to pull `bytes` over TCP from a server in `from` (10.0.0.2) to a client in `to`.
fn transfer_time(from: &Endpoint, to: &Endpoint, port: u16, bytes: usize) -> Duration {
    use std::io::{Read, Write};
    let srv = from
        .ns
        .spawn("kb-test-tx", move || {
            let l = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
            let (mut s, _) = l.accept().unwrap();
            let chunk = vec![0x5au8; 16 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                s.write_all(&chunk[..n]).unwrap();
                left -= n;
            }
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let took = to
        .ns
        .run(move || {
            let start = std::time::Instant::now();
            let mut s = std::net::TcpStream::connect_timeout(
                &(Ipv4Addr::new(10, 0, 0, 2), port).into(),
                Duration::from_secs(3),
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < bytes {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed after {got} bytes");
                got += n;
            }
            start.elapsed()
        })
        .unwrap();
    srv.join().unwrap();
    took
}

#[test]
fn rate_limits_throughput() {
    let (lab, ea, eb) = p2p("kbt-rate", "kbe-rate-a", "kbe-rate-b");
    let net = lab.net();
    let bytes = 256 * 1024; // 2 Mbit
    let free = transfer_time(&eb, &ea, 9001, bytes);
    assert!(
        free < Duration::from_millis(700),
        "unshaped transfer took {free:?}"
    );

    // netem-style rate (kernel netem, or the relay) on the port towards A: 4 Mbit/s -> ~0.5 s.
    let r = Impairment::builder().rate_bps(4_000_000).build().unwrap();
    net.set_impairment(&ifn("pa"), &r).unwrap();
    let t = transfer_time(&eb, &ea, 9002, bytes);
    assert!(
        t >= Duration::from_millis(400),
        "rate 4 Mbit/s: 2 Mbit took {t:?}"
    );
    assert!(
        t < Duration::from_secs(5),
        "rate 4 Mbit/s: 2 Mbit took {t:?}"
    );
    net.clear_impairment(&ifn("pa")).unwrap();

    // Token bucket (tbf qdisc) at 4 Mbit/s with a 16 KB bucket.
    let s = kobako_net::Shaping::new(4_000_000, 16 * 1024, 64 * 1024).unwrap();
    net.set_shaping(&ifn("pa"), Some(s)).unwrap();
    let t = transfer_time(&eb, &ea, 9003, bytes);
    assert!(
        t >= Duration::from_millis(400),
        "tbf 4 Mbit/s: 2 Mbit took {t:?}"
    );
    assert!(
        t < Duration::from_secs(5),
        "tbf 4 Mbit/s: 2 Mbit took {t:?}"
    );
    net.set_shaping(&ifn("pa"), None).unwrap();
    let t = transfer_time(&eb, &ea, 9004, bytes);
    assert!(t < Duration::from_millis(700), "after clearing: {t:?}");
}

/// Counts frames in a pcapng file matching a tshark display filter.
fn tshark_count(path: &std::path::Path, filter: &str) -> usize {
    let out = std::process::Command::new("tshark")
        .args(["-r", path.to_str().unwrap(), "-Y", filter])
        .output()
        .expect("tshark must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn plain_links_carry_guest_vlan_tags_even_when_impaired() {
    let (lab, ea, eb) = p2p("kbt-tag", "kbe-tag-a", "kbe-tag-b");
    for impaired in [false, true] {
        if impaired {
            let d = Impairment::builder()
                .delay(Duration::from_millis(2))
                .build()
                .unwrap();
            lab.net().set_impairment(&ifn("pb"), &d).unwrap();
        }
        let path =
            std::env::temp_dir().join(format!("kbt-tag-{impaired}-{}.pcapng", std::process::id()));
        let cap = kobako_net::capture::start(
            &eb.ns,
            &ifn("eth0"),
            std::fs::File::create(&path).unwrap(),
            kobako_net::capture::CaptureOptions::default(),
        )
        .unwrap();
        // The guest tags its own frames (router-on-a-stick); a plain network passes them.
        let _ = arp_probe(&ea, Some(42), Ipv4Addr::new(10, 0, 0, 2));
        std::thread::sleep(Duration::from_millis(100));
        cap.stop().unwrap();
        let n = tshark_count(&path, "vlan.id == 42 && arp.opcode == 1");
        let _ = std::fs::remove_file(&path);
        assert_eq!(n, 1, "tagged frame lost (impaired: {impaired})");
    }
}
