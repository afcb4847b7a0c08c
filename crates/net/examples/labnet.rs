//! Builds a small lab (two VM taps on a network with a gateway, a p2p link with an
//! impairment, an uplink with a published port), prints what exists, and removes it again
//! unless `--keep` is given (then remove with `--delete`).
//!
//! `cargo run -p kobako-net --example labnet [-- --keep | --delete]` (as root)

use std::net::Ipv4Addr;
use std::time::Duration;

use kobako_net::{
    IfName, Impairment, Ipv4Cidr, LabName, LabNet, MacAddr, PortSpec, Proto, PublishedPort, Result,
    Uplink,
};

fn main() -> Result<()> {
    let arg = std::env::args().nth(1).unwrap_or_default();
    let name = LabName::new("kbdemo")?;
    if arg == "--delete" {
        return LabNet::delete(&name);
    }
    let net = LabNet::ensure(&name)?;
    println!("features: {:?}", net.features());
    let lan = IfName::new("lan")?;
    net.ensure_bridge(
        &lan,
        Some(1500),
        Some("10.10.0.1/24".parse::<Ipv4Cidr>()?),
        false,
    )?;
    for vm in ["web", "db"] {
        let mut p = PortSpec::tap(IfName::new(format!("{vm}-eth0"))?, lan.clone());
        // The guest NIC gets the derived MAC (passed to the runtime); the tap keeps its own.
        println!(
            "{vm}: guest MAC {}",
            MacAddr::derived("kbdemo", vm, vm, "eth0")
        );
        p.mtu = Some(1500);
        net.ensure_port(&p)?;
    }
    let p2p = IfName::new("l-web-db")?;
    net.ensure_bridge(&p2p, None, None, false)?;
    net.ensure_port(&PortSpec::tap(IfName::new("web-eth1")?, p2p.clone()))?;
    net.ensure_port(&PortSpec::tap(IfName::new("db-eth1")?, p2p))?;
    net.set_impairment(
        &IfName::new("db-eth1")?,
        &Impairment::builder()
            .delay(Duration::from_millis(20))
            .jitter(Duration::from_millis(5))
            .loss(1.0)
            .build()?,
    )?;
    let mut up = Uplink::derived(&name);
    up.published.push(PublishedPort {
        proto: Proto::Tcp,
        host_port: 18081,
        target: Ipv4Addr::new(10, 10, 0, 2),
        target_port: 80,
    });
    net.set_uplink(Some(&up))?;
    for line in LabNet::inventory(&name)? {
        println!("  {line}");
    }
    if arg == "--keep" {
        println!(
            "kept; inspect with `ip netns exec kb-kbdemo nft list ruleset`, remove with --delete"
        );
        // Relays (if any) live in this process: keep it alive.
        if !net.features().netem {
            println!("(userspace relay running; Ctrl-C ends it)");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        return Ok(());
    }
    net.destroy()?;
    println!("after delete: {:?}", LabNet::inventory(&name)?);
    Ok(())
}
