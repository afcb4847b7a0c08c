//! Real-guest lab tests: `kobako up` of an example lab file, the network paths it declares (and
//! only those), `down` leaving nothing behind, `up` twice converging.

mod common;

use common::*;

/// A lab file from examples/ under another name (so tests never collide with a user's lab).
fn example_as(env: &Env, example: &str, name: &str) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(example);
    let text = std::fs::read_to_string(&src).unwrap();
    let first = text
        .lines()
        .find(|l| l.starts_with("name:"))
        .expect("example has a name");
    let text = text.replacen(first, &format!("name: {name}"), 1);
    let p = env.run.path().join(example);
    std::fs::write(&p, text).unwrap();
    p
}

fn lab_cmd(env: &Env, state: &std::path::Path, args: &[&str]) -> std::process::Output {
    env.cmd(args).env("KOBAKO_STATE", state).output().unwrap()
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

#[test]
fn three_networks_declared_paths_work_and_undeclared_do_not() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let file = example_as(&env, "three-networks.yaml", "kbt-paths");
    let o = lab_cmd(&env, state.path(), &["up", file.to_str().unwrap()]);
    let out = ok(&o);
    assert!(out.contains("5 of 5 VMs ready"), "{out}");
    assert!(netns_exists("kb-kbt-paths"));

    let hosts = [
        ("a", "10.1.0.10"),
        ("b", "10.2.0.10"),
        ("c", "10.3.0.10"),
        ("island", "10.4.0.10"),
    ];
    let mut failures = Vec::new();
    for (from, _) in &hosts {
        for (to, ip) in &hosts {
            if from == to {
                continue;
            }
            // Declared: a, b and c reach each other through core.router; island reaches nobody.
            let declared = *from != "island" && *to != "island";
            let o = lab_cmd(
                &env,
                state.path(),
                &[
                    "exec",
                    &format!("kbt-paths.{from}.host"),
                    "--",
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "3",
                    ip,
                ],
            );
            if o.status.success() != declared {
                failures.push(format!(
                    "{from} -> {to} ({ip}): {} but should {}",
                    if o.status.success() {
                        "reachable"
                    } else {
                        "unreachable"
                    },
                    if declared { "be reachable" } else { "not be" }
                ));
            }
        }
    }
    // The router reaches every network it joins, not the island.
    for (ip, declared) in [
        ("10.1.0.10", true),
        ("10.3.0.10", true),
        ("10.4.0.10", false),
    ] {
        let o = lab_cmd(
            &env,
            state.path(),
            &[
                "exec",
                "kbt-paths.core.router",
                "--",
                "ping",
                "-c",
                "1",
                "-W",
                "3",
                ip,
            ],
        );
        if o.status.success() != declared {
            failures.push(format!("router -> {ip}: wrong reachability"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Interfaces carry the names and addresses of the lab file.
    let addr = ok(&lab_cmd(
        &env,
        state.path(),
        &["exec", "kbt-paths.core.router", "--", "ip", "-4", "addr"],
    ));
    for want in [
        "eth1",
        "10.1.0.1/24",
        "eth2",
        "10.2.0.1/24",
        "eth3",
        "10.3.0.1/24",
    ] {
        assert!(addr.contains(want), "{want} missing in {addr}");
    }

    // `up` again converges: nothing restarted, nothing duplicated.
    let pid_before =
        std::fs::read_to_string(env.run.path().join("vms/kbt-paths.a.host/vm.pid")).unwrap();
    let out = ok(&lab_cmd(
        &env,
        state.path(),
        &["up", file.to_str().unwrap()],
    ));
    assert!(out.contains("5 of 5 VMs ready"), "{out}");
    let pid_after =
        std::fs::read_to_string(env.run.path().join("vms/kbt-paths.a.host/vm.pid")).unwrap();
    assert_eq!(pid_before, pid_after, "up restarted a running VM");
    assert_eq!(env.leftovers().len(), 5);

    let ls = ok(&lab_cmd(&env, state.path(), &["ls", "--json"]));
    assert!(ls.contains("\"kbt-paths\""), "{ls}");

    ok(&lab_cmd(&env, state.path(), &["down", "kbt-paths"]));
    env.assert_clean();
    assert!(!netns_exists("kb-kbt-paths"), "namespace left behind");
    assert!(std::fs::read_dir(state.path().join("labs"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
    // Down twice: a clear error, nothing else.
    let o = lab_cmd(&env, state.path(), &["down", "kbt-paths"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("not up"), "{}", text(&o.stderr));
}

#[test]
fn a_bad_lab_file_starts_nothing() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = env.run.path().join("bad.yaml");
    std::fs::write(
        &p,
        "name: kbt-bad\nnodes:\n  web:\n    vms:\n      api: { memory: 10T }\nlinks:\n  - endpoints: [\"web.ap:eth1\", \"web.api:eth2\"]\n",
    )
    .unwrap();
    let o = lab_cmd(&env, state.path(), &["up", p.to_str().unwrap()]);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("bad.yaml:"), "{err}");
    assert!(err.contains("nothing was started"), "{err}");
    assert!(!netns_exists("kb-kbt-bad"));
    env.assert_clean();
}

#[test]
fn link_down_cuts_traffic_and_up_heals_it() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let p = env.run.path().join("link.yaml");
    std::fs::write(
        &p,
        r#"name: kbt-link
defaults: { image: tiny, memory: 96M }
nodes:
  a:
    vms:
      h: { interfaces: { eth1: { addresses: [10.77.0.1/30] } } }
  b:
    vms:
      h: { interfaces: { eth1: { addresses: [10.77.0.2/30] } } }
links:
  - { name: ab, endpoints: ["a.h:eth1", "b.h:eth1"] }
"#,
    )
    .unwrap();
    let out = ok(&lab_cmd(&env, state.path(), &["up", p.to_str().unwrap()]));
    assert!(out.contains("2 of 2 VMs ready"), "{out}");
    let ping = |env: &Env| {
        lab_cmd(
            env,
            state.path(),
            &[
                "exec",
                "kbt-link.a.h",
                "--",
                "ping",
                "-c",
                "2",
                "-W",
                "2",
                "10.77.0.2",
            ],
        )
        .status
        .success()
    };
    assert!(ping(&env), "link up: no ping");
    ok(&lab_cmd(
        &env,
        state.path(),
        &["link", "kbt-link", "ab", "down"],
    ));
    assert!(!ping(&env), "link down: ping still passes");
    ok(&lab_cmd(
        &env,
        state.path(),
        &["link", "kbt-link", "ab", "up"],
    ));
    assert!(ping(&env), "link healed: no ping");
    let o = lab_cmd(&env, state.path(), &["link", "kbt-link", "nosuch", "down"]);
    assert!(
        text(&o.stderr).contains("no link 'nosuch'"),
        "{}",
        text(&o.stderr)
    );
    ok(&lab_cmd(&env, state.path(), &["down", "kbt-link"]));
    env.assert_clean();
    assert!(!netns_exists("kb-kbt-link"));
}
