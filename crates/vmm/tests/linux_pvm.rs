//! Linux smoke boot on this host's /dev/kvm: the PVM-tolerant kernel from
//! `crates/vmm/guest-pvm/build.sh` with a one-file initramfs whose /init prints a marker,
//! signals boot complete and reboots. It needs the kernel build and takes minutes (every guest
//! kernel instruction runs in kvm_pvm's emulator at ~15-30 k instructions/s, and the periodic
//! tick alone costs ~1800 of them), far longer on a loaded host, so it is `#[ignore]`d; run it
//! on an idle machine with
//! `cargo test -p kobako-vmm --test linux_pvm -- --ignored --nocapture`.
//! `KOBAKO_PVM_KERNEL` overrides the kernel path (default /var/cache/kobako/kernel-pvm/vmlinux);
//! `KOBAKO_PVM_CMDLINE_EXTRA` appends to the command line; `KOBAKO_PVM_TIMEOUT` (seconds,
//! default 900) bounds the boot. 64 MiB of RAM: memory-map initialisation is emulated too and
//! scales with the RAM size (256 MiB cost ~20 s more of an idle host's boot).

mod common;

use std::io::Read;
use std::time::Instant;

use common::*;

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
    let kernel = std::env::var("KOBAKO_PVM_KERNEL")
        .unwrap_or_else(|_| "/var/cache/kobako/kernel-pvm/vmlinux".into());
    assert!(
        std::path::Path::new(&kernel).exists(),
        "{kernel} missing: build it with crates/vmm/guest-pvm/build.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let initrd = write(
        dir.path(),
        "initrd.cpio",
        &initramfs(&elf(guests::INIT, false)),
    );
    let log = dir.path().join("vmm.log");
    let mut cmdline = String::from(
        "console=ttyS0 reboot=k panic=-1 nokaslr mitigations=off kobako_pvm noxsave \
         clearcpuid=popcnt,smap,erms,fsrm,ssse3,sse4_1,sse4_2,avx,avx2,avx512f,adx,bmi2 \
         noreplace-smp",
    );
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
