//! Linux smoke boot on this host's /dev/kvm: the PVM-tolerant kernel from
//! `crates/vmm/guest-pvm/build.sh` with a one-file initramfs whose /init prints a marker,
//! signals boot complete and reboots. It needs the kernel build and takes minutes (every guest
//! kernel instruction runs in kvm_pvm's emulator at ~15-30 k instructions/s; measured 141 s to
//! the boot-complete write at load ~2, 733 s at load ~13), so it is `#[ignore]`d for plain
//! `cargo test`; `scripts/test.sh` runs it on PVM hosts beside the rest of the suite:
//! `cargo test -p kobako-vmm --test linux_pvm -- --ignored --nocapture linux_boots_to_userspace_marker`.
//! `KOBAKO_PVM_KERNEL` overrides the kernel path (default /var/cache/kobako/kernel-pvm/vmlinux);
//! `KOBAKO_PVM_CMDLINE_EXTRA` appends to the command line; `KOBAKO_PVM_TIMEOUT` (seconds,
//! default 900) bounds the boot. 64 MiB of RAM: memory-map initialisation is emulated too and
//! scales with the RAM size (256 MiB cost ~20 s more of an idle host's boot).
//!
//! `linux_devices_disk_net_rng_and_agent_over_vsock` boots the same kernel with a busybox /init
//! that mounts ext4 from a qcow2 overlay, pings the host side of a tap (in its own network
//! namespace: root), reads /dev/hwrng, and execs the kobako agent, which the test reaches over
//! vsock through uds_path. It needs the static agent (`scripts/build.sh`, or `KOBAKO_AGENT`),
//! busybox-static, mkfs.ext4 and qemu-img; `KOBAKO_PVM_TIMEOUT` defaults to 1500 s there.
//! Measured: all four checks and the agent's ready message over vsock, boot complete at 449 s
//! (load ~5). `scripts/test.sh` runs both tests, one after the other.
//!
//! The same test then snapshots that guest (no second cold boot): pause, `PUT /snapshot/create`,
//! the disk copied, the VMM killed, a new VMM started with `--snapshot-load` (another tap, vsock
//! socket and disk file through the overrides). The guest must continue: a file written through
//! the agent before the snapshot is read through the agent after it, the agent is the same
//! process, and a counter the guest prints every 5 s goes on from where it was. It prints the
//! cold boot and restore times (`KOBAKO-RESTORE ...`).

mod common;

use std::io::Read;
use std::time::Instant;

use common::*;

/// The PVM-tolerant kernel (`KOBAKO_PVM_KERNEL`, default the build.sh output); fails the test
/// with how to build it when missing.
fn pvm_kernel() -> String {
    let kernel = std::env::var("KOBAKO_PVM_KERNEL")
        .unwrap_or_else(|_| "/var/cache/kobako/kernel-pvm/vmlinux".into());
    assert!(
        std::path::Path::new(&kernel).exists(),
        "{kernel} missing: build it with crates/vmm/guest-pvm/build.sh"
    );
    kernel
}

/// A cpio "newc" archive with one executable file `/init`.
fn initramfs(init: &[u8]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    entry(&mut out, 1, 0o100755, "init", init);
    entry(&mut out, 0, 0, "TRAILER!!!", &[]);
    out
}

#[test]
#[ignore = "needs the PVM-tolerant kernel (guest-pvm/build.sh) and minutes of an idle host"]
fn linux_boots_to_userspace_marker() {
    let kernel = pvm_kernel();
    let dir = tempfile::tempdir().unwrap();
    let initrd = write(
        dir.path(),
        "initrd.cpio",
        &initramfs(&elf(guests::INIT, false)),
    );
    let log = dir.path().join("vmm.log");
    let mut cmdline = String::from("console=ttyS0 reboot=k panic=-1 nokaslr");
    cmdline.push(' ');
    cmdline.push_str(kobako_vmm::PVM_GUEST_CMDLINE);
    if let Ok(extra) = std::env::var("KOBAKO_PVM_CMDLINE_EXTRA") {
        cmdline.push(' ');
        cmdline.push_str(&extra);
    }
    let cfg = write(
        dir.path(),
        "vm.json",
        serde_json::json!({
            "boot-source": {
                "kernel_image_path": kernel,
                "initrd_path": initrd,
                "boot_args": cmdline,
            },
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 },
        })
        .to_string()
        .as_bytes(),
    );
    let t0 = Instant::now();
    let mut child = Vmm(std::process::Command::new(vmm_bin())
        .args(["--no-api", "--level", "Info", "--config-file"])
        .arg(&cfg)
        .arg("--log-path")
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap());
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let secs: u64 = std::env::var("KOBAKO_PVM_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(900);
    // Not `wait_exit`: on a timeout we still want to see how far the kernel got.
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let console = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    println!("--- console ---\n{console}\n--- vmm log ---\n{log}");
    println!("exit code {code} after {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        console.contains("KOBAKO-USERSPACE-UP"),
        "no userspace marker; exit code {code} (-1: killed after {secs} s)"
    );
    assert_eq!(code, kobako_vmm::EXIT_GUEST_RESET);
    assert!(log.contains("Guest-boot-time"), "no boot-complete signal");
}

/// A cpio "newc" archive of directories (`data` None, mode 0o040755), files and symlinks
/// (mode 0o120777, `data` = target).
fn cpio(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1u32;
    let mut entry = |out: &mut Vec<u8>, mode: u32, name: &str, data: &[u8]| {
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        ino += 1;
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (name, mode, data) in entries {
        entry(&mut out, *mode, name, data);
    }
    entry(&mut out, 0, "TRAILER!!!", &[]);
    out
}

/// The static guest agent (`scripts/build.sh` builds it): `$KOBAKO_AGENT`, else the workspace's
/// `target/x86_64-unknown-linux-gnu/agent/kobako-agent`.
fn find_agent() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("KOBAKO_AGENT") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test> -> target/x86_64-unknown-linux-gnu/agent/kobako-agent
    let p = exe
        .ancestors()
        .nth(3)
        .unwrap()
        .join("x86_64-unknown-linux-gnu/agent/kobako-agent");
    assert!(
        p.is_file(),
        "{} missing: build the static agent (cargo build --profile agent -p kobako-agent \
         --target x86_64-unknown-linux-gnu, as scripts/build.sh does) or set KOBAKO_AGENT",
        p.display()
    );
    p
}

fn sh(cmd: &str) -> std::process::Output {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Removes the test's network namespace (with its tap) even when the test fails.
struct Netns(&'static str);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", self.0])
            .status();
    }
}

/// Firecracker's host side of vsock: `CONNECT port`, `OK ...`, then what the guest sends.
fn vsock_hello(uds: &std::path::Path, port: u32) -> Option<String> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(uds).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).ok()?;
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    // The OK line, then the agent's first frame (Ready, a JSON payload).
    while !String::from_utf8_lossy(&got).contains("agent_version") {
        let n = s.read(&mut b).ok()?;
        if n == 0 {
            return None; // RST: nothing listens yet
        }
        got.extend_from_slice(&b[..n]);
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[test]
#[ignore = "needs the PVM-tolerant kernel, the static agent, root (netns, tap) and an idle host"]
fn linux_devices_disk_net_rng_and_agent_over_vsock() {
    // The PVM kernel with: an ext4 file system on a qcow2 overlay over a raw base (mounted,
    // a file read back), a NIC on a tap in a private network namespace (the guest pings the
    // host side), /dev/hwrng (virtio-rng) read, and the kobako agent (exec'd as PID 1 by a
    // busybox /init) reached from the host over vsock through uds_path (`CONNECT 1024`).
    // Afterwards `qemu-img check` passes on the overlay the guest wrote to (ext4 mount).
    let kernel = pvm_kernel();
    let agent = std::fs::read(find_agent()).unwrap();
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (scripts/setup.sh)");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Disk: ext4 base (raw) with one file, a qcow2 overlay on it.
    let token = format!("{:x}", std::process::id() as u64 * 2654435761);
    std::fs::create_dir(d.join("fs")).unwrap();
    std::fs::write(d.join("fs/hello.txt"), format!("overlay-{token}\n")).unwrap();
    let p = |n: &str| d.join(n).display().to_string();
    sh(&format!(
        "mkfs.ext4 -q -F -d {} {} 16M",
        p("fs"),
        p("base.raw")
    ));
    sh(&format!(
        "qemu-img create -q -f qcow2 -b {} -F raw {}",
        p("base.raw"),
        p("overlay.qcow2")
    ));

    // Network: a tap in a private namespace, host side 172.31.250.1/24.
    let ns = Netns("kbvmm-pvm-dev");
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", ns.0])
        .status();
    sh(&format!(
        "ip netns add {n} && ip -n {n} link set lo up && \
         ip -n {n} tuntap add dev kbtap0 mode tap && \
         ip -n {n} addr add 172.31.250.1/24 dev kbtap0 && ip -n {n} link set kbtap0 up",
        n = ns.0
    ));

    let init = b"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo KOBAKO-STAGE-USERSPACE
if mount -t ext4 /dev/vda /mnt; then echo \"KOBAKO-DISK $(cat /mnt/hello.txt)\"; umount /mnt; else echo KOBAKO-DISK-FAIL; fi
ip link set eth0 up && ip addr add 172.31.250.2/24 dev eth0
if ping -c 1 -w 300 172.31.250.1 >/dev/null; then echo KOBAKO-PING-OK; else echo KOBAKO-PING-FAIL; fi
echo \"KOBAKO-HWRNG $(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | wc -c) $(cat /sys/class/misc/hw_random/rng_current)\"
ip route add 169.254.169.254 dev eth0
echo \"KOBAKO-MMDS-NOTOKEN $(timeout 120 wget -O- http://169.254.169.254/latest/meta-data/ami-id 2>&1 | grep -e error -e 401 | head -n 1)\"
echo \"KOBAKO-MMDS-V2 $(/mmds.sh /latest/meta-data/ami-id)\"
(n=0; while :; do n=$((n+1)); echo $n > /tmp/kobako-tick; echo KOBAKO-TICK $n; sleep 5; done) &
echo KOBAKO-STAGE-AGENT
exec /agent
";
    let initrd = write(
        d,
        "initrd.cpio",
        &cpio(&[
            ("bin", 0o040755, b""),
            ("bin/busybox", 0o100755, &busybox),
            ("bin/sh", 0o120777, b"busybox"),
            ("agent", 0o100755, &agent),
            ("init", 0o100755, init),
            ("mmds.sh", 0o100755, MMDS_SH),
        ]),
    );
    let uds = d.join("v.sock");
    let mut cmdline = String::from(
        "console=ttyS0 reboot=k panic=-1 nokaslr rdinit=/init kobako.bootmark=1 \
         kobako.console=off kobako.hostname=pvm",
    );
    cmdline.push(' ');
    cmdline.push_str(kobako_vmm::PVM_GUEST_CMDLINE);
    if let Ok(extra) = std::env::var("KOBAKO_PVM_CMDLINE_EXTRA") {
        cmdline.push(' ');
        cmdline.push_str(&extra);
    }
    let log = d.join("vmm.log");
    let cfg = write(
        d,
        "vm.json",
        serde_json::json!({
            "boot-source": {
                "kernel_image_path": kernel,
                "initrd_path": initrd,
                "boot_args": cmdline,
            },
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 96 },
            "drives": [{
                "drive_id": "data", "path_on_host": d.join("overlay.qcow2"),
                "is_root_device": false, "is_read_only": false, "image_format": "qcow2",
            }],
            "network-interfaces": [{
                "iface_id": "eth0", "host_dev_name": "kbtap0", "guest_mac": "06:00:ac:1f:fa:02",
            }],
            "vsock": { "guest_cid": 3, "uds_path": uds },
            "entropy": {},
            "mmds-config": { "version": "V2", "network_interfaces": ["eth0"] },
            "balloon": { "amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1 },
        })
        .to_string()
        .as_bytes(),
    );
    let api = d.join("api.sock");
    let t0 = Instant::now();
    let mut child = Vmm(std::process::Command::new("ip")
        .args(["netns", "exec", ns.0])
        .arg(vmm_bin())
        .arg("--api-sock")
        .arg(&api)
        .args(["--level", "Info", "--config-file"])
        .arg(&cfg)
        .arg("--metadata")
        .arg(write(
            d,
            "metadata.json",
            format!(r#"{{"latest": {{"meta-data": {{"ami-id": "ami-{token}"}}}}}}"#).as_bytes(),
        ))
        .arg("--log-path")
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap());
    let mut stdout = child.stdout.take().unwrap();
    let console = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let c2 = console.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut b) {
            if n == 0 {
                break;
            }
            c2.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
    let secs: u64 = std::env::var("KOBAKO_PVM_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    let text = || String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    let mut hello = None;
    let mut exited = None;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            exited = st.code();
            break;
        }
        // Try vsock only once the agent is about to run (each try is a REQUEST the slow
        // guest kernel must answer).
        if text().contains("KOBAKO-STAGE-AGENT") {
            hello = vsock_hello(&uds, 1024);
            if hello.is_some() {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // The same guest, snapshotted and restored into a new VMM process (no second cold boot).
    let restored = hello
        .as_ref()
        .filter(|_| exited.is_none())
        .map(|h| snapshot_and_restore(d, ns.0, &api, &uds, h, &mut child, elapsed));
    let _ = child.kill();
    let _ = child.wait();
    let console = text();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    println!("--- console ---\n{console}\n--- vmm log ---\n{log}");
    println!("after {elapsed:.1} s; exited early: {exited:?}; vsock: {hello:?}");
    assert!(
        console.contains("KOBAKO-STAGE-USERSPACE"),
        "no userspace (timeout {secs} s)"
    );
    assert!(
        console.contains(&format!("KOBAKO-DISK overlay-{token}")),
        "file on the qcow2 overlay not read"
    );
    assert!(
        console.contains("KOBAKO-PING-OK"),
        "no ping reply from the tap's host side"
    );
    assert!(
        console.contains("KOBAKO-HWRNG 32 virtio_rng"),
        "/dev/hwrng (virtio-rng) not read"
    );
    assert!(
        console.contains(&format!("KOBAKO-MMDS-V2 ami-{token}")),
        "the guest did not read the MMDS (V2, token first) through eth0"
    );
    assert!(
        console
            .lines()
            .any(|l| l.starts_with("KOBAKO-MMDS-NOTOKEN") && l.contains("401")),
        "MMDS V2 answered a GET without a token"
    );
    let hello = hello.expect("agent not reached over vsock via uds_path");
    assert!(hello.starts_with("OK "), "{hello}");
    assert!(log.contains("Guest-boot-time"), "no boot-complete signal");
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(d.join("overlay.qcow2"))
        .status()
        .unwrap();
    assert!(
        check.success(),
        "qemu-img check of the overlay the guest wrote"
    );
    if let Err(e) = restored.expect("snapshot stage not reached") {
        panic!("snapshot/restore: {e}");
    }
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `MemAvailable` of the guest (KiB), through the agent, after the shell commands `before`.
fn guest_available_kib(uds: &std::path::Path, before: &str) -> Result<u64, String> {
    let t = Instant::now();
    let r = agent_exec_for(
        uds,
        &[
            "/bin/sh",
            "-c",
            &format!("{before} grep MemAvailable /proc/meminfo"),
        ],
        600,
    );
    let Some((out, code)) = r else {
        return Err(format!(
            "exec of {before:?} grep MemAvailable: no answer from the agent after {:.0} s",
            t.elapsed().as_secs_f64()
        ));
    };
    out.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{before:?} grep MemAvailable: exit {code}, output {out:?}"))
}

/// The balloon in a running guest: the guest touches and frees 40 MiB, then a `PATCH
/// /balloon` of 16 MiB must show in the guest (`MemAvailable` falls), in the statistics
/// (`actual_mib`) and on the host (the VMM's RSS falls: the pages are dropped with
/// MADV_DONTNEED); deflating gives them back. Prints the figures.
fn balloon_inflate_and_deflate(
    api: &std::path::Path,
    uds: &std::path::Path,
    pid: u32,
) -> Result<(), String> {
    let stats = |want: &str| -> Option<serde_json::Value> {
        let (st, b) = http(api, "GET", "/balloon/statistics", None);
        (st == 200 && b.contains(want)).then(|| serde_json::from_str(&b).ok())?
    };
    if !wait_for(120, || stats("available_memory").is_some()) {
        return Err(format!(
            "no guest statistics from the balloon: {:?}",
            http(api, "GET", "/balloon/statistics", None)
        ));
    }
    let fill = "dd if=/dev/zero of=/tmp/fill bs=1M count=40 2>/dev/null && rm /tmp/fill &&";
    let avail0 = guest_available_kib(uds, fill)?;
    let rss0 = rss_kib(pid);
    let t = Instant::now();
    let (st, b) = http(api, "PATCH", "/balloon", Some(r#"{"amount_mib": 16}"#));
    if st != 204 {
        return Err(format!("PATCH /balloon: {st} {b}"));
    }
    let inflated = wait_for(600, || {
        stats("actual_mib").is_some_and(|v| v["actual_mib"] == 16)
    });
    let inflate_s = t.elapsed().as_secs_f64();
    let rss1 = rss_kib(pid);
    let avail1 = guest_available_kib(uds, "")?;
    let s = stats("actual_mib").unwrap_or_default();
    let (st, b) = http(api, "PATCH", "/balloon", Some(r#"{"amount_mib": 0}"#));
    if st != 204 {
        return Err(format!("PATCH /balloon 0: {st} {b}"));
    }
    let deflated = wait_for(600, || {
        stats("actual_mib").is_some_and(|v| v["actual_mib"] == 0)
    });
    let avail2 = guest_available_kib(uds, "")?;
    println!(
        "KOBAKO-BALLOON inflate 16 MiB in {inflate_s:.1} s: VMM RSS {} -> {} MiB, guest MemAvailable {} -> {} MiB; \
         deflated: MemAvailable {} MiB; stats {s}",
        rss0 >> 10, rss1 >> 10, avail0 >> 10, avail1 >> 10, avail2 >> 10
    );
    if !inflated || !deflated {
        return Err(format!(
            "balloon did not reach its target (inflated {inflated}, deflated {deflated}): {s}"
        ));
    }
    if avail0.saturating_sub(avail1) < 12 << 10 {
        return Err(format!(
            "guest MemAvailable fell only {} KiB for 16 MiB inflated",
            avail0.saturating_sub(avail1)
        ));
    }
    // Which pages the guest gives is its choice: only those the host had touched (most of
    // its free memory, after the 40 MiB written and freed) leave the VMM's RSS.
    if rss0.saturating_sub(rss1) < 4 << 10 {
        return Err(format!(
            "VMM RSS fell only {} KiB for 16 MiB inflated after 40 MiB freed",
            rss0.saturating_sub(rss1)
        ));
    }
    if avail2 < avail1 + (12 << 10) {
        return Err(format!(
            "MemAvailable did not come back after deflating: {avail1} -> {avail2} KiB"
        ));
    }
    Ok(())
}

/// Prints the MMDS value at the path `$1` (V2: a session token first, with busybox nc, then
/// the GET with busybox wget; its `-T` crashes Debian 12's busybox-static, `timeout` bounds it).
const MMDS_SH: &[u8] = b"#!/bin/busybox sh
T=$(printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nX-metadata-token-ttl-seconds: 60\\r\\nConnection: close\\r\\n\\r\\n' | nc -w 60 169.254.169.254 80 | tail -n 1)
timeout 120 wget -q -O- --header \"X-metadata-token: $T\" \"http://169.254.169.254$1\"
";

/// Runs `argv` in the guest through the agent (a raw agent-protocol client: `exec` on stream 1,
/// stdout collected until `exited`). `None` while the agent does not answer.
fn agent_exec(uds: &std::path::Path, argv: &[&str]) -> Option<(String, i64)> {
    agent_exec_for(uds, argv, 100)
}

/// [`agent_exec`] with a time limit of `secs` (every kernel instruction of this guest is
/// emulated: touching memory is slow).
fn agent_exec_for(uds: &std::path::Path, argv: &[&str], secs: u64) -> Option<(String, i64)> {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(uds).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(secs + 20)))
        .ok()?;
    s.write_all(b"CONNECT 1024\n").ok()?;
    let mut b = [0u8; 1];
    let mut line = Vec::new();
    while b[0] != b'\n' {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return None;
    }
    let frame = |s: &mut std::os::unix::net::UnixStream| -> Option<(u32, u8, Vec<u8>)> {
        let mut h = [0u8; 9];
        s.read_exact(&mut h).ok()?;
        let len = u32::from_le_bytes(h[..4].try_into().unwrap()) as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).ok()?;
        Some((u32::from_le_bytes(h[4..8].try_into().unwrap()), h[8], p))
    };
    let req =
        serde_json::json!({"type": "exec", "argv": argv, "timeout_ms": secs * 1000}).to_string();
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(req.len()).unwrap().to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.push(1); // a JSON message
    out.extend_from_slice(req.as_bytes());
    s.write_all(&out).ok()?;
    let mut stdout = Vec::new();
    loop {
        let (stream, kind, p) = frame(&mut s)?;
        match (stream, kind) {
            (1, 3) => stdout.extend_from_slice(&p),
            (1, 1) => {
                let m: serde_json::Value = serde_json::from_slice(&p).ok()?;
                match m["type"].as_str() {
                    Some("exited") => {
                        return Some((
                            String::from_utf8_lossy(&stdout).into_owned(),
                            m["code"].as_i64().unwrap_or(-1),
                        ))
                    }
                    Some("error") => panic!("agent refused the exec: {m}"),
                    _ => {}
                }
            }
            _ => {} // Ready on stream 0, stderr
        }
    }
}

/// `agent_start_ms` of the agent's Ready message (the same agent process answers after a
/// restore; a new boot would start it again).
fn agent_start_ms(hello: &str) -> Option<u64> {
    let i = hello.find("\"agent_start_ms\":")? + "\"agent_start_ms\":".len();
    hello[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Snapshot of the booted guest of `linux_devices_disk_net_rng_and_agent_over_vsock` through
/// the API (pause, `PUT /snapshot/create`, the disk copied as the vmm runtime does), the VMM
/// killed, and a new VMM started with `--snapshot-load` (memory file mapped privately, another
/// tap, vsock socket and disk file through the overrides). The guest continues: a file written
/// through the agent before the snapshot is read through the agent after it, the agent is the
/// same process (its start time), and its counter on the console goes on from where it was.
/// Prints the cold boot and restore times.
fn snapshot_and_restore(
    d: &std::path::Path,
    ns: &str,
    api: &std::path::Path,
    uds: &std::path::Path,
    hello: &str,
    child: &mut Vmm,
    boot_s: f64,
) -> Result<(), String> {
    let token = format!("before-snapshot-{}", std::process::id());
    let (tick, code) = agent_exec(
        uds,
        &[
            "/bin/sh",
            "-c",
            &format!("echo {token} > /tmp/snap-file && (cat /tmp/kobako-tick || echo 0)"),
        ],
    )
    .ok_or("exec through the agent before the snapshot failed")?;
    let tick_before: u64 = tick.trim().parse().map_err(|_| format!("tick {tick:?}"))?;
    if code != 0 {
        return Err(format!("exec before the snapshot: exit code {code}"));
    }
    // MMDS: an API PATCH is what the guest reads next (V2, through eth0).
    let patched = format!("p-{}", std::process::id());
    let (st, body) = http(
        api,
        "PATCH",
        "/mmds",
        Some(&format!(
            r#"{{"latest": {{"meta-data": {{"patched": "{patched}"}}}}}}"#
        )),
    );
    if st != 204 {
        return Err(format!("PATCH /mmds: {st} {body}"));
    }
    let (out, _) = agent_exec(uds, &["/mmds.sh", "/latest/meta-data/patched"])
        .ok_or("exec of /mmds.sh through the agent failed")?;
    if out.trim() != patched {
        return Err(format!(
            "the guest read {out:?} from the MMDS after PATCH, not {patched:?}"
        ));
    }
    balloon_inflate_and_deflate(api, uds, child.id())?;
    let t = Instant::now();
    let (st, body) = http(api, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    if st / 100 != 2 {
        return Err(format!("pause: {st} {body}"));
    }
    let snap = d.join("snap");
    std::fs::create_dir(&snap).unwrap();
    let req = serde_json::json!({
        "snapshot_type": "Full",
        "snapshot_path": snap.join("vmstate.bin"),
        "mem_file_path": snap.join("memory.bin"),
    })
    .to_string();
    let (st, body) = http(api, "PUT", "/snapshot/create", Some(&req));
    if st / 100 != 2 {
        return Err(format!("snapshot/create: {st} {body}"));
    }
    // Flushed by the VMM: the copy is the disk at the snapshot's instant.
    std::fs::copy(d.join("overlay.qcow2"), snap.join("disk.qcow2")).unwrap();
    let snap_s = t.elapsed().as_secs_f64();
    let mem = std::fs::metadata(snap.join("memory.bin")).unwrap().len();
    let state = std::fs::metadata(snap.join("vmstate.bin")).unwrap().len();
    if mem != 96 << 20 {
        return Err(format!("memory.bin has {mem} bytes, not 96 MiB"));
    }
    let _ = child.kill();
    let _ = child.wait();

    // Another tap for the restored NIC, another vsock socket, the disk copy.
    sh(&format!(
        "ip -n {ns} tuntap add dev kbtap1 mode tap && ip -n {ns} link set kbtap1 up"
    ));
    let uds2 = d.join("v2.sock");
    let load = write(
        d,
        "restore.json",
        serde_json::json!({
            "snapshot_path": snap.join("vmstate.bin"),
            "mem_backend": {"backend_type": "File", "backend_path": snap.join("memory.bin")},
            "resume_vm": true,
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": "kbtap1"}],
            "vsock_override": {"uds_path": uds2},
            "drive_overrides": [{"drive_id": "data", "path_on_host": snap.join("disk.qcow2")}],
        })
        .to_string()
        .as_bytes(),
    );
    let log2 = d.join("vmm2.log");
    let t1 = Instant::now();
    let mut child2 = Vmm(std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(vmm_bin())
        .arg("--api-sock")
        .arg(d.join("api2.sock"))
        .args(["--level", "Info", "--snapshot-load"])
        .arg(&load)
        .arg("--metadata")
        .arg(write(
            d,
            "metadata2.json",
            format!(r#"{{"latest": {{"meta-data": {{"ami-id": "restored-{token}"}}}}}}"#)
                .as_bytes(),
        ))
        .arg("--log-path")
        .arg(&log2)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap());
    let mut stdout = child2.stdout.take().unwrap();
    let console = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let c2 = console.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut b) {
            if n == 0 {
                break;
            }
            c2.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    let fail = |why: String, child2: &mut Vmm| {
        let _ = child2.kill();
        let _ = child2.wait();
        let log = std::fs::read_to_string(&log2).unwrap_or_default();
        format!(
            "{why}\n--- restored console ---\n{}\n--- vmm log ---\n{log}",
            text()
        )
    };
    // The agent's Ready through the new vsock socket.
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    let hello2 = loop {
        if let Some(st) = child2.try_wait().unwrap() {
            return Err(fail(format!("the restoring VMM exited: {st}"), &mut child2));
        }
        if let Some(h) = vsock_hello(&uds2, 1024) {
            break h;
        }
        if Instant::now() > deadline {
            return Err(fail(
                "no agent over vsock after the restore".into(),
                &mut child2,
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let restore_s = t1.elapsed().as_secs_f64();
    let got = agent_exec(&uds2, &["/bin/cat", "/tmp/snap-file", "/tmp/kobako-tick"]);
    // The snapshot kept the MMDS configuration (V2 on eth0, now on another tap); the data is
    // the new process's.
    let mmds_after = agent_exec(&uds2, &["/mmds.sh", "/latest/meta-data/ami-id"]);
    // The balloon's statistics buffer goes on after the restore (the new process takes the
    // buffer the old one held).
    let api2 = d.join("api2.sock");
    let stats_after = wait_for(120, || {
        let (st, b) = http(&api2, "GET", "/balloon/statistics", None);
        st == 200 && b.contains("available_memory")
    });
    let exec_s = t1.elapsed().as_secs_f64();
    // The counter goes on on the console.
    let ticks = |s: &str| -> Vec<u64> {
        s.lines()
            .filter_map(|l| l.trim().strip_prefix("KOBAKO-TICK "))
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    };
    wait_for(120, || ticks(&text()).len() >= 2);
    let after = ticks(&text());
    let log = std::fs::read_to_string(&log2).unwrap_or_default();
    let _ = child2.kill();
    let _ = child2.wait();
    println!(
        "snapshot: paused + state + memory ({} MiB) + disk copy in {snap_s:.2} s; state file {state} bytes",
        mem >> 20
    );
    println!(
        "KOBAKO-RESTORE cold boot to agent {boot_s:.1} s; restore to agent {restore_s:.2} s \
         (ratio {:.4}); first exec answered {exec_s:.2} s after the restore began",
        restore_s / boot_s
    );
    println!("restored console: {:?}\nrestored vmm log:\n{log}", text());
    let (out, code) = got.ok_or("exec through the agent after the restore failed")?;
    let mut lines = out.lines();
    if lines.next() != Some(token.as_str()) || code != 0 {
        return Err(format!(
            "file written before the snapshot: got {out:?} (exit {code})"
        ));
    }
    if !stats_after {
        return Err("no balloon statistics after the restore".into());
    }
    match mmds_after {
        Some((v, _)) if v.trim() == format!("restored-{token}") => {}
        other => return Err(format!("MMDS after the restore: {other:?}")),
    }
    let tick_after: u64 = lines.next().unwrap_or("").trim().parse().unwrap_or(0);
    if tick_after < tick_before {
        return Err(format!(
            "counter went back: {tick_before} before, {tick_after} after"
        ));
    }
    if agent_start_ms(hello) != agent_start_ms(&hello2) || agent_start_ms(hello).is_none() {
        return Err(format!(
            "another agent answered: before {hello:?}, after {hello2:?}"
        ));
    }
    match after.first() {
        Some(&first) if first >= tick_before && after.windows(2).all(|w| w[1] == w[0] + 1) => {}
        _ => {
            return Err(format!(
                "console counter after the restore {after:?} does not go on from {tick_before}"
            ))
        }
    }
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(snap.join("disk.qcow2"))
        .status()
        .unwrap();
    if !check.success() {
        return Err("qemu-img check of the restored disk failed".into());
    }
    Ok(())
}
