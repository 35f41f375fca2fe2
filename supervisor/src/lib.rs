//! The supervisor of ipvsca: answers the seccomp user notifications of a service's
//! `accept`, `accept4`, `getpeername`, `recvfrom`, `sendto` and `connect` by running each
//! call on a copy of the service's socket and rewriting the address, balancer to client on
//! the way in and client to balancer on the way out, as the ip_vs_ca module did
//! (`shared/spec/ip_vs_ca.md`), following the rules of `shared/spec/seccomp-notify.md`.

pub(crate) mod abi;
pub(crate) mod connected;
pub mod control;
pub mod emulate;
pub mod filter;
pub(crate) mod park;
pub mod privileges;
pub mod process;
pub mod procs;
pub mod resolve;
pub(crate) mod restart;
pub mod server;
pub(crate) mod sockaddr;
pub(crate) mod stash;
pub mod stats;
pub mod sys;
pub(crate) mod target;

pub use emulate::Options;
pub use server::{ServeError, Supervisor};
