#![no_main]
// Virtqueue descriptor parsing and a block device behind it, from arbitrary guest memory.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kobako_vmm::devices::virtio::fuzzing::descriptor_chains(data);
});
