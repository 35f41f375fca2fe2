//! Test tools for ipvsca's integration tests: frames a balancer sends, test capture files,
//! network namespaces, a rootless container, a raw-frame balancer speaker, and the paths of
//! the built binaries.

pub mod attack;
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
pub mod topology;
