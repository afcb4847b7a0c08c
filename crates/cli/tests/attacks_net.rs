//! Host ports and egress are an admin's decision (issue 17 item 5), attacked through a real
//! `kobako serve` (real HTTPS, real SQLite) and the real lab controller (`kobako up`/`down`
//! against the same state): a member publishing the host's SSH port, a privileged port or the
//! server's own port; a member granting itself a policy; a member publishing a port a host
//! service listens on, or that another lab already publishes; and the host sysctl an uplink
//! needs, restored when the lab goes.
//!
//! Most of these need no VM: the checks run before any VM boots; one tiny VM checks egress end
//! to end (a LAN and an "internet" on this machine's side of the host, in namespaces the test
//! makes; nothing leaves the machine). The lab whose port another
//! lab then tries to take is brought up for real; whether its VM boots (the tiny image may not
//! be built yet) does not matter — its host network (namespace, published ports) is up either
//! way, which is what makes the port taken.
//!
//! Run as root: `cargo test -p kobako --test attacks_net`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::server::{yaml, Body, Server};
use common::text;
use serde_json::{json, Value};

/// A one-VM lab publishing host port `port` to the VM's 8080 (and an uplink if asked).
fn publishing_lab(name: &str, port: u16, uplink: bool) -> String {
    format!(
        r#"name: {name}
defaults: {{ image: tiny, memory: 64M }}
networks:
  lan: {{ subnet: 10.79.0.0/24 }}
nodes:
  web:
    vms:
      srv: {{ interfaces: {{ eth1: {{ network: lan }} }} }}
publish: ["{port}:web.srv:8080/tcp"]
uplink: {uplink}
"#
    )
}

fn netns_exists(lab: &str) -> bool {
    Path::new("/run/netns").join(format!("kb-{lab}")).exists()
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

/// Takes a lab down through the CLI (as root, same state) however far its `up` got.
struct Down<'a> {
    srv: &'a Server,
    labs: Vec<String>,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        for l in &self.labs {
            let _ = self.srv.cmd(&["down", l]).output();
        }
    }
}

/// A free TCP port on all host addresses, held by a listener (a "host service").
fn host_service() -> std::net::TcpListener {
    std::net::TcpListener::bind("0.0.0.0:0").unwrap()
}

fn free_port() -> u16 {
    host_service().local_addr().unwrap().port()
}

#[test]
fn member_publishing_the_hosts_ssh_port_is_refused() {
    let srv = Server::start();
    let adm = srv.admin_token();
    let dana = srv.user(&adm, "dana", "member", json!({}));
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&dana),
        yaml(&publishing_lab("kbt-pn-ssh", 22, false)),
    );
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "port_not_allowed", "{v}");
    let m = message(&v);
    assert!(
        m.contains("22") && m.contains("SSH") && m.contains("2222"),
        "{m}"
    );
    // Nothing was created.
    assert!(srv.lab_names(&adm).is_empty());
    assert!(!netns_exists("kbt-pn-ssh"));
}

#[test]
fn member_publishing_a_privileged_port_is_refused_but_an_admin_may() {
    let srv = Server::start();
    let adm = srv.admin_token();
    let dana = srv.user(&adm, "dana", "member", json!({}));
    let lab = publishing_lab("kbt-pn-80", 80, false);
    let (s, v) = srv.call("POST", "/labs", Some(&dana), yaml(&lab));
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "port_not_allowed", "{v}");
    let m = message(&v);
    assert!(
        m.contains("port 80 is below 1024") && m.contains("ask an admin"),
        "{m}"
    );
    assert!(srv.lab_names(&adm).is_empty());
    // The same file from an admin: host ports are an admin's decision.
    let (s, v) = srv.call("POST", "/labs", Some(&adm), yaml(&lab));
    assert_eq!(s, 201, "{v}");
}

#[test]
fn member_publishing_the_servers_own_port_is_refused_even_with_a_policy() {
    let srv = Server::start();
    let adm = srv.admin_token();
    let dana = srv.user(&adm, "dana", "member", json!({}));
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&dana),
        yaml(&publishing_lab("kbt-pn-own", srv.port, false)),
    );
    assert_eq!(s, 403, "{v}");
    assert!(message(&v).contains("server's own port"), "{v}");
    assert!(srv.lab_names(&adm).is_empty());

    // An admin grants dana's lab every port; the server's own stays closed, others open.
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&dana),
        yaml(&publishing_lab("kbt-pn-own", 18_090, false)),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = srv.call(
        "PUT",
        "/labs/kbt-pn-own/policy",
        Some(&adm),
        Some(Body::Json(json!({"publish_ports": ["1-65535"]}))),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        srv.call("DELETE", "/labs/kbt-pn-own", Some(&dana), None).0,
        204
    );
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&dana),
        yaml(&publishing_lab("kbt-pn-own", srv.port, false)),
    );
    assert_eq!(s, 403, "{v}");
    assert!(message(&v).contains("server's own port"), "{v}");
    // The grant does work for what it may open: port 80 for dana's lab of that name.
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&dana),
        yaml(&publishing_lab("kbt-pn-own", 80, false)),
    );
    assert_eq!(s, 201, "{v}");
}

#[test]
fn member_re_created_under_a_deleted_members_name_gets_none_of_its_grants() {
    let srv = Server::start();
    let adm = srv.admin_token();
    let dana = srv.user(&adm, "dana", "member", json!({}));
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&dana),
        yaml(&publishing_lab("kbt-pn-heir", 18_093, true)),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = srv.call(
        "PUT",
        "/labs/kbt-pn-heir/policy",
        Some(&adm),
        Some(Body::Json(
            json!({"publish_ports": ["80"], "uplink_allow": ["10.0.0.0/8"]}),
        )),
    );
    assert_eq!(s, 200, "{v}");
    // Dana goes (with her labs); a new "dana" arrives later.
    let (s, v) = srv.call("DELETE", "/users/dana", Some(&adm), None);
    assert!(s == 200 || s == 204, "{s} {v}");
    std::thread::sleep(Duration::from_millis(5));
    let heir = srv.user(&adm, "dana", "member", json!({}));
    // The old grant does not open port 80 for her lab of the same name ...
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&heir),
        yaml(&publishing_lab("kbt-pn-heir", 80, true)),
    );
    assert_eq!(s, 403, "{v}");
    assert!(message(&v).contains("port 80 is below 1024"), "{v}");
    // ... nor the LAN for its uplink: her lab shows the defaults only.
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&heir),
        yaml(&publishing_lab("kbt-pn-heir", 18_093, true)),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = srv.call("GET", "/labs/kbt-pn-heir/policy", Some(&heir), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["publish_ports"], json!([]), "{v}");
    assert_eq!(v["uplink_allow"], json!([]), "{v}");
    assert_eq!(v["set_by"], Value::Null, "{v}");
}

#[test]
fn member_granting_its_own_lab_a_policy_is_refused() {
    let srv = Server::start();
    let adm = srv.admin_token();
    let dana = srv.user(&adm, "dana", "member", json!({}));
    let erin = srv.user(&adm, "erin", "member", json!({}));
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&dana),
        yaml(&publishing_lab("kbt-pn-self", 18_091, true)),
    );
    assert_eq!(s, 201, "{v}");
    let wide = json!({"publish_ports": ["1-1023"], "uplink_allow": ["0.0.0.0/0"]});
    // The owner: 403 naming who decides. Another member: the lab does not exist for her.
    let (s, v) = srv.call(
        "PUT",
        "/labs/kbt-pn-self/policy",
        Some(&dana),
        Some(Body::Json(wide.clone())),
    );
    assert_eq!(s, 403, "{v}");
    assert!(message(&v).contains("admin"), "{v}");
    let (s, v) = srv.call(
        "PUT",
        "/labs/kbt-pn-self/policy",
        Some(&erin),
        Some(Body::Json(wide)),
    );
    assert_eq!(s, 404, "{v}");
    assert_eq!(
        srv.call("GET", "/labs/kbt-pn-self/policy", Some(&erin), None)
            .0,
        404
    );
    // Nothing changed: the owner sees the member defaults and no grant.
    let (s, v) = srv.call("GET", "/labs/kbt-pn-self/policy", Some(&dana), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["restricted"], true, "{v}");
    assert_eq!(v["publish_ports"], json!([]), "{v}");
    assert_eq!(v["uplink_allow"], json!([]), "{v}");
    assert_eq!(v["set_by"], Value::Null, "{v}");
    assert_eq!(v["defaults"]["min_publish_port"], 1024, "{v}");
    let never = v["defaults"]["never_publish"].as_array().unwrap();
    assert!(
        never.contains(&json!(22)) && never.contains(&json!(srv.port)),
        "{v}"
    );
    let blocked = v["defaults"]["uplink_blocked"].as_array().unwrap();
    for r in [
        "10.0.0.0/8",
        "169.254.0.0/16",
        "192.168.0.0/16",
        "127.0.0.0/8",
    ] {
        assert!(blocked.contains(&json!(r)), "{r}: {v}");
    }
}

#[test]
fn admin_policy_is_validated_stored_and_shown() {
    let srv = Server::start();
    let adm = srv.admin_token();
    let dana = srv.user(&adm, "dana", "member", json!({}));
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&dana),
        yaml(&publishing_lab("kbt-pn-pol", 18_092, true)),
    );
    assert_eq!(s, 201, "{v}");
    let put = |body: Value| {
        srv.call(
            "PUT",
            "/labs/kbt-pn-pol/policy",
            Some(&adm),
            Some(Body::Json(body)),
        )
    };
    // Bad input names the problem and the fix; nothing is stored.
    let (s, v) = put(json!({"uplink_allow": ["10.1.0.0/8"]}));
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_policy");
    assert!(message(&v).contains("10.0.0.0/8"), "{v}");
    let (s, v) = put(json!({"publish_ports": ["9000-8000"]}));
    assert_eq!(s, 422, "{v}");
    assert!(message(&v).contains("8000-9000"), "{v}");
    let (s, v) = put(json!({"publish_ports": ["80"], "host_paths": ["/"]}));
    assert!(s == 400 || s == 422, "{s} {v}");
    let many: Vec<String> = (1000..1100).map(|p| p.to_string()).collect();
    let (s, v) = put(json!({ "publish_ports": many }));
    assert_eq!(s, 422, "{v}");
    let (_, v) = srv.call("GET", "/labs/kbt-pn-pol/policy", Some(&adm), None);
    assert_eq!(v["publish_ports"], json!([]), "{v}");
    // A good one is stored, shown to the owner, and recorded as an event.
    let (s, v) = put(json!({"publish_ports": ["80", "8000-8100"], "uplink_allow": ["10.0.0.0/8"]}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = srv.call("GET", "/labs/kbt-pn-pol/policy", Some(&dana), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["publish_ports"], json!(["80", "8000-8100"]), "{v}");
    assert_eq!(v["uplink_allow"], json!(["10.0.0.0/8"]), "{v}");
    assert_eq!(v["set_by"], "admin", "{v}");
    assert_eq!(v["owner"], "dana", "{v}");
}

#[test]
fn member_publishing_a_port_a_host_service_listens_on_is_refused_at_up() {
    let srv = Server::start();
    let adm = srv.admin_token();
    let dana = srv.user(&adm, "dana", "member", json!({}));
    let port = free_port();
    // Created while the port is free ...
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&dana),
        yaml(&publishing_lab("kbt-pn-busy", port, false)),
    );
    assert_eq!(s, 201, "{v}");
    let _down = Down {
        srv: &srv,
        labs: vec!["kbt-pn-busy".into()],
    };
    // ... then a host service takes it: a new lab on it is refused at create ...
    let service = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&dana),
        yaml(&publishing_lab("kbt-pn-busy2", port, false)),
    );
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "port_in_use", "{v}");
    assert_eq!(srv.lab_names(&dana), ["kbt-pn-busy"]);
    // ... and the existing one at up: 409 naming the port, before anything is made.
    let (s, v) = srv.call("POST", "/labs/kbt-pn-busy/up", Some(&dana), None);
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "port_in_use", "{v}");
    assert!(
        message(&v).contains(&format!("host port {port}/tcp is in use on the host")),
        "{v}"
    );
    assert!(!netns_exists("kbt-pn-busy"));
    let (_, ops) = srv.call("GET", "/operations", Some(&dana), None);
    assert_eq!(ops, json!([]), "no operation may start");
    drop(service);
}

#[test]
fn lab_publishing_a_port_another_lab_holds_is_refused_at_up() {
    let srv = Server::start();
    let adm = srv.admin_token();
    let dana = srv.user(&adm, "dana", "member", json!({}));
    let erin = srv.user(&adm, "erin", "member", json!({}));
    let port = free_port();
    let _down = Down {
        srv: &srv,
        labs: vec!["kbt-pn-a".into(), "kbt-pn-b".into(), "kbt-pn-c".into()],
    };
    // Dana's lab holds the port (its host network is up, whether or not its VM boots).
    for (tok, lab) in [
        (&dana, "kbt-pn-a"),
        (&erin, "kbt-pn-b"),
        (&dana, "kbt-pn-c"),
    ] {
        let (s, v) = srv.call(
            "POST",
            "/labs",
            Some(tok),
            yaml(&publishing_lab(lab, port, false)),
        );
        assert_eq!(s, 201, "{v}");
    }
    let (s, op) = srv.call("POST", "/labs/kbt-pn-a/up", Some(&dana), None);
    assert_eq!(s, 202, "{op}");
    srv.wait_op(&dana, &op, Duration::from_secs(240));
    assert!(
        netns_exists("kbt-pn-a"),
        "the first lab's network must be up"
    );

    // A new lab of erin's on that port: refused at create, "in use", dana's lab not named.
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&erin),
        yaml(&publishing_lab("kbt-pn-e", port, false)),
    );
    assert_eq!(s, 409, "{v}");
    assert!(
        !message(&v).contains("kbt-pn-a"),
        "another member's lab is named: {v}"
    );
    assert!(!srv.lab_names(&adm).contains(&"kbt-pn-e".to_string()));
    // Erin's lab created before: 409 "in use" at up, without naming dana's lab.
    let (s, v) = srv.call("POST", "/labs/kbt-pn-b/up", Some(&erin), None);
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "port_in_use", "{v}");
    assert!(
        message(&v).contains(&format!("host port {port}/tcp is in use")),
        "{v}"
    );
    assert!(
        !message(&v).contains("kbt-pn-a"),
        "another member's lab is named: {v}"
    );
    assert!(!netns_exists("kbt-pn-b"));
    // Dana's second lab: 409 naming her own lab that holds it.
    let (s, v) = srv.call("POST", "/labs/kbt-pn-c/up", Some(&dana), None);
    assert_eq!(s, 409, "{v}");
    assert!(message(&v).contains("published by lab 'kbt-pn-a'"), "{v}");
    // An admin bringing erin's lab up is refused too, and told which lab holds the port.
    let (s, v) = srv.call("POST", "/labs/kbt-pn-b/up", Some(&adm), None);
    assert_eq!(s, 409, "{v}");
    assert!(message(&v).contains("kbt-pn-a"), "{v}");
    // The controller refuses it as well (root's CLI, same state: no server in between).
    let f = srv.state.path().join("kbt-pn-d.yaml");
    std::fs::write(&f, publishing_lab("kbt-pn-d", port, false)).unwrap();
    let o = srv.cmd(&["up", f.to_str().unwrap()]).output().unwrap();
    let _down_d = Down {
        srv: &srv,
        labs: vec!["kbt-pn-d".into()],
    };
    assert!(!o.status.success(), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "host port {port}/tcp is already published by lab 'kbt-pn-a'"
        )),
        "{err}"
    );
    assert!(!netns_exists("kbt-pn-d"));
}

#[test]
fn host_forwarding_is_restored_when_the_last_uplinked_lab_goes_down() {
    let srv = Server::start();
    let holders = Path::new("/run/kobako/host-sysctl/ipv4.ip_forward/holders");
    let before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let f = srv.state.path().join("kbt-pn-fwd.yaml");
    std::fs::write(&f, publishing_lab("kbt-pn-fwd", free_port(), true)).unwrap();
    let _down = Down {
        srv: &srv,
        labs: vec!["kbt-pn-fwd".into()],
    };
    // Root's CLI drives the real controller; the VM may or may not boot, the uplink is made first.
    let _ = srv.cmd(&["up", f.to_str().unwrap()]).output().unwrap();
    assert!(netns_exists("kbt-pn-fwd"));
    assert!(
        holders.join("kbt-pn-fwd").exists(),
        "the lab holds ip_forward"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let o = srv.cmd(&["down", "kbt-pn-fwd"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!holders.join("kbt-pn-fwd").exists());
    let others = std::fs::read_dir(holders).map(|d| d.count()).unwrap_or(0);
    let now = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    if others == 0 {
        assert_eq!(now, before, "ip_forward not restored");
    } else {
        // Labs of other kobako processes on this host still need it.
        assert_eq!(now.trim(), "1");
    }
}

/// A host veth `host_if` (`host_cidr`) to `eth0` (`peer_cidr`) of a new namespace `ns`: a
/// network on this machine's side of the host, standing in for a LAN or the internet.
struct HostNet {
    ns: kobako_net::Netns,
    name: &'static str,
    host_if: &'static str,
}

impl HostNet {
    fn new(name: &'static str, host_if: &'static str, host_cidr: &str, peer_cidr: &str) -> HostNet {
        use kobako_net::{IfName, LinkChange, Netns, Rtnl};
        let _ = Netns::delete(name);
        let ns = Netns::create(name).unwrap();
        let host = Rtnl::open(&Netns::host().unwrap()).unwrap();
        host.delete_link(host_if).unwrap();
        let up = LinkChange {
            up: Some(true),
            ..Default::default()
        };
        let l = host
            .ensure_veth(
                &IfName::new(host_if).unwrap(),
                None,
                &IfName::new("eth0").unwrap(),
                Some(&ns),
                None,
                None,
            )
            .unwrap();
        host.add_addr(&l, host_cidr.parse().unwrap()).unwrap();
        host.set_link(&l, up).unwrap();
        let rt = Rtnl::open(&ns).unwrap();
        for n in ["lo", "eth0"] {
            let l = rt.require(n).unwrap();
            rt.set_link(&l, up).unwrap();
        }
        let e = rt.require("eth0").unwrap();
        rt.add_addr(&e, peer_cidr.parse().unwrap()).unwrap();
        HostNet { ns, name, host_if }
    }
}

impl Drop for HostNet {
    fn drop(&mut self) {
        use kobako_net::{Netns, Rtnl};
        let _ = Rtnl::open(&Netns::host().unwrap()).map(|r| r.delete_link(self.host_if));
        let _ = Netns::delete(self.name);
    }
}

/// An HTTP responder bound in `ns` (or the host with `None`) that answers with the client's
/// address and records every client.
struct Responder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Responder {
    fn new(ns: Option<&kobako_net::Netns>, addr: &str) -> Responder {
        use std::io::{Read, Write};
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let l = match ns {
            Some(ns) => ns
                .run(move || std::net::TcpListener::bind(addr).unwrap())
                .unwrap(),
            None => std::net::TcpListener::bind(addr).unwrap(),
        };
        l.set_nonblocking(true).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, st2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st2.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut buf = [0u8; 1024];
                        let _ = c.read(&mut buf);
                        let ip = peer.ip().to_string();
                        let _ = write!(
                            c,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{ip}",
                            ip.len()
                        );
                        s2.lock().unwrap().push(ip);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Responder { seen, stop }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An HTTP request from the lab's VM with busybox `nc` (busybox `wget` of the tiny image died
/// with SIGSEGV here): the response body, or `Err(why)`.
fn http_from_vm(srv: &Server, vm: &str, host: &str, port: u16) -> Result<String, String> {
    let sh = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}");
    let o = srv
        .cmd(&["exec", vm, "--", "sh", "-c", &sh])
        .output()
        .unwrap();
    let out = text(&o.stdout);
    match out.split_once("\r\n\r\n") {
        Some((_, body)) if o.status.success() => Ok(body.to_string()),
        _ => Err(format!(
            "exit {:?}: {out:?} {}",
            o.status.code(),
            text(&o.stderr)
        )),
    }
}

/// The one real-VM check of egress: a tiny VM in a lab with `uplink: true`.
#[test]
fn vm_in_an_uplinked_lab_cannot_reach_the_hosts_lan_until_an_admin_allows_it() {
    let lan = HostNet::new("kbt-pnlan", "kbpnlan0", "10.234.0.1/24", "10.234.0.2/24");
    let internet = HostNet::new("kbt-pnpub", "kbpnpub0", "198.18.9.1/24", "198.18.9.2/24");
    let on_lan = Responder::new(Some(&lan.ns), "10.234.0.2:7200");
    let on_internet = Responder::new(Some(&internet.ns), "198.18.9.2:7200");
    let on_host = Responder::new(None, "10.234.0.1:7201");

    let srv = Server::start();
    let adm = srv.admin_token();
    let lab = "kbt-pn-vm";
    let _down = Down {
        srv: &srv,
        labs: vec![lab.into()],
    };
    let file = format!(
        "name: {lab}\ndefaults: {{ image: tiny, memory: 96M }}\nnetworks:\n  lan: {{ subnet: 10.80.0.0/24 }}\nnodes:\n  n:\n    vms:\n      v: {{ interfaces: {{ eth1: {{ network: lan }} }} }}\nuplink: true\n"
    );
    let (s, v) = srv.call("POST", "/labs", Some(&adm), yaml(&file));
    assert_eq!(s, 201, "{v}");
    let up = |what: &str| {
        let (s, op) = srv.call("POST", &format!("/labs/{lab}/up"), Some(&adm), None);
        assert_eq!(s, 202, "{what}: {op}");
        let done = srv.wait_op(&adm, &op, Duration::from_secs(300));
        assert_eq!(done["state"], "succeeded", "{what}: {done}");
    };
    up("first up");
    let vm = format!("{lab}.n.v");

    // The uplink works: the internet stand-in answers and sees the host.
    let r = http_from_vm(&srv, &vm, "198.18.9.2", 7200);
    assert_eq!(r.as_deref(), Ok("198.18.9.1"), "uplink to a public address");
    assert_eq!(on_internet.seen(), ["198.18.9.1"]);

    // The attacks: the LAN behind the host, and the host's own address on it.
    let r = http_from_vm(&srv, &vm, "10.234.0.2", 7200);
    assert!(r.is_err(), "the VM reached the host's LAN: {r:?}");
    let r = http_from_vm(&srv, &vm, "10.234.0.1", 7201);
    assert!(r.is_err(), "the VM reached the host: {r:?}");
    assert!(on_lan.seen().is_empty() && on_host.seen().is_empty());

    // An admin allows the LAN for this lab; the next up applies it. The host stays closed.
    let (s, v) = srv.call(
        "PUT",
        &format!("/labs/{lab}/policy"),
        Some(&adm),
        Some(Body::Json(json!({"uplink_allow": ["10.234.0.0/24"]}))),
    );
    assert_eq!(s, 200, "{v}");
    up("up after the policy");
    let r = http_from_vm(&srv, &vm, "10.234.0.2", 7200);
    assert_eq!(r.as_deref(), Ok("10.234.0.1"), "allowed LAN");
    let r = http_from_vm(&srv, &vm, "10.234.0.1", 7201);
    assert!(r.is_err(), "the VM reached the host: {r:?}");
    assert!(on_host.seen().is_empty());
}
