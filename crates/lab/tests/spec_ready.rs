//! `ready:` and `ready_timeout:`: what resolves, and each mistake with its line, column, path
//! and fix (the style of `spec_errors.rs`).

mod common;

use common::*;
use kobako_lab::spec::{Lab, ReadyCheck};

#[test]
fn checks_resolve_with_defaults_templates_and_overrides() {
    let lab = ok("name: shop
defaults: { ready: [{tcp: 22}], ready_timeout: 30s }
templates:
  svc:
    vms:
      db: { ready: [{tcp: 6379}, {exec: 'redis-cli ping | grep -q PONG'}] }
nodes:
  a:
    template: svc
    vms:
      db: { ready_timeout: 120s }
  b:
    vms:
      web: { ready: [{http: 'http://localhost:8080/health'}] }
      plain: {}
      none: { ready: [] }
");
    let vm = |n: &str| lab.find_vm(n).unwrap();
    let db = vm("a.db");
    assert_eq!(
        db.ready,
        vec![
            ReadyCheck::Tcp(6379),
            ReadyCheck::Exec("redis-cli ping | grep -q PONG".into())
        ]
    );
    assert_eq!(db.ready_timeout_ms, 120_000);
    assert_eq!(
        vm("b.web").ready,
        vec![ReadyCheck::Http("http://localhost:8080/health".into())]
    );
    assert_eq!(vm("b.plain").ready, vec![ReadyCheck::Tcp(22)]);
    assert_eq!(vm("b.plain").ready_timeout_ms, 30_000);
    assert!(vm("b.none").ready.is_empty());
    assert_eq!(ReadyCheck::Tcp(6379).to_string(), "tcp 6379");
}

#[test]
fn timeout_default_and_roundtrip_through_save() {
    let lab = ok("name: shop
nodes:
  n:
    vms:
      a: { ready: [{tcp: 7000}, {exec: 'true'}], ready_timeout: 90s }
      b: {}
");
    let a = lab.find_vm("n.a").unwrap();
    assert_eq!(a.ready_timeout_ms, 90_000);
    assert_eq!(lab.find_vm("n.b").unwrap().ready_timeout_ms, 60_000);
    // A lab stored before the fields existed reads as no checks, 60 s.
    let mut v = serde_json::to_value(&lab).unwrap();
    let vms = v["nodes"][0]["vms"].as_array_mut().unwrap();
    for vm in vms {
        let o = vm.as_object_mut().unwrap();
        o.remove("ready");
        o.remove("ready_timeout_ms");
    }
    let old: Lab = serde_json::from_value(v).unwrap();
    assert!(old.find_vm("n.a").unwrap().ready.is_empty());
    assert_eq!(old.find_vm("n.a").unwrap().ready_timeout_ms, 60_000);
    // `kobako save` writes them back and they resolve the same.
    let text = lab.to_yaml();
    let again = ok(&text);
    assert_eq!(again.find_vm("n.a").unwrap().ready, a.ready, "{text}");
    assert_eq!(
        again.find_vm("n.a").unwrap().ready_timeout_ms,
        90_000,
        "{text}"
    );
}

#[test]
fn bad_checks_are_reported_where_written() {
    let e = errors(
        "name: shop
nodes:
  web:
    vms:
      a: { ready: [{tcp: 70000}, {tcp: 0}] }
      b: { ready: [{http: 'https://localhost/'}, {http: 'http://10.0.0.1/'}] }
      c: { ready: [{exec: '  '}, {}] }
      d: { ready: [{tcp: 1, exec: 'true'}], ready_timeout: 0s }
      e: { ready: [{tpc: 80}] }
      f: { ready: [{tcp: '80x'}] }
",
    );
    let x = find(
        &e,
        "port 70000 is not 1..65535",
        5,
        26,
        "nodes.web.vms.a.ready[0].tcp",
    );
    assert!(x.fix.unwrap().contains("tcp: 6379"));
    find(&e, "port 0 is not", 5, 40, "nodes.web.vms.a.ready[1].tcp");
    let x = find(
        &e,
        "not an http:// URL",
        6,
        27,
        "nodes.web.vms.b.ready[0].http",
    );
    assert!(x.fix.unwrap().contains("http://localhost:8080/health"));
    let x = find(
        &e,
        "is not on the guest itself",
        6,
        57,
        "nodes.web.vms.b.ready[1].http",
    );
    assert!(x.fix.unwrap().contains("localhost"));
    find(&e, "empty command", 7, 27, "nodes.web.vms.c.ready[0].exec");
    find(
        &e,
        "needs one of tcp, http, exec",
        7,
        34,
        "nodes.web.vms.c.ready[1]",
    );
    find(
        &e,
        "more than one of tcp, http, exec",
        8,
        21,
        "nodes.web.vms.d.ready[0]",
    );
    find(
        &e,
        "ready_timeout 0ms is not between",
        8,
        60,
        "nodes.web.vms.d.ready_timeout",
    );
    let x = find(
        &e,
        "unknown key 'tpc'",
        9,
        21,
        "nodes.web.vms.e.ready[0].tpc",
    );
    assert!(x.message.contains("did you mean 'tcp'"), "{x}");
    find(
        &e,
        "expected a whole number",
        10,
        26,
        "nodes.web.vms.f.ready[0].tcp",
    );
}

#[test]
fn bounded_count_and_length() {
    let many: Vec<String> = (1..=17).map(|p| format!("{{tcp: {p}}}")).collect();
    let long = "x".repeat(3000);
    let e = errors(&format!(
        "name: shop
nodes:
  web:
    vms:
      a: {{ ready: [{}] }}
      b: {{ ready: [{{exec: '{long}'}}] }}
      c: {{ ready: [{{http: 'http://localhost/{long}'}}] }}
",
        many.join(", ")
    ));
    find(&e, "17 readiness checks", 5, 19, "nodes.web.vms.a.ready");
    find(
        &e,
        "command of 3000 bytes",
        6,
        27,
        "nodes.web.vms.b.ready[0].exec",
    );
    find(
        &e,
        "URL of 3017 bytes",
        7,
        27,
        "nodes.web.vms.c.ready[0].http",
    );
}
