//! pddgpu-image (work in progress).

fn main() {}
