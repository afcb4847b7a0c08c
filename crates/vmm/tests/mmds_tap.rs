//! The MMDS network stack against a real Linux TCP/IP stack: the host kernel plays the guest.
//! A tap in a private network namespace (root) carries the kernel's frames to
//! `kobako_vmm::mmds::stack::MmdsStack` exactly as a guest's virtio-net transmit queue does,
//! and the stack's answers go back through the tap. curl, busybox wget and busybox nc (the
//! tools a guest uses) then talk to 169.254.169.254: ARP, the TCP handshake, V2 tokens,
//! keep-alive, a 40 KB answer through the window, JSON, errors. The same stack serves a real
//! Linux guest in `linux_pvm.rs`.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kobako_vmm::devices::virtio::net::{Tap, VNET_HDR_LEN};
use kobako_vmm::mmds::stack::{MmdsStack, Verdict};
use kobako_vmm::mmds::{Mmds, MmdsVersion, DEFAULT_IPV4};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Output of `cmd` run in the namespace (stdout and stderr), whatever its exit status.
fn in_ns(ns: &str, cmd: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Moves frames between the tap and the stack until `stop`.
fn serve(ns: String, mmds: Arc<Mutex<Mmds>>, stop: Arc<AtomicBool>, taken: Arc<Mutex<u64>>) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: setns on this thread only (CLONE_NEWNET), with an fd we opened.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    let tap = Tap::open("kbmm0").unwrap();
    let mut stack = MmdsStack::new(DEFAULT_IPV4, mmds);
    let mut buf = vec![0u8; 65562];
    let mut file = tap.file();
    while !stop.load(Ordering::Relaxed) {
        match file.read(&mut buf) {
            Ok(n) if n > VNET_HDR_LEN => {
                if stack.handle_frame(&buf[VNET_HDR_LEN..n]) == Verdict::Taken {
                    *taken.lock().unwrap() += 1;
                }
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
        while let Some(fr) = stack.pop_frame() {
            let mut out = vec![0u8; VNET_HDR_LEN];
            out.extend_from_slice(&fr);
            let _ = file.write(&out);
        }
    }
}

#[test]
fn curl_wget_and_nc_read_the_mmds_through_a_real_tcp_stack() {
    let ns = Netns(format!("kbmmds{}", std::process::id()));
    sh(&format!(
        "ip netns add {n} && ip -n {n} link set lo up && ip -n {n} tuntap add dev kbmm0 mode tap && \
         ip -n {n} addr add 10.0.0.2/24 dev kbmm0 && ip -n {n} link set kbmm0 up && \
         ip -n {n} route add 169.254.169.254 dev kbmm0",
        n = ns.0
    ));
    let big = "b".repeat(40_000);
    let mut m = Mmds::new(100_000);
    m.put(serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-tap", "big": big, "n": {"x": "y"}}}}))
        .unwrap();
    m.configure(MmdsVersion::V2, false);
    let mmds = Arc::new(Mutex::new(m));
    let stop = Arc::new(AtomicBool::new(false));
    let taken = Arc::new(Mutex::new(0u64));
    let t = {
        let (ns, mmds, stop, taken) = (ns.0.clone(), mmds.clone(), stop.clone(), taken.clone());
        std::thread::spawn(move || serve(ns, mmds, stop, taken))
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let n = &ns.0;
    let url = "http://169.254.169.254";

    let token = in_ns(
        n,
        &format!(
            "curl -s -m 10 -X PUT -H 'X-metadata-token-ttl-seconds: 60' {url}/latest/api/token"
        ),
    );
    assert_eq!(token.len(), 64, "token: {token:?}");
    let h = format!("-H 'X-metadata-token: {token}'");
    let got = in_ns(
        n,
        &format!("curl -s -m 10 {h} {url}/latest/meta-data/ami-id"),
    );
    assert_eq!(got, "ami-tap");
    let code = in_ns(
        n,
        &format!("curl -s -m 10 -o /dev/null -w '%{{http_code}}' {url}/latest/meta-data/ami-id"),
    );
    assert_eq!(code, "401", "no token");
    // 40 KB through the window and segmentation, twice on one keep-alive connection.
    let two = in_ns(
        n,
        &format!("curl -s -m 20 {h} {url}/latest/meta-data/big {url}/latest/meta-data/big"),
    );
    assert_eq!(two.len(), 80_000, "{}", &two[..two.len().min(300)]);
    assert!(two.bytes().all(|b| b == b'b'));
    let json = in_ns(
        n,
        &format!("curl -s -m 10 {h} -H 'Accept: application/json' {url}/latest/meta-data/n"),
    );
    assert_eq!(json, r#"{"x":"y"}"#);
    let listing = in_ns(n, &format!("curl -s -m 10 {h} {url}/latest/meta-data/"));
    assert_eq!(listing, "ami-id\nbig\nn/");
    let missing = in_ns(
        n,
        &format!("curl -s -m 10 -w ' %{{http_code}}' {h} {url}/latest/nope"),
    );
    assert_eq!(missing, "Resource not found: /latest/nope. 404");
    // busybox, as in a minimal guest: nc for the token (PUT), wget for the GET.
    let bb = in_ns(
        n,
        &format!(
            "T=$(printf 'PUT /latest/api/token HTTP/1.1\\r\\nHost: x\\r\\nX-metadata-token-ttl-seconds: 60\\r\\nConnection: close\\r\\n\\r\\n' \
             | busybox nc -w 10 169.254.169.254 80 | tail -n 1); \
             busybox timeout 20 busybox wget -q -O- --header \"X-metadata-token: $T\" {url}/latest/meta-data/ami-id"
        ),
    );
    assert_eq!(bb, "ami-tap");
    let bb401 = in_ns(
        n,
        &format!("busybox timeout 20 busybox wget -O- {url}/latest/meta-data/ami-id 2>&1"),
    );
    assert!(bb401.contains("401"), "{bb401}");
    // Another port of the address is refused at once (RST), not timed out.
    let t0 = std::time::Instant::now();
    let refused = in_ns(
        n,
        "curl -s -m 10 -o /dev/null -w '%{exitcode}' http://169.254.169.254:8080/",
    );
    assert_eq!(refused, "7", "connection refused");
    assert!(t0.elapsed().as_secs() < 5);
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    assert!(*taken.lock().unwrap() > 20);
}
