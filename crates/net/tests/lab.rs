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
    lab.net().ensure_bridge(&ifn("l1"), None, None, false).unwrap();
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
