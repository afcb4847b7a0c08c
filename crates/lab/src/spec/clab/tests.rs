use super::*;
use crate::spec::raw::{RawFile, RawUplink};
use crate::spec::{load_str, HostLimits};

fn host() -> HostLimits {
    HostLimits {
        cpus: 8,
        memory: crate::spec::MemMib(16384),
    }
}

fn conv(text: &str) -> Converted {
    match convert("t.clab.yml", text, None, &[]) {
        Ok(c) => c,
        Err(e) => panic!("conversion failed:\n{e}"),
    }
}

fn errors(text: &str) -> String {
    match convert("t.clab.yml", text, None, &[]) {
        Ok(c) => panic!("converted, expected errors: {:?}", c.lab),
        Err(e) => e.to_string(),
    }
}

const TWO_NODES: &str = r#"
name: srl_lab
topology:
  defaults:
    env: { A: "1" }
  kinds:
    linux:
      image: alpine:latest
      env: { B: "2" }
  nodes:
    n1:
      kind: linux
      mgmt-ipv4: 172.20.20.11
      exec:
        - ip addr add 10.0.0.1/24 dev eth1
      labels: { role: client }
    n2:
      kind: linux
      image: quay.io/frrouting/frr:9.1.0
      env: { A: "3" }
      cpu: 1.5
      memory: 512mb
  links:
    - endpoints: ["n1:eth1", "n2:eth1"]
      mtu: 9000
"#;

#[test]
fn a_two_node_topology_converts_and_resolves() {
    let c = conv(TWO_NODES);
    let lab = &c.lab;
    assert_eq!(lab.name, "srl-lab");
    assert!(c
        .warnings
        .iter()
        .any(|w| w.message.contains("'srl_lab' is 'srl-lab'")));
    let n1 = &lab.nodes["n1"].vms["n1"];
    assert_eq!(n1.image.as_deref(), Some("tiny"));
    assert_eq!(n1.env["A"].0, "1");
    assert_eq!(n1.env["B"].0, "2");
    assert_eq!(n1.env["CLAB_LABEL_ROLE"].0, "client");
    assert_eq!(
        n1.interfaces["eth0"].addresses.as_deref(),
        Some(&["172.20.20.11/24".to_string()][..])
    );
    assert!(n1.files.contains_key(convert::EXEC_SCRIPT));
    assert!(n1.ready.is_some());
    let n2 = &lab.nodes["n2"].vms["n2"];
    assert_eq!(n2.image.as_deref(), Some("debian-frr"));
    assert_eq!(n2.env["A"].0, "3");
    assert_eq!(n2.vcpus, Some(2));
    assert_eq!(n2.memory.map(|m| m.0), Some(512));
    // FRR is started before `exec` commands (vtysh needs it).
    let RawFile::Full(f) = &n2.files[convert::EXEC_SCRIPT] else {
        panic!("inline script")
    };
    assert!(f
        .content
        .as_deref()
        .unwrap()
        .contains("systemctl start frr"));
    assert_eq!(lab.links.len(), 1);
    assert_eq!(lab.links[0].endpoints, vec!["n1:eth1", "n2:eth1"]);
    assert_eq!(lab.links[0].mtu, Some(9000));
    assert!(matches!(&lab.uplink, Some(RawUplink::Some(u)) if u.networks == ["mgmt"]));
    // The converted file is a valid kobako lab file.
    let text = c.to_yaml("t.clab.yml");
    assert!(
        text.contains("n2: quay.io/frrouting/frr:9.1.0 -> debian-frr"),
        "{text}"
    );
    let labs = load_str("converted", &text, &host()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let l = &labs[0];
    assert_eq!(l.vms().count(), 2);
    assert_eq!(l.links.len(), 1);
}

#[test]
fn bridges_become_networks() {
    let c = conv(
        r#"
name: br
mgmt: { external-access: false, ipv4-subnet: 192.168.50.0/24 }
topology:
  nodes:
    br1: { kind: bridge }
    a: { kind: linux, image: alpine }
    b: { kind: linux, image: alpine }
  links:
    - endpoints: ["a:eth1", "br1:eth1"]
    - type: veth
      endpoints:
        - { node: br1, interface: eth2 }
        - { node: b, interface: eth1, mac: "02:00:00:00:00:0b" }
"#,
    );
    let lab = &c.lab;
    assert!(lab.uplink.is_none());
    assert_eq!(
        lab.networks["mgmt"].subnet.as_deref(),
        Some("192.168.50.0/24")
    );
    assert!(lab.networks.contains_key("br1"));
    assert!(lab.links.is_empty());
    assert_eq!(
        lab.nodes["a"].vms["a"].interfaces["eth1"]
            .network
            .as_deref(),
        Some("br1")
    );
    let b1 = &lab.nodes["b"].vms["b"].interfaces["eth1"];
    assert_eq!(b1.network.as_deref(), Some("br1"));
    assert_eq!(b1.mac.as_deref(), Some("02:00:00:00:00:0b"));
    let text = c.to_yaml("br.clab.yml");
    load_str("converted", &text, &host()).unwrap_or_else(|e| panic!("{e}\n{text}"));
}

#[test]
fn unsupported_kinds_fields_and_links_are_located_errors() {
    let e = errors(
        r#"
name: x
topology:
  nodes:
    r1:
      kind: nokia_srlinux
      image: ghcr.io/nokia/srlinux
    r2:
      kind: linux
      image: alpine
      network-mode: host
      wait-for: [r1]
    r3: { kind: linux, image: vrnetlab/vr-sros:23.7 }
    r4: { kind: linx, image: alpine }
  links:
    - endpoints: ["r2:eth1", "host:veth-r2"]
    - endpoints: ["r2:eth2", "r9:eth1"]
    - type: macvlan
      endpoints: ["r2:eth3"]
    - endpoints: ["r2:eth0", "r3:eth1"]
"#,
    );
    for (needle, line) in [
        ("kind `nokia_srlinux` runs a vendor network OS image", 6),
        ("containerlab's `network-mode` is not supported", 11),
        ("containerlab's `wait-for` is not supported", 12),
        (
            "no kobako image for container image 'vrnetlab/vr-sros:23.7'",
            13,
        ),
        ("unknown kind `linx` (did you mean 'linux'?)", 14),
        ("a link to the host", 16),
        ("no node 'r9'", 17),
        ("link type `macvlan` is not supported", 18),
        ("eth0 is the management interface", 20),
    ] {
        let hit = e
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no error '{needle}' in:\n{e}"));
        assert!(
            hit.starts_with(&format!("t.clab.yml:{line}:")),
            "'{needle}' at the wrong place: {hit}"
        );
    }
    // Every error says what to do.
    assert_eq!(
        e.lines().filter(|l| l.starts_with("t.clab.yml:")).count(),
        e.lines()
            .filter(|l| l.trim_start().starts_with("fix:"))
            .count(),
        "{e}"
    );
}

#[test]
fn unknown_keys_get_did_you_mean_and_nothing_is_dropped_silently() {
    let e =
        errors("name: x\ntopology:\n  nodes:\n    a: { kind: linux, image: alpine, bindz: [] }\n");
    assert!(e.contains("bindz") && e.contains("binds"), "{e}");
    let c = conv(
        "name: x\nprefix: lab\ntopology:\n  nodes:\n    a: { kind: linux, image: alpine, image-pull-policy: always }\n  links: []\n",
    );
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        w.iter().any(|w| w.contains("`prefix` has no effect")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|w| w.contains("`image-pull-policy` has no effect")),
        "{w:?}"
    );
}

#[test]
fn image_overrides_label_and_kobako_names() {
    let text = "name: x\ntopology:\n  nodes:\n    a: { kind: linux, image: myorg/router:1 }\n    b: { kind: linux, image: myorg/router:1, labels: { kobako.image: debian-router } }\n    c: { kind: linux, image: tiny }\n";
    let e = errors(text);
    assert!(e.contains("--image myorg/router=IMAGE"), "{e}");
    let c = convert(
        "t.clab.yml",
        text,
        None,
        &[("myorg/router".into(), "debian-frr".into())],
    )
    .unwrap();
    assert_eq!(
        c.lab.nodes["a"].vms["a"].image.as_deref(),
        Some("debian-frr")
    );
    assert_eq!(
        c.lab.nodes["b"].vms["b"].image.as_deref(),
        Some("debian-router")
    );
    assert_eq!(c.lab.nodes["c"].vms["c"].image.as_deref(), Some("tiny"));
    // The label is kobako's, not an environment variable of the guest.
    assert!(!c.lab.nodes["b"].vms["b"]
        .env
        .keys()
        .any(|k| k.contains("KOBAKO")));
}

#[test]
fn binds_startup_config_and_ports() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("r1/sub")).unwrap();
    std::fs::write(d.path().join("r1/frr.conf"), "hostname r1\n").unwrap();
    std::fs::write(d.path().join("r1/daemons"), "bgpd=yes\n").unwrap();
    std::fs::write(d.path().join("r1/sub/x.sh"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        d.path().join("r1/sub/x.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let text = r#"
name: f
topology:
  nodes:
    r1:
      kind: linux
      image: frrouting/frr
      startup-config: r1/frr.conf
      binds: ["r1/daemons:/etc/frr/daemons:ro", "r1/sub:/opt/tools"]
      ports: ["2601:2601", "5353:53/udp"]
    h1:
      kind: linux
      image: alpine
      startup-config: r1/frr.conf
      binds: ["missing.txt:/etc/x"]
"#;
    let e = convert("t.clab.yml", text, Some(d.path()), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("startup-config is applied to FRR nodes only"),
        "{e}"
    );
    assert!(e.contains("missing.txt does not exist"), "{e}");
    let ok = text.split("    h1:").next().unwrap();
    let c = convert("t.clab.yml", ok, Some(d.path()), &[]).unwrap();
    let r1 = &c.lab.nodes["r1"].vms["r1"];
    let src = |f: &RawFile| match f {
        RawFile::Src(s) => s.clone(),
        RawFile::Full(f) => f.src.clone().unwrap_or_default(),
    };
    assert!(src(&r1.files["/etc/frr/frr.conf"]).ends_with("r1/frr.conf"));
    assert!(src(&r1.files["/etc/frr/daemons"]).ends_with("r1/daemons"));
    let RawFile::Full(tool) = &r1.files["/opt/tools/x.sh"] else {
        panic!("an executable keeps its mode")
    };
    assert_eq!(tool.mode.as_deref(), Some("0755"));
    let RawFile::Full(script) = &r1.files[convert::EXEC_SCRIPT] else {
        panic!()
    };
    // The boot-time start first (a restart of a unit still starting is that start, with the
    // old configuration), then the restart that reads the new frr.conf.
    let body = script.content.as_deref().unwrap();
    let (start, restart) = (
        body.find("{ systemctl start frr\n").expect("start"),
        body.find("{ systemctl restart frr\n").expect("restart"),
    );
    assert!(start < restart, "{body}");
    assert_eq!(
        c.lab.publish,
        vec!["2601:r1.r1:2601/tcp", "5353:r1.r1:53/udp"]
    );
}

#[test]
fn clab_paths() {
    assert!(is_clab_path(Path::new("x/leaf-spine.clab.yml")));
    assert!(is_clab_path(Path::new("a.CLAB.YAML")));
    assert!(!is_clab_path(Path::new("lab.yaml")));
}
