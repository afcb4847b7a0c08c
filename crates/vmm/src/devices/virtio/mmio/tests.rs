//! Unit tests of the virtio-mmio transport, driven through its registers by the test driver
//! (`devices::virtio::testing`) with a virtio-rng device behind it: the negotiation rules,
//! batching of interrupts, the event index across the ring's wrap, and malformed chains.

use super::*;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::testing::{guest_memory, TestDriver};
use crate::devices::virtio::{
    COMMON_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vm_memory::{Bytes, GuestAddress};

fn rng_transport(mem: &GuestMemoryMmap) -> MmioTransport {
    MmioTransport::new(
        Box::new(Rng::new(None).unwrap()),
        mem.clone(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    )
    .unwrap()
}

#[test]
fn negotiation_follows_the_spec() {
    let mem = guest_memory(4 << 20);
    let mut t = rng_transport(&mem);
    let mut d = TestDriver::new(mem.clone());
    // A legacy driver (no VERSION_1) is refused at FEATURES_OK.
    let st = d
        .init(&mut t, COMMON_FEATURES & !VIRTIO_F_VERSION_1, &[0])
        .unwrap_err();
    assert_eq!(st & STATUS_FEATURES_OK, 0);
    // Queue registers are ignored before FEATURES_OK.
    d.write_reg(&mut t, 0x70, 0);
    d.write_reg(&mut t, 0x38, 8);
    d.write_reg(&mut t, 0x44, 1);
    assert_eq!(d.read_reg(&mut t, 0x44), 0);
    // A queue outside guest memory: DRIVER_OK leads to DEVICE_NEEDS_RESET.
    d.write_reg(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    d.write_reg(&mut t, 0x20, 0);
    d.write_reg(&mut t, 0x24, 1);
    d.write_reg(&mut t, 0x20, 1);
    d.write_reg(
        &mut t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_ne!(d.status(&mut t) & STATUS_FEATURES_OK, 0);
    d.write_reg(&mut t, 0x30, 0);
    d.write_reg(&mut t, 0x38, 100); // not a power of two: ignored
    d.write_reg(&mut t, 0xa0, 0xfff0_0000);
    d.write_reg(&mut t, 0x44, 1);
    d.write_reg(
        &mut t,
        0x70,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_ne!(d.status(&mut t) & STATUS_NEEDS_RESET, 0);
    assert!(!t.is_active());
    assert_eq!(
        d.read_reg(&mut t, 0x60) & crate::devices::virtio::INT_CONFIG,
        2
    );
    // Reset, then a proper init works and the device answers.
    let f = d.init(&mut t, u64::MAX, &[0]).unwrap();
    assert_eq!(f, COMMON_FEATURES);
    assert!(t.is_active());
    assert_eq!(d.read_reg(&mut t, 0x08), 4);
    assert_eq!(d.read_reg(&mut t, 0x34), 256);
    // Writing 0 resets: inactive, status 0, queue not ready.
    d.write_reg(&mut t, 0x70, 0);
    assert!(!t.is_active());
    assert_eq!(d.status(&mut t), 0);
    assert_eq!(d.read_reg(&mut t, 0x44), 0);
}

#[test]
fn rng_chains_indirect_and_one_interrupt_per_batch() {
    let mem = guest_memory(4 << 20);
    let mut t = rng_transport(&mem);
    let mut d = TestDriver::new(mem.clone());
    d.init(&mut t, COMMON_FEATURES & !VIRTIO_RING_F_EVENT_IDX, &[16])
        .unwrap();
    let a = d.alloc(4096, 8);
    let b = d.alloc(4096, 8);
    let table = d.alloc(64, 16);
    let mut q = d.queues[0].clone();
    let h1 = q.add(
        &mem,
        &[(a, 100, true), (a + 100, 28, true), (a + 1000, 1, true)],
    );
    let h2 = q.add_indirect(&mem, table, &[(b, 512, true), (b + 512, 512, true)]);
    // A readable buffer first is allowed and ignored by the rng.
    let h3 = q.add(&mem, &[(a + 2000, 8, false), (a + 3000, 64, true)]);
    d.notify(&mut t, 0);
    assert_eq!(
        q.take_used(&mem),
        vec![(h1.into(), 129), (h2.into(), 1024), (h3.into(), 64)]
    );
    assert_eq!(d.take_interrupts(&mut t), 1, "one interrupt for the batch");
    let mut got = vec![0u8; 1024];
    mem.read_slice(&mut got, GuestAddress(b)).unwrap();
    assert!(
        got.iter().filter(|&&x| x != 0).count() > 900,
        "random bytes arrived"
    );
    let mut untouched = [0u8; 8];
    mem.read_slice(&mut untouched, GuestAddress(a + 2000))
        .unwrap();
    assert_eq!(untouched, [0; 8], "readable buffers are not written");
    // No new work: no interrupt.
    d.notify(&mut t, 0);
    assert_eq!(d.take_interrupts(&mut t), 0);
    let _ = VIRTIO_RING_F_INDIRECT_DESC;
}

#[test]
fn event_index_and_ring_wrap() {
    let mem = guest_memory(4 << 20);
    let mut t = rng_transport(&mem);
    let mut d = TestDriver::new(mem.clone());
    let f = d.init(&mut t, u64::MAX, &[8]).unwrap();
    assert_ne!(f & VIRTIO_RING_F_EVENT_IDX, 0);
    let buf = d.alloc(64, 8);
    let mut q = d.queues[0].clone();
    // The driver wants an interrupt only once the used index passes 5.
    q.set_used_event(&mem, 5);
    for _ in 0..4 {
        q.add(&mem, &[(buf, 8, true)]);
    }
    d.notify(&mut t, 0);
    assert_eq!(q.take_used(&mem).len(), 4);
    assert_eq!(d.take_interrupts(&mut t), 0, "used_event not reached");
    // The device asks to be notified at the next available index.
    assert_eq!(q.avail_event(&mem), 4);
    for _ in 0..4 {
        q.add(&mem, &[(buf, 8, true)]);
    }
    d.notify(&mut t, 0);
    assert_eq!(q.take_used(&mem).len(), 4);
    assert_eq!(d.take_interrupts(&mut t), 1, "used index passed used_event");
    // Past the 16-bit wrap of the ring indices, with an 8-entry ring.
    let mut total = 8u32;
    while total < 70_000 {
        q.set_used_event(&mem, q.avail_idx().wrapping_add(5));
        for _ in 0..6 {
            q.add(&mem, &[(buf, 8, true)]);
        }
        d.notify(&mut t, 0);
        let used = q.take_used(&mem);
        assert_eq!(used.len(), 6);
        assert!(used.iter().all(|&(id, len)| id < 8 && len == 8));
        assert_eq!(d.take_interrupts(&mut t), 1);
        total += 6;
    }
    assert_eq!(q.used_idx(&mem), u16::try_from(total % 65536).unwrap());
}

#[test]
fn malformed_chains_are_returned_empty_without_panic() {
    use crate::devices::virtio::testing::{
        VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    };
    let mem = guest_memory(4 << 20);
    let mut t = rng_transport(&mem);
    let mut d = TestDriver::new(mem.clone());
    d.init(&mut t, u64::MAX, &[16]).unwrap();
    let buf = d.alloc(4096, 8);
    let table = d.alloc(16 * 2000, 16);
    let mut q = d.queues[0].clone();
    let w = VIRTQ_DESC_F_WRITE;
    let n = VIRTQ_DESC_F_NEXT;
    // A loop: 0 -> 1 -> 0.
    q.write_desc(&mem, 0, buf, 8, w | n, 1);
    q.write_desc(&mem, 1, buf, 8, w | n, 0);
    q.publish(&mem, 0);
    // Next index out of range.
    q.write_desc(&mem, 2, buf, 8, w | n, 999);
    q.publish(&mem, 2);
    // Buffer outside guest memory, and one that overflows the address space.
    q.write_desc(&mem, 3, 0x7fff_0000_0000, 8, w, 0);
    q.publish(&mem, 3);
    q.write_desc(&mem, 4, u64::MAX - 3, 8, w, 0);
    q.publish(&mem, 4);
    // Readable after writable.
    q.write_desc(&mem, 5, buf, 8, w | n, 6);
    q.write_desc(&mem, 6, buf, 8, 0, 0);
    q.publish(&mem, 5);
    // An indirect table of 2000 descriptors (too long).
    for i in 0..2000u64 {
        let a = table + i * 16;
        mem.write_obj(buf, GuestAddress(a)).unwrap();
        mem.write_obj(1u32, GuestAddress(a + 8)).unwrap();
        mem.write_obj(w | if i < 1999 { n } else { 0 }, GuestAddress(a + 12))
            .unwrap();
        mem.write_obj(u16::try_from(i + 1).unwrap(), GuestAddress(a + 14))
            .unwrap();
    }
    q.write_desc(&mem, 7, table, 2000 * 16, VIRTQ_DESC_F_INDIRECT, 0);
    q.publish(&mem, 7);
    // Indirect table with a misaligned length, and one outside memory.
    q.write_desc(&mem, 8, table, 17, VIRTQ_DESC_F_INDIRECT, 0);
    q.publish(&mem, 8);
    q.write_desc(&mem, 9, 0x7fff_0000_0000, 32, VIRTQ_DESC_F_INDIRECT, 0);
    q.publish(&mem, 9);
    // Head index beyond the ring.
    q.publish(&mem, 300);
    // Finally a good chain: the device must still serve it.
    q.write_desc(&mem, 10, buf, 32, w, 0);
    q.publish(&mem, 10);
    d.notify(&mut t, 0);
    let used = q.take_used(&mem);
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(lens, vec![0, 0, 0, 0, 0, 0, 0, 0, 32], "{used:?}");
    assert_eq!(used.last().unwrap().0, 10);
    assert!(t.is_active());
}
