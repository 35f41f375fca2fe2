//! Copies of the mappings for display (`ipvsca mappings`) and tests.
//!
//! Owns walking every shard for a listing. Never holds a shard's lock while the caller
//! looks at what was copied, so a slow reader of the listing holds up no lookup and no
//! writer; never lists a provisional entry (it is not a mapping).

use super::store::SHARDS;
use super::{MappingInfo, MappingTable};
use crate::clock::Millis;
use crate::flow::FlowKey;

/// Mappings copied per shard lock hold by [`MappingTable::visit_live`].
pub(crate) const VISIT_CHUNK: usize = 1_024;

impl MappingTable {
    /// Every stored mapping, live or not yet swept (provisional entries are not mappings).
    pub fn entries(&self) -> Vec<(FlowKey, MappingInfo)> {
        let mut all = Vec::with_capacity(self.len());
        for s in 0..SHARDS {
            all.extend(self.store.read(s).entries().iter().map(|m| (m.key(), m.info())));
        }
        all
    }

    /// Calls `visit` with each mapping live at `now`, until it returns false: what
    /// `ipvsca mappings` streams. Mappings are copied 1,024 at a time under a
    /// shard's read lock, and `visit` runs with no lock held, so a slow reader of the
    /// listing holds up no lookup and no writer. A mapping that moves meanwhile (another was
    /// removed from its shard) may be skipped or visited twice.
    pub fn visit_live(&self, now: Millis, mut visit: impl FnMut(&FlowKey, MappingInfo) -> bool) {
        let mut chunk = Vec::with_capacity(VISIT_CHUNK);
        for s in 0..SHARDS {
            let mut at = 0;
            loop {
                chunk.clear();
                {
                    let shard = self.store.read(s);
                    let entries = shard.entries();
                    for m in entries.iter().skip(at).take(VISIT_CHUNK) {
                        if m.is_live(now, self.timeout_ms(m.proto())) {
                            chunk.push((m.key(), m.info()));
                        }
                    }
                    at += VISIT_CHUNK;
                    if chunk.is_empty() && at >= entries.len() {
                        break;
                    }
                }
                for (key, info) in &chunk {
                    if !visit(key, *info) {
                        return;
                    }
                }
            }
        }
    }
}
