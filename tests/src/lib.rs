//! Shared helpers of the pddgpu multi-process tests (work in progress).
