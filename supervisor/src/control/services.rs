//! The services a supervisor serves ([`Services`], for `ipvsca stats`), and a service
//! handed over by `attach` ([`Attached`]) with what the daemon does with it ([`AttachFn`]).
//!
//! Owns this bookkeeping only; never serves a service (`process::serve_attached` does) and
//! never reads the control socket.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Refusal;
use crate::procs;

/// A service being served, for `ipvsca stats`.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// The program.
    pub program: String,
    /// A process whose descendants are the service's processes ...
    pub root: i32,
    /// ... but for this many of them, which are ipvsca's (the keeper).
    pub not_service: usize,
}

/// The services a supervisor serves.
#[derive(Debug, Default)]
pub struct Services {
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, ServiceInfo>>,
}

impl Services {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ServiceInfo>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a service; returns its id.
    pub fn add(&self, info: ServiceInfo) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(id, info);
        id
    }

    /// Forgets a service that ended.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// How many services are served.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// How many processes they have now (walks `/proc`).
    pub fn processes(&self) -> usize {
        let services: Vec<ServiceInfo> = self.lock().values().cloned().collect();
        if services.is_empty() {
            return 0;
        }
        let parents = procs::parents();
        services.iter().map(|s| procs::descendants(s.root, &parents).len().saturating_sub(s.not_service)).sum()
    }
}

/// A service handed over by `ipvsca-run --supervisor`.
#[derive(Debug)]
pub struct Attached {
    /// The program.
    pub program: String,
    /// `--recvfrom-append`.
    pub recvfrom_append: bool,
    /// Its seccomp listener.
    pub listener: OwnedFd,
    /// The launcher's pid, as this process sees it (0: in a PID namespace it cannot see).
    pub launcher: i32,
    /// The connection, to keep open while the service is served.
    pub lifeline: UnixStream,
}

/// What a daemon does with an attached service: serve it (on its own threads), or say why not.
pub type AttachFn = dyn Fn(Attached) -> Result<u64, Refusal> + Send + Sync;
