//! `pddgpud`: the PDDGPU driver server. See the crate documentation of the
//! `pddgpud` library for what it does.

fn main() {
    std::process::exit(pddgpud::run(std::env::args_os()));
}
