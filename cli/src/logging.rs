//! Logging for ipvsca's binaries: `tracing` to stderr, filtered by `RUST_LOG` (default
//! `info`, which is quiet: a line at start and warnings).

/// Installs the subscriber; call once, first thing in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
