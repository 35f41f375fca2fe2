//! The programs of ipvsca, `ipvsca` and `ipvsca-run`: their flags, help texts and man
//! pages, logging, and the wiring of the libraries (`capture`, `supervisor`, `launcher`)
//! into commands. The work itself lives in those libraries; nothing here answers a call or
//! reads a packet.

pub mod capture_args;
pub mod ipvsca;
pub mod logging;
pub mod manual;
pub mod run;
