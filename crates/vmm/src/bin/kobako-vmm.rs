//! Thin binary around [`kobako_vmm::main_with_args`] for tests and benchmarks; kobako itself
//! runs the same code as `kobako vmm ARGS...`.

#![warn(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    missing_debug_implementations
)]

fn main() {
    let code = kobako_vmm::main_with_args(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
