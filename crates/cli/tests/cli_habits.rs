//! The command-line habits a network engineer brings from kubectl and containerlab (issue 23
//! item 7): `kobako version`, shell completions, `-o table|wide|json` on listings. Real binary,
//! real state database, real bash; no VM needed.

mod common;

use common::Env;
use serde_json::Value;

fn out(env: &Env, state: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let o = env.cmd(args).env("KOBAKO_STATE", state).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn version_says_what_this_build_is_and_what_it_drives() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let (rc, text, err) = out(&env, state.path(), &["version", "--json"]);
    assert_eq!(rc, 0, "{err}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kobako"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["api"], "/api/v1");
    assert!(v["vmm"]["firecracker_api"]
        .as_str()
        .is_some_and(|s| s.starts_with("1.")));
    // scripts/setup.sh installs QEMU; the version string is QEMU's own.
    let qemu = &v["qemu"]["version"];
    assert!(
        qemu.as_str()
            .is_some_and(|s| s.starts_with("QEMU emulator version")),
        "{v}"
    );
    assert!(
        ["kvm", "tcg"].contains(&v["accel"].as_str().unwrap_or("")),
        "{v}"
    );

    let (rc, text, _) = out(&env, state.path(), &["version"]);
    assert_eq!(rc, 0);
    assert!(
        text.starts_with(&format!("kobako {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains("Firecracker API") && text.contains("QEMU emulator version"),
        "{text}"
    );
}

#[test]
fn completions_complete_in_a_real_bash() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (rc, script, err) = out(&env, state.path(), &["completion", "bash"]);
    assert_eq!(rc, 0, "{err}");
    let file = dir.path().join("kobako.bash");
    std::fs::write(&file, &script).unwrap();
    // What a user gets on Tab: `kobako ve<Tab>`, `kobako vm l<Tab>`, `kobako ls -<Tab>`.
    let complete = |words: &str| -> String {
        let cword = words.split(' ').count() - 1;
        let o = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
                 COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; \
                 _kobako kobako \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
                 echo \"${{COMPREPLY[@]}}\"",
                file.display()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(complete("kobako ve"), "version");
    assert_eq!(complete("kobako vm l"), "ls");
    let opts = complete("kobako ls -");
    assert!(
        opts.contains("--output") && opts.contains("--json"),
        "{opts}"
    );
    for shell in ["zsh", "fish"] {
        let (rc, s, _) = out(&env, state.path(), &["completion", shell]);
        assert_eq!(rc, 0);
        assert!(s.contains("checkpoint") && s.contains("kobako"), "{shell}");
    }
    let (rc, _, err) = out(&env, state.path(), &["completion", "tcsh"]);
    assert_eq!(rc, 2);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn listings_speak_table_wide_and_json() {
    let env = Env::new();
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let (rc, o, e) = out(&env, state.path(), args);
        assert_eq!(rc, 0, "{args:?}: {e}");
        o
    };
    run(&[
        "user",
        "add",
        "alice",
        "--role",
        "member",
        "--max-vms",
        "3",
        "--generate-password",
    ]);
    run(&["token", "create", "ci", "--user", "alice"]);

    // --json and -o json are the same thing.
    assert_eq!(
        run(&["user", "ls", "--json"]),
        run(&["user", "ls", "-o", "json"])
    );
    let users: Value = serde_json::from_str(&run(&["user", "ls", "-o", "json"])).unwrap();
    assert!(users
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "alice"));

    // The table fits a terminal; wide adds columns, with the same rows.
    let table = run(&["user", "ls"]);
    let wide = run(&["user", "ls", "-o", "wide"]);
    assert!(!table.contains("CREATED") && wide.lines().next().unwrap().contains("CREATED"));
    assert_eq!(table.lines().count(), wide.lines().count());
    let today = String::from_utf8(
        std::process::Command::new("date")
            .args(["-u", "+%F"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let alice = wide.lines().find(|l| l.starts_with("alice")).unwrap();
    assert!(alice.contains(today.trim()), "{alice}");

    let tokens = run(&["token", "ls", "-o", "wide"]);
    assert!(
        tokens.lines().next().unwrap().contains("LAST-USED"),
        "{tokens}"
    );
    let ci = tokens.lines().find(|l| l.contains(" ci ")).unwrap();
    assert!(ci.contains(today.trim()) && ci.contains("active"), "{ci}");

    for cmd in [&["vm", "ls"][..], &["fn", "ls"], &["image", "ls"], &["ls"]] {
        let json = run(&[cmd, &["-o", "json"]].concat());
        assert!(
            serde_json::from_str::<Value>(&json).unwrap().is_array(),
            "{cmd:?}"
        );
        run(&[cmd, &["-o", "wide"]].concat());
    }
    assert!(run(&["vm", "ls", "-o", "wide"]).contains("RUNTIME"));
    let du: Value = serde_json::from_str(&run(&["image", "du", "--json"])).unwrap();
    assert!(
        du["total_bytes"].is_u64() && du["images"].is_array(),
        "{du}"
    );

    // Two answers to one question, or an unknown format: refused, naming the choices.
    let (rc, _, err) = out(&env, state.path(), &["user", "ls", "--json", "-o", "wide"]);
    assert_eq!(rc, 2, "{err}");
    let (rc, _, err) = out(&env, state.path(), &["vm", "ls", "-o", "yaml"]);
    assert_eq!(rc, 2);
    assert!(err.contains("yaml") && err.contains("wide"), "{err}");
}
