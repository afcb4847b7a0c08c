//! Attacks on the tenant boundary through lab files and scenario files (issue 17 items 1, 2
//! and 4), each tried by an ordinary member against a real `kobako serve`: host paths in a
//! lab file, store names that are also server files, WASM modules from the server's disk,
//! scenario steps aimed at another member's VMs, and documents built to exhaust the parser.
//! Each test asserts the attack fails with an error naming the problem and that nothing was
//! created or touched.

mod common;

use std::time::{Duration, Instant};

use common::server::{tok, yaml, Body, Server};
use serde_json::json;

/// The admin's token and a fresh member's (`name`).
fn admin_and_member(srv: &Server, name: &str) -> (String, String) {
    let admin = srv.admin_token();
    let member = srv.user(&admin, name, "member", json!({}));
    (admin, member)
}

fn one_vm(lab: &str, vm: &str) -> String {
    format!("name: {lab}\nnodes:\n  n:\n    vms:\n      v: {vm}\n")
}

#[test]
fn member_lab_file_host_paths_are_refused_and_nothing_is_created() {
    let srv = Server::start();
    let (admin, eve) = admin_and_member(&srv, "eve");
    let jwt_key = srv.state.path().join("server/jwt.key");
    assert!(jwt_key.exists(), "the server keeps its JWT key there");
    let key = jwt_key.display().to_string();
    // Every field that names a host file, directly and through `defaults` and templates.
    let attacks = [
        ("image", one_vm("atk1", &format!("{{ image: {key} }}")), "image"),
        (
            "kernel",
            one_vm("atk2", "{ kernel: /var/cache/kobako/kernel/vmlinux }"),
            "kernel",
        ),
        (
            "files src",
            one_vm("atk3", &format!("{{ files: {{ /tmp/k: {{ src: {key} }} }} }}")),
            "files[/tmp/k].src",
        ),
        (
            "defaults.image",
            format!("name: atk4\ndefaults: {{ image: {key} }}\nnodes:\n  n:\n    vms:\n      v: {{}}\n"),
            "image",
        ),
        (
            "template image",
            "name: atk5\ntemplates:\n  t: { vms: { v: { image: /etc/shadow } } }\nnodes:\n  n: { template: t }\n".to_string(),
            "image",
        ),
        (
            "relative image path",
            one_vm("atk6", "{ image: ../../var/lib/kobako/kobako.db }"),
            "image",
        ),
    ];
    for (what, text, field) in &attacks {
        let (s, v) = srv.call("POST", "/labs", Some(&eve), yaml(text));
        assert_eq!(s, 403, "{what}: {v}");
        assert_eq!(v["error"]["code"], "host_path_forbidden", "{what}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(field) && msg.contains("only admins"),
            "{what}: {msg}"
        );
        assert!(
            !v["error"]["details"].as_array().unwrap().is_empty(),
            "{what}: every field listed: {v}"
        );
    }
    assert!(srv.lab_names(&admin).is_empty(), "nothing was stored");

    // An admin keeps host paths (documented in docs/SECURITY.md) — to files that are images:
    // the server's key is none, refused at create like every missing or unusable image.
    let (s, v) = srv.call("POST", "/labs", Some(&admin), yaml(&attacks[0].1));
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "unknown_image", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not an initramfs, ext4 or qcow2 image"),
        "{v}"
    );
    let img = srv.state.path().join("admin-initramfs.cpio");
    std::fs::write(&img, b"070701 an initramfs by its magic").unwrap();
    let admins = one_vm("atk1", &format!("{{ image: {} }}", img.display()));
    let (s, v) = srv.call("POST", "/labs", Some(&admin), yaml(&admins));
    assert_eq!(s, 201, "{v}");
    // ... but a member cannot boot a lab that holds one, even one stored before the check.
    let (s, v) = srv.call("POST", "/labs/atk1/up", Some(&eve), None);
    assert!(s == 404 || s == 403, "{v}");
}

#[test]
fn member_image_named_like_a_server_file_is_a_store_name_never_a_path() {
    // The server runs in its state directory, where `kobako.db` is a file: a bare image name
    // must still mean "the store's image of that name" (unknown here), never that file.
    let srv = Server::start();
    let (_admin, eve) = admin_and_member(&srv, "eve");
    assert!(srv.state.path().join("kobako.db").exists());
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&eve),
        yaml(&one_vm("cwd", "{ image: kobako.db }")),
    );
    // A valid store name, unknown in the store: refused at create (the check `kobako up` and
    // `lab check` make), naming the image and how to get it; nothing is stored or started.
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["code"], "unknown_image", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("unknown image 'kobako.db'"), "{v}");
    assert!(msg.contains("nothing was created"), "{v}");
    assert!(v["error"]["details"][0]
        .as_str()
        .is_some_and(|d| d.contains("nodes.n.vms.v.image")));
    let (s, _) = srv.call("GET", "/labs/cwd", Some(&eve), None);
    assert_eq!(s, 404, "a refused lab was stored");
    assert!(
        !srv.run.path().join("vms/cwd.n.v").exists(),
        "no VM was started"
    );
}

#[test]
fn member_scenario_wasm_module_from_the_server_disk_is_refused() {
    let srv = Server::start();
    let (_admin, eve) = admin_and_member(&srv, "eve");
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&eve),
        yaml(&one_vm("wasmatk", "{ image: tiny }")),
    );
    assert_eq!(s, 201, "{v}");
    let examples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scenarios");
    let module = examples.join("wasm/delay-probe/delay_probe.wasm");
    assert!(module.exists());
    // An absolute module path, and one relative to a `?file=` placed in the examples.
    for (query, m) in [
        ("", module.display().to_string()),
        (
            &*format!("?file={}", examples.join("x.yaml").display()),
            "wasm/delay-probe/delay_probe.wasm".to_string(),
        ),
    ] {
        let text = format!("name: s\nsteps:\n  - wasm: {{ module: {m} }}\n");
        let (s, v) = srv.call(
            "POST",
            &format!("/labs/wasmatk/scenarios{query}"),
            Some(&eve),
            yaml(&text),
        );
        if query.is_empty() {
            assert_eq!(s, 422, "{v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains("only admins may name"), "{msg}");
        } else {
            // `file` is a label: a path there is refused as such or, if accepted as a label,
            // still opens nothing.
            assert!(s == 400 || s == 422, "{v}");
        }
    }
    let (_, ops) = srv.call("GET", "/operations", Some(&eve), None);
    assert!(
        ops.as_array().is_none_or(|a| a.is_empty()),
        "nothing ran: {ops}"
    );
}

#[test]
fn documents_built_to_exhaust_the_parser_are_refused_and_the_server_keeps_serving() {
    let srv = Server::start();
    let (admin, eve) = admin_and_member(&srv, "eve");
    // "Billion laughs": ten levels of nine aliases, ~3.9e9 values once expanded.
    let mut bomb = String::from("name: bomb\nx0: &x0 [a, a, a, a, a, a, a, a, a]\n");
    for i in 1..10 {
        bomb += &format!(
            "x{i}: &x{i} [{}]\n",
            vec![format!("*x{}", i - 1); 9].join(", ")
        );
    }
    let deep = format!(
        "name: deep\nnodes: {}1{}\n",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let big = format!("name: big\ndescription: \"{}\"\n", "x".repeat(1024 * 1024));
    let t0 = Instant::now();
    // Meanwhile, another client keeps being served.
    let health = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            let mut worst = Duration::ZERO;
            while t0.elapsed() < Duration::from_secs(3) {
                let t = Instant::now();
                let (s, _) = srv.call("GET", "/labs", Some(&admin), None);
                assert_eq!(s, 200);
                worst = worst.max(t.elapsed());
            }
            worst
        });
        for (what, text, status, needle) in [
            ("alias bomb", &bomb, 400, "more than 100000 values"),
            ("deep nesting", &deep, 400, "more than 64 deep"),
            ("oversized", &big, 413, ""),
        ] {
            for path in ["/labs", "/labs/none/scenarios"] {
                let (s, v) = srv.call("POST", path, Some(&eve), yaml(text));
                if path == "/labs/none/scenarios" {
                    // No such lab: refused before the document is even read.
                    assert!(s == 404 || s == 413, "{what} {path}: {s} {v}");
                    continue;
                }
                assert_eq!(s, status, "{what}: {v}");
                if !needle.is_empty() {
                    let msg = v["error"]["message"].as_str().unwrap();
                    assert!(msg.contains(needle), "{what}: {msg}");
                }
            }
        }
        h.join().unwrap()
    });
    eprintln!("slowest GET /labs while the attacks ran: {health:?}");
    assert!(srv.lab_names(&admin).is_empty());
    assert_eq!(srv.call("GET", "/labs", Some(&admin), None).0, 200);
    let log = srv.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn member_scenario_aimed_at_another_members_vm_fails_and_touches_nothing() {
    let srv = Server::start();
    let (admin, alice) = admin_and_member(&srv, "alice");
    let (s, v) = srv.call(
        "POST",
        "/users",
        Some(&admin),
        Some(Body::Json(
            json!({"name": "mallory", "password": "mallory-password", "role": "member"}),
        )),
    );
    assert_eq!(s, 201, "{v}");
    let mallory = tok(&srv.login("mallory", "mallory-password"));
    for (who, lab) in [(&alice, "victim"), (&mallory, "attacker")] {
        let (s, v) = srv.call(
            "POST",
            "/labs",
            Some(who),
            yaml(&one_vm(lab, "{ image: tiny }")),
        );
        assert_eq!(s, 201, "{v}");
        let (s, op) = srv.call("POST", &format!("/labs/{lab}/up"), Some(who), None);
        assert_eq!(s, 202, "{op}");
        let done = srv.wait_op(who, &op, Duration::from_secs(180));
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let victim_pid = || {
        let (s, v) = srv.call("GET", "/vms/victim.n.v", Some(&alice), None);
        assert_eq!(s, 200, "{v}");
        v["pid"].as_i64().expect("victim VM runs")
    };
    let pid = victim_pid();
    // Mallory cannot even see the victim's VM.
    assert_eq!(
        srv.call("GET", "/vms/victim.n.v", Some(&mallory), None).0,
        404
    );
    // YAML steps aimed at it by every spelling: refused before anything runs.
    for target in [
        "victim/n.v",
        "victim.n.v",
        "attacker/../victim/n.v",
        "n.v/../../victim",
    ] {
        for step in [
            format!("pause: {target}"),
            format!("kill: {target}"),
            format!("exec: {{ vm: \"{target}\", cmd: \"touch /tmp/pwned\" }}"),
        ] {
            let text = format!("name: s\nsteps:\n  - {step}\n");
            let (s, v) = srv.call(
                "POST",
                "/labs/attacker/scenarios",
                Some(&mallory),
                yaml(&text),
            );
            assert_eq!(s, 422, "{step}: {v}");
        }
    }
    // A WASM step (an admin's: members cannot run modules at all) aimed at another lab's VM
    // through the host API fails inside the step; the victim is untouched.
    let module = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/scenarios/wasm/delay-probe/delay_probe.wasm");
    for target in ["victim/n.v", "victim.n.v"] {
        let text = format!(
            "name: s\nsteps:\n  - wasm:\n      module: {}\n      vars: {{ from: \"{target}\", to: 10.0.0.1, link: none, delay_ms: 1 }}\n      timeout: 30s\n",
            module.display()
        );
        let (s, op) = srv.call(
            "POST",
            "/labs/attacker/scenarios",
            Some(&admin),
            yaml(&text),
        );
        assert_eq!(s, 202, "{op}");
        let done = srv.wait_op(&admin, &op, Duration::from_secs(120));
        assert_eq!(done["state"], "failed", "{done}");
        let report = done["result"]["report"].to_string();
        assert!(
            report.contains("not in lab") || report.contains("not a VM of lab"),
            "{target}: {report}"
        );
    }
    assert_eq!(
        victim_pid(),
        pid,
        "the victim VM was neither killed nor restarted"
    );
    let (s, v) = srv.call(
        "POST",
        "/vms/victim.n.v/exec",
        Some(&alice),
        Some(Body::Json(
            json!({"argv": ["sh", "-c", "test -e /tmp/pwned && echo PWNED; cat /proc/loadavg"]}),
        )),
    );
    assert_eq!(s, 200, "{v}");
    assert!(!v.to_string().contains("PWNED"), "{v}");
    for (who, lab) in [(&alice, "victim"), (&mallory, "attacker")] {
        let (_, op) = srv.call("POST", &format!("/labs/{lab}/down"), Some(who), None);
        srv.wait_op(who, &op, Duration::from_secs(120));
    }
}

#[test]
fn a_disk_whose_header_names_a_host_file_as_backing_is_not_booted() {
    // What a guest could leave in a raw disk it was given by path: a qcow2 header whose
    // backing file is a host secret. The next boot must not open it.
    let env = common::Env::new();
    let disk = env.run.path().join("disk.img");
    let secret = env.run.path().join("secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&disk)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    common::assert_fails_with(
        &env,
        &[
            "vm",
            "run",
            "-d",
            "--name",
            "backing",
            "--image",
            disk.to_str().unwrap(),
        ],
        "names a backing file",
    );
}

#[test]
fn member_replacing_a_lab_file_gets_the_create_checks_and_the_lab_keeps_its_objects() {
    let srv = Server::start();
    let (_admin, eve) = admin_and_member(&srv, "eve");
    let (s, v) = srv.call(
        "POST",
        "/labs",
        Some(&eve),
        yaml(&one_vm("edit", "{ image: tiny }")),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = srv.call(
        "PUT",
        "/labs/edit/layout",
        Some(&eve),
        Some(Body::Json(
            json!({"positions": {"n": {"x": 1.0, "y": 2.0}}}),
        )),
    );
    assert_eq!(s, 200, "{v}");
    // A replacement is a lab file like any other: host paths, another name, another member.
    let (s, v) = srv.call(
        "PUT",
        "/labs/edit",
        Some(&eve),
        yaml(&one_vm("edit", "{ image: /etc/shadow }")),
    );
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "host_path_forbidden");
    let (s, v) = srv.call(
        "PUT",
        "/labs/edit",
        Some(&eve),
        yaml(&one_vm("other", "{ image: tiny }")),
    );
    assert_eq!(s, 422, "{v}");
    let (_, mallory) = {
        let admin = tok(&srv.login("admin", &srv.admin_password()));
        let (s, v) = srv.call(
            "POST",
            "/users",
            Some(&admin),
            Some(Body::Json(
                json!({"name": "mallory", "password": "mallory-password", "role": "member"}),
            )),
        );
        assert_eq!(s, 201, "{v}");
        (admin, tok(&srv.login("mallory", "mallory-password")))
    };
    let (s, _) = srv.call(
        "PUT",
        "/labs/edit",
        Some(&mallory),
        yaml(&one_vm("edit", "{ image: tiny, memory: 256M }")),
    );
    assert_eq!(s, 404, "another member's lab is not there for mallory");
    let (_, lab) = srv.call("GET", "/labs/edit", Some(&eve), None);
    assert_eq!(lab["spec"]["nodes"][0]["vms"][0]["image"], "tiny", "{lab}");
    assert_eq!(lab["spec"]["nodes"][0]["vms"][0]["memory"], "128M", "{lab}");
    // The owner's replacement is taken, and the lab keeps its layout.
    let (s, v) = srv.call(
        "PUT",
        "/labs/edit?file=edit.yaml",
        Some(&eve),
        yaml(&one_vm("edit", "{ image: tiny, memory: 256M }")),
    );
    assert_eq!(s, 200, "{v}");
    let (_, lab) = srv.call("GET", "/labs/edit", Some(&eve), None);
    assert_eq!(lab["spec"]["nodes"][0]["vms"][0]["memory"], "256M", "{lab}");
    let (s, layout) = srv.call("GET", "/labs/edit/layout", Some(&eve), None);
    assert_eq!(s, 200);
    assert_eq!(layout["positions"]["n"]["x"], 1.0, "{layout}");
}

#[test]
fn qemu_runs_under_its_sandbox_without_privileges_core_dumps_or_spawning() {
    // The first pieces of the jail (issue 18): what a guest that escapes into QEMU finds.
    let env = common::Env::new();
    let name = format!("jail{}", std::process::id() % 100_000);
    common::run_detached(&env, &name, &[]);
    let pid: i32 = std::fs::read_to_string(env.vms_dir().join(&name).join("vm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|x| x.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("Seccomp:"), "2", "a seccomp filter: {status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().nth(4) == Some("0"),
        "no core dumps of guest memory: {core}"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("spawn=deny"), "{cmdline}");
    // And it still snapshots and restores: migrations go through descriptors, not `cat`.
    let snap = env.run.path().join("snap");
    common::ok(&env.run(&["vm", "snapshot", &name, snap.to_str().unwrap()]));
    let again = format!("{name}r");
    common::ok(&env.run(&["vm", "restore", snap.to_str().unwrap(), "--name", &again]));
    let o = common::exec(&env, &again, &["uname", "-r"]);
    assert!(o.status.success(), "{}", common::text(&o.stderr));
    for n in [&name, &again] {
        common::ok(&env.run(&["vm", "stop", n]));
    }
    env.assert_clean();
}
