//! virtio-blk (in progress).
