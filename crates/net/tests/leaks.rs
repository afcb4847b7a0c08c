//! Resource hygiene: building and deleting labs (with relays and captures) repeatedly leaves
//! no file descriptors or threads behind in the calling process. Its own test binary, so
//! other tests' threads and sockets do not disturb the counts. Run as root.

mod common;

use std::time::Duration;

use common::*;
use kobako_net::capture::CaptureOptions;
use kobako_net::{Impairment, PortVlan, VlanId};

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn cycle(i: usize) {
    let lab = TestLab::new(&format!("kbt-leak{i}"));
    let net = lab.net();
    net.ensure_bridge(&ifn("lan"), None, None, true).unwrap();
    let a = Endpoint::new(&format!("kbe-leak{i}-a"));
    let b = Endpoint::new(&format!("kbe-leak{i}-b"));
    attach(
        net,
        "lan",
        "pa",
        &a,
        "10.60.0.1/24",
        PortVlan::Access(VlanId::new(7).unwrap()),
    );
    attach(
        net,
        "lan",
        "pb",
        &b,
        "",
        PortVlan::Trunk {
            tagged: vec![VlanId::new(7).unwrap()],
            native: None,
        },
    );
    let d = Impairment::builder()
        .delay(Duration::from_millis(1))
        .build()
        .unwrap();
    net.set_impairment(&ifn("pa"), &d).unwrap();
    net.set_impairment(&ifn("pb"), &d).unwrap();
    let cap = net
        .capture(&ifn("pa"), std::io::sink(), CaptureOptions::default())
        .unwrap();
    let _ = a.ping(
        std::net::Ipv4Addr::new(10, 60, 0, 9),
        1,
        Duration::from_millis(50),
    );
    cap.stop().unwrap();
    net.clear_impairment(&ifn("pa")).unwrap();
}

#[test]
fn repeated_labs_leak_nothing() {
    require_root();
    cycle(0); // warm up lazily opened process-wide handles (host netns fd, probes)
    let (f0, t0) = (fds(), threads());
    for i in 1..4 {
        cycle(i);
    }
    // Threads of relays/captures are joined before drop returns.
    let (f1, t1) = (fds(), threads());
    assert_eq!(f1, f0, "file descriptors leaked");
    assert_eq!(t1, t0, "threads leaked");
}
