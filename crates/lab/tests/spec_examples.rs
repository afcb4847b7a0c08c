//! Every example lab file and every shipped template parses and resolves; resolve → to_yaml
//! → resolve gives the same model; graphs render.

use kobako_lab::spec::{self, HostLimits, Lab, MemMib};
use std::path::PathBuf;

fn host() -> HostLimits {
    HostLimits {
        cpus: 2,
        memory: MemMib(24 * 1024),
    }
}

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn load(name: &str) -> Vec<Lab> {
    let path = examples_dir().join(name);
    match spec::load_file(&path, &host()) {
        Ok(l) => l,
        Err(e) => panic!("{name}:\n{e}"),
    }
}

/// The model after a save/load cycle loses only provenance: the template a node came from
/// and which copy of a file a lab was.
fn normalized(mut l: Lab) -> Lab {
    l.copy = None;
    for n in &mut l.nodes {
        n.template = None;
    }
    l
}

fn round_trip(l: &Lab) {
    let yaml = l.to_yaml();
    let again = spec::load_one("saved.yaml", &yaml, &host())
        .unwrap_or_else(|e| panic!("{} saved does not load:\n{e}\n--- saved:\n{yaml}", l.name));
    let (mut a, mut b) = (normalized(l.clone()), normalized(again));
    a.base_dir = None;
    b.base_dir = None;
    assert_eq!(a, b, "round trip changed {}\n--- saved:\n{yaml}", l.name);
    // And saving again gives the same text.
    assert_eq!(b.to_yaml(), yaml);
}

#[test]
fn every_example_resolves_and_round_trips() {
    let mut n = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            for lab in load(&name) {
                round_trip(&lab);
                assert!(lab.to_mermaid().starts_with("flowchart LR"));
                assert!(lab.to_dot().starts_with("graph "));
            }
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} examples");
}

#[test]
fn every_builtin_template_resolves() {
    for name in spec::templates::builtin_names() {
        let text = format!("name: t\nnodes:\n  n:\n    template: {name}\n");
        let lab = spec::load_one("t.yaml", &text, &host()).unwrap_or_else(|e| {
            // router-vpn-ids leaves the router's networks to the lab file: that is fine.
            panic!("template {name}:\n{e}")
        });
        assert!(!lab.nodes[0].vms.is_empty());
        round_trip(&lab);
    }
}

#[test]
fn every_feature_round_trips() {
    let text = "name: sink
description: every feature once
defaults: { image: tiny, memory: 96M, kernel: default }
templates:
  duo:
    node_network: { subnet: 172.30.0.0/24, interface: int0, mtu: 1400, addresses: { left: 172.30.0.5 } }
    vms:
      left: { env: { MODE: left, N: 1 }, run: [\"sleep 1000\"] }
      right:
        files: { /etc/motd: { content: \"hi\\nthere\\n\", mode: \"0600\" } }
    links:
      - endpoints: [\"left:x1\", \"right:x1\"]
        impair: { reorder: 5%, delay: 1ms }
nodes:
  pair:
    template: duo
    vms:
      left:
        vcpus: 2
        interfaces:
          eth1: { network: lan, addresses: [10.0.0.10/24, \"fd00::10/64\"], mac: \"02:aa:bb:cc:dd:ee\", mtu: 1400 }
          eth2: { network: dmz, no_gateway: true }
        routes: [{ to: 10.5.0.0/16, via: 10.0.0.1 }]
  solo:
    vms:
      box:
        interfaces:
          eth1: { network: dmz, gateway: 10.1.0.1 }
          p2p: { addresses: [192.168.77.1/30] }
      far:
        interfaces:
          p2p: { addresses: [192.168.77.2/30] }
networks:
  lan: { subnet: 10.0.0.0/24, subnet6: \"fd00::/64\", vlan: 10, mtu: 9000 }
  dmz: { subnet: 10.1.0.0/24, gateway: 10.1.0.1 }
links:
  - name: wan
    endpoints: [\"solo.box:p2p\", \"solo.far:p2p\"]
    impair: { delay: 20ms, jitter: 5ms, loss: { percent: 1%, correlation: 25% }, rate: 10mbit, corrupt: 0.1%, duplicate: 1% }
    state: down
    mtu: 1400
  - endpoints: [\"pair.right:eth9\", \"solo.far:eth9\"]
uplink: { networks: [lan] }
publish: [\"8080:pair.left:80/tcp\", \"5353:pair.left:53/udp\"]
";
    let lab = spec::load_one("sink.yaml", text, &host()).unwrap_or_else(|e| panic!("{e}"));
    round_trip(&lab);
    let left = lab.find_vm("pair.left").unwrap();
    assert_eq!(left.interfaces[0].name.as_str(), "int0");
    assert_eq!(left.interfaces[0].addresses[0].to_string(), "172.30.0.5/24");
    assert_eq!(left.interfaces[1].mtu, 1400);
    assert_eq!(
        lab.find_vm("solo.box")
            .unwrap()
            .interface("eth1")
            .unwrap()
            .mtu,
        1500
    );
    assert_eq!(
        lab.network("lan").unwrap().gateway,
        Some("10.0.0.1".parse().unwrap())
    );
    assert!(lab.link("wan").unwrap().state == spec::LinkState::Down);
    assert_eq!(lab.links.len(), 3);
    assert_eq!(lab.publish.len(), 2);
}
