//! The `pddgpu` command-line tool.

fn main() {
    std::process::exit(pddgpu_ipc::cli::main());
}
