//! What the kernel must offer before a service may start under ipvsca, checked up front so
//! that a service never runs where it would see wrong addresses (seccomp spec, section 4).

use supervisor::sys::seccomp::action_available;

/// A kernel feature ipvsca uses, and the release that brought it.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    /// What it is.
    pub name: &'static str,
    /// The first Linux release with it.
    pub since: (u32, u32),
    /// Whether ipvsca refuses to start without it.
    pub required: bool,
}

/// Every kernel feature the launcher and supervisor use.
pub const FEATURES: &[Feature] = &[
    Feature { name: "SECCOMP_FILTER_FLAG_NEW_LISTENER and SECCOMP_RET_USER_NOTIF", since: (5, 0), required: true },
    Feature { name: "pidfd_open", since: (5, 3), required: true },
    Feature { name: "SECCOMP_USER_NOTIF_FLAG_CONTINUE", since: (5, 5), required: true },
    Feature { name: "pidfd_getfd", since: (5, 6), required: true },
    Feature { name: "SECCOMP_IOCTL_NOTIF_ADDFD", since: (5, 9), required: true },
    Feature { name: "SECCOMP_ADDFD_FLAG_SEND", since: (5, 14), required: true },
    Feature { name: "SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (speed)", since: (6, 6), required: false },
    Feature { name: "PIDFD_THREAD (per-thread pidfds)", since: (6, 9), required: false },
];

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The kernel is older than a required feature.
    #[error("kernel {release} lacks {feature} (Linux {}.{} and later); ipvsca-run needs Linux 5.14", since.0, since.1)]
    TooOld {
        /// The running kernel's release.
        release: String,
        /// The first missing feature.
        feature: &'static str,
        /// When it came.
        since: (u32, u32),
    },
    /// seccomp user notification is missing or disabled.
    #[error(
        "seccomp user notification is not available on this kernel (built without CONFIG_SECCOMP_FILTER, or seccomp is disabled)"
    )]
    NoUserNotif,
}

/// `major.minor` of a kernel release string such as `6.18.44-fc-v782`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Checks the running kernel; returns the optional features it lacks.
pub fn check() -> Result<Vec<&'static Feature>, PreflightError> {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let version = parse_release(&release).unwrap_or((0, 0));
    if let Some(f) = FEATURES.iter().find(|f| f.required && version < f.since) {
        return Err(PreflightError::TooOld { release, feature: f.name, since: f.since });
    }
    const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
    if !action_available(SECCOMP_RET_USER_NOTIF).unwrap_or(false) {
        return Err(PreflightError::NoUserNotif);
    }
    Ok(FEATURES.iter().filter(|f| !f.required && version < f.since).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(parse_release("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(parse_release("5.14.0-284.el9.x86_64"), Some((5, 14)));
        assert_eq!(parse_release("4.19"), Some((4, 19)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn this_kernel_passes() {
        check().expect("the test machine's kernel is new enough");
    }
}
