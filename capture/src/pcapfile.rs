//! Replays a pcap or pcapng file through a [`Learner`], in packet order, on the file's own
//! timestamps (so entries expire by capture time): `ipvsca capture --read FILE`.
//!
//! Owns file handling only; the format is read by the `pcap-file` crate. Two of its
//! choices are corrected here: pcap records whose original length exceeds the snap length
//! (any capture taken with `-s`) are accepted, and pcapng timestamps are scaled by the
//! interface's `if_tsresol` (the crate reads every timestamp as nanoseconds).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, PcapError, TsResolution};

use crate::clock::Millis;
use crate::inspect::{LinkType, PacketMeta};
use crate::learn::{Learner, MappingEvent};

/// How often, in capture time, idle mappings are swept while a file is replayed.
const SWEEP_EVERY: Millis = 1_000;

/// Why a file could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// The file starts with neither a pcap nor a pcapng magic number.
    #[error("{path} is not a pcap or pcapng file")]
    NotPcap {
        /// The file.
        path: PathBuf,
    },
    /// The file is damaged.
    #[error("{path}: damaged after {packets} packets: {error}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Packets replayed before the damage.
        packets: u64,
        /// What the reader found.
        error: PcapError,
    },
    /// The file ends in the middle of a record.
    #[error("{path}: truncated after {packets} packets (the capture was cut off while writing)")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Packets replayed before the cut.
        packets: u64,
    },
    /// Packets of a link type the capture cannot read.
    #[error("{path}: link type {link:?} is not supported (Ethernet, Linux cooked v1 and v2, raw IP are)")]
    UnsupportedLink {
        /// The file.
        path: PathBuf,
        /// The link type found.
        link: DataLink,
    },
}

/// Replays every packet of `path`; `on_event` gets each mapping created or changed.
/// Returns the number of packets read.
pub fn replay(path: &Path, learner: &Learner, mut on_event: impl FnMut(MappingEvent)) -> Result<u64, FileError> {
    let io = |error| FileError::Io { path: path.to_owned(), error };
    let mut file = BufReader::new(File::open(path).map_err(io)?);
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(|_| FileError::NotPcap { path: path.to_owned() })?;
    let file = std::io::Cursor::new(magic).chain(file);
    let mut replay = Replay { path, learner, packets: 0, last_sweep: None, last_time: 0, skipped: 0 };
    match u32::from_le_bytes(magic) {
        0x0a0d0d0a => replay.pcapng(file, &mut on_event),
        0xa1b2c3d4 | 0xd4c3b2a1 | 0xa1b23c4d | 0x4d3cb2a1 => replay.pcap(file, &mut on_event),
        _ => Err(FileError::NotPcap { path: path.to_owned() }),
    }
}

struct Replay<'a> {
    path: &'a Path,
    learner: &'a Learner,
    packets: u64,
    last_sweep: Option<Millis>,
    last_time: Millis,
    skipped: u64,
}

impl Replay<'_> {
    fn pcap(&mut self, file: impl Read, on_event: &mut impl FnMut(MappingEvent)) -> Result<u64, FileError> {
        let mut reader = PcapReader::new(file).map_err(|e| self.damaged(e))?;
        let header = reader.header();
        let link = self.link_type(header.datalink)?;
        let frac_per_sec: u64 = match header.ts_resolution {
            TsResolution::MicroSecond => 1_000_000,
            TsResolution::NanoSecond => 1_000_000_000,
        };
        while let Some(record) = reader.next_raw_packet() {
            let record = record.map_err(|e| self.damaged(e))?;
            let now = u64::from(record.ts_sec) * 1000 + u64::from(record.ts_frac) * 1000 / frac_per_sec;
            self.packet(&record.data, record.orig_len, link, now, on_event);
        }
        Ok(self.packets)
    }

    fn pcapng(&mut self, file: impl Read, on_event: &mut impl FnMut(MappingEvent)) -> Result<u64, FileError> {
        let mut reader = PcapNgReader::new(file).map_err(|e| self.damaged(e))?;
        // Per interface of the current section: link type and timestamp resolution.
        let mut interfaces: Vec<(DataLink, Option<u8>)> = Vec::new();
        while let Some(block) = reader.next_block() {
            let (interface, raw_ts, original_len, data) = match block.map_err(|e| self.damaged(e))? {
                Block::SectionHeader(_) => {
                    interfaces.clear();
                    continue;
                }
                Block::InterfaceDescription(idb) => {
                    let resolution = idb.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                        _ => None,
                    });
                    interfaces.push((idb.linktype, resolution));
                    continue;
                }
                Block::EnhancedPacket(epb) => (epb.interface_id, Some(epb.timestamp), epb.original_len, epb.data),
                Block::SimplePacket(spb) => (0, None, spb.original_len, spb.data),
                Block::Packet(pb) => {
                    (u32::from(pb.interface_id), Some(Duration::from_nanos(pb.timestamp)), pb.original_len, pb.data)
                }
                _ => continue,
            };
            let Some(&(datalink, resolution)) = interfaces.get(interface as usize) else {
                return Err(self.damaged(PcapError::InvalidInterfaceId(interface)));
            };
            // A file may mix interfaces; packets of one the capture cannot read are skipped.
            let Ok(link) = self.link_type(datalink) else {
                self.skipped += 1;
                continue;
            };
            // A simple packet block has no timestamp: it happens at the last time seen.
            let now = raw_ts.map_or(self.last_time, |ts| pcapng_millis(ts, resolution));
            self.packet(&data, original_len, link, now, on_event);
        }
        if self.skipped > 0 {
            tracing::warn!(
                packets = self.skipped,
                "skipped packets of interfaces with a link type the capture cannot read"
            );
            if self.packets == 0 {
                let link = interfaces.first().map_or(DataLink::Unknown(0), |i| i.0);
                return Err(FileError::UnsupportedLink { path: self.path.to_owned(), link });
            }
        }
        Ok(self.packets)
    }

    /// One packet, `original_len` bytes long on the wire of which `data` was captured.
    fn packet(
        &mut self,
        data: &[u8],
        original_len: u32,
        link: LinkType,
        now: Millis,
        on_event: &mut impl FnMut(MappingEvent),
    ) {
        let due = self.last_sweep.is_none_or(|last| now >= last.saturating_add(SWEEP_EVERY));
        if due {
            self.learner.table().expire(now);
            self.last_sweep = Some(now);
        }
        self.packets += 1;
        self.last_time = now;
        // A file says only how much was cut: checksums are computed, nothing is loopback.
        let meta = PacketMeta { cut: (original_len as usize).saturating_sub(data.len()), ..PacketMeta::default() };
        if let Some(event) = self.learner.observe_frame(data, link, &meta, now) {
            on_event(event);
        }
    }

    fn link_type(&self, link: DataLink) -> Result<LinkType, FileError> {
        match link {
            DataLink::ETHERNET => Ok(LinkType::Ethernet),
            DataLink::LINUX_SLL => Ok(LinkType::LinuxSll),
            DataLink::LINUX_SLL2 => Ok(LinkType::LinuxSll2),
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Ok(LinkType::RawIp),
            link => Err(FileError::UnsupportedLink { path: self.path.to_owned(), link }),
        }
    }

    fn damaged(&self, source: PcapError) -> FileError {
        let (path, packets) = (self.path.to_owned(), self.packets);
        match source {
            PcapError::IncompleteBuffer => FileError::Truncated { path, packets },
            PcapError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                FileError::Truncated { path, packets }
            }
            error => FileError::Format { path, packets, error },
        }
    }
}

/// Converts a pcapng timestamp to milliseconds. The crate hands over the raw 64-bit count
/// as if it were nanoseconds; its real unit is `if_tsresol` (default 10^-6 s): a power of
/// ten, or of two when the high bit is set (pcapng specification, section 4.2).
fn pcapng_millis(raw: Duration, resolution: Option<u8>) -> Millis {
    let units = raw.as_nanos();
    let r = resolution.unwrap_or(6);
    let per_second: u128 =
        if r & 0x80 == 0 { 10u128.pow(u32::from(r.min(30))) } else { 1u128 << u32::from((r & 0x7f).min(100)) };
    u64::try_from(units * 1000 / per_second.max(1)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_timestamps_follow_the_interface_resolution() {
        let raw = Duration::from_nanos(1_500_000);
        assert_eq!(pcapng_millis(raw, None), 1_500, "default is microseconds");
        assert_eq!(pcapng_millis(raw, Some(6)), 1_500);
        assert_eq!(pcapng_millis(raw, Some(9)), 1);
        assert_eq!(pcapng_millis(Duration::from_nanos(3 << 10), Some(0x80 | 10)), 3_000);
    }
}
