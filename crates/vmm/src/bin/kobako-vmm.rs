//! Thin binary around [`kobako_vmm::main_with_args`] for tests and benchmarks; kobako itself
//! runs the same code as `kobako vmm ARGS...`.

fn main() {
    let code = kobako_vmm::main_with_args(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
