//! The capture's only contact with raw system calls. Everything outside this module is
//! safe Rust; every `unsafe` block here says why its pointers, lengths and fds are valid.

pub mod netlink;
pub mod packet_socket;
pub mod raw;
