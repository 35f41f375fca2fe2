//! `ipvsca-run`: starts a service under the ipvsca supervisor (see `cli::run`).

fn main() -> std::process::ExitCode {
    cli::run::main()
}
