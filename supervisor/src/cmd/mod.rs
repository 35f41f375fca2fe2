//! One module per `ipvsca` subcommand.

pub mod capture;
