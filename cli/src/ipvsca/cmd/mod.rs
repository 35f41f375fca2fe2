//! One module per `ipvsca` subcommand (the control ones share `control`).

pub mod capture;
pub mod control;
pub mod supervise;
