#![no_main]
// vsock packets from the guest (header parsing and the connection state machine).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kobako_vmm::devices::virtio::fuzzing::vsock_packets(data);
});
