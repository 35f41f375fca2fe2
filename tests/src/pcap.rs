//! Writes test capture files with the `pcap-file` crate: classic pcap (micro- or
//! nanosecond, either byte order) and pcapng (with `if_tsresol`), in the link types
//! `ipvsca capture --read` accepts.
//!
//! Owns file writing only; the frames come from `frames` and `corpus`.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::{DataLink, Endianness, TsResolution};

/// Which kind of file to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Classic pcap, microsecond timestamps, big-endian headers.
    PcapMicros,
    /// Classic pcap, nanosecond timestamps, little-endian headers.
    PcapNanos,
    /// pcapng with nanosecond `if_tsresol`.
    PcapNg,
}

/// A frame and the time it was captured.
pub type Record<'a> = (Duration, &'a [u8]);

/// Writes `records` (frames of `link`) to `path` in `format`.
pub fn write(path: &Path, format: Format, link: DataLink, records: &[Record<'_>]) -> io::Result<()> {
    let out = BufWriter::new(File::create(path)?);
    let err = |e: pcap_file::PcapError| io::Error::other(e.to_string());
    match format {
        Format::PcapMicros | Format::PcapNanos => {
            let (ts_resolution, endianness) = match format {
                Format::PcapMicros => (TsResolution::MicroSecond, Endianness::Big),
                _ => (TsResolution::NanoSecond, Endianness::Little),
            };
            let header = PcapHeader { datalink: link, ts_resolution, endianness, ..Default::default() };
            let mut w = PcapWriter::with_header(out, header).map_err(err)?;
            for &(ts, frame) in records {
                w.write_packet(&PcapPacket::new(ts, frame.len() as u32, frame)).map_err(err)?;
            }
        }
        Format::PcapNg => {
            let mut w = PcapNgWriter::new(out).map_err(err)?;
            let idb = InterfaceDescriptionBlock {
                linktype: link,
                snaplen: 0,
                options: vec![InterfaceDescriptionOption::IfTsResol(9)],
            };
            w.write_pcapng_block(idb).map_err(err)?;
            for &(ts, frame) in records {
                let epb = EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: ts,
                    original_len: frame.len() as u32,
                    data: Cow::Borrowed(frame),
                    options: vec![],
                };
                w.write_pcapng_block(epb).map_err(err)?;
            }
        }
    }
    Ok(())
}

/// Timestamps one millisecond apart from a fixed start, for frames in order.
pub fn spaced(frames: &[Vec<u8>]) -> Vec<Record<'_>> {
    let start = Duration::from_secs(1_700_000_000);
    frames.iter().enumerate().map(|(i, f)| (start + Duration::from_millis(i as u64), f.as_slice())).collect()
}
