//! Tests that touch the host namespace (uplink, published ports, leak checks), capture,
//! taps, bad input and crash repair. Host-side objects are all `kb`-prefixed and removed by
//! drop guards. Run as root.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;
use kobako_net::capture::CaptureOptions;
use kobako_net::tap::TapFlags;
use kobako_net::{
    Impairment, LabName, LabNet, LinkChange, NetError, Netns, PortSpec, PortVlan, Proto,
    PublishedPort, Rtnl, Uplink, VlanId,
};

const T: Duration = Duration::from_millis(400);

/// A `kb`-named veth pair in the host namespace carrying a local host address.
struct HostAddr {
    name: &'static str,
}

impl HostAddr {
    fn new(name: &'static str, peer: &'static str, addr: &str) -> HostAddr {
        let host = Netns::host().unwrap();
        let rt = Rtnl::open(&host).unwrap();
        rt.delete_link(name).unwrap();
        let l = rt
            .ensure_veth(&ifn(name), None, &ifn(peer), None, None, None)
            .unwrap();
        rt.add_addr(&l, cidr(addr)).unwrap();
        rt.set_link(
            &l,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
        HostAddr { name }
    }
}

impl Drop for HostAddr {
    fn drop(&mut self) {
        let host = Netns::host().unwrap();
        let _ = Rtnl::open(&host).unwrap().delete_link(self.name);
    }
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn published_ports_answer_but_the_lab_never_reaches_the_host() {
    let _h = HostAddr::new("kbhost0", "kbhost1", "192.168.251.1/32");
    let lab = TestLab::new("kbt-up");
    let net = lab.net();
    net.ensure_bridge(&ifn("br0"), None, Some(cidr("10.20.0.1/24")), false)
        .unwrap();
    let e = Endpoint::new("kbe-up");
    attach(net, "br0", "pe", &e, "", PortVlan::None);
    e.address("10.20.0.2/24", Some(Ipv4Addr::new(10, 20, 0, 1)));
    let host_ip = Ipv4Addr::new(192, 168, 251, 1);

    let r = e.ping(host_ip, 3, T);
    assert_eq!(
        r.received, 0,
        "a lab without uplink reached the host: {r:?}"
    );

    let mut up = Uplink::derived(&lab.name);
    up.published.push(PublishedPort {
        proto: Proto::Tcp,
        host_port: 18080,
        target: Ipv4Addr::new(10, 20, 0, 2),
        target_port: 8080,
    });
    up.published.push(PublishedPort {
        proto: Proto::Udp,
        host_port: 15353,
        target: Ipv4Addr::new(10, 20, 0, 2),
        target_port: 5353,
    });
    net.set_uplink(Some(&up)).unwrap();
    net.set_uplink(Some(&up)).unwrap(); // idempotent
                                        // Even with an uplink the lab cannot open connections to the host itself (its API,
                                        // sshd, ...): only answers to the host's own connections come back in.
    let r = e.ping(host_ip, 3, T);
    assert_eq!(
        r.received, 0,
        "a lab with an uplink reached the host: {r:?}"
    );

    // A tiny TCP server "in the VM".
    let server =
        e.ns.spawn("kb-test-srv", || {
            let l = TcpListener::bind("0.0.0.0:8080").unwrap();
            let (mut s, peer) = l.accept().unwrap();
            s.write_all(b"hello from the lab\n").unwrap();
            peer
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut got = String::new();
    let mut s = TcpStream::connect_timeout(&(host_ip, 18080).into(), Duration::from_secs(3))
        .expect("published port must answer on the host");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello from the lab\n");
    server.join().unwrap();

    // UDP: an echo "in the VM", reached through the published host port.
    let echo =
        e.ns.spawn("kb-test-udp", || {
            let u = std::net::UdpSocket::bind("0.0.0.0:5353").unwrap();
            u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 64];
            let (n, peer) = u.recv_from(&mut b).unwrap();
            u.send_to(&b[..n], peer).unwrap();
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let c = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.send_to(b"kobako?", (host_ip, 15353)).unwrap();
    let mut b = [0u8; 64];
    let (n, _) = c.recv_from(&mut b).expect("published UDP port must answer");
    assert_eq!(&b[..n], b"kobako?");
    echo.join().unwrap();

    // Removing the uplink cuts the lab off again and removes the host table.
    net.set_uplink(None).unwrap();
    assert_eq!(e.ping(host_ip, 2, T).received, 0);
    assert!(!sh("nft list tables").contains("kobako-kbt-up"));
}

#[test]
fn capture_of_ping_is_valid_pcapng() {
    let lab = TestLab::new("kbt-cap");
    let net = lab.net();
    net.ensure_bridge(&ifn("br0"), None, None, false).unwrap();
    let a = Endpoint::new("kbe-cap-a");
    let b = Endpoint::new("kbe-cap-b");
    attach(net, "br0", "pa", &a, "10.30.0.1/24", PortVlan::None);
    attach(net, "br0", "pb", &b, "10.30.0.2/24", PortVlan::None);
    let path = std::env::temp_dir().join(format!("kbt-cap-{}.pcapng", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let cap = net
        .capture(&ifn("pa"), file, CaptureOptions::default())
        .unwrap();
    let r = a.ping(Ipv4Addr::new(10, 30, 0, 2), 5, T);
    assert_eq!(r.received, 5);
    std::thread::sleep(Duration::from_millis(100));
    let n = cap.stop().unwrap();
    assert!(n >= 10, "captured only {n} frames");
    let out = Command::new("tshark")
        .args([
            "-r",
            path.to_str().unwrap(),
            "-Y",
            "icmp",
            "-T",
            "fields",
            "-e",
            "icmp.type",
        ])
        .output()
        .expect("tshark must be installed");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let types: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(types.iter().filter(|t| *t == "8").count(), 5, "{types:?}");
    assert_eq!(types.iter().filter(|t| *t == "0").count(), 5, "{types:?}");
}

#[test]
fn tap_is_persistent_and_carries_frames() {
    let lab = TestLab::new("kbt-tap");
    let net = lab.net();
    net.ensure_bridge(&ifn("br0"), Some(1400), None, false)
        .unwrap();
    let e = Endpoint::new("kbe-tap");
    attach(net, "br0", "pe", &e, "10.40.0.2/24", PortVlan::None);
    let mut spec = PortSpec::tap(ifn("tap0"), ifn("br0"));
    spec.mtu = Some(1400);
    net.ensure_port(&spec).unwrap();
    net.ensure_port(&spec).unwrap(); // idempotent
    let l = net.rtnl().require("tap0").unwrap();
    assert_eq!(l.kind.as_deref(), Some("tun"));
    assert_eq!(l.mtu, 1400);
    // The tap is invisible on the host.
    assert!(
        Rtnl::open(&Netns::host().unwrap())
            .unwrap()
            .link("tap0")
            .unwrap()
            .is_none()
            || !sh("ip -o link show tap0 2>/dev/null").contains("tap0:")
    );

    // Act as the VM: ARP for the endpoint through the tap fd, expect the reply back.
    let fd = net.open_tap(&ifn("tap0"), TapFlags::default()).unwrap();
    let mut f = std::fs::File::from(fd);
    let vm_mac = [0x02, 0x6b, 0x62, 0, 0, 1];
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&vm_mac);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&vm_mac);
    frame.extend_from_slice(&[10, 40, 0, 9]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[10, 40, 0, 2]);
    let mut got_reply = false;
    for _ in 0..5 {
        f.write_all(&frame).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        use std::os::fd::AsRawFd;
        while std::time::Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                continue;
            }
            let mut buf = [0u8; 2048];
            let n = f.read(&mut buf).unwrap();
            if n >= 42 && buf[12] == 0x08 && buf[13] == 0x06 && buf[21] == 2 && buf[0..6] == vm_mac
            {
                got_reply = true;
                break;
            }
        }
        if got_reply {
            break;
        }
    }
    assert!(got_reply, "no ARP reply came back through the tap");
    // The lab namespace adds no IPv6 chatter of its own to guest networks.
    assert_eq!(
        net.netns()
            .sysctl("ipv6/conf/default/disable_ipv6")
            .unwrap(),
        "1"
    );
    assert!(!sh("ip -n kb-kbt-tap -6 addr show dev tap0").contains("inet6"));
    drop(f);
    // Persistent: still there after the fd is closed.
    assert!(net.rtnl().link("tap0").unwrap().is_some());
    // An unprivileged runtime may be allowed to attach (before it attaches: one fd at a time).
    net.set_tap_owner(&ifn("tap0"), Some(65534), Some(65534))
        .unwrap();
    let d = sh("ip -n kb-kbt-tap -d link show tap0");
    assert!(d.contains("user 65534") || d.contains("user nobody"), "{d}");
    assert!(matches!(
        net.set_tap_owner(&ifn("br0"), Some(1), None).unwrap_err(),
        NetError::Conflict { .. }
    ));
}

#[test]
fn delete_leaves_nothing_and_is_idempotent() {
    let name = LabName::new("kbt-del").unwrap();
    let lab = TestLab::new("kbt-del");
    let net = lab.net();
    net.ensure_bridge(&ifn("lan"), None, Some(cidr("10.50.0.1/24")), true)
        .unwrap();
    let a = Endpoint::new("kbe-del-a");
    let b = Endpoint::new("kbe-del-b");
    attach(
        net,
        "lan",
        "pa",
        &a,
        "10.50.0.2/24",
        PortVlan::Access(VlanId::new(10).unwrap()),
    );
    attach(
        net,
        "lan",
        "pb",
        &b,
        "",
        PortVlan::Trunk {
            tagged: vec![VlanId::new(10).unwrap()],
            native: None,
        },
    );
    net.ensure_port(&PortSpec::tap(ifn("tap0"), ifn("lan")))
        .unwrap();
    let imp = Impairment::builder()
        .delay(Duration::from_millis(5))
        .loss(1.0)
        .build()
        .unwrap();
    net.set_impairment(&ifn("pa"), &imp).unwrap();
    net.set_shaping(
        &ifn("tap0"),
        Some(kobako_net::Shaping::new(10_000_000, 16_000, 64_000).unwrap()),
    )
    .unwrap();
    net.set_uplink(Some(&Uplink::derived(&name))).unwrap();

    let host_if = name.uplink_host_ifname();
    let before = LabNet::inventory(&name).unwrap();
    assert!(before.iter().any(|s| s.starts_with("netns")), "{before:?}");
    assert!(
        before.iter().any(|s| s.starts_with("qdisc tbf")),
        "{before:?}"
    );
    assert!(
        before.iter().any(|s| s.starts_with("host nft")),
        "{before:?}"
    );
    assert!(
        before.iter().any(|s| s.starts_with("host link")),
        "{before:?}"
    );
    assert!(sh("ip netns list").contains("kb-kbt-del"));
    assert!(sh("ip -o link show").contains(host_if.as_str()));
    assert!(sh("nft list tables").contains("kobako-kbt-del"));
    assert!(sh("ip -n kb-kbt-del -o link show").contains("tap0"));
    assert!(sh("tc -n kb-kbt-del qdisc show").contains("tbf"));

    let mut lab = lab;
    lab.net.take().unwrap().destroy().unwrap();
    LabNet::delete(&name).unwrap(); // twice is fine

    let after = LabNet::inventory(&name).unwrap();
    assert!(after.is_empty(), "left behind: {after:?}");
    assert!(!sh("ip netns list").contains("kb-kbt-del"));
    assert!(!sh("ip -o link show").contains(host_if.as_str()));
    assert!(!sh("nft list tables").contains("kobako-kbt-del"));
    // The endpoint ends of the lab's veths went with it.
    assert!(a.rtnl().link("eth0").unwrap().is_none());
    assert!(LabNet::open(&name).unwrap().is_none());
}

#[test]
fn bad_input_is_rejected_and_nothing_is_left() {
    let lab = TestLab::new("kbt-bad");
    let net = lab.net();
    net.ensure_bridge(&ifn("br0"), None, None, false).unwrap();
    let imp = Impairment::builder()
        .delay(Duration::from_millis(1))
        .build()
        .unwrap();

    // Unknown interface.
    let e = net.set_impairment(&ifn("nope0"), &imp).unwrap_err();
    assert!(matches!(e, NetError::UnknownInterface { .. }), "{e}");
    assert!(e.to_string().contains("nope0"), "{e}");
    assert!(matches!(
        net.set_link_up(&ifn("nope0"), false).unwrap_err(),
        NetError::UnknownInterface { .. }
    ));

    // Names too long for the kernel.
    let e = kobako_net::IfName::new("this-is-too-long0").unwrap_err();
    assert!(e.to_string().contains("15 bytes"), "{e}");
    // VLAN outside 1..=4094.
    assert!(matches!(
        VlanId::new(0).unwrap_err(),
        NetError::InvalidVlan(0)
    ));
    assert!(matches!(
        VlanId::new(4095).unwrap_err(),
        NetError::InvalidVlan(4095)
    ));
    // Negative / absurd impairments.
    assert!(matches!(
        Impairment::builder().loss(-3.0).build().unwrap_err(),
        NetError::InvalidImpairment(_)
    ));
    assert!(Impairment::builder()
        .delay(Duration::from_secs(7200))
        .build()
        .is_err());
    assert!(kobako_net::impair::parse_duration("-20ms").is_err());
    assert!(kobako_net::impair::parse_rate("0mbit").is_err());

    // A port on a bridge that does not exist: error, and no port is created.
    let ep = Endpoint::new("kbe-bad");
    let spec = PortSpec::veth(ifn("pbad"), ifn("nobridge"), &ep.ns, ifn("eth0"));
    let e = net.ensure_port(&spec).unwrap_err();
    assert!(matches!(e, NetError::UnknownInterface { .. }), "{e}");
    assert!(net.rtnl().link("pbad").unwrap().is_none());
    assert!(ep.rtnl().link("eth0").unwrap().is_none());
    // Bad MTU: rejected before anything is made.
    let mut spec = PortSpec::tap(ifn("tapbad"), ifn("br0"));
    spec.mtu = Some(10);
    assert!(matches!(
        net.ensure_port(&spec).unwrap_err(),
        NetError::InvalidArgument(_)
    ));
    assert!(net.rtnl().link("tapbad").unwrap().is_none());
    // A bridge name taken by something else is a conflict, not a silent replace.
    net.ensure_port(&PortSpec::tap(ifn("tapx"), ifn("br0")))
        .unwrap();
    let e = net
        .ensure_bridge(&ifn("tapx"), None, None, false)
        .unwrap_err();
    assert!(matches!(e, NetError::Conflict { .. }), "{e}");
    // Bad uplink.
    let mut up = Uplink::derived(&lab.name);
    up.lab_addr = Ipv4Addr::new(1, 2, 3, 4);
    assert!(matches!(
        net.set_uplink(Some(&up)).unwrap_err(),
        NetError::InvalidArgument(_)
    ));
    assert!(net.rtnl().link("uplink").unwrap().is_none());
}

#[test]
fn crash_leftovers_are_repaired() {
    let name = LabName::new("kbt-crash").unwrap();
    LabNet::delete(&name).unwrap();
    // A crash between "create mount point file" and "bind mount" leaves a plain file.
    std::fs::create_dir_all("/run/netns").unwrap();
    std::fs::write(format!("/run/netns/{}", name.netns_name()), b"").unwrap();
    let lab = TestLab::new("kbt-crash");
    assert!(Netns::open(&name.netns_name()).unwrap().is_some());

    // Uplink half-made: the nft table in the lab vanished; re-applying restores it.
    let up = Uplink::derived(&name);
    lab.net().set_uplink(Some(&up)).unwrap();
    sh("ip netns exec kb-kbt-crash nft delete table ip kobako-kbt-crash");
    assert!(!sh("ip netns exec kb-kbt-crash nft list tables").contains("kobako-kbt-crash"));
    lab.net().set_uplink(Some(&up)).unwrap();
    assert!(sh("ip netns exec kb-kbt-crash nft list tables").contains("kobako-kbt-crash"));

    // The namespace was removed behind our back: delete still removes the host side.
    sh("ip netns del kb-kbt-crash");
    LabNet::delete(&name).unwrap();
    // The host veth end dies with the namespace asynchronously; give the kernel a moment.
    let mut left = LabNet::inventory(&name).unwrap();
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        LabNet::delete(&name).unwrap();
        left = LabNet::inventory(&name).unwrap();
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn detached_delete_leaves_nothing_named() {
    let name = LabName::new("kbt-det").unwrap();
    let mut lab = TestLab::new("kbt-det");
    let net = lab.net();
    net.ensure_bridge(&ifn("lan"), None, None, false).unwrap();
    net.ensure_port(&PortSpec::tap(ifn("tap0"), ifn("lan")))
        .unwrap();
    net.set_uplink(Some(&Uplink::derived(&name))).unwrap();
    assert!(!LabNet::inventory(&name).unwrap().is_empty());
    lab.net.take().unwrap().destroy_detached().unwrap();
    LabNet::delete_detached(&name).unwrap(); // twice is fine
    let after = LabNet::inventory(&name).unwrap();
    assert!(after.is_empty(), "left behind: {after:?}");
    assert!(!sh("ip netns list").contains("kb-kbt-det"));
    assert!(!sh("nft list tables").contains("kobako-kbt-det"));
}

#[test]
fn calling_thread_stays_in_its_namespace() {
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let lab = TestLab::new("kbt-ns");
    lab.net()
        .ensure_bridge(&ifn("br0"), None, None, false)
        .unwrap();
    lab.net()
        .ensure_port(&PortSpec::tap(ifn("tap0"), ifn("br0")))
        .unwrap();
    let _fd = lab
        .net()
        .open_tap(&ifn("tap0"), TapFlags::default())
        .unwrap();
    lab.net()
        .netns()
        .set_sysctl("ipv4/ip_forward", "1")
        .unwrap();
    assert_eq!(lab.net().netns().sysctl("ipv4/ip_forward").unwrap(), "1");
    let after = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_eq!(
        before, after,
        "the caller's thread must not change namespace"
    );
    // The lab's sysctl did not leak to the host.
    let host_fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(
        host_fwd.trim(),
        Netns::host().unwrap().sysctl("ipv4/ip_forward").unwrap()
    );
}

#[test]
fn uplink_refuses_a_transfer_network_in_use() {
    let lab = TestLab::new("kbt-upc");
    let up = Uplink::derived(&lab.name);
    // Something else on the host already uses that /30.
    let other = Ipv4Addr::from(u32::from(up.lab_addr) + 1);
    let _h = HostAddr::new("kbhost2", "kbhost3", &format!("{other}/30"));
    let e = lab.net().set_uplink(Some(&up)).unwrap_err();
    assert!(matches!(e, NetError::InvalidArgument(_)), "{e}");
    assert!(lab.net().rtnl().link("uplink").unwrap().is_none());
    assert!(!sh("nft list tables").contains("kobako-kbt-upc"));
}

#[test]
fn uplink_masquerades_lab_traffic_leaving_the_host() {
    // "The outside": a namespace behind a kb veth, knowing nothing about lab addresses.
    let inet = Endpoint::new("kbe-inet");
    let host = Netns::host().unwrap();
    let hrt = Rtnl::open(&host).unwrap();
    hrt.delete_link("kbinet0").unwrap();
    let l = hrt
        .ensure_veth(
            &ifn("kbinet0"),
            None,
            &ifn("eth0"),
            Some(&inet.ns),
            None,
            None,
        )
        .unwrap();
    struct DelLink(Rtnl);
    impl Drop for DelLink {
        fn drop(&mut self) {
            let _ = self.0.delete_link("kbinet0");
        }
    }
    let _guard = DelLink(Rtnl::open(&host).unwrap());
    hrt.add_addr(&l, cidr("192.168.252.1/24")).unwrap();
    hrt.set_link(
        &l,
        LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    let irt = inet.rtnl();
    let ie = irt.require("eth0").unwrap();
    irt.set_link(
        &ie,
        LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
    irt.add_addr(&ie, cidr("192.168.252.2/24")).unwrap();

    let lab = TestLab::new("kbt-nat");
    let net = lab.net();
    net.ensure_bridge(&ifn("br0"), None, Some(cidr("10.70.0.1/24")), false)
        .unwrap();
    let e = Endpoint::new("kbe-nat");
    attach(net, "br0", "pe", &e, "", PortVlan::None);
    e.address("10.70.0.2/24", Some(Ipv4Addr::new(10, 70, 0, 1)));
    let mut up = Uplink::derived(&lab.name);
    // The stand-in "outside" is a private range, which an uplink reaches only when allowed.
    up.allow.push(cidr("192.168.252.0/24"));
    net.set_uplink(Some(&up)).unwrap();
    // Forwarding only on the two kb interfaces involved (not the host's global switch, which
    // `HostSysctls` would set): in via the uplink, replies in via kbinet0.
    let kbu = lab.name.uplink_host_ifname();
    host.set_sysctl(&format!("ipv4/conf/{kbu}/forwarding"), "1")
        .unwrap();
    host.set_sysctl("ipv4/conf/kbinet0/forwarding", "1")
        .unwrap();

    let server = inet
        .ns
        .spawn("kb-test-inet", || {
            let l = TcpListener::bind("192.168.252.2:7000").unwrap();
            let (mut s, peer) = l.accept().unwrap();
            s.write_all(peer.ip().to_string().as_bytes()).unwrap();
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let seen =
        e.ns.run(|| {
            let mut s = TcpStream::connect_timeout(
                &(Ipv4Addr::new(192, 168, 252, 2), 7000).into(),
                Duration::from_secs(3),
            )
            .expect("the lab must reach the outside through its uplink");
            let mut v = String::new();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.read_to_string(&mut v).unwrap();
            v
        })
        .unwrap();
    server.join().unwrap();
    // Twice masqueraded: the outside sees the host, never a lab address.
    assert_eq!(seen, "192.168.252.1");
}

#[test]
fn kernel_error_messages_are_surfaced() {
    let ep = Endpoint::new("kbe-err");
    let rt = ep.rtnl();
    // No route to the gateway: the kernel explains why in its extended ack.
    let e = rt
        .add_route(None, Some(Ipv4Addr::new(192, 0, 2, 1)), None)
        .unwrap_err();
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(chain.contains("add route default in kbe-err"), "{chain}");
    assert!(chain.to_lowercase().contains("gateway"), "{chain}");
    assert_eq!(e.errno(), Some(libc::ENETUNREACH), "{chain}");
}
