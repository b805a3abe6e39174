//! The pddgpud daemon, built inside the test package so the multi-process
//! tests can start it by path (`CARGO_BIN_EXE_pddgpud-under-test`). Same
//! code as the `pddgpud` binary.

fn main() {
    std::process::exit(pddgpud::run(std::env::args_os()));
}
