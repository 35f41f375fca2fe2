//! `ipvsca-run`'s machinery: checking the kernel, and starting a service under the seccomp
//! filter with a keeper beside it. The program `ipvsca-run` (crate `cli`) parses flags and
//! wires this to the supervisor and the capture.

pub(crate) mod keeper;
pub mod preflight;
pub mod run;
pub mod spawn;
mod sys;
