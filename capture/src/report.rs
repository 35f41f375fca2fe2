//! How `ipvsca capture` prints what it learned: one line per mapping created or changed
//! (JSON or text) on stdout, and a counter summary on stderr.
//!
//! Owns the output formats; the JSON field names and order are a published interface.

use std::io::{self, Write};

use crate::learn::{Learner, MappingEvent};

/// Writes one event as a line: a JSON object, or text for people.
pub fn write_event(out: &mut impl Write, event: &MappingEvent, json: bool) -> io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, event).map_err(io::Error::other)?;
        writeln!(out)
    } else {
        writeln!(out, "{} {} -> {} client {} via {}", event.proto, event.lb, event.rs, event.client, event.via.as_str())
    }
}

/// Writes every counter of the capture and its table, one `name: value` a line.
pub fn write_summary(out: &mut impl Write, learner: &Learner) -> io::Result<()> {
    let capture = learner.stats();
    let table = learner.table().stats();
    writeln!(out, "ipvsca capture summary")?;
    for (name, value) in capture.pairs().into_iter().chain(table.pairs()) {
        writeln!(out, "  {name}: {value}")?;
    }
    writeln!(out, "  mappings: {}", learner.table().len())?;
    for (reason, value) in learner.malformed_by_reason() {
        writeln!(out, "  malformed.{reason}: {value}")?;
    }
    Ok(())
}
