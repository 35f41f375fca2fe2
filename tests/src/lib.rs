//! Support for ipvsca's integration tests: frames a balancer sends, test capture files,
//! network namespaces, a rootless container, a raw-frame balancer speaker, the FULLNAT lab's
//! namespaces and rules, a service answered by the supervisor library in the test process
//! (no root), and the paths of the built binaries. The tools built on it
//! (`ipvsca-demo`, `ipvsca-lab`, `ipvsca-bench`) are the `ipvsca-tools` package's.

pub mod attack;
pub mod battery;
pub mod bins;
pub mod calls;
pub mod cbuild;
pub mod container;
pub mod corpus;
pub mod flood;
pub mod frames;
pub mod gobuild;
pub mod lab;
pub mod netns;
pub mod pcap;
pub mod rawsock;
pub mod service;
pub mod speaker;
pub mod supervised;
pub mod topology;
