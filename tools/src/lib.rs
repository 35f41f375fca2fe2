//! ipvsca's tools for people, not tests: `ipvsca-demo` (the README's first command),
//! `ipvsca-lab` (a FULLNAT deployment on one machine) and `ipvsca-bench` (what a trapped
//! call costs). They build on the test-support library `ipvsca_tests` (namespaces, the
//! raw-frame balancer, the lab's namespaces and rules); this library holds what only the
//! tools use: the lab balancer's userspace half and its NAT64 translator.

pub mod balancer;
pub mod nat64;
mod packet;
