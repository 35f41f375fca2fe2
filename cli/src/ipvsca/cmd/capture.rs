//! `ipvsca capture`: shows what the capture learns, from a pcap/pcapng file or live.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::capture_args::CaptureArgs;
use anyhow::Context;
use capture::{Learner, LiveCapture, report};
use nix::sys::signal::{SigSet, Signal};

/// Print every mapping created or changed, from a capture file or live.
///
/// With --read, replays a pcap or pcapng file (Ethernet with or without one 802.1Q tag,
/// Linux cooked v1/v2 or raw IP; classic pcap in micro- or nanoseconds, either byte order)
/// in packet order, mappings expiring on the file's own timestamps, and exits 0 once the
/// whole file was read. A missing, unrecognised, damaged or truncated file, or an
/// unsupported link type, exits 1 naming the file; mappings read before the damage are
/// still printed. For a file the rule against learning from this host does not apply.
/// Without --read, captures live on the network namespace's interfaces until SIGINT or
/// SIGTERM (needs CAP_NET_RAW). What the capture learns is confirmed at once, so the output
/// is what the module would have mapped. A summary of counters goes to stderr at the end.
#[derive(Debug, clap::Args)]
pub struct CaptureCommand {
    /// Read packets from this pcap or pcapng file instead of capturing live.
    #[arg(long, value_name = "FILE", conflicts_with = "ifaces")]
    read: Option<PathBuf>,

    /// One JSON object a line: {"proto","lb","rs","client","via"}.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    capture: CaptureArgs,
}

/// Runs the subcommand.
pub fn run(cmd: CaptureCommand) -> anyhow::Result<()> {
    let json = cmd.json;
    // Watching never changes the host's traffic.
    if cmd.capture.uoa_opp == crate::capture_args::UoaOpp::Deliver {
        anyhow::bail!("--uoa-opp deliver is for ipvsca-run and ipvsca supervise: ipvsca capture only watches");
    }
    // No service is served here: report what the module would have mapped.
    let learner = Arc::new(
        match &cmd.read {
            Some(_) => cmd.capture.file_learner()?,
            None => cmd.capture.learner()?,
        }
        .confirming_at_once(),
    );
    let result = match &cmd.read {
        Some(path) => {
            cmd.capture.log_start(&learner);
            let mut out = std::io::stdout().lock();
            let mut write_error = None;
            let replayed = capture::pcapfile::replay(path, &learner, |event| {
                if write_error.is_none() {
                    write_error = report::write_event(&mut out, &event, json).err();
                }
            });
            out.flush().ok();
            match write_error {
                Some(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
                None => replayed.map(drop).map_err(anyhow::Error::new),
            }
        }
        None => run_live(&cmd.capture, learner.clone(), json),
    };
    report::write_summary(&mut std::io::stderr().lock(), &learner).ok();
    result
}

fn run_live(args: &CaptureArgs, learner: Arc<Learner>, json: bool) -> anyhow::Result<()> {
    // Block the stop signals before any thread starts, so only the waiting thread takes them.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGINT);
    stop_signals.add(Signal::SIGTERM);
    stop_signals.thread_block().context("blocking SIGINT and SIGTERM")?;

    let capture = Arc::new(LiveCapture::open(&args.ifaces, learner)?);
    args.log_start(capture.learner());
    let (events, printed) = std::sync::mpsc::channel();
    capture.set_event_sink(events);
    let printer = std::thread::Builder::new()
        .name("ipvsca-print".into())
        .spawn(move || {
            let mut out = std::io::stdout().lock();
            for event in printed {
                if report::write_event(&mut out, &event, json).and_then(|_| out.flush()).is_err() {
                    tracing::warn!("stdout is closed; mappings are no longer printed");
                    break;
                }
            }
        })
        .context("starting the printer thread")?;
    tracing::info!(interfaces = ?capture.interfaces(), "capturing");
    let stopper = capture.clone();
    std::thread::Builder::new()
        .name("ipvsca-signals".into())
        .spawn(move || {
            if let Ok(signal) = stop_signals.wait() {
                tracing::info!(%signal, "stopping");
            }
            stopper.stop();
        })
        .context("starting the signal thread")?;
    let result = capture.run();
    capture.close_event_sink();
    let _ = printer.join();
    Ok(result?)
}
