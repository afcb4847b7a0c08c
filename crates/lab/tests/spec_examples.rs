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
