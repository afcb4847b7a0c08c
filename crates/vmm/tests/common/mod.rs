//! Shared helpers for the integration tests: tiny guest images (ELF with or without the PVH
//! note, bzImage), a minimal HTTP client for the API socket, and process helpers.
#![allow(dead_code)]

#[path = "../guests/guests.rs"]
pub mod guests;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Physical load address of every test guest (HIMEM_START).
pub const LOAD_ADDR: u64 = LOAD_ADDR_U32 as u64;
/// [`LOAD_ADDR`] as the 32-bit fields of the Xen PVH note and the bzImage header hold it.
const LOAD_ADDR_U32: u32 = 0x10_0000;

/// A 64-bit ELF executable with one PT_LOAD of `code` at `LOAD_ADDR` (entry there), and, when
/// `pvh` is set, a PT_NOTE with XEN_ELFNOTE_PHYS32_ENTRY pointing at the same address.
pub fn elf(code: &[u8], pvh: bool) -> Vec<u8> {
    let phnum: u16 = if pvh { 2 } else { 1 };
    let code_off = 0x1000u64;
    let note_off = 64 + 56 * u64::from(phnum);
    let mut f = Vec::new();
    // ELF header.
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&phnum.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let phdr = |f: &mut Vec<u8>, ty: u32, off: u64, addr: u64, size: u64, align: u64| {
        f.extend_from_slice(&ty.to_le_bytes());
        f.extend_from_slice(&5u32.to_le_bytes()); // R+X
        f.extend_from_slice(&off.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes()); // vaddr
        f.extend_from_slice(&addr.to_le_bytes()); // paddr
        f.extend_from_slice(&size.to_le_bytes()); // filesz
        f.extend_from_slice(&size.to_le_bytes()); // memsz
        f.extend_from_slice(&align.to_le_bytes());
    };
    phdr(&mut f, 1, code_off, LOAD_ADDR, code.len() as u64, 0x1000);
    if pvh {
        phdr(&mut f, 4, note_off, 0, 20, 4);
        // Note: namesz 4 ("Xen\0"), descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY).
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&4u32.to_le_bytes());
        f.extend_from_slice(&18u32.to_le_bytes());
        f.extend_from_slice(b"Xen\0");
        f.extend_from_slice(&LOAD_ADDR_U32.to_le_bytes());
    }
    f.resize(kobako_vmm::cast::usize_from(code_off), 0);
    f.extend_from_slice(code);
    f
}

/// A minimal bzImage: one setup sector plus the boot sector, then the protected-mode part,
/// loaded at 1 MiB; `code64` sits at +0x200 of it, where the 64-bit entry is.
pub fn bzimage(code64: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    f[0x1f1] = 1; // setup_sects
    f[0x1fe] = 0x55;
    f[0x1ff] = 0xaa;
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes()); // protocol 2.12
    f[0x211] = 0x01; // loadflags: LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&LOAD_ADDR_U32.to_le_bytes()); // code32_start
    let mut pm = vec![0xf4u8; 0x200]; // hlt padding before the 64-bit entry
    pm.extend_from_slice(code64);
    f.extend_from_slice(&pm);
    f
}

/// The long64 guest with its RAM and MMIO slots patched.
pub fn long64(mem_addr: u64, mmio_addr: u64) -> Vec<u8> {
    let mut g = guests::LONG64.to_vec();
    g[8..16].copy_from_slice(&mem_addr.to_le_bytes());
    g[16..24].copy_from_slice(&mmio_addr.to_le_bytes());
    g
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Path of the test binary.
pub fn vmm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kobako-vmm"))
}

/// A VMM child process that is killed when dropped, so a failing test leaves no VM behind.
pub struct Vmm(pub Child);

impl std::ops::Deref for Vmm {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Vmm {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `kobako-vmm --api-sock SOCK ARGS` and waits for the socket.
pub fn spawn_api(sock: &Path, extra: &[&str]) -> Vmm {
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--api-sock").arg(sock).args(extra);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = Vmm(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "API socket never appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// One HTTP exchange on a fresh connection: returns (status, body).
pub fn http(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let b = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `PUT /actions InstanceStart`, asserted to succeed.
pub fn instance_start(sock: &Path) {
    let (st, body) = http(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(st, 204, "InstanceStart: {body}");
}

/// Waits for the child to exit, up to `secs`; kills it and panics on timeout.
pub fn wait_exit(child: &mut Child, secs: u64) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("VMM did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` until true or `secs` pass.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
