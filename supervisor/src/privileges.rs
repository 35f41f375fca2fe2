//! Dropping the capabilities the supervisor no longer needs once its sockets are open.
//!
//! What it still needs, and why (kernel rules, not ours):
//! - `CAP_SYS_PTRACE`: `pidfd_getfd` and `process_vm_writev` on the service pass the
//!   kernel's ptrace access check (`PTRACE_MODE_ATTACH_REALCREDS`). Without the capability
//!   that check needs the same user ids, a dumpable target, and the target's permitted
//!   capabilities to be a subset of ours: a root service (full set) or a process that
//!   changed user (nginx workers) is out of reach of a supervisor that dropped everything.
//! - `CAP_KILL`: raising `SIGPIPE` in a service thread of another user.
//! - `CAP_SYS_NICE`, only with `IPVSCA_PIN_ACCEPTS=1`: moving another user's thread.
//!
//! Everything else goes: `CAP_NET_RAW` (the capture's sockets are open), `CAP_NET_ADMIN`,
//! `CAP_SYS_ADMIN`, `CAP_DAC_OVERRIDE`, ... from the effective, permitted and inheritable
//! sets, the ambient set and, where allowed, the bounding set. Capabilities are per thread:
//! call this before starting any thread, so every thread inherits the reduced sets.
//!
//! Without `CAP_SYS_PTRACE` in the permitted set (a container started without it), the
//! supervisor can reach the service only while the service's capabilities stay a subset of
//! its own: it keeps them all and says so.

use caps::{CapSet, Capability, CapsHashSet};

/// What [`drop_unneeded`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process held no capability.
    NoneHeld,
    /// Every capability but these was dropped.
    Kept(Vec<Capability>),
    /// Nothing was dropped: `CAP_SYS_PTRACE` is missing (see the module's text).
    KeptAllWithoutPtrace,
}

/// Drops every capability but those the supervisor needs (`pin_accepts`: also
/// `CAP_SYS_NICE`). Must run before the process starts threads.
pub fn drop_unneeded(pin_accepts: bool) -> Result<Outcome, caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    if permitted.is_empty() {
        return Ok(Outcome::NoneHeld);
    }
    if !permitted.contains(&Capability::CAP_SYS_PTRACE) {
        return Ok(Outcome::KeptAllWithoutPtrace);
    }
    let mut keep = CapsHashSet::new();
    keep.insert(Capability::CAP_SYS_PTRACE);
    for (cap, wanted) in [(Capability::CAP_KILL, true), (Capability::CAP_SYS_NICE, pin_accepts)] {
        if wanted && permitted.contains(&cap) {
            keep.insert(cap);
        }
    }
    narrow_to(&keep)?;
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(Outcome::Kept(kept))
}

/// Drops what the supervisor does not need and logs the outcome; a failure is logged and
/// the supervisor goes on with the capabilities it has.
pub fn drop_and_log(pin_accepts: bool) {
    match drop_unneeded(pin_accepts) {
        Ok(Outcome::NoneHeld) => {}
        Ok(Outcome::Kept(kept)) => tracing::debug!(?kept, "dropped every other capability"),
        Ok(Outcome::KeptAllWithoutPtrace) => tracing::info!(
            "no CAP_SYS_PTRACE: keeping this process's capabilities, since the kernel lets it reach a service only while the service's capabilities are a subset of its own; a service process that changes user (nginx workers) needs CAP_SYS_PTRACE"
        ),
        Err(e) => tracing::warn!(error = %e, "dropping capabilities failed; going on with them"),
    }
}

/// Keeps only `CAP_KILL` (if held) in every set of the calling thread: the keeper, which
/// signals the service's processes, of any user, and does nothing else privileged.
pub fn keep_only_kill() -> Result<(), caps::errors::CapsError> {
    let mut keep = caps::read(None, CapSet::Permitted)?;
    keep.retain(|c| *c == Capability::CAP_KILL);
    narrow_to(&keep)
}

/// Leaves the calling thread `keep` (a subset of its permitted set) as its effective and
/// permitted sets, no inheritable or ambient capability, and, where it may change it, no
/// other capability in its bounding set.
fn narrow_to(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    // The bounding set first, while CAP_SETPCAP may still be effective; a process that may
    // not change it (no CAP_SETPCAP) keeps it: its permitted set is what counts.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, keep)?;
    caps::set(None, CapSet::Permitted, keep)
}

/// Drops every capability of the calling thread (a launcher whose service a daemon
/// serves). Must run before the process starts threads.
pub fn drop_all() {
    let result = caps::clear(None, CapSet::Ambient)
        .and_then(|_| caps::clear(None, CapSet::Inheritable))
        .and_then(|_| caps::clear(None, CapSet::Effective))
        .and_then(|_| caps::clear(None, CapSet::Permitted));
    if let Err(e) = result {
        tracing::warn!(error = %e, "dropping capabilities failed; going on with them");
    }
}
