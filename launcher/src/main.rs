//! `ipvsca-run`: starts a service under the ipvsca supervisor (step 2 of the plan).

fn main() -> std::process::ExitCode {
    eprintln!("ipvsca-run: not available yet; `ipvsca capture` is");
    std::process::ExitCode::from(2)
}
