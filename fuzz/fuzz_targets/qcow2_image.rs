#![no_main]
// The qcow2 reader (and writer) on an arbitrary image file.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kobako_vmm::devices::virtio::fuzzing::qcow2_image(data);
});
