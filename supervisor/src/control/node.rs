//! What a supervisor's control socket reports on and changes: its [`Node`] (table, capture,
//! counters, services) and which kind of supervisor it is ([`Mode`]).
//!
//! Owns these handles only; never answers a request nor serves a service.

use std::sync::Arc;
use std::time::Instant;

use capture::{LiveCapture, MappingTable};

use super::services::{AttachFn, Services};
use crate::stats::SupervisorCounters;

/// Which kind of supervisor answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Embedded in `ipvsca-run`: one service.
    Run,
    /// `ipvsca supervise`: services attach to it.
    Daemon,
}

impl Mode {
    /// `run` or `daemon`, as `ipvsca version` and `ipvsca stats` show it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Daemon => "daemon",
        }
    }
}

/// What the control socket reports on and changes.
pub struct Node {
    /// Which kind of supervisor this is.
    pub mode: Mode,
    /// The mapping table.
    pub table: Arc<MappingTable>,
    /// The capture filling it.
    pub capture: Option<Arc<LiveCapture>>,
    /// The supervisor's counters (shared by every service).
    pub counters: Arc<SupervisorCounters>,
    /// The services served.
    pub services: Arc<Services>,
    /// How `attach` is served; `None` refuses it.
    pub attach: Option<Box<AttachFn>>,
    /// When the supervisor started.
    pub started: Instant,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("mode", &self.mode).finish_non_exhaustive()
    }
}

#[cfg(test)]
impl Node {
    /// The node of a supervisor of one service with an empty table, no capture and no
    /// services.
    pub(crate) fn for_tests() -> Self {
        Node {
            mode: Mode::Run,
            table: Arc::new(MappingTable::default()),
            capture: None,
            counters: Arc::new(SupervisorCounters::default()),
            services: Arc::new(Services::default()),
            attach: None,
            started: Instant::now(),
        }
    }
}
