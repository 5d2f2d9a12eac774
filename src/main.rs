//! The `haul` binary: everything lives in `haul-cli`; this file only hands over control so that
//! `cargo run --release -- copy SRC DST` works from the workspace root.

fn main() -> std::process::ExitCode {
    haul_cli::main()
}
