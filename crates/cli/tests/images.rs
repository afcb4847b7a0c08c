//! Real-guest tests of the image store: Debian bases with per-VM qcow2 overlays, cloud-init
//! NoCloud seeds, imported tarballs and OCI layouts, and bad input.
//!
//! The Debian images `kbt-debian-<agent>` (minbase + systemd + agent + cloud-init) and
//! `kbt-docker-<agent>` are built once per machine and agent into the machine's store (see
//! `cached_image`); imported images get per-run names and are removed. Each test has its own `KOBAKO_RUN`. Tests that boot
//! guests take a lock so that at most one Debian guest runs at a time under TCG.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

const KOBAKO: &str = env!("CARGO_BIN_EXE_kobako");
const DEBIAN: &str = "kbt-debian";

/// One guest-booting test at a time (2 CPUs, TCG).
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

struct Env {
    run: tempfile::TempDir,
    /// Images this test created (removed on drop).
    images: Vec<String>,
}

impl Env {
    fn new() -> Env {
        Env {
            run: tempfile::Builder::new()
                .prefix("kobako-img-run")
                .tempdir()
                .unwrap(),
            images: Vec::new(),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KOBAKO);
        c.args(args)
            .env("KOBAKO_RUN", self.run.path())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.run.path().join("vms"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn assert_clean(&self) {
        for _ in 0..200 {
            if self.leftovers().is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("left behind: VM dirs {:?}", self.leftovers());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for name in self.leftovers() {
            let _ = self.run(&["vm", "rm", "-f", &name]);
        }
        for i in &self.images {
            let _ = self.run(&["image", "rm", i]);
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn fails_with(o: &Output, needle: &str) -> String {
    let e = text(&o.stderr);
    assert!(!o.status.success(), "succeeded; stderr: {e}");
    assert!(e.contains(needle), "expected '{needle}' in: {e}");
    assert!(!e.contains("panicked"), "panicked: {e}");
    e
}

fn run_detached(env: &Env, name: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "vm",
        "run",
        "-d",
        "--json",
        "--name",
        name,
        "--timeout",
        "240",
    ];
    args.extend_from_slice(extra);
    let out = ok(&env.run(&args));
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn exec(env: &Env, name: &str, argv: &[&str]) -> Output {
    let mut args = vec!["vm", "exec", name, "--"];
    args.extend_from_slice(argv);
    env.run(&args)
}

fn inspect(env: &Env, image: &str) -> Option<serde_json::Value> {
    let o = env.run(&["image", "inspect", "--json", image]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

fn sha256(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    text(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The agent binary this kobako installs into images (as `tiny::find_agent` finds it).
fn agent_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KOBAKO_AGENT") {
        return PathBuf::from(p);
    }
    let dir = Path::new(KOBAKO).parent().unwrap();
    [
        dir.join("kobako-agent"),
        dir.join("../x86_64-unknown-linux-gnu/agent/kobako-agent"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("the static kobako-agent is built (scripts/build.sh)")
}

/// A Debian image kept in the machine's store, built when missing. Its name carries the agent's
/// checksum, so test runs with different agents (other checkouts on the same machine) never
/// rebuild or remove each other's images; an image built by an older recipe is rebuilt.
fn cached_image(env: &Env, base: &str, build: &[&str]) -> (String, serde_json::Value) {
    let name = format!("{base}-{}", &sha256(&agent_path())[..10]);
    if inspect(env, &name).is_some_and(|i| i["agent_current"] != true) {
        let _ = env.run(&["image", "rm", &name]);
    }
    if inspect(env, &name).is_none() {
        let t = std::time::Instant::now();
        let mut args = vec!["image", "build", "debian", "--name", &name];
        args.extend_from_slice(build);
        let o = env.run(&args);
        // Another test run may have built it meanwhile (builds are serialised per machine).
        if !text(&o.stderr).contains("already exists") {
            ok(&o);
        }
        eprintln!(
            "built {name} in {:.0} s:\n{}",
            t.elapsed().as_secs_f64(),
            text(&o.stderr)
        );
        // Best effort: drop this image's predecessors (refused while a VM uses them).
        let ls = ok(&env.run(&["image", "ls", "--json"]));
        let ls: serde_json::Value = serde_json::from_str(&ls).unwrap();
        for i in ls.as_array().unwrap() {
            let n = i["name"].as_str().unwrap();
            let old = n
                .strip_prefix(base)
                .is_some_and(|r| r.starts_with('-') && r.len() == 11);
            if old && n != name {
                let _ = env.run(&["image", "rm", n]);
            }
        }
    }
    let img = inspect(env, &name).expect("the image is in the store");
    (name, img)
}

/// The shared Debian image (with cloud-init), built once per machine: (name, manifest).
fn debian(env: &Env) -> (String, serde_json::Value) {
    static BUILT: OnceLock<String> = OnceLock::new();
    let name = BUILT.get_or_init(|| cached_image(env, DEBIAN, &["--packages", "cloud-init"]).0);
    (
        name.clone(),
        inspect(env, name).expect("the Debian image is in the store"),
    )
}

fn overlays_root() -> PathBuf {
    let images = std::env::var_os("KOBAKO_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kobako/images"));
    images.parent().unwrap().join("vms")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

#[test]
fn two_vms_on_one_debian_base_write_to_their_own_overlays() {
    let _s = serial();
    let env = Env::new();
    let (image, img) = debian(&env);
    let base = PathBuf::from(img["path"].as_str().unwrap());
    let before = sha256(&base);
    assert_eq!(
        before,
        img["sha256"].as_str().unwrap(),
        "base changed since its build"
    );

    let (a, b) = (unique("kbt-ov-a"), unique("kbt-ov-b"));
    let t = std::time::Instant::now();
    let ra = run_detached(&env, &a, &["--image", &image, "--memory", "512M"]);
    eprintln!(
        "debian boot: agent ready in {} ms (guest {} ms), vm run took {:.1} s",
        ra["ready_ms"],
        ra["guest_ready_ms"],
        t.elapsed().as_secs_f64()
    );
    run_detached(&env, &b, &["--image", &image, "--memory", "512M"]);
    ok(&exec(
        &env,
        &a,
        &["sh", "-c", "echo from-a > /root/who && sync"],
    ));
    ok(&exec(
        &env,
        &b,
        &["sh", "-c", "echo from-b > /root/who && sync"],
    ));
    assert_eq!(ok(&exec(&env, &a, &["cat", "/root/who"])), "from-a\n");
    assert_eq!(ok(&exec(&env, &b, &["cat", "/root/who"])), "from-b\n");
    assert_eq!(ok(&exec(&env, &a, &["hostname"])).trim(), a);
    // systemd is init, the agent a service.
    assert_eq!(
        ok(&exec(&env, &a, &["cat", "/proc/1/comm"])).trim(),
        "systemd"
    );

    let ov_a = overlays_root().join(&a).join("root.qcow2");
    let ov_b = overlays_root().join(&b).join("root.qcow2");
    assert!(ov_a.is_file() && ov_b.is_file());
    // In use: the image cannot be removed.
    fails_with(&env.run(&["image", "rm", &image]), "is used by VM(s)");
    let used = inspect(&env, &image).unwrap()["used_by"].clone();
    assert!(used.as_array().unwrap().len() >= 2, "{used}");

    // Keep a second name for each overlay so it can be checked after QEMU closed it cleanly.
    let keep = tempfile::tempdir_in(overlays_root()).unwrap();
    let (ka, kb) = (keep.path().join("a.qcow2"), keep.path().join("b.qcow2"));
    std::fs::hard_link(&ov_a, &ka).unwrap();
    std::fs::hard_link(&ov_b, &kb).unwrap();

    ok(&env.run(&["vm", "stop", &a]));
    assert!(!ov_a.exists(), "stopping {a} left its overlay");
    assert!(!overlays_root().join(&a).exists());
    assert!(ov_b.is_file(), "stopping {a} removed {b}'s overlay");
    assert_eq!(ok(&exec(&env, &b, &["cat", "/root/who"])), "from-b\n");
    ok(&env.run(&["vm", "stop", &b]));
    assert!(!ov_b.exists());
    env.assert_clean();

    for k in [&ka, &kb] {
        let o = Command::new("qemu-img")
            .args(["check"])
            .arg(k)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "qemu-img check {}: {}{}",
            k.display(),
            text(&o.stdout),
            text(&o.stderr)
        );
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(k)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(
            info["backing-filename"].as_str().unwrap(),
            base.to_str().unwrap()
        );
        // The writes landed in the overlay.
        assert!(info["actual-size"].as_u64().unwrap() > 256 * 1024, "{info}");
    }
    assert_eq!(sha256(&base), before, "the base was written to");
}

#[test]
fn debian_with_cloud_init_gets_hostname_and_runcmd_from_the_seed() {
    let _s = serial();
    let env = Env::new();
    let (image, img) = debian(&env);
    assert_eq!(img["cloud_init"], true);
    let d = tempfile::tempdir().unwrap();
    let ud = d.path().join("user-data");
    std::fs::write(
        &ud,
        "#cloud-config\nhostname: seeded-host\npreserve_hostname: false\nruncmd:\n  - [sh, -c, \"echo runcmd-ran > /root/runcmd.txt\"]\n",
    )
    .unwrap();
    let vm = unique("kbt-ci");
    let spec = format!("{image},user-data={}", ud.display());
    run_detached(&env, &vm, &["--image", &spec, "--memory", "512M"]);
    let seed = overlays_root().join(&vm).join("seed.iso");
    assert!(seed.is_file());
    let t = std::time::Instant::now();
    let st = exec(&env, &vm, &["cloud-init", "status", "--wait", "--long"]);
    eprintln!(
        "cloud-init finished {:.1} s after agent ready: {}",
        t.elapsed().as_secs_f64(),
        text(&st.stdout)
    );
    assert!(
        text(&st.stdout).contains("status: done"),
        "{}",
        text(&st.stdout)
    );
    assert_eq!(ok(&exec(&env, &vm, &["hostname"])).trim(), "seeded-host");
    assert_eq!(
        ok(&exec(&env, &vm, &["cat", "/root/runcmd.txt"])),
        "runcmd-ran\n"
    );
    // The seed came from the generated NoCloud disk.
    let ds = ok(&exec(&env, &vm, &["cloud-init", "query", "v1.platform"]));
    assert!(ds.contains("nocloud"), "{ds}");
    ok(&env.run(&["vm", "stop", &vm]));
    assert!(!seed.exists());
    env.assert_clean();
}

/// A small root filesystem: busybox-static and a marker file.
fn busybox_tree(dir: &Path, marker: &str) {
    for d in ["bin", "sbin", "etc", "root", "opt/old"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for a in [
        "sh", "cat", "ls", "echo", "hostname", "test", "uname", "sync", "poweroff", "reboot",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    std::fs::write(dir.join("etc/marker"), marker).unwrap();
    std::fs::write(dir.join("etc/gone"), "lower").unwrap();
    std::fs::write(dir.join("opt/old/file"), "lower").unwrap();
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

fn tar(dir: &Path, out: &Path, flags: &str) {
    let st = Command::new("tar")
        .args([
            flags,
            out.to_str().unwrap(),
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-C",
        ])
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

/// Write `blob` into an OCI layout; returns its digest.
fn put_blob(layout: &Path, blob: &Path) -> (String, u64) {
    let h = sha256(blob);
    let dst = layout.join("blobs/sha256").join(&h);
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::copy(blob, &dst).unwrap();
    (
        format!("sha256:{h}"),
        std::fs::metadata(blob).unwrap().len(),
    )
}

fn put_json(layout: &Path, v: &serde_json::Value) -> (String, u64) {
    let tmp = layout.join("tmp.json");
    std::fs::write(&tmp, serde_json::to_vec(v).unwrap()).unwrap();
    let r = put_blob(layout, &tmp);
    std::fs::remove_file(tmp).unwrap();
    r
}

/// An OCI layout of two layers: the busybox tree, then a gzip layer with a whiteout
/// (`/etc/gone`), an opaque directory (`/opt`) and a new file.
fn oci_layout(work: &Path) -> (PathBuf, Vec<String>) {
    let l1dir = work.join("l1");
    busybox_tree(&l1dir, "oci\n");
    let l1 = work.join("l1.tar");
    tar(&l1dir, &l1, "-cf");
    let l2dir = work.join("l2");
    std::fs::create_dir_all(l2dir.join("etc")).unwrap();
    std::fs::create_dir_all(l2dir.join("opt")).unwrap();
    std::fs::write(l2dir.join("etc/.wh.gone"), "").unwrap();
    std::fs::write(l2dir.join("opt/.wh..wh..opq"), "").unwrap();
    std::fs::write(l2dir.join("opt/new"), "upper\n").unwrap();
    let l2 = work.join("l2.tar.gz");
    tar(&l2dir, &l2, "-czf");
    let layout = work.join("layout");
    let (d1, s1) = put_blob(&layout, &l1);
    let (d2, s2) = put_blob(&layout, &l2);
    let (cd, cs) = put_json(
        &layout,
        &serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}),
    );
    let (md, ms) = put_json(
        &layout,
        &serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d1, "size": s1},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d2, "size": s2}
            ]
        }),
    );
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}
        ]}))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    (layout, vec![d1, d2])
}

fn store_staging_leftovers(name: &str) -> Vec<String> {
    let images = std::env::var_os("KOBAKO_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/kobako/images"));
    std::fs::read_dir(images)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!(".staging-{name}-")))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn imported_tarball_and_oci_layout_boot_and_exec_works() {
    let _s = serial();
    let mut env = Env::new();
    let work = tempfile::tempdir().unwrap();

    // A rootfs tarball (zstd when the host has it, else gzip).
    let tree = work.path().join("tree");
    busybox_tree(&tree, "tarball\n");
    let tarball = work.path().join("rootfs.tar.gz");
    tar(&tree, &tarball, "-czf");
    let name = unique("kbt-imp-tar");
    env.images.push(name.clone());
    ok(&env.run(&[
        "image",
        "import",
        tarball.to_str().unwrap(),
        "--name",
        &name,
    ]));
    let m = inspect(&env, &name).unwrap();
    assert_eq!(m["kind"], "imported");
    assert_eq!(m["init"], "/usr/local/sbin/kobako-agent");
    let vm = unique("kbt-tar");
    run_detached(&env, &vm, &["--image", &name]);
    assert_eq!(ok(&exec(&env, &vm, &["cat", "/etc/marker"])), "tarball\n");
    assert_eq!(ok(&exec(&env, &vm, &["hostname"])).trim(), vm);
    let o = exec(&env, &vm, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(text(&o.stdout), "out\n");
    ok(&env.run(&["vm", "stop", &vm]));

    // The stored tiny image (a raw base) through an overlay: writable, removed with the VM.
    let vm = unique("kbt-tinydisk");
    run_detached(&env, &vm, &["--image", "tiny", "--root", "disk"]);
    ok(&exec(&env, &vm, &["sh", "-c", "echo w > /root/w && sync"]));
    assert!(overlays_root().join(&vm).join("root.qcow2").is_file());
    ok(&env.run(&["vm", "stop", &vm]));
    assert!(!overlays_root().join(&vm).exists());

    // The other compressions import the same tree.
    for (flags, ext) in [("--zstd", "tar.zst"), ("--xz", "tar.xz")] {
        if ext == "tar.zst" && !Path::new("/usr/bin/zstd").exists() {
            // kobako installs zstd when it meets a .zst; tar needs it to write one.
            let _ = Command::new("apt-get")
                .args(["install", "-y", "-q", "zstd"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status();
        }
        let f = work.path().join(format!("rootfs.{ext}"));
        let st = Command::new("tar")
            .args([
                "-c",
                flags,
                "-f",
                f.to_str().unwrap(),
                "--numeric-owner",
                "-C",
            ])
            .arg(&tree)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let n = unique(&format!("kbt-imp-{}", &ext[4..]));
        env.images.push(n.clone());
        ok(&env.run(&["image", "import", f.to_str().unwrap(), "--name", &n]));
        assert_eq!(inspect(&env, &n).unwrap()["kind"], "imported");
        ok(&env.run(&["image", "rm", &n]));
    }

    // An OCI layout with a whiteout and an opaque directory.
    let (layout, _) = oci_layout(work.path());
    let oname = unique("kbt-imp-oci");
    env.images.push(oname.clone());
    ok(&env.run(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        &oname,
    ]));
    let vm = unique("kbt-oci");
    run_detached(&env, &vm, &["--image", &oname]);
    assert_eq!(ok(&exec(&env, &vm, &["cat", "/etc/marker"])), "oci\n");
    assert_eq!(ok(&exec(&env, &vm, &["ls", "/opt"])).trim(), "new");
    let o = exec(&env, &vm, &["test", "-e", "/etc/gone"]);
    assert_eq!(o.status.code(), Some(1), "whited-out /etc/gone exists");
    ok(&env.run(&["vm", "stop", &vm]));
    env.assert_clean();

    let ls = ok(&env.run(&["image", "ls", "--json"]));
    let ls: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert!(ls.as_array().unwrap().iter().any(|i| i["name"] == oname));
    ok(&env.run(&["image", "rm", &oname]));
    ok(&env.run(&["image", "rm", &name]));
    assert!(inspect(&env, &name).is_none());
}

#[test]
fn bad_images_get_clear_errors_and_leave_nothing() {
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    let w = |n: &str, data: &[u8]| {
        let p = work.path().join(n);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    };
    let name = unique("kbt-bad");

    // Foreign files.
    let notes = w("notes.txt", b"just some text\n");
    fails_with(
        &env.run(&["image", "import", &notes, "--name", &name]),
        "not a root filesystem archive",
    );
    let mut qcow = b"QFI\xfb\0\0\0\x03".to_vec();
    qcow.extend(std::iter::repeat_n(0xffu8, 4096));
    let bad_qcow = w("bad.qcow2", &qcow);
    fails_with(
        &env.run(&["vm", "run", "-d", "--name", &name, "--image", &bad_qcow]),
        "not a usable qcow2 image",
    );
    fails_with(
        &env.run(&["image", "import", &bad_qcow, "--name", &name]),
        "disk image",
    );
    // A truncated tar.gz.
    let tree = work.path().join("tree");
    busybox_tree(&tree, "x\n");
    let tgz = work.path().join("r.tar.gz");
    tar(&tree, &tgz, "-czf");
    let data = std::fs::read(&tgz).unwrap();
    let cut = w("cut.tar.gz", &data[..data.len() / 2]);
    let e = fails_with(
        &env.run(&["image", "import", &cut, "--name", &name]),
        "cut.tar.gz",
    );
    assert!(e.contains("decompression") || e.contains("archive"), "{e}");

    // OCI layout with a missing blob, and with a corrupt one.
    let (layout, digests) = oci_layout(work.path());
    let blob = layout
        .join("blobs/sha256")
        .join(digests[1].trim_start_matches("sha256:"));
    let saved = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, b"not the layer").unwrap();
    let e = fails_with(
        &env.run(&["image", "import", layout.to_str().unwrap(), "--name", &name]),
        &digests[1],
    );
    assert!(e.contains("corrupt"), "{e}");
    std::fs::remove_file(&blob).unwrap();
    let e = fails_with(
        &env.run(&["image", "import", layout.to_str().unwrap(), "--name", &name]),
        &digests[1],
    );
    assert!(e.contains("missing"), "{e}");
    std::fs::write(&blob, saved).unwrap();

    // Unknown names, reserved names, bad image options.
    fails_with(&env.run(&["image", "inspect", &name]), "no image named");
    fails_with(&env.run(&["image", "rm", &name]), "no image named");
    fails_with(
        &env.run(&[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "tiny",
        ]),
        "reserved",
    );
    fails_with(
        &env.run(&[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "Bad Name",
        ]),
        "image name",
    );
    fails_with(
        &env.run(&["vm", "run", "--image", "tiny,frobnicate"]),
        "unknown option 'frobnicate'",
    );

    // A VM whose guest dies before its agent is ready takes its overlay with it (tiny's ext4 is a
    // raw base in the store; --root disk boots it through an overlay).
    let vm = unique("kbt-panic");
    fails_with(
        &env.run(&[
            "vm",
            "run",
            "-d",
            "--name",
            &vm,
            "--image",
            "tiny",
            "--root",
            "disk",
            "--cmdline",
            "init=/nonexistent",
        ]),
        "exited before its agent was ready",
    );
    assert!(
        !overlays_root().join(&vm).exists(),
        "overlay of a failed VM left behind"
    );

    // Nothing left: no image, no staging directory, no VM, no overlay.
    assert!(inspect(&env, &name).is_none());
    assert!(
        store_staging_leftovers(&name).is_empty(),
        "{:?}",
        store_staging_leftovers(&name)
    );
    assert!(!overlays_root().join(&name).exists());
    env.assert_clean();
}

#[test]
fn docker_in_a_vm_runs_a_container_from_an_imported_tarball() {
    let _s = serial();
    let env = Env::new();
    let (image, img) = cached_image(&env, "kbt-docker", &["--with", "docker"]);
    eprintln!(
        "{image}: {:.0} MiB qcow2, built in {} s",
        img["size"].as_f64().unwrap() / 1048576.0,
        img["build_secs"]
    );
    let vm = unique("kbt-dock");
    let t = std::time::Instant::now();
    run_detached(&env, &vm, &["--image", &image, "--memory", "1G"]);
    let ready = t.elapsed().as_secs_f64();
    let o = exec(
        &env,
        &vm,
        &[
            "sh",
            "-c",
            "for i in $(seq 240); do docker info >/dev/null 2>&1 && exit 0; sleep 1; done; \
             systemctl status docker --no-pager; journalctl -u docker --no-pager | tail -20; exit 1",
        ],
    );
    ok(&o);
    let dockerd = t.elapsed().as_secs_f64();

    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    busybox_tree(&tree, "in-a-container\n");
    let tarball = work.path().join("rootfs.tar");
    tar(&tree, &tarball, "-cf");
    ok(&env.run(&[
        "cp",
        tarball.to_str().unwrap(),
        &format!("{vm}:/root/rootfs.tar"),
    ]));
    ok(&exec(
        &env,
        &vm,
        &["docker", "import", "/root/rootfs.tar", "kbt/busybox"],
    ));
    let out = ok(&exec(
        &env,
        &vm,
        &[
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "kbt/busybox",
            "/bin/cat",
            "/etc/marker",
        ],
    ));
    assert_eq!(out, "in-a-container\n");
    eprintln!(
        "docker: agent ready {ready:.1} s, dockerd up {dockerd:.1} s, container ran by {:.1} s",
        t.elapsed().as_secs_f64()
    );
    ok(&env.run(&["vm", "stop", &vm]));
    env.assert_clean();
}

/// The agent's operations on a Debian image (agent as a systemd service, not PID 1): exact exec
/// results, 100 concurrent execs, a 100 MiB copy both ways, network config, a crashing service.
#[test]
fn agent_operations_on_debian() {
    use kobako_agent::proto::{ExecRequest, IfaceConfig, NetConfig, Restart, ServiceSpec};
    let _s = serial();
    let env = Env::new();
    let (image, _) = debian(&env);
    let vm = unique("kbt-dops");
    run_detached(&env, &vm, &["--image", &image, "--memory", "512M"]);

    let o = exec(&env, &vm, &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(text(&o.stdout), "out\n");
    assert_eq!(text(&o.stderr), "err\n");
    let o = exec(&env, &vm, &["sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(128 + 9));

    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big.bin");
    {
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let data: Vec<u8> = (0..100u64 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&big, data).unwrap();
    }
    let want = sha256(&big);
    ok(&env.run(&["cp", big.to_str().unwrap(), &format!("{vm}:/root/")]));
    let guest = ok(&exec(&env, &vm, &["sha256sum", "/root/big.bin"]));
    assert!(guest.starts_with(&want), "{guest} vs {want}");
    let back = d.path().join("back.bin");
    ok(&env.run(&["cp", &format!("{vm}:/root/big.bin"), back.to_str().unwrap()]));
    assert_eq!(sha256(&back), want);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = env.run.path().join("vms").join(&vm).join("agent.sock");
        let c = std::sync::Arc::new(
            kobako_runtime::agent::AgentClient::connect(&sock)
                .await
                .unwrap(),
        );
        c.wait_ready(std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.exec(ExecRequest {
                        argv: vec!["sh".into(), "-c".into(), format!("echo {i}")],
                        ..Default::default()
                    })
                    .await
                })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap().stdout_str(), format!("{i}\n"));
        }
        // Network config on the VM without NICs: an extra address on `lo`.
        c.net_config(NetConfig {
            interfaces: vec![IfaceConfig {
                name: "lo".into(),
                addresses: vec!["10.250.9.9/32".into()],
                up: true,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        let addr = c
            .exec(ExecRequest {
                argv: vec!["ip".into(), "addr".into(), "show".into(), "lo".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .stdout_str();
        assert!(addr.contains("10.250.9.9/32"), "{addr}");
        c.set_services(vec![ServiceSpec {
            name: "crashy".into(),
            command: "echo tick; sleep 0.2; exit 1".into(),
            restart: Restart::Always,
            ..Default::default()
        }])
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let st = c.service_status().await.unwrap();
            if st[0].restarts >= 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{st:?}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let log = c.service_logs("crashy", 1000).await.unwrap();
        assert!(log.matches("tick").count() >= 2, "{log}");
    });
    ok(&env.run(&["vm", "stop", &vm]));
    env.assert_clean();
}

/// Debian (disk-rooted, systemd) VMs of a lab as warm clones: one cold boot of the image makes
/// the warm snapshot (or it is in the machine's cache already), then each lab VM is restored
/// from it on its own overlay and gets its own identity before the lab configures it.
#[test]
fn debian_warm_clones_get_their_own_identity_and_overlays() {
    let _s = serial();
    let env = Env::new();
    // Without cloud-init: a VM with a seed disk always boots cold (its seed is its own).
    let (image, _) = cached_image(&env, "kbt-debian-plain", &[]);
    let state = tempfile::tempdir().unwrap();
    let lab = unique("kbt-dw");
    let file = env.run.path().join("lab.yaml");
    let write_lab = |n: usize| {
        let mut y = format!(
            "name: {lab}\ndefaults: {{ image: {image}, memory: 512M }}\nnodes:\n  n:\n    vms:\n"
        );
        for i in 0..n {
            y.push_str(&format!("      v{i}: {{}}\n"));
        }
        std::fs::write(&file, y).unwrap();
    };
    let up = |extra: &[&str]| -> (serde_json::Value, f64) {
        let mut args = vec!["up", file.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let t = std::time::Instant::now();
        let out = ok(&env
            .cmd(&args)
            .env("KOBAKO_STATE", state.path())
            .output()
            .unwrap());
        (
            serde_json::from_str(&out).unwrap(),
            t.elapsed().as_secs_f64(),
        )
    };
    struct Down<'a>(&'a Env, &'a Path, &'a str);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = self
                .0
                .cmd(&["down", self.2])
                .env("KOBAKO_STATE", self.1)
                .output();
        }
    }
    let _down = Down(&env, state.path(), &lab);
    let lab_exec = |vm: &str, sh: &str| -> String {
        ok(&env
            .cmd(&["exec", vm, "--", "sh", "-c", sh])
            .env("KOBAKO_STATE", state.path())
            .output()
            .unwrap())
    };

    // Cold, for the comparison in this run.
    write_lab(1);
    let (r, cold_s) = up(&["--cold"]);
    let cold_ms = r[0]["vms"][0]["boot_ms"].as_u64().unwrap();
    assert_eq!(r[0]["vms"][0]["warm"], false);
    ok(&env
        .cmd(&["down", &lab])
        .env("KOBAKO_STATE", state.path())
        .output()
        .unwrap());

    // Warm: the first use of this configuration may build the snapshot (one more cold boot);
    // the second `up` only clones.
    write_lab(2);
    let (_, first_s) = up(&[]);
    ok(&env
        .cmd(&["down", &lab])
        .env("KOBAKO_STATE", state.path())
        .output()
        .unwrap());
    let (r, warm_s) = up(&[]);
    let vms = r[0]["vms"].as_array().unwrap();
    for v in vms {
        assert_eq!(v["state"], "ready", "{v}");
        assert_eq!(v["warm"], true, "not a warm clone: {v}");
    }
    let clone_ms: Vec<u64> = vms.iter().map(|v| v["boot_ms"].as_u64().unwrap()).collect();
    eprintln!(
        "debian: cold boot to agent ready {cold_ms} ms (1-VM up {cold_s:.1} s); warm clones {clone_ms:?} ms (2-VM up {warm_s:.1} s; the first warm up, building the snapshot if none was cached, {first_s:.1} s)"
    );
    let mut seen: Vec<Vec<String>> = vec![Vec::new(); 5];
    for i in 0..2 {
        let vm = format!("{lab}.n.v{i}");
        let out = lab_exec(
            &vm,
            "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; \
             cat /etc/machine-id; cat /sys/class/net/eth0/address; cat /proc/1/comm",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert_eq!(lines[1], format!("n-v{i}"), "hostname of {vm}");
        assert_eq!(lines[4], "systemd", "{vm}: systemd is init");
        for (k, l) in lines.iter().enumerate() {
            seen[k].push(l.to_string());
        }
        // Its own writable overlay.
        lab_exec(&vm, &format!("echo from-v{i} > /root/who && sync"));
    }
    for (k, what) in ["first random bytes", "hostname", "machine-id", "MAC"]
        .iter()
        .enumerate()
    {
        assert_ne!(seen[k][0], seen[k][1], "{what} is the same in both clones");
    }
    assert_eq!(
        lab_exec(&format!("{lab}.n.v0"), "cat /root/who"),
        "from-v0\n"
    );
    assert_eq!(
        lab_exec(&format!("{lab}.n.v1"), "cat /root/who"),
        "from-v1\n"
    );
    // The machine-id systemd sees is the new one, and the clock is the host's.
    let mid = lab_exec(&format!("{lab}.n.v1"), "cat /etc/machine-id")
        .trim()
        .to_string();
    assert_eq!(mid, seen[2][1]);
    let guest: i64 = lab_exec(&format!("{lab}.n.v0"), "date +%s")
        .trim()
        .parse()
        .unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest - host).abs() <= 3,
        "guest clock {guest}, host {host}"
    );
    // The clones reach each other on the node network (the lab found eth0 by its new MAC).
    let addr = |v: &serde_json::Value| -> String {
        let a = v["addresses"][0].as_str().unwrap();
        a.split_once(':')
            .unwrap()
            .1
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let other = addr(&vms[1]);
    // Minbase has no ping: a TCP connection to a closed port is refused only if v1 answers.
    let o = lab_exec(
        &format!("{lab}.n.v0"),
        &format!("timeout 10 bash -c 'exec 3<>/dev/tcp/{other}/9' 2>&1; true"),
    );
    assert!(o.contains("Connection refused"), "v0 -> v1 ({other}): {o}");
}
