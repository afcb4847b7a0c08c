//! Virtqueues: rust-vmm's `virtio-queue` split-ring implementation (ring indices, event index,
//! indirect tables) under a validating layer of ours.
//!
//! Every chain a device sees is a [`Chain`]: its buffers checked to lie in guest memory, the
//! readable ones before the writable ones, at most [`MAX_CHAIN_DESCS`] descriptors, and not cut
//! short (a `NEXT` flag on the last descriptor the walk could reach means a loop, an index out
//! of range or a bad indirect table). A malformed chain is an error value, never a panic; the
//! device returns it to the driver as a used entry of length 0.

use std::ops::Deref;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};

/// The most descriptors one chain may have (Linux uses at most a queue's worth).
pub const MAX_CHAIN_DESCS: usize = 1024;

/// One guest buffer of a chain (validated to be in guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
}

/// A validated descriptor chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<Buf>,
    pub writable: Vec<Buf>,
}

/// Why a chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("empty descriptor chain (or bad indirect table at its head)")]
    Empty,
    #[error(
        "descriptor chain cut short: a loop, a next index out of range or a bad indirect table"
    )]
    Truncated,
    #[error("descriptor chain longer than {MAX_CHAIN_DESCS} descriptors")]
    TooLong,
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
}

fn sum(bufs: &[Buf]) -> u64 {
    bufs.iter().map(|b| u64::from(b.len)).sum()
}

impl Chain {
    /// Walks and validates a chain popped from a queue.
    pub fn parse<M>(dc: DescriptorChain<M>, mem: &GuestMemoryMmap) -> Result<Chain, ChainError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let mut c = Chain {
            head: dc.head_index(),
            ..Default::default()
        };
        let mut n = 0usize;
        let mut last_next = false;
        for d in dc {
            n += 1;
            if n > MAX_CHAIN_DESCS {
                return Err(ChainError::TooLong);
            }
            last_next = d.has_next();
            let b = Buf {
                addr: d.addr().0,
                len: d.len(),
            };
            if !GuestMemoryBackend::check_range(mem, GuestAddress(b.addr), b.len as usize) {
                return Err(ChainError::OutOfRange {
                    addr: b.addr,
                    len: b.len,
                });
            }
            if d.is_write_only() {
                c.writable.push(b);
            } else if !c.writable.is_empty() {
                return Err(ChainError::ReadableAfterWritable);
            } else {
                c.readable.push(b);
            }
        }
        if n == 0 {
            return Err(ChainError::Empty);
        }
        if last_next {
            return Err(ChainError::Truncated);
        }
        Ok(c)
    }

    pub fn readable_len(&self) -> u64 {
        sum(&self.readable)
    }

    pub fn writable_len(&self) -> u64 {
        sum(&self.writable)
    }

    /// Removes the last writable byte (a status byte) and returns its address.
    pub fn take_last_writable_byte(&mut self) -> Option<u64> {
        while let Some(last) = self.writable.last_mut() {
            if last.len == 0 {
                self.writable.pop();
                continue;
            }
            last.len -= 1;
            let addr = last.addr + u64::from(last.len);
            if last.len == 0 {
                self.writable.pop();
            }
            return Some(addr);
        }
        None
    }
}

/// Reads sequentially from a list of guest buffers.
#[derive(Debug)]
pub struct ChainReader<'a> {
    mem: &'a GuestMemoryMmap,
    bufs: &'a [Buf],
    idx: usize,
    off: u32,
    done: u64,
}

impl<'a> ChainReader<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, bufs: &'a [Buf]) -> Self {
        ChainReader {
            mem,
            bufs,
            idx: 0,
            off: 0,
            done: 0,
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        sum(&self.bufs[self.idx.min(self.bufs.len())..]) - u64::from(self.off)
    }

    /// Bytes read so far.
    pub fn consumed(&self) -> u64 {
        self.done
    }

    /// Reads up to `out.len()` bytes; returns how many were read.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() && self.idx < self.bufs.len() {
            let b = self.bufs[self.idx];
            let avail = b.len - self.off;
            let take32 = u32::try_from(out.len() - n).map_or(avail, |rest| avail.min(rest));
            let take = take32 as usize;
            if take > 0
                && self
                    .mem
                    .read_slice(
                        &mut out[n..n + take],
                        GuestAddress(b.addr + u64::from(self.off)),
                    )
                    .is_err()
            {
                // Validated at parse time; memory does not shrink. Stop rather than panic.
                self.idx = self.bufs.len();
                break;
            }
            n += take;
            self.off += take32;
            if self.off == b.len {
                self.idx += 1;
                self.off = 0;
            }
        }
        self.done += n as u64;
        n
    }

    /// Reads exactly `out.len()` bytes, or returns false (having read what there was).
    pub fn read_exact(&mut self, out: &mut [u8]) -> bool {
        self.read(out) == out.len()
    }
}

/// Writes sequentially into a list of guest buffers.
#[derive(Debug)]
pub struct ChainWriter<'a> {
    mem: &'a GuestMemoryMmap,
    bufs: &'a [Buf],
    idx: usize,
    off: u32,
    done: u64,
}

impl<'a> ChainWriter<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, bufs: &'a [Buf]) -> Self {
        ChainWriter {
            mem,
            bufs,
            idx: 0,
            off: 0,
            done: 0,
        }
    }

    /// Room left.
    pub fn remaining(&self) -> u64 {
        sum(&self.bufs[self.idx.min(self.bufs.len())..]) - u64::from(self.off)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.done
    }

    /// Writes as much of `data` as fits; returns how much.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let mut n = 0;
        while n < data.len() && self.idx < self.bufs.len() {
            let b = self.bufs[self.idx];
            let avail = b.len - self.off;
            let take32 = u32::try_from(data.len() - n).map_or(avail, |rest| avail.min(rest));
            let take = take32 as usize;
            if take > 0
                && self
                    .mem
                    .write_slice(
                        &data[n..n + take],
                        GuestAddress(b.addr + u64::from(self.off)),
                    )
                    .is_err()
            {
                self.idx = self.bufs.len();
                break;
            }
            n += take;
            self.off += take32;
            if self.off == b.len {
                self.idx += 1;
                self.off = 0;
            }
        }
        self.done += n as u64;
        n
    }
}

/// A queue as a device uses it: popping validated chains, returning used buffers, deciding
/// when to interrupt (event index aware).
#[derive(Debug)]
pub struct VirtQueue {
    pub q: Queue,
}

impl VirtQueue {
    pub fn new(q: Queue) -> Self {
        VirtQueue { q }
    }

    /// The next available chain: `(head, chain or why it is malformed)`. `None` when the ring
    /// is empty (or its index is corrupt, which stops the queue without harm).
    pub fn pop(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, Result<Chain, ChainError>)> {
        let dc = self.q.pop_descriptor_chain(mem)?;
        let head = dc.head_index();
        let r = Chain::parse(dc, mem);
        if r.is_err() {
            crate::metrics::inc(&crate::metrics::METRICS.virtio_bad_chains);
        }
        Some((head, r))
    }

    /// Puts the last popped chain back (e.g. no room yet, or rate limited).
    pub fn undo_pop(&mut self) {
        self.q.go_to_previous_position();
    }

    /// Whether chains are waiting (without consuming one).
    pub fn has_available(&mut self, mem: &GuestMemoryMmap) -> bool {
        match self.q.iter(mem) {
            Ok(mut it) => {
                let some = it.next().is_some();
                if some {
                    self.q.go_to_previous_position();
                }
                some
            }
            Err(_) => false,
        }
    }

    pub fn add_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) {
        if self.q.add_used(mem, head, len).is_err() {
            crate::metrics::inc(&crate::metrics::METRICS.virtio_bad_chains);
        }
    }

    /// Suppresses driver notifications while the device drains the ring.
    pub fn disable_notification(&mut self, mem: &GuestMemoryMmap) {
        let _ = self.q.disable_notification(mem);
    }

    /// Re-enables notifications; true if more chains arrived meanwhile (drain again). A corrupt
    /// available index (more entries than the ring holds) makes `pop` return nothing while the
    /// index still differs: that is false here, so a device's drain loop stops instead of
    /// spinning (found by the descriptor fuzzer).
    pub fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> bool {
        match self.q.enable_notification(mem) {
            Ok(true) => self.q.iter(mem).is_ok(),
            _ => false,
        }
    }

    /// Whether the driver wants an interrupt for what was added since the last call.
    pub fn needs_notification(&mut self, mem: &GuestMemoryMmap) -> bool {
        self.q.needs_notification(mem).unwrap_or(true)
    }
}
