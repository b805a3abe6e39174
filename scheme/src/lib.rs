//! The `pddgpu:` scheme (work in progress).
