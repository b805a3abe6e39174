//! pddgpu IPC: wire protocol, transports, client library (work in progress).
