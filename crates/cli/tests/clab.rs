//! containerlab topologies run as they are (`kobako up X.clab.yml`) on real guests: the
//! topologies of examples/clab (a two-node link, a bridge lab, a leaf-spine fabric on FRR)
//! boot and pass traffic; `kobako import clab` writes a lab file `up` takes; a topology that
//! kobako cannot honour is refused with the line and what to do, before anything starts.

mod common;

use common::{lab_cmd, Down, Env};
use std::path::{Path, PathBuf};
use std::process::Output;

/// examples/clab copied into the test's run directory, every topology renamed `prefix-NAME`
/// (so tests never collide with a user's lab).
fn topologies(env: &Env, prefix: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clab");
    let dst = env.run.path().join("clab");
    copy_dir(&src, &dst);
    for e in std::fs::read_dir(&dst).unwrap().flatten() {
        let p = e.path();
        if p.to_string_lossy().ends_with(".clab.yml") {
            let text = std::fs::read_to_string(&p).unwrap();
            let text = text.replacen("\nname: ", &format!("\nname: {prefix}-"), 1);
            std::fs::write(&p, text).unwrap();
        }
    }
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A run directory and a lab state of the test's own (never the machine's labs).
struct Lab {
    env: Env,
    state: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            env: Env::new(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        lab_cmd(&self.env, self.state.path(), args)
    }

    /// `kobako ARGS`, which must succeed: its stdout and stderr.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "kobako {args:?} failed:\n{}", text(&o));
        text(&o)
    }

    /// Takes `lab` down when the test ends, passing or not.
    fn down_at_end<'a>(&'a self, lab: &'a str) -> Down<'a> {
        Down {
            env: &self.env,
            state: self.state.path(),
            lab,
        }
    }
}

#[test]
fn two_node_and_bridge_topologies_boot_and_pass_traffic() {
    let t = Lab::new();
    let env = &t.env;
    let dir = topologies(env, "ct");
    let two = dir.join("two-node.clab.yml");
    let out = t.ok(&["up", two.to_str().unwrap()]);
    let _d = t.down_at_end("ct-two-node");
    assert!(
        out.contains("container image alpine:latest runs as kobako image tiny"),
        "{out}"
    );
    assert!(out.contains("2 of 2 VMs ready"), "{out}");
    // `NODE` names the VM of a one-VM node, as `docker exec clab-LAB-NODE` would.
    let ping = t.ok(&[
        "exec",
        "ct-two-node/n1",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "3",
        "192.168.0.2",
    ]);
    assert!(ping.contains("2 packets received"), "{ping}");
    // eth0 is on the management network at containerlab's default subnet.
    let a = t.ok(&["exec", "ct-two-node/n2", "--", "ip", "addr", "show", "eth0"]);
    assert!(a.contains("inet 172.20.20."), "{a}");
    t.ok(&["down", "ct-two-node"]);

    let br = dir.join("bridge.clab.yml");
    let out = t.ok(&["up", br.to_str().unwrap()]);
    let _d = t.down_at_end("ct-bridge");
    assert!(out.contains("3 of 3 VMs ready"), "{out}");
    assert!(
        out.contains("ubuntu:24.04 runs as kobako image ubuntu"),
        "{out}"
    );
    let os = t.ok(&["exec", "ct-bridge/h3", "--", "cat", "/etc/os-release"]);
    assert!(os.contains("Ubuntu 24.04"), "{os}");
    for (from, to) in [
        ("h1", "10.10.0.2"),
        ("h1", "10.10.0.3"),
        ("h3", "10.10.0.2"),
    ] {
        let p = t.ok(&[
            "exec",
            &format!("ct-bridge/{from}"),
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "3",
            to,
        ]);
        assert!(p.contains(" 0% packet loss"), "{from} -> {to}: {p}");
    }
    // A bound directory was copied in, its script still executable, and `exec` ran it.
    let a = t.ok(&[
        "exec",
        "ct-bridge/h1",
        "--",
        "sh",
        "-c",
        "cat /tmp/announce /opt/lab/motd",
    ]);
    assert!(
        a.contains("h1 is on br-lan") && a.contains("hosts on br-lan"),
        "{a}"
    );
    // mgmt-ipv4 is the address of eth0, in the topology's management subnet.
    let a = t.ok(&["exec", "ct-bridge/h1", "--", "ip", "addr", "show", "eth0"]);
    assert!(a.contains("inet 172.20.30.11/24"), "{a}");
    t.ok(&["down", "ct-bridge"]);
    env.assert_clean();
}

#[test]
fn a_leaf_spine_fabric_on_frr_converges_and_routes() {
    let t = Lab::new();
    let env = &t.env;
    let dir = topologies(env, "cf");
    let f = dir.join("leaf-spine.clab.yml");
    let t0 = std::time::Instant::now();
    let out = t.ok(&["up", f.to_str().unwrap()]);
    let _d = t.down_at_end("cf-leaf-spine");
    eprintln!(
        "leaf-spine up in {:.1} s:\n{out}",
        t0.elapsed().as_secs_f64()
    );
    assert!(out.contains("5 of 5 VMs ready"), "{out}");
    assert!(out.contains("runs as kobako image debian-frr"), "{out}");
    // Ready means converged: each leaf has the other's host subnet from BGP already.
    let r = t.ok(&[
        "exec",
        "cf-leaf-spine/leaf1",
        "--",
        "vtysh",
        "-c",
        "show ip route 10.20.2.0/24",
    ]);
    assert!(r.contains("Known via \"bgp\""), "{r}");
    let s = t.ok(&[
        "exec",
        "cf-leaf-spine/spine1",
        "--",
        "vtysh",
        "-c",
        "show bgp summary json",
    ]);
    assert_eq!(
        s.matches("\"state\":\"Established\"").count(),
        2,
        "spine1 has both leaves established:\n{s}"
    );
    // h1 -> h2 crosses leaf1, spine1, leaf2: the reply comes back with a TTL of 64 - 3.
    let p = t.ok(&[
        "exec",
        "cf-leaf-spine/h1",
        "--",
        "ping",
        "-c",
        "3",
        "-W",
        "3",
        "10.20.2.10",
    ]);
    assert!(p.contains("3 packets received"), "{p}");
    assert!(p.contains("ttl=61"), "three routers on the path: {p}");
    t.ok(&["down", "cf-leaf-spine"]);
    env.assert_clean();
}

#[test]
fn import_writes_a_lab_file_up_takes_and_bad_topologies_are_refused_before_anything_starts() {
    let t = Lab::new();
    let env = &t.env;
    let dir = topologies(env, "ci");
    let out_file = env.run.path().join("leaf-spine.yaml");
    let o = t.ok(&[
        "import",
        "clab",
        dir.join("leaf-spine.clab.yml").to_str().unwrap(),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(o.contains("written as the kobako lab file"), "{o}");
    let lab = std::fs::read_to_string(&out_file).unwrap();
    assert!(
        lab.contains("image: debian-frr") && lab.contains("/etc/frr/frr.conf"),
        "{lab}"
    );
    let c = t.ok(&["lab", "check", out_file.to_str().unwrap()]);
    assert!(
        c.contains("lab ci-leaf-spine: OK — 5 node(s), 5 VM(s)"),
        "{c}"
    );

    let bad = dir.join("bad.clab.yml");
    std::fs::write(
        &bad,
        "name: ci-bad\ntopology:\n  nodes:\n    srl:\n      kind: nokia_srlinux\n      image: ghcr.io/nokia/srlinux\n    h1:\n      kind: linux\n      image: alpine\n      network-mode: host\n  links:\n    - endpoints: [\"h1:eth1\", \"host:h1\"]\n",
    )
    .unwrap();
    let o = t.run(&["up", bad.to_str().unwrap()]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("bad.clab.yml:5:") && out.contains("vendor network OS"),
        "{out}"
    );
    assert!(
        out.contains("bad.clab.yml:10:") && out.contains("`network-mode` is not supported"),
        "{out}"
    );
    assert!(
        out.contains("bad.clab.yml:12:") && out.contains("isolated from its host"),
        "{out}"
    );
    assert!(out.contains("nothing was started"), "{out}");
    let ls = t.ok(&["ls"]);
    assert!(!ls.contains("ci-bad"), "{ls}");
    let o = t.run(&["import", "clab", bad.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("nothing was written"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_server_takes_a_topology_named_clab_yml_and_keeps_members_off_host_files() {
    use common::server::{yaml_bytes, Server};
    use serde_json::json;
    use std::time::Duration;
    let srv = Server::start();
    let admin = srv.admin_token();
    let bob = srv.user(
        &admin,
        "bob",
        "member",
        json!({"max_vms": 2, "max_memory_mib": 512}),
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clab/two-node.clab.yml");
    let text = std::fs::read_to_string(src)
        .unwrap()
        .replace("name: two-node", "name: cs-two");
    let (s, v) = srv.call(
        "POST",
        "/labs?file=two-node.clab.yml",
        Some(&bob),
        yaml_bytes(text.into_bytes()),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v[0]["name"], "cs-two", "{v}");
    srv.lab_up(&bob, "cs-two");
    let (_, l) = srv.call("GET", "/labs/cs-two", Some(&bob), None);
    assert_eq!(l["state"], "ready", "{l}");

    // A member's topology may not bind host files; a relative one needs its directory.
    let bind = |src: &str| {
        format!("name: cs-bind\ntopology:\n  nodes:\n    a:\n      kind: linux\n      image: alpine\n      binds: [\"{src}:/etc/x\"]\n")
    };
    let (s, v) = srv.call(
        "POST",
        "/labs?file=b.clab.yml",
        Some(&bob),
        yaml_bytes(bind("/etc/shadow").into_bytes()),
    );
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "host_path_forbidden", "{v}");
    let (s, v) = srv.call(
        "POST",
        "/labs?file=b.clab.yml",
        Some(&admin),
        yaml_bytes(bind("cfg/x").into_bytes()),
    );
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("b.clab.yml:7:"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("came without its directory"),
        "{v}"
    );

    let (s, op) = srv.call("POST", "/labs/cs-two/down", Some(&bob), None);
    assert_eq!(s, 202, "{op}");
    let done = srv.wait_op(&bob, &op, Duration::from_secs(120));
    assert_eq!(done["state"], "succeeded", "{done}");
}
