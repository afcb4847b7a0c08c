//! kobako-vmm's qcow2 implementation against qemu's: images made by `qemu-img`/`qemu-io`
//! (backing chains, compressed clusters, zero clusters, v2 and v3, several cluster sizes) must
//! read back byte-exact as `qemu-img convert -O raw` does; images written by us must pass
//! `qemu-img check` and convert to exactly what we wrote.

use std::path::Path;
use std::process::Command;

use kobako_vmm::cast::usize_from;
use kobako_vmm::devices::virtio::block::disk;
use kobako_vmm::devices::virtio::block::image::DiskImage;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not found ({e}): install qemu-utils (scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), some runs compressible.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        if (s >> 60) < 4 {
            // a compressible run
            v.extend(std::iter::repeat_n(s.to_le_bytes()[1], 300));
        } else {
            v.extend_from_slice(&s.to_le_bytes());
        }
    }
    v.truncate(len);
    v
}

fn read_all(img: &mut dyn DiskImage) -> Vec<u8> {
    let mut v = vec![0u8; usize_from(img.size())];
    // Odd-sized reads, so cluster boundaries fall inside requests.
    let mut off = 0;
    while off < v.len() {
        let n = (v.len() - off).min(12_345 + off % 7_777);
        img.read_at(off as u64, &mut v[off..off + n]).unwrap();
        off += n;
    }
    v
}

fn qemu_raw(img: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("expected.raw");
    let _ = std::fs::remove_file(&out);
    run("qemu-img", &["convert", "-O", "raw", p(img), p(&out)]);
    std::fs::read(out).unwrap()
}

fn assert_same(ours: &[u8], theirs: &[u8], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: size");
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i:#x}");
    }
}

fn check_clean(img: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", p(img)])
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success()
            && j["check-errors"] == 0
            && j.get("leaks").is_none()
            && j.get("corruptions").is_none(),
        "qemu-img check {}: {} {}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn qemu_made_images_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 6 << 20;
    let base_raw = d.join("base.raw");
    std::fs::write(&base_raw, pattern(size, 7)).unwrap();
    for (cluster, compat) in [
        ("65536", "1.1"),
        ("4096", "1.1"),
        ("512", "0.10"),
        ("2M", "1.1"),
    ] {
        let what = format!("cluster {cluster} compat {compat}");
        // Compressed base, qcow2 overlay (qcow2 backing format recorded), raw backing too.
        let base = d.join("base.qcow2");
        let top = d.join("top.qcow2");
        let top_raw_backing = d.join("top-raw.qcow2");
        for f in [&base, &top, &top_raw_backing] {
            let _ = std::fs::remove_file(f);
        }
        run(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                &format!("cluster_size={cluster},compat={compat}"),
                p(&base_raw),
                p(&base),
            ],
        );
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &format!("cluster_size={cluster},compat={compat}"),
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                p(&top),
                "8M",
            ],
        );
        // Data over part of the base, zero clusters (v3) or zero writes (v2), a partial
        // cluster, and data past the backing file's end.
        let zero = if compat == "1.1" {
            "write -z"
        } else {
            "write -P 0"
        };
        run(
            "qemu-io",
            &[
                "-c",
                "write -P 0xab 1000 70000",
                "-c",
                &format!("{zero} 2M 1M"),
                "-c",
                "write -P 0x5c 7M 65536",
                "-c",
                "write -P 0x11 3M 513",
                p(&top),
            ],
        );
        let mut ours = disk::open(&top, true, None).unwrap();
        assert_eq!(ours.format(), "qcow2");
        assert_eq!(ours.size(), 8 << 20);
        assert_same(&read_all(ours.as_mut()), &qemu_raw(&top, d), &what);
        // A raw backing file.
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                &format!("cluster_size={cluster},compat={compat}"),
                "-b",
                p(&base_raw),
                "-F",
                "raw",
                p(&top_raw_backing),
            ],
        );
        run(
            "qemu-io",
            &["-c", "write -P 0x77 4095 10000", p(&top_raw_backing)],
        );
        let mut ours = disk::open(&top_raw_backing, true, None).unwrap();
        assert_same(
            &read_all(ours.as_mut()),
            &qemu_raw(&top_raw_backing, d),
            &what,
        );
    }
}

/// A small deterministic RNG for the write workload.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_writes(img: &mut dyn DiskImage, model: &mut [u8], seed: u64, count: usize, v3: bool) {
    let mut r = Rng(seed);
    let size = model.len() as u64;
    for i in 0..count {
        let off = r.below(size);
        let len = (1 + r.below(if i % 5 == 0 { 300_000 } else { 9000 })).min(size - off);
        match r.below(10) {
            0 if v3 => {
                img.write_zeroes(off, len, r.below(2) == 0).unwrap();
                model[usize_from(off)..usize_from(off + len)].fill(0);
            }
            _ => {
                let data = pattern(usize_from(len), r.next());
                img.write_at(off, &data).unwrap();
                model[usize_from(off)..usize_from(off + len)].copy_from_slice(&data);
            }
        }
        if i % 50 == 0 {
            img.flush().unwrap();
        }
    }
    img.flush().unwrap();
}

#[test]
fn images_we_write_pass_qemu_img_check_and_convert_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size = 4 << 20;
    let base_raw = d.join("base.raw");
    std::fs::write(&base_raw, pattern(size, 3)).unwrap();
    for (cluster, compat, backing) in [
        ("65536", "1.1", "qcow2-compressed"),
        ("512", "1.1", "raw"),
        ("4096", "0.10", "none"),
        ("65536", "1.1", "none"),
    ] {
        let what = format!("cluster {cluster} compat {compat} backing {backing}");
        let top = d.join(format!("top-{cluster}-{compat}-{backing}.qcow2"));
        let opts = format!("cluster_size={cluster},compat={compat}");
        let mut model = vec![0u8; size];
        match backing {
            "qcow2-compressed" => {
                let base = d.join("cbase.qcow2");
                let _ = std::fs::remove_file(&base);
                run(
                    "qemu-img",
                    &["convert", "-c", "-O", "qcow2", p(&base_raw), p(&base)],
                );
                run(
                    "qemu-img",
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-o",
                        &opts,
                        "-b",
                        p(&base),
                        "-F",
                        "qcow2",
                        p(&top),
                    ],
                );
                model.copy_from_slice(&std::fs::read(&base_raw).unwrap());
            }
            "raw" => {
                run(
                    "qemu-img",
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-o",
                        &opts,
                        "-b",
                        p(&base_raw),
                        "-F",
                        "raw",
                        p(&top),
                    ],
                );
                model.copy_from_slice(&std::fs::read(&base_raw).unwrap());
            }
            _ => {
                run(
                    "qemu-img",
                    &[
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-o",
                        &opts,
                        p(&top),
                        &size.to_string(),
                    ],
                );
            }
        }
        {
            let mut img = disk::open(&top, false, None).unwrap();
            random_writes(
                img.as_mut(),
                &mut model,
                0x1234_5678 ^ size as u64,
                300,
                compat == "1.1",
            );
            assert_same(
                &read_all(img.as_mut()),
                &model,
                &format!("{what}: our read-back"),
            );
        }
        check_clean(&top);
        assert_same(&qemu_raw(&top, d), &model, &format!("{what}: qemu's read"));
        // Reopen and keep writing (state comes from the file, not our caches).
        {
            let mut img = disk::open(&top, false, None).unwrap();
            random_writes(img.as_mut(), &mut model, 99, 100, compat == "1.1");
        }
        check_clean(&top);
        assert_same(&qemu_raw(&top, d), &model, &format!("{what}: after reopen"));
    }

    // Overwriting a compressed top image: replaced compressed clusters are released.
    let c = d.join("compressed-top.qcow2");
    run(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", p(&base_raw), p(&c)],
    );
    let mut model = std::fs::read(&base_raw).unwrap();
    {
        let mut img = disk::open(&c, false, None).unwrap();
        random_writes(img.as_mut(), &mut model, 5, 200, true);
        // Every cluster rewritten: no compressed data may stay referenced.
        let all = pattern(size, 11);
        img.write_at(0, &all).unwrap();
        model.copy_from_slice(&all);
        img.flush().unwrap();
    }
    check_clean(&c);
    assert_same(&qemu_raw(&c, d), &model, "compressed top rewritten");
}

#[test]
fn unsupported_images_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let enc = d.join("zstd.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compression_type=zstd",
            p(&enc),
            "1M",
        ],
    );
    let e = disk::open(&enc, true, None).unwrap_err().to_string();
    assert!(e.contains("compression_type=zlib"), "{e}");
    let snap = d.join("snap.qcow2");
    run("qemu-img", &["create", "-q", "-f", "qcow2", p(&snap), "1M"]);
    run("qemu-img", &["snapshot", "-c", "s1", p(&snap)]);
    let e = disk::open(&snap, false, None).unwrap_err().to_string();
    assert!(e.contains("snapshots"), "{e}");
    assert!(disk::open(&snap, true, None).is_ok(), "read-only is fine");
    let missing = d.join("orphan.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/nonexistent/base.raw",
            "-F",
            "raw",
            "-u",
            p(&missing),
            "1M",
        ],
    );
    let e = disk::open(&missing, true, None).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/base.raw"), "{e}");
    // Garbage with the magic: an error, not a panic.
    let junk = d.join("junk.qcow2");
    let mut b = b"QFI\xfb".to_vec();
    b.extend(pattern(4096, 1));
    std::fs::write(&junk, &b).unwrap();
    assert!(disk::open(&junk, true, None).is_err());
    // A raw disk whose guest wrote a qcow2 header (here: one naming a backing file) stays raw
    // when the format is given; a "qcow2" drive without the header is refused.
    let raw = disk::open(&missing, true, Some("raw")).unwrap();
    assert_eq!(raw.format(), "raw");
    assert_eq!(raw.size(), std::fs::metadata(&missing).unwrap().len());
    std::fs::write(d.join("plain.raw"), pattern(4096, 2)).unwrap();
    let e = disk::open(&d.join("plain.raw"), true, Some("qcow2"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no qcow2 header"), "{e}");
}
