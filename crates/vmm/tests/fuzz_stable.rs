//! The fuzz targets of `fuzz/` (cargo-fuzz, nightly) as a bounded, seeded randomized test on
//! stable Rust, so CI (scripts/test.sh) runs them every time: random inputs and mutations of
//! valid ones (a well-formed queue, qemu-made qcow2 images), a fixed number of iterations.
//! A panic fails the test; the seed and iteration are printed to reproduce it.

use kobako_vmm::cast::usize_from;
use kobako_vmm::devices::virtio::fuzzing;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// An index below `n`.
    fn index(&mut self, n: usize) -> usize {
        usize_from(self.below(n as u64))
    }
    /// The low byte of the next output.
    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

fn mutate(r: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + r.below(8) {
        if v.is_empty() {
            break;
        }
        let i = r.index(v.len());
        match r.below(4) {
            0 => v[i] ^= 1 << r.below(8),
            1 => v[i] = r.byte(),
            2 => {
                // an interesting value over 2/4/8 bytes
                let vals = [
                    0u64,
                    1,
                    0xff,
                    0xffff,
                    0x7fff_ffff,
                    u64::MAX,
                    0x8000_0000_0000_0000,
                ];
                let x = vals[r.index(vals.len())].to_le_bytes();
                let n = [2usize, 4, 8][r.index(3)].min(v.len() - i);
                v[i..i + n].copy_from_slice(&x[..n]);
            }
            _ => v.truncate(i.max(1)),
        }
    }
    v
}

fn iterations() -> u64 {
    std::env::var("KOBAKO_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500)
}

/// A valid layout for the descriptor fuzzer: 16-entry queue, chains in its table.
fn queue_seed() -> Vec<u8> {
    let mut v = vec![4u8, 1, 2, 3, 0, 1, 0, 0]; // size 16, desc 4 KiB, avail 8 KiB, used 12 KiB
    let mut mem = vec![0u8; 16 << 10];
    for i in 0..16u16 {
        let d = 4096 + usize::from(i) * 16;
        mem[d..d + 8].copy_from_slice(&(0x4000 + u64::from(i) * 64).to_le_bytes());
        mem[d + 8..d + 12].copy_from_slice(&64u32.to_le_bytes());
        let flags: u16 = if i % 3 == 2 { 2 } else { 3 };
        mem[d + 12..d + 14].copy_from_slice(&flags.to_le_bytes());
        mem[d + 14..d + 16].copy_from_slice(&((i + 1) % 16).to_le_bytes());
    }
    mem[8192 + 2..8192 + 4].copy_from_slice(&6u16.to_le_bytes());
    for (k, h) in [0u16, 3, 6, 9, 12, 15].iter().enumerate() {
        mem[8192 + 4 + k * 2..8192 + 6 + k * 2].copy_from_slice(&h.to_le_bytes());
    }
    v.extend(mem);
    v
}

#[test]
fn descriptor_chains_random_and_mutated() {
    let seed = 0x5eed_0001;
    let mut r = Rng(seed);
    let valid = queue_seed();
    fuzzing::descriptor_chains(&valid);
    for i in 0..iterations() {
        let input = if i % 2 == 0 {
            mutate(&mut r, &valid)
        } else {
            let n = r.index(20_000);
            r.bytes(n)
        };
        let res = std::panic::catch_unwind(|| fuzzing::descriptor_chains(&input));
        assert!(res.is_ok(), "panic with seed {seed:#x} at iteration {i}");
    }
}

#[test]
fn qcow2_reader_random_and_mutated() {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds = Vec::new();
    for (opts, compress) in [
        ("cluster_size=512", true),
        ("cluster_size=4096,compat=0.10", false),
    ] {
        let raw = dir.path().join("r.raw");
        let data: Vec<u8> = (0..256 * 1024u32)
            .map(|i| (i / 700).to_le_bytes()[0])
            .collect();
        std::fs::write(&raw, data).unwrap();
        let img = dir.path().join("i.qcow2");
        let _ = std::fs::remove_file(&img);
        let mut args = vec!["convert", "-O", "qcow2", "-o", opts];
        if compress {
            args.push("-c");
        }
        let st = std::process::Command::new("qemu-img")
            .args(&args)
            .arg(&raw)
            .arg(&img)
            .status()
            .expect("qemu-img (qemu-utils, scripts/setup.sh)");
        assert!(st.success());
        let st = std::process::Command::new("qemu-io")
            .args(["-c", "write -z 64k 8k", "-c", "write -P 7 100k 3000"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        seeds.push(std::fs::read(&img).unwrap());
    }
    let seed = 0x5eed_0002;
    let mut r = Rng(seed);
    for s in &seeds {
        fuzzing::qcow2_image(s);
    }
    for i in 0..iterations() / 3 {
        let base = &seeds[usize_from(i % seeds.len() as u64)];
        let input = if i % 10 == 9 {
            let n = r.index(4096);
            let mut v = b"QFI\xfb".to_vec();
            v.extend(r.bytes(n));
            v
        } else {
            // Mutations concentrated on the metadata (first clusters) most of the time.
            let mut v = mutate(&mut r, base);
            if i % 2 == 0 {
                let at = r.index(1024.min(v.len()));
                v[at] ^= r.byte();
            }
            v
        };
        let res = std::panic::catch_unwind(|| fuzzing::qcow2_image(&input));
        assert!(res.is_ok(), "panic with seed {seed:#x} at iteration {i}");
    }
}

/// A valid conversation for the vsock fuzzer: answer the host's REQUEST (host port 2^30 to
/// guest port 52), data, a credit request, a guest-initiated REQUEST, SHUTDOWN, RST.
fn vsock_seed() -> Vec<u8> {
    fn pkt(src: u32, dst: u32, op: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&3u64.to_le_bytes());
        p.extend_from_slice(&2u64.to_le_bytes());
        p.extend_from_slice(&src.to_le_bytes());
        p.extend_from_slice(&dst.to_le_bytes());
        p.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        p.extend_from_slice(&1u16.to_le_bytes());
        p.extend_from_slice(&op.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&(64u32 << 10).to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(payload);
        let mut rec = vec![u8::try_from(p.len()).unwrap(), 3];
        rec.extend(p);
        rec
    }
    let host = 1u32 << 30;
    let mut v = Vec::new();
    v.extend(pkt(52, host, 2, 0, b""));
    v.extend(pkt(52, host, 5, 0, b"hello host"));
    v.extend(pkt(52, host, 7, 0, b""));
    v.extend(pkt(1000, 9, 1, 0, b""));
    v.extend(pkt(52, host, 6, 0, b""));
    v.extend(pkt(52, host, 4, 2, b""));
    v.extend(pkt(52, host, 5, 0, b"after shutdown"));
    v.extend(pkt(52, host, 3, 0, b""));
    v
}

#[test]
fn vsock_packets_random_and_mutated() {
    let seed = 0x5eed_0003;
    let mut r = Rng(seed);
    let valid = vsock_seed();
    fuzzing::vsock_packets(&valid);
    for i in 0..iterations() / 3 {
        let input = if i % 2 == 0 {
            mutate(&mut r, &valid)
        } else {
            let n = r.index(2000);
            r.bytes(n)
        };
        let res = std::panic::catch_unwind(|| fuzzing::vsock_packets(&input));
        assert!(res.is_ok(), "panic with seed {seed:#x} at iteration {i}");
    }
}
