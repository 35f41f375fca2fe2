//! `ipvsca`: the daemon, the control commands and the capture reader (see `cli::ipvsca`).

fn main() -> std::process::ExitCode {
    cli::ipvsca::main()
}
