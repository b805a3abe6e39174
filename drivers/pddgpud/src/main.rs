//! `pddgpud`: the PDDGPU driver server (work in progress; see the issues).

fn main() {
    eprintln!("pddgpud: not yet wired");
    std::process::exit(1);
}
