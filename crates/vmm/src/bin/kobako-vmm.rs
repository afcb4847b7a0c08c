//! The slim VMM executable: the VM process the vmm runtime starts for each microVM (installed
//! next to `kobako` by scripts/build.sh, built with the workspace's `vmm` profile), and the
//! binary of the tests and benchmarks. Nothing but [`kobako_vmm::main_with_args`]: `kobako vmm
//! ARGS...` runs the same code inside the big `kobako` binary, which costs more to exec and more
//! resident memory at every VM start (`cargo bench -p kobako-vmm --bench startup -- rusage`).

fn main() {
    let code = kobako_vmm::main_with_args(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
