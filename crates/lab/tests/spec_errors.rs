//! One test per class of mistake in a lab file: the message, its line and column, the path
//! in the document and the fix.

mod common;

use common::*;
use kobako_lab::spec::{self, MemMib};

const BASE: &str = "name: shop\nnodes:\n  web:\n    vms:\n      api: {}\n";

#[test]
fn unknown_keys_with_did_you_mean() {
    let e = errors(
        "name: shop
nodse: {}
nodes:
  web:
    vms:
      api: { memroy: 128M }
",
    );
    let x = find(&e, "unknown key 'nodse'", 2, 1, "nodse");
    assert!(x.message.ends_with("(did you mean 'nodes'?)"), "{x}");
    assert!(x.fix.unwrap().contains("nodes, networks"));
    let x = find(
        &e,
        "unknown key 'memroy'",
        6,
        14,
        "nodes.web.vms.api.memroy",
    );
    assert!(x.message.contains("did you mean 'memory'"), "{x}");
    assert_eq!(e.errors().len(), 2, "{e}");
    // Display: file:line:col: path: message, then the fix.
    let shown = e.to_string();
    assert!(shown.contains("lab.yaml:6:14: nodes.web.vms.api.memroy: unknown key 'memroy' (did you mean 'memory'?)"), "{shown}");
    assert!(shown.contains("fix: keys allowed here:"), "{shown}");
}

#[test]
fn bad_sizes() {
    let e = errors(
        "name: shop
nodes:
  web:
    vms:
      a: { memory: 128 }
      b: { memory: 12Q }
      c: { memory: 32M }
      d: { memory: 8G }
",
    );
    let x = find(&e, "128 has no unit", 5, 20, "nodes.web.vms.a.memory");
    assert_eq!(x.fix.as_deref(), Some("write a size like 128M or 1G"));
    find(&e, "'12Q' is not a size", 6, 20, "nodes.web.vms.b.memory");
    let x = find(&e, "too little to boot", 7, 20, "nodes.web.vms.c.memory");
    assert_eq!(x.fix.as_deref(), Some("use at least 64M"));
    let x = find(
        &e,
        "8G of memory, but the host has 4G",
        8,
        20,
        "nodes.web.vms.d.memory",
    );
    assert_eq!(x.fix.as_deref(), Some("use at most 4G"));
}

#[test]
fn vcpus_beyond_the_host_and_wrong_types() {
    let e = errors(
        "name: shop
defaults: { vcpus: 4 }
nodes:
  web:
    vms:
      a: { vcpus: 0 }
      b: { vcpus: two }
      c: {}
",
    );
    // The default applies to c (and b, whose bad value was dropped): reported at the default.
    let x = find(&e, "4 vCPUs, but the host has 2", 2, 20, "defaults.vcpus");
    assert_eq!(x.fix.as_deref(), Some("use at most 2 vCPUs"));
    find(&e, "0 vCPUs", 6, 19, "nodes.web.vms.a.vcpus");
    let x = find(
        &e,
        "expected a whole number, found a string",
        7,
        19,
        "nodes.web.vms.b.vcpus",
    );
    assert_eq!(x.fix.as_deref(), Some("write a whole number here"));
}

#[test]
fn bad_durations_percentages_and_rates() {
    let e = errors(&format!(
        "{BASE}      db: {{}}
links:
  - endpoints: [\"web.api:eth1\", \"web.db:eth1\"]
    impair: {{ delay: 20 minutes, loss: 101%, rate: 10mbps, corrupt: 2, duplicate: {{percent: 1%, correlation: x}} }}
"
    ));
    find(
        &e,
        "'20 minutes' is not a duration",
        9,
        22,
        "links[0].impair.delay",
    );
    find(
        &e,
        "'101%' is more than 100%",
        9,
        40,
        "links[0].impair.loss",
    );
    find(&e, "'10mbps' is ambiguous", 9, 52, "links[0].impair.rate");
    let x = find(&e, "2 has no unit", 9, 69, "links[0].impair.corrupt");
    assert_eq!(x.fix.as_deref(), Some("write a percentage like 2%"));
    find(
        &e,
        "'x' is not a percentage",
        9,
        110,
        "links[0].impair.duplicate.correlation",
    );
}

#[test]
fn duplicate_names() {
    let e = errors(
        "name: shop
nodes:
  web:
    vms:
      api: {}
      api: { memory: 256M }
  web:
    vms:
      x: {}
networks:
  lan: {}
  lan: {}
",
    );
    let x = find(
        &e,
        "duplicate key 'api' (first at line 5)",
        6,
        7,
        "nodes.web.vms.api",
    );
    assert!(x.fix.unwrap().contains("unique"));
    find(
        &e,
        "duplicate key 'web' (first at line 3)",
        7,
        3,
        "nodes.web",
    );
    find(
        &e,
        "duplicate key 'lan' (first at line 11)",
        12,
        3,
        "networks.lan",
    );
}

#[test]
fn dangling_endpoints_with_did_you_mean() {
    let e = errors(
        "name: shop
nodes:
  web:
    vms:
      api: {}
      cache: {}
  edge:
    vms:
      router: {}
links:
  - endpoints: [\"web.ap:eth1\", \"edge.router:eth1\"]
  - endpoints: [\"wbe.api:eth2\", \"edge.router\"]
",
    );
    let x = find(
        &e,
        "link endpoint 'web.ap:eth1': no VM 'ap' in node 'web' (did you mean 'api'?)",
        11,
        17,
        "links[0].endpoints[0]",
    );
    assert_eq!(x.fix.as_deref(), Some("VMs of 'web': api, cache"));
    find(
        &e,
        "no node 'wbe' (did you mean 'web'?)",
        12,
        17,
        "links[1].endpoints[0]",
    );
    let x = find(
        &e,
        "'edge.router' has no interface",
        12,
        33,
        "links[1].endpoints[1]",
    );
    assert!(x.fix.unwrap().contains("'edge.router:eth1'"));
}

#[test]
fn endpoint_used_twice_and_on_a_network() {
    let e = errors(
        "name: shop
nodes:
  a:
    vms:
      x: { interfaces: { eth2: { network: lan } } }
  b:
    vms:
      y: {}
      z: {}
networks:
  lan: { subnet: 10.0.0.0/24 }
links:
  - endpoints: [\"a.x:eth1\", \"b.y:eth1\"]
  - endpoints: [\"a.x:eth1\", \"b.z:eth1\"]
  - endpoints: [\"a.x:eth2\", \"b.z:eth2\"]
",
    );
    let x = find(
        &e,
        "already used by another link (lab.yaml line 13)",
        14,
        17,
        "links[1].endpoints[0]",
    );
    assert!(x.message.starts_with("link endpoint 'a.x:eth1'"));
    find(
        &e,
        "the interface is on network 'lan'",
        15,
        17,
        "links[2].endpoints[0]",
    );
}

#[test]
fn addresses_outside_the_subnet_duplicated_or_malformed() {
    let e = errors(
        "name: shop
nodes:
  web:
    vms:
      a: { interfaces: { eth1: { network: lan, addresses: [10.0.1.5/24] } } }
      b: { interfaces: { eth1: { network: lan, addresses: [10.0.0.7/24] } } }
      c: { interfaces: { eth1: { network: lan, addresses: [10.0.0.7] } } }
      d: { interfaces: { eth1: { network: lan, addresses: [10.0.0.8/16, 10.0.0.0/24, 10.0.0.x/24] } } }
networks:
  lan: { subnet: 10.0.0.0/24 }
",
    );
    let x = find(
        &e,
        "address 10.0.1.5 is outside the subnet 10.0.0.0/24",
        5,
        60,
        "nodes.web.vms.a.interfaces.eth1.addresses[0]",
    );
    assert_eq!(
        x.fix.as_deref(),
        Some("use an address in 10.0.0.0/24, e.g. 10.0.0.2/24")
    );
    find(
        &e,
        "address 10.0.0.7 is also web.b:eth1's (line 6)",
        7,
        60,
        "nodes.web.vms.c.interfaces.eth1.addresses[0]",
    );
    let x = find(
        &e,
        "has prefix /16",
        8,
        60,
        "nodes.web.vms.d.interfaces.eth1.addresses[0]",
    );
    assert_eq!(x.fix.as_deref(), Some("write 10.0.0.8/24"));
    find(
        &e,
        "is the network address",
        8,
        73,
        "nodes.web.vms.d.interfaces.eth1.addresses[1]",
    );
    find(
        &e,
        "'10.0.0.x' is not an IP address",
        8,
        86,
        "nodes.web.vms.d.interfaces.eth1.addresses[2]",
    );
}

#[test]
fn overlapping_subnets_and_vlans_out_of_range() {
    let e = errors(&format!(
        "{BASE}networks:
  lan: {{ subnet: 10.10.0.0/24, vlan: 5000 }}
  dmz: {{ subnet: 10.10.0.128/25 }}
  six: {{ subnet: 10.20.0.1/24, vlan: 0 }}
"
    ));
    let x = find(
        &e,
        "subnet 10.10.0.128/25 overlaps 10.10.0.0/24 of network 'lan' (line 7)",
        8,
        18,
        "networks.dmz.subnet",
    );
    assert!(x.fix.unwrap().contains("disjoint"));
    let x = find(&e, "VLAN 5000 is out of range", 7, 38, "networks.lan.vlan");
    assert_eq!(x.fix.as_deref(), Some("802.1Q VLAN ids are 1..4094"));
    find(&e, "VLAN 0 is out of range", 9, 38, "networks.six.vlan");
    let x = find(
        &e,
        "10.20.0.1/24 has host bits set",
        9,
        18,
        "networks.six.subnet",
    );
    assert_eq!(
        x.fix.as_deref(),
        Some("write the network address: 10.20.0.0/24")
    );
}

#[test]
fn interface_names_longer_than_15_bytes() {
    let e = errors(
        "name: shop
nodes:
  web:
    vms:
      api: { interfaces: { averyveryverylongname: { network: lan } } }
networks:
  lan: {}
",
    );
    let x = find(
        &e,
        "interface name 'averyveryverylongname' is 21 bytes",
        5,
        28,
        "nodes.web.vms.api.interfaces.averyveryverylongname",
    );
    assert!(x.message.contains("at most 15"));
}

#[test]
fn unknown_template_and_template_loops() {
    let e = errors(
        "name: shop
templates:
  a: { template: b }
  b: { template: a }
nodes:
  edge:
    template: router-vpn-id
  loop:
    template: a
links:
  - endpoints: [\"edge.router:eth1\", \"loop.x:eth1\"]
",
    );
    let x = find(
        &e,
        "unknown template 'router-vpn-id' (did you mean 'router-vpn-ids'?)",
        7,
        15,
        "nodes.edge.template",
    );
    assert!(x.fix.unwrap().contains("web-stack"));
    find(
        &e,
        "template 'a' uses itself (a → b → a)",
        4,
        18,
        "templates.b.template",
    );
    // No follow-on errors about the broken nodes' VMs.
    assert_eq!(e.errors().len(), 2, "{e}");
}

#[test]
fn publish_to_a_vm_without_address() {
    let e = errors(&format!(
        "{BASE}publish: [\"8080:web.api:80/tcp\", \"8081:web.apx:80\", \"80:web.api\"]\n"
    ));
    let x = find(
        &e,
        "publish '8080:web.api:80/tcp': web.api has no IPv4 address on a lab network",
        6,
        11,
        "publish[0]",
    );
    assert!(x.fix.unwrap().contains("network"));
    find(
        &e,
        "no VM 'apx' in node 'web' (did you mean 'api'?)",
        6,
        34,
        "publish[1]",
    );
    find(&e, "is not HOSTPORT:NODE.VM:PORT", 6, 53, "publish[2]");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let e = errors(
        "name: Shop
nodes:
  web:
    vms:
      api: { memory: 1, vcpus: 9, colour: red }
networks:
  lan: { subnet: 10.0.0.0/33, vlan: 9999 }
links:
  - endpoints: [\"web.nope:eth1\"]
",
    );
    assert!(e.errors().len() >= 7, "{e}");
    // In file order.
    let lines: Vec<usize> = e.errors().iter().map(|x| x.pos.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    find(
        &e,
        "lab name 'Shop' must start with a lowercase letter",
        1,
        7,
        "name",
    );
}

#[test]
fn yaml_syntax_errors_have_positions() {
    let e = errors("name: shop\nnodes:\n  web: [\n");
    assert_eq!(e.errors().len(), 1);
    let x = &e.errors()[0];
    assert!(x.message.starts_with("YAML syntax error"), "{x}");
    assert_eq!(x.pos.line, 4, "{x}");
}

#[test]
fn missing_fields_and_wrong_shapes() {
    let e = errors(&format!(
        "{BASE}links:\n  - impair: {{ delay: 1ms }}\nuplink: yes please\n"
    ));
    let x = find(&e, "missing 'endpoints'", 7, 5, "links[0]");
    assert_eq!(x.fix.as_deref(), Some("add `endpoints:` here"));
    find(
        &e,
        "expected true, false or {networks: [...]}",
        8,
        9,
        "uplink",
    );
}

#[test]
fn lab_memory_beyond_the_host() {
    let e = errors(
        "name: shop
defaults: { memory: 2G }
nodes:
  web:
    vms: { a: {}, b: {}, c: {} }
",
    );
    let x = find(
        &e,
        "the lab's VMs need 6G of memory together, the host has 4G",
        3,
        1,
        "nodes",
    );
    assert!(x.fix.unwrap().contains("less memory"));
}

#[test]
fn bad_macs_routes_and_files() {
    let e = errors(
        "name: shop
nodes:
  web:
    vms:
      api:
        interfaces:
          eth1: { network: lan, mac: 01:00:5e:00:00:01 }
          eth2: { network: lan, mac: zz }
        routes:
          - { to: 10.9.0.0/24, via: 192.168.1.1 }
        files:
          etc/motd: hello
          /etc/x: { src: a, content: b }
          /etc/y: { content: b, mode: \"0999\" }
networks:
  lan: { subnet: 10.0.0.0/24 }
",
    );
    find(
        &e,
        "01:00:5e:00:00:01 is a multicast address",
        7,
        38,
        "nodes.web.vms.api.interfaces.eth1.mac",
    );
    find(
        &e,
        "'zz' is not a MAC address",
        8,
        38,
        "nodes.web.vms.api.interfaces.eth2.mac",
    );
    find(
        &e,
        "next hop 192.168.1.1 is not on any subnet of web.api",
        10,
        37,
        "nodes.web.vms.api.routes[0].via",
    );
    let x = find(
        &e,
        "guest path 'etc/motd' is not absolute",
        12,
        11,
        "nodes.web.vms.api.files[\"etc/motd\"]",
    );
    assert_eq!(
        x.fix.as_deref(),
        Some("write it from the root, e.g. /etc/motd")
    );
    find(
        &e,
        "both `src` and `content` given",
        13,
        21,
        "nodes.web.vms.api.files[\"/etc/x\"]",
    );
    find(
        &e,
        "'0999' is not an octal file mode",
        14,
        39,
        "nodes.web.vms.api.files[\"/etc/y\"].mode",
    );
}

#[test]
fn copies_with_colliding_published_ports() {
    let e = errors(
        "name: class
copies: { count: 3, port_stride: 1 }
nodes:
  web:
    vms:
      api: { interfaces: { eth1: { network: lan } } }
networks:
  lan: { subnet: 10.0.0.0/24 }
publish: [\"8080:web.api:80\", \"8081:web.api:81\"]
",
    );
    let x = find(
        &e,
        "host port 8081 is published by copies 'class-1' and 'class-2'",
        2,
        11,
        "copies",
    );
    assert!(x.fix.unwrap().contains("port_stride to at least 2"));
}

#[test]
fn unconnected_interfaces_and_unknown_networks() {
    let e = errors(
        "name: shop
nodes:
  web:
    vms:
      api: { interfaces: { eth1: {}, eth2: { network: lna } } }
networks:
  lan: {}
",
    );
    let x = find(
        &e,
        "interface 'eth1' of web.api is connected to nothing",
        5,
        28,
        "nodes.web.vms.api.interfaces.eth1",
    );
    assert!(x.fix.unwrap().contains("network: NAME"));
    let x = find(
        &e,
        "no network 'lna' (did you mean 'lan'?)",
        5,
        55,
        "nodes.web.vms.api.interfaces.eth2.network",
    );
    assert_eq!(x.fix.as_deref(), Some("networks: lan"));
}

#[test]
fn errors_inside_file_templates_point_at_the_template() {
    let e = errors(
        "name: shop
templates:
  pair:
    vms:
      one: { memory: 16M }
      two: {}
nodes:
  x: { template: pair }
",
    );
    find(
        &e,
        "too little to boot",
        5,
        22,
        "templates.pair.vms.one.memory",
    );
}

// ---------------------------------------------------------------- what resolves

#[test]
fn defaults_then_template_then_node_then_vm() {
    let lab = ok("name: shop
defaults: { image: debian, memory: 192M }
templates:
  pair:
    vms:
      one: { memory: 256M, run: [\"a\"], env: { A: 1, B: 2 } }
      two: {}
nodes:
  x:
    template: pair
    vms:
      one: { vcpus: 2, run: [{ name: b, command: b, restart: never }], env: { B: three } }
      three: { image: tiny }
");
    let n = &lab.nodes[0];
    assert_eq!(n.template.as_deref(), Some("pair"));
    let names: Vec<&str> = n.vms.iter().map(|v| v.id.vm.as_str()).collect();
    assert_eq!(names, ["one", "two", "three"]);
    let one = &n.vms[0];
    assert_eq!(
        (one.image.as_str(), one.vcpus, one.memory),
        ("debian", 2, MemMib(256))
    );
    assert_eq!(one.services.len(), 1, "run replaces the template's list");
    assert_eq!(one.services[0].name, "b");
    assert_eq!(one.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(one.env.get("B").map(String::as_str), Some("three"));
    assert_eq!(n.vms[1].memory, MemMib(192));
    assert_eq!(n.vms[2].image, "tiny");
    // The node network: eth0, .10 upwards in node order, names in hosts.
    let nn = n.network.as_ref().unwrap();
    assert_eq!(nn.subnet.to_string(), "172.31.0.0/24");
    assert_eq!(one.interfaces[0].addresses[0].to_string(), "172.31.0.10/24");
    assert_eq!(
        n.vms[2].interfaces[0].addresses[0].to_string(),
        "172.31.0.12/24"
    );
    assert!(one
        .hosts
        .contains(&("three.x".to_string(), "172.31.0.12".parse().unwrap())));
}

#[test]
fn derived_values_are_deterministic() {
    let text = "name: shop
nodes:
  web:
    vms:
      api: { interfaces: { eth1: { network: lan } } }
      db: { interfaces: { eth1: { network: lan, mac: 02:00:00:00:00:09 } } }
networks:
  lan: { subnet: 10.0.0.0/24 }
uplink: true
publish: [\"8080:web.api:80\"]
";
    let a = ok(text);
    let b = ok(text);
    assert_eq!(a, b);
    assert_eq!(a.id.as_str().len(), 7);
    assert!(a.host_ifname("web.api:eth1").len() <= 15);
    let api = a.vm(&a.nodes[0].vms[0].id).unwrap();
    let eth1 = api.interface("eth1").unwrap();
    assert_eq!(
        eth1.mac,
        spec::MacAddr::derived("shop", "web", "api", "eth1")
    );
    assert!(eth1.mac.is_local() && eth1.mac.is_unicast());
    assert_eq!(
        eth1.addresses[0].to_string(),
        "10.0.0.2/24",
        ".1 is kept for the gateway"
    );
    let db = a.vm(&a.nodes[0].vms[1].id).unwrap();
    assert_eq!(
        db.interface("eth1").unwrap().mac.to_string(),
        "02:00:00:00:00:09"
    );
    // uplink: the host holds .1 and is every VM's default route.
    let lan = a.network("lan").unwrap();
    assert_eq!(lan.gateway, Some("10.0.0.1".parse().unwrap()));
    assert!(lan.host_gateway);
    assert_eq!(
        api.routes[0].via,
        "10.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(
        a.publish[0].target,
        "10.0.0.2".parse::<std::net::IpAddr>().unwrap()
    );
    // A different lab name gives different MACs and ids.
    let c = ok(&text.replace("name: shop", "name: shop2"));
    assert_ne!(c.id, a.id);
    assert_ne!(
        c.vms().next().unwrap().interfaces[1].mac,
        api.interfaces[1].mac
    );
}

#[test]
fn links_impairments_and_names() {
    let lab = ok("name: shop
nodes:
  a: { vms: { x: {} } }
  b: { vms: { y: {} } }
links:
  - endpoints: [\"a.x:eth1\", \"b.y:eth1\"]
    impair: { delay: 20ms, jitter: 5ms, loss: { percent: 1%, correlation: 25% }, rate: 10mbit }
  - name: backup
    endpoints: [\"a.x:eth2\", \"b.y:eth2\"]
    state: down
");
    let l = lab.link("a.x-b.y").unwrap();
    assert_eq!(
        l.impair.delay.unwrap().duration(),
        std::time::Duration::from_millis(20)
    );
    assert_eq!(l.impair.loss.unwrap().correlation.as_f64(), 25.0);
    assert_eq!(l.impair.rate.unwrap().0, 10_000_000);
    assert_eq!(lab.link("backup").unwrap().state, spec::LinkState::Down);
    let x = lab.vm(&l.endpoints[0].vm).unwrap();
    assert!(
        matches!(&x.interface("eth1").unwrap().attach, spec::Attachment::Link(n) if n.as_str() == "a.x-b.y")
    );
    assert!(lab.to_mermaid().contains("delay 20ms"));
    assert!(lab.to_dot().contains("style=dashed"));
}

#[test]
fn copies_make_separate_labs() {
    let labs = spec::load_str(
        "lab.yaml",
        "name: class
copies: { names: [alice, bob] }
nodes:
  web: { vms: { api: { interfaces: { eth1: { network: lan } } } } }
networks:
  lan: { subnet: 10.0.0.0/24 }
publish: [\"8080:web.api:80\"]
",
        &host(),
    )
    .unwrap();
    let names: Vec<&str> = labs.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["class-alice", "class-bob"]);
    assert_ne!(labs[0].id, labs[1].id);
    assert_eq!(labs[1].publish[0].host_port, 8081);
    assert_eq!(labs[1].copy.as_ref().unwrap().name, "bob");
}

#[test]
fn bad_image_and_kernel_names() {
    let e = errors(
        "name: shop
defaults: { kernel: latest }
nodes:
  web:
    vms:
      api: { image: Debian Web }
",
    );
    let x = find(
        &e,
        "image 'Debian Web' must start with a lowercase letter or digit",
        6,
        21,
        "nodes.web.vms.api.image",
    );
    assert!(x.fix.unwrap().contains("kobako image ls"));
    find(
        &e,
        "kernel 'latest' is neither `default` nor a path",
        2,
        21,
        "defaults.kernel",
    );
}

#[test]
fn host_files_are_taken_relative_to_the_lab_file() {
    let dir = std::env::temp_dir().join(format!("kobako-lab-spec-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    std::fs::write(dir.join("conf/app.conf"), "x=1\n").unwrap();
    let file = dir.join("lab.yaml");
    std::fs::write(
        &file,
        "name: files\nnodes:\n  n:\n    vms:\n      v:\n        files:\n          /etc/app.conf: conf/app.conf\n          /usr/local/bin/go: { content: \"#!/bin/sh\\necho hi\\n\", mode: \"0755\" }\n",
    )
    .unwrap();
    let lab = spec::load_file(&file, &host()).unwrap().remove(0);
    let v = lab.vms().next().unwrap();
    let base = std::fs::canonicalize(&dir).unwrap();
    assert_eq!(
        v.files[0].source,
        spec::FileSource::Host(base.join("conf/app.conf"))
    );
    assert_eq!(v.files[0].mode, 0o644);
    assert_eq!(
        v.files[1].source,
        spec::FileSource::Inline("#!/bin/sh\necho hi\n".into())
    );
    assert_eq!(v.files[1].mode, 0o755);
    std::fs::remove_file(dir.join("conf/app.conf")).unwrap();
    let gone = spec::load_file(&file, &host()).unwrap_err();
    assert!(
        gone.errors()[0]
            .message
            .ends_with("conf/app.conf does not exist"),
        "{gone}"
    );
    assert_eq!(gone.errors()[0].pos.line, 7);
    let missing = spec::load_file(&dir.join("nope.yaml"), &host()).unwrap_err();
    assert!(missing.errors()[0]
        .message
        .starts_with("cannot read the lab file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_design_example_resolves() {
    // shared/DESIGN.md §4, with the router's link interface.
    let lab = ok("name: shop
defaults: { image: tiny, vcpus: 1, memory: 128M }
nodes:                          # a node = 1..N microVMs sharing a node-internal network
  web:
    vms:
      api:    { image: debian, memory: 256M, run: [\"python3 -m http.server 8080\"] }
      cache:  { image: debian }
      logger: {}
  edge:
    template: router-vpn-ids    # reusable node definitions
networks:
  lan: { subnet: 10.10.0.0/24, vlan: 10 }
links:
  - endpoints: [\"web.api:eth1\", \"edge.router:eth1\"]
    impair: { delay: 20ms, jitter: 5ms, loss: 1% }
");
    assert_eq!(lab.nodes.len(), 2);
    assert_eq!(
        lab.links.len(),
        2,
        "the lab link and the template's mirror link"
    );
    let api = lab.find_vm("web.api").unwrap();
    assert_eq!(api.services[0].command, "python3 -m http.server 8080");
    assert_eq!(
        lab.find_vm("web.ap").unwrap_err().to_string(),
        "node 'web' has no VM 'ap' (did you mean 'api'?)"
    );
    assert!(lab
        .find_vm("wbe.api")
        .unwrap_err()
        .to_string()
        .contains("did you mean 'web'"));
    assert!(matches!(
        lab.find_vm("web"),
        Err(spec::FindVmError::NotAVmRef(spec::VmRefError::NotNodeVm(_)))
    ));
}

#[test]
fn ipv6_subnets_assign_and_check() {
    let lab = ok("name: six
nodes:
  n:
    vms:
      a: { interfaces: { eth1: { network: lan } } }
      b: { interfaces: { eth1: { network: lan, addresses: [10.0.0.9/24, \"fd00:1::9/64\"] } } }
networks:
  lan: { subnet: 10.0.0.0/24, subnet6: \"fd00:1::/64\" }
");
    let a = lab.find_vm("n.a").unwrap().interface("eth1").unwrap();
    let got: Vec<String> = a.addresses.iter().map(|c| c.to_string()).collect();
    assert_eq!(got, ["10.0.0.2/24", "fd00:1::2/64"]);
    let e = errors(
        "name: six
nodes:
  n:
    vms:
      a: { interfaces: { eth1: { network: lan, addresses: [\"fd00:2::1/64\"] } } }
networks:
  lan: { subnet: 10.0.0.0/24, subnet6: \"fd00:1::/64\" }
",
    );
    find(
        &e,
        "address fd00:2::1 is outside the subnet fd00:1::/64",
        5,
        60,
        "nodes.n.vms.a.interfaces.eth1.addresses[0]",
    );
}

#[test]
fn unnamed_services_are_named_after_their_program() {
    let lab = ok("name: s
nodes:
  n:
    vms:
      v:
        run: [\"exec /usr/bin/python3 -m http.server\", \"python3 x.py\", \"echo 1 > /proc/x\", \"'weird'\"]
");
    let names: Vec<&str> = lab
        .vms()
        .next()
        .unwrap()
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["python3", "python3-2", "echo", "weird"]);
}

#[test]
fn copies_beyond_the_host_memory() {
    let e = errors(
        "name: c
copies: { count: 3 }
defaults: { memory: 2G }
nodes:
  n: { vms: { v: {} } }
",
    );
    find(
        &e,
        "the 3 copies need 6G of memory together, the host has 4G",
        2,
        11,
        "copies",
    );
}

#[test]
fn errors_serialize_for_json_output() {
    let e = errors("name: shop\nnodes: { web: { vms: { api: { memory: 1 } } } }\n");
    let v = serde_json::to_value(&e).unwrap();
    assert_eq!(v[0]["path"], "nodes.web.vms.api.memory");
    assert_eq!(v[0]["pos"]["line"], 2);
    assert_eq!(v[0]["fix"], "write a size like 128M or 1G");
}

#[test]
fn hosts_name_node_peers_and_other_nodes() {
    let lab = spec::load_file(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/web-stack.yaml"),
        &host(),
    )
    .unwrap()
    .remove(0);
    let api = lab.find_vm("web.api").unwrap();
    let hosts = api.hosts_file();
    assert!(hosts.contains("172.31.0.11\tcache\n"), "{hosts}");
    assert!(hosts.contains("172.31.0.12\tlogger.web\n"), "{hosts}");
    assert!(hosts.contains("10.20.0.2\tpc.client\n"), "{hosts}");
    let pc = lab.find_vm("client.pc").unwrap();
    assert!(pc.hosts_file().contains("10.20.0.10\tapi.web\n"));
}

#[test]
fn unknown_enum_values_with_did_you_mean() {
    let e = errors(
        "name: shop
nodes:
  web:
    vms:
      api: { run: [{ command: x, restart: alway }] }
      db: {}
links:
  - { endpoints: [\"web.api:eth1\", \"web.db:eth1\"], state: dwn }
",
    );
    let x = find(
        &e,
        "unknown value 'alway' (did you mean 'always'?)",
        5,
        43,
        "nodes.web.vms.api.run[0].restart",
    );
    assert_eq!(
        x.fix.as_deref(),
        Some("use one of: always, on-failure, never")
    );
    find(
        &e,
        "unknown value 'dwn' (did you mean 'down'?)",
        8,
        58,
        "links[0].state",
    );
}

/// containerlab writes `r1:eth1`: accepted for a node of one VM, refused (naming the VMs) for a
/// node of several.
#[test]
fn node_colon_iface_for_a_node_of_one_vm() {
    let lab = ok("name: ab
nodes:
  r1: {vms: {r: {}}}
  r2: {vms: {r: {}}}
links:
  - endpoints: [\"r1:eth1\", \"r2.r:eth1\"]
");
    let l = &lab.links[0];
    let ends: Vec<String> = l
        .endpoints
        .iter()
        .map(|e| {
            format!(
                "{}.{}:{}",
                e.vm.node.as_str(),
                e.vm.vm.as_str(),
                e.iface.as_str()
            )
        })
        .collect();
    assert_eq!(ends, ["r1.r:eth1", "r2.r:eth1"]);

    let e = errors(
        "name: shop
nodes:
  web:
    vms:
      api: {}
      cache: {}
  edge: {vms: {router: {}}}
links:
  - endpoints: [\"web:eth1\", \"edge:eth1\"]
  - endpoints: [\"nowhere:eth1\", \"edge.router:eth2\"]
",
    );
    let x = find(
        &e,
        "link endpoint 'web:eth1': node 'web' has 2 VMs, so the endpoint must say which",
        9,
        17,
        "links[0].endpoints[0]",
    );
    assert_eq!(
        x.fix.as_deref(),
        Some("write it as NODE.VM:IFACE, e.g. 'web.api:eth1' (VMs: api, cache)")
    );
    let x = find(
        &e,
        "'nowhere:eth1' is not NODE.VM:IFACE",
        10,
        17,
        "links[1].endpoints[0]",
    );
    assert!(x.fix.unwrap().contains("NODE:IFACE for a node of one VM"));
}

#[test]
fn containerlab_words_say_what_kobako_writes_instead() {
    let e = errors(
        "name: srl01
topology:
  nodes:
    r1: { kind: linux, image: alpine }
",
    );
    let x = find(&e, "unknown key 'topology'", 2, 1, "topology");
    let fix = x.fix.unwrap_or_default();
    assert!(fix.contains("looks like a containerlab topology"), "{fix}");
    assert!(
        fix.contains("*.clab.yml") && fix.contains("kobako import clab"),
        "{fix}"
    );

    let e = errors(
        "name: b
nodes:
  n:
    vms:
      v:
        image: tiny
        binds: ['./cfg:/etc/cfg']
        kind: linux
",
    );
    let x = find(&e, "unknown key 'binds'", 7, 9, "nodes.n.vms.v.binds");
    let fix = x.fix.unwrap_or_default();
    assert!(
        fix.contains("containerlab's `binds`") && fix.contains("files:"),
        "{fix}"
    );
    // The allowed keys still follow.
    assert!(
        fix.contains("keys allowed here: description, image"),
        "{fix}"
    );
    let x = find(&e, "unknown key 'kind'", 8, 9, "nodes.n.vms.v.kind");
    assert!(x.fix.unwrap_or_default().contains("`image:`"));
}

#[test]
fn a_link_whose_ends_share_no_subnet_is_a_warning() {
    let lab = ok("name: sub
defaults: { image: tiny }
nodes:
  a: { vms: { h: { interfaces: { eth1: { addresses: [10.99.1.1/30] } } } } }
  b: { vms: { h: { interfaces: { eth1: { addresses: [10.99.2.2/30] } } } } }
  c: { vms: { h: { interfaces: { eth1: { addresses: [10.99.3.1/30, 'fd00::1/64'] } } } } }
  d: { vms: { h: { interfaces: { eth1: { addresses: [10.99.3.2/30] } } } } }
  e: { vms: { h: { interfaces: { eth1: {} } } } }
links:
  - { name: ab, endpoints: ['a:eth1', 'b:eth1'] }
  - { name: cd, endpoints: ['c:eth1', 'd:eth1'] }
  - { name: ae, endpoints: ['a.h:eth2', 'e:eth1'] }
");
    let w = lab.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("link 'ab': a.h:eth1 (10.99.1.1/30) and b.h:eth1 (10.99.2.2/30) are in different subnets"), "{w:?}");
}
