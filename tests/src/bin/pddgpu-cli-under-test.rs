//! The `pddgpu` CLI, built inside the test package so the tests can run it
//! by path (`CARGO_BIN_EXE_pddgpu-cli-under-test`). Same code as `pddgpu`.

fn main() {
    std::process::exit(pddgpu_ipc::cli::main());
}
