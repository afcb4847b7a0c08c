//! Where a lab's uplink may go (issue 17 item 5), against the real kernel: a lab namespace with
//! an endpoint standing in for a VM, a fake "host LAN" (10.231.0.0/24 behind a host veth, with
//! a metadata address 169.254.169.254 behind it) and a fake "internet" (198.18.7.0/24, the
//! benchmarking range, behind another host veth). All traffic stays in namespaces this test
//! makes; nothing leaves the machine.
//!
//! Forwarding is switched on per interface (kbu, kblan, kbpub), never through the host's global
//! `ip_forward` — except in the sysctl test, which is what it tests. The tests share one lock:
//! writing the global switch resets every interface's flag.
//!
//! Run as root: `cargo test -p kobako-net --test egress`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use kobako_net::sysctl::HOST_DIR;
use kobako_net::{
    HostSysctl, HostSysctls, Ipv4Cidr, LabName, LinkChange, Netns, PortVlan, Rtnl, Uplink,
};

static SERIAL: Mutex<()> = Mutex::new(());

const LAN_HOST: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
const LAN_PEER: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const PUB_PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);

/// A host veth `name` (host side `host_cidr`) whose other end is `eth0` of namespace `ep`.
struct HostLeg {
    name: &'static str,
}

impl HostLeg {
    fn new(name: &'static str, ep: &Endpoint, host_cidr: &str, peer_cidr: &str) -> HostLeg {
        let host = Netns::host().unwrap();
        let rt = Rtnl::open(&host).unwrap();
        rt.delete_link(name).unwrap();
        let l = rt
            .ensure_veth(&ifn(name), None, &ifn("eth0"), Some(&ep.ns), None, None)
            .unwrap();
        rt.add_addr(&l, cidr(host_cidr)).unwrap();
        up(&rt, name);
        up(&ep.rtnl(), "eth0");
        ep.address(peer_cidr, None);
        host.set_sysctl(&format!("ipv4/conf/{name}/forwarding"), "1")
            .unwrap();
        HostLeg { name }
    }
}

impl Drop for HostLeg {
    fn drop(&mut self) {
        let host = Netns::host().unwrap();
        let _ = Rtnl::open(&host).unwrap().delete_link(self.name);
    }
}

fn up(rt: &Rtnl, name: &str) {
    let l = rt.require(name).unwrap();
    rt.set_link(
        &l,
        LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
    .unwrap();
}

/// The fake world: a LAN (with a metadata address behind it) and an internet, on the host.
struct World {
    lan: Endpoint,
    internet: Endpoint,
    _legs: Vec<HostLeg>,
}

impl World {
    fn new(tag: &str) -> World {
        let lan = Endpoint::new(&format!("kbe-lan{tag}"));
        let internet = Endpoint::new(&format!("kbe-pub{tag}"));
        let legs = vec![
            HostLeg::new("kblan0", &lan, "10.231.0.1/24", "10.231.0.2/24"),
            HostLeg::new("kbpub0", &internet, "198.18.7.1/24", "198.18.7.2/24"),
        ];
        // The metadata address lives on the LAN peer; the host routes to it like a cloud host.
        let rt = lan.rtnl();
        let e = rt.require("eth0").unwrap();
        rt.add_addr(&e, cidr("169.254.169.254/32")).unwrap();
        let hrt = Rtnl::open(&Netns::host().unwrap()).unwrap();
        let l = hrt.require("kblan0").unwrap();
        hrt.add_route(Some(cidr("169.254.169.254/32")), Some(LAN_PEER), Some(&l))
            .unwrap();
        World {
            lan,
            internet,
            _legs: legs,
        }
    }
}

/// A lab with one endpoint ("the VM", 10.232.0.2) behind its bridge, uplinked with `allow`.
struct Lab {
    lab: TestLab,
    vm: Endpoint,
}

impl Lab {
    fn new(name: &str, allow: &[&str]) -> Lab {
        let lab = TestLab::new(name);
        let net = lab.net();
        net.ensure_bridge(&ifn("br0"), None, Some(cidr("10.232.0.1/24")), false)
            .unwrap();
        let vm = Endpoint::new(&format!("kbe-{name}"));
        attach(net, "br0", "pe", &vm, "", PortVlan::None);
        vm.address("10.232.0.2/24", Some(Ipv4Addr::new(10, 232, 0, 1)));
        let l = Lab { lab, vm };
        l.set_allow(allow);
        Netns::host()
            .unwrap()
            .set_sysctl(
                &format!("ipv4/conf/{}/forwarding", l.lab.name.uplink_host_ifname()),
                "1",
            )
            .unwrap();
        l
    }

    fn set_allow(&self, allow: &[&str]) {
        let mut u = Uplink::derived(&self.lab.name);
        u.allow = allow
            .iter()
            .map(|a| a.parse::<Ipv4Cidr>().unwrap())
            .collect();
        self.lab.net().set_uplink(Some(&u)).unwrap();
    }

    /// Connects from the VM to `dst`: the address the far end saw, or why it failed.
    fn connect(&self, dst: SocketAddr) -> Result<String, String> {
        self.vm
            .ns
            .run(move || {
                let mut s = TcpStream::connect_timeout(&dst, Duration::from_millis(1500))
                    .map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut v = String::new();
                s.read_to_string(&mut v).map_err(|e| e.to_string())?;
                Ok(v)
            })
            .unwrap()
    }
}

/// A listener in `ns` on `addr` that answers each connection with the peer's address.
struct Listener {
    l: TcpListener,
}

impl Listener {
    fn new(ns: &Netns, addr: SocketAddr) -> Listener {
        let l = ns.run(move || TcpListener::bind(addr).unwrap()).unwrap();
        l.set_nonblocking(true).unwrap();
        Listener { l }
    }

    /// Answers one pending connection (the peer's address), or `None` if nothing arrived.
    fn answer(&self) -> Option<String> {
        match self.l.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false).unwrap();
                let ip = peer.ip().to_string();
                s.write_all(ip.as_bytes()).unwrap();
                Some(ip)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Connects from the lab's VM while the listener answers in the background.
fn try_reach(lab: &Lab, l: &Listener, dst: SocketAddr) -> (Result<String, String>, Vec<String>) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let seen = s.spawn(|| {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(p) = l.answer() {
                    seen.push(p);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        });
        let r = lab.connect(dst);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (r, seen.join().unwrap())
    })
}

fn sa(a: Ipv4Addr, port: u16) -> SocketAddr {
    (a, port).into()
}

#[test]
fn lab_uplink_cannot_reach_a_private_lan_until_an_admin_allows_it() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = World::new("a");
    let lab = Lab::new("kbt-egra", &[]);
    let lan = Listener::new(&w.lan.ns, sa(LAN_PEER, 7100));
    let internet = Listener::new(&w.internet.ns, sa(PUB_PEER, 7100));

    // The uplink works: the internet stand-in answers, and sees the host, not the lab.
    let (r, seen) = try_reach(&lab, &internet, sa(PUB_PEER, 7100));
    assert_eq!(
        r.as_deref(),
        Ok("198.18.7.1"),
        "the uplink must reach a public address"
    );
    assert_eq!(seen, ["198.18.7.1"]);

    // The attack: the LAN behind the host. Refused, and nothing arrived there.
    let (r, seen) = try_reach(&lab, &lan, sa(LAN_PEER, 7100));
    assert!(r.is_err(), "the lab reached the host's LAN: {r:?}");
    assert!(seen.is_empty(), "a connection arrived on the LAN: {seen:?}");

    // An admin allows 10.231.0.0/16 for this lab: now it gets through (masqueraded).
    lab.set_allow(&["10.231.0.0/16"]);
    let (r, seen) = try_reach(&lab, &lan, sa(LAN_PEER, 7100));
    assert_eq!(
        r.as_deref(),
        Ok("10.231.0.1"),
        "allowed range must be reachable"
    );
    assert_eq!(seen, ["10.231.0.1"]);

    // Taking the permission back closes it again.
    lab.set_allow(&[]);
    let (r, seen) = try_reach(&lab, &lan, sa(LAN_PEER, 7100));
    assert!(r.is_err() && seen.is_empty(), "{r:?} {seen:?}");
}

#[test]
fn lab_uplink_cannot_reach_the_metadata_address() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = World::new("m");
    // Even a lab allowed the LAN does not get link-local.
    let lab = Lab::new("kbt-egrm", &["10.0.0.0/8"]);
    let md = Listener::new(&w.lan.ns, sa(METADATA, 80));
    // The host itself reaches it (the route works) ...
    let (a, b) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut st = TcpStream::connect_timeout(&sa(METADATA, 80), Duration::from_secs(2))
                .expect("the host reaches the metadata stand-in");
            let mut v = String::new();
            st.read_to_string(&mut v).unwrap();
            v
        });
        let mut seen = None;
        for _ in 0..200 {
            seen = md.answer();
            if seen.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (h.join().unwrap(), seen)
    });
    assert_eq!(Some(a), b);
    // ... the lab does not, and nothing arrives.
    let (r, seen) = try_reach(&lab, &md, sa(METADATA, 80));
    assert!(r.is_err(), "the lab reached 169.254.169.254: {r:?}");
    assert!(seen.is_empty(), "{seen:?}");
}

#[test]
fn lab_uplink_cannot_reach_the_hosts_own_addresses() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _w = World::new("h");
    // Even with every private range and loopback "allowed", the host stays closed.
    let lab = Lab::new(
        "kbt-egrh",
        &[
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "192.168.0.0/16",
        ],
    );
    let host = Netns::host().unwrap();
    let kbu = Uplink::derived(&lab.lab.name).host_addr.addr();
    for (addr, port) in [(LAN_HOST, 7101), (kbu, 7102), (Ipv4Addr::LOCALHOST, 7103)] {
        let l = Listener::new(&host, sa(addr, port));
        let (r, seen) = try_reach(&lab, &l, sa(addr, port));
        assert!(r.is_err(), "the lab reached the host at {addr}: {r:?}");
        assert!(seen.is_empty(), "{addr}: {seen:?}");
    }
}

#[test]
fn lab_uplink_has_no_ipv6_towards_the_host() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new("kbt-egr6", &[]);
    let host = Netns::host().unwrap();
    let kbu = lab.lab.name.uplink_host_ifname();
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        assert_eq!(
            host.sysctl(&format!("ipv6/conf/{kbu}/disable_ipv6"))
                .unwrap(),
            "1",
            "the host end of the uplink must have no IPv6 (no fe80::, no route to fd00:ec2::254)"
        );
        assert_eq!(
            lab.lab
                .net()
                .netns()
                .sysctl("ipv6/conf/uplink/disable_ipv6")
                .unwrap(),
            "1"
        );
    }
}

#[test]
fn host_forwarding_is_restored_when_the_last_lab_goes() {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let host = Netns::host().unwrap();
    let key = HostSysctl::Ipv4Forward.key();
    let (a, b) = (
        LabName::new("kbt-fwda").unwrap(),
        LabName::new("kbt-fwdb").unwrap(),
    );
    // The host-wide store every kobako process uses: other labs may hold the value too.
    let s = HostSysctls::new(HOST_DIR);
    s.release(&a).unwrap();
    s.release(&b).unwrap();
    let before = host.sysctl(key).unwrap();
    let others = s.holders(HostSysctl::Ipv4Forward);
    s.acquire(&a, HostSysctl::Ipv4Forward, "1").unwrap();
    assert_eq!(host.sysctl(key).unwrap(), "1");
    // The original is on disk before the change: a new process (after a crash) finds it.
    let recorded = HostSysctls::new(HOST_DIR).original(HostSysctl::Ipv4Forward);
    if others.is_empty() {
        assert_eq!(recorded.as_deref(), Some(before.as_str()));
    } else {
        assert!(
            recorded.is_some(),
            "held by {others:?} but no original recorded"
        );
    }
    s.acquire(&b, HostSysctl::Ipv4Forward, "1").unwrap();
    // One lab goes: the other still needs forwarding.
    assert!(HostSysctls::new(HOST_DIR).release(&a).unwrap().is_empty());
    assert_eq!(host.sysctl(key).unwrap(), "1");
    // The last one goes (released by another handle, as after a restart): restored.
    HostSysctls::new(HOST_DIR).release(&b).unwrap();
    if s.holders(HostSysctl::Ipv4Forward).is_empty() {
        assert_eq!(host.sysctl(key).unwrap(), before);
        assert_eq!(s.original(HostSysctl::Ipv4Forward), None);
    } else {
        // Labs of other processes still hold it.
        assert_eq!(host.sysctl(key).unwrap(), "1");
    }
    // Releasing what is not held changes nothing.
    assert!(s.release(&a).unwrap().is_empty());
}
