//! Device-level throughput: virtio-blk driven through real virtqueues in guest memory (the
//! test driver), on a raw file and a qcow2 image in the host page cache (so it measures the
//! device and format code, not the disk). `cargo bench -p kobako-vmm --bench devices`.

use std::time::Instant;

use kobako_vmm::devices::virtio::block::{Block, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use kobako_vmm::devices::virtio::mmio::MmioTransport;
use kobako_vmm::devices::virtio::testing::{guest_memory, TestDriver};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DISK: u64 = 256 << 20;

fn bench(path: &std::path::Path, what: &str, req: u32, ty: u32, total: u64) -> f64 {
    let mem = guest_memory(512 << 20);
    let disk = kobako_vmm::devices::virtio::block::disk::open(path, false).unwrap();
    let dev = Block::new("bench", disk, false, None).unwrap();
    let mut t = MmioTransport::new(
        Box::new(dev),
        mem.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    let mut d = TestDriver::new(mem.clone());
    d.init(&mut t, u64::MAX, &[256]).unwrap();
    let mut q = d.queues[0].clone();
    let batch: u64 = if req >= 1 << 20 { 16 } else { 64 };
    let hdrs = d.alloc(16 * batch, 16);
    let st = d.alloc(batch, 1);
    let data = d.alloc(u64::from(req) * batch, 4096);
    let reqs = total / u64::from(req);
    let t0 = Instant::now();
    let mut done = 0;
    let mut sector = 0u64;
    while done < reqs {
        for i in 0..batch {
            let h = hdrs + i * 16;
            mem.write_obj(ty, GuestAddress(h)).unwrap();
            mem.write_obj(sector, GuestAddress(h + 8)).unwrap();
            sector = (sector + u64::from(req) / 512) % (DISK / 512 - u64::from(req) / 512);
            q.add(
                &mem,
                &[
                    (h, 16, false),
                    (data + i * u64::from(req), req, ty == VIRTIO_BLK_T_IN),
                    (st + i, 1, true),
                ],
            );
        }
        d.notify(&mut t, 0);
        done += q.take_used(&mem).len() as u64;
    }
    let s = t0.elapsed().as_secs_f64();
    let mbs = (reqs * u64::from(req)) as f64 / s / 1e6;
    println!(
        "{what:<34} {:>5} KiB requests: {mbs:>8.0} MB/s  {:>8.0} req/s",
        req / 1024,
        reqs as f64 / s
    );
    mbs
}

fn main() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    for name in ["raw", "qcow2"] {
        for req in [4096u32, 1 << 20] {
            // A fresh image each time, so "first" writes allocate (qcow2) / fill holes (raw).
            let path = dir.path().join(format!("disk.{name}"));
            let _ = std::fs::remove_file(&path);
            if name == "raw" {
                std::fs::File::create(&path).unwrap().set_len(DISK).unwrap();
            } else {
                let st = std::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&path)
                    .arg(DISK.to_string())
                    .status()
                    .unwrap();
                assert!(st.success());
            }
            bench(
                &path,
                &format!("{name} write (first)"),
                req,
                VIRTIO_BLK_T_OUT,
                DISK,
            );
            bench(
                &path,
                &format!("{name} write (overwrite)"),
                req,
                VIRTIO_BLK_T_OUT,
                DISK / 2,
            );
            bench(&path, &format!("{name} read"), req, VIRTIO_BLK_T_IN, DISK);
        }
    }
}
