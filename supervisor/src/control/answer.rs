//! The answers to control requests, from what a supervisor holds (a [`Node`]): versions,
//! counters, settings, static mappings, and the `mappings` listing built piece by piece.
//!
//! Owns what each request is answered and why one is refused; never touches a socket (the
//! server writes what this returns, and the `mappings` pieces go to the caller's `send`), so
//! each answer can be tested without one.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use capture::clock::{Millis, monotonic_millis};
use capture::flow::{Via, not_a_peer};
use capture::table::{Learned, MappingInfo};
use capture::wire::toa::ToaKinds;
use capture::{FlowKey, Proto};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{MappingFilter, Node, Refusal, Request};

/// How much of a `mappings` answer is gathered before it is written: the only memory the
/// answer costs, whatever the table's size.
const ANSWER_CHUNK: usize = 32 << 10;

/// A piece of a `mappings` answer this old is written however small (checked as mappings
/// are added to it), so that the client of a filtered listing of a large table sees the
/// matches as they are found.
const ANSWER_PAUSE: Duration = Duration::from_secs(1);

/// One element of the `mappings` answer, serialised without building a JSON value.
#[derive(Serialize)]
struct MappingEntry {
    proto: Proto,
    lb: SocketAddr,
    rs: SocketAddr,
    client: SocketAddr,
    via: Via,
    age_s: Millis,
    idle_s: Millis,
}

impl MappingEntry {
    fn new(key: &FlowKey, m: &MappingInfo, now: Millis) -> Self {
        MappingEntry {
            proto: key.proto,
            lb: key.lb,
            rs: key.rs,
            client: m.client,
            via: m.via,
            age_s: now.saturating_sub(m.learned_at) / 1000,
            idle_s: now.saturating_sub(m.last_used) / 1000,
        }
    }
}

/// The answer line `{"ok":[...]}` to `mappings`, handed to `send` in pieces of about
/// [`ANSWER_CHUNK`] bytes as the table is read (in its own order: sorting would need the
/// whole set). The table hands over copies of 1,024 entries at a time (`visit_live`), so
/// `send` runs with no lock of the table held. Stops at the first error of `send`.
pub(crate) fn mappings_answer(
    node: &Node,
    limit: Option<u64>,
    filter: Option<MappingFilter>,
    mut send: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let now = monotonic_millis();
    let mut buf = Vec::with_capacity(ANSWER_CHUNK + 1024);
    buf.extend_from_slice(b"{\"ok\":[");
    let mut last_sent = Instant::now();
    let mut listed = 0u64;
    let mut failed = Ok(());
    node.table.visit_live(now, |key, m| {
        if limit.is_some_and(|l| listed >= l) {
            return false;
        }
        if filter.is_some_and(|f| !(f.matches(key.lb) || f.matches(key.rs) || f.matches(m.client))) {
            return true;
        }
        if listed > 0 {
            buf.push(b',');
        }
        serde_json::to_writer(&mut buf, &MappingEntry::new(key, &m, now)).expect("entries serialise");
        listed += 1;
        if buf.len() >= ANSWER_CHUNK || last_sent.elapsed() >= ANSWER_PAUSE {
            failed = send(&buf);
            buf.clear();
            last_sent = Instant::now();
        }
        failed.is_ok() && limit.is_none_or(|l| listed < l)
    });
    failed?;
    buf.extend_from_slice(b"]}\n");
    send(&buf)
}

/// Answers every request but `attach`.
pub(crate) fn answer(node: &Node, request: Request) -> Result<Value, Refusal> {
    match request {
        Request::Version => Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "mode": node.mode.as_str(),
            "pid": std::process::id(),
        })),
        Request::Stats => Ok(stats(node)),
        Request::Get { name } => get(node, &name),
        Request::Set { name, value } => {
            set(node, &name, &value)?;
            let now = get(node, &name)?;
            tracing::info!(setting = %name, value = %now.as_str().unwrap_or_default(), "setting changed");
            Ok(now)
        }
        Request::MapAdd { proto, lb, rs, client } => {
            let key = FlowKey { proto, lb, rs };
            for (what, a) in [("balancer", lb), ("real-server", rs), ("client", client)] {
                check_address(what, a)?;
            }
            let peers = [
                ("balancer", lb, "the balancer's local address, the peer the real server sees"),
                ("client", client, "the client's own address"),
            ];
            for (what, a, give) in peers {
                if let Some(why) = not_a_peer(a) {
                    return Err(Refusal::NotAPeer { what, addr: a, why, give });
                }
            }
            if lb.is_ipv4() != rs.is_ipv4() {
                return Err(Refusal::MixedFamilies);
            }
            let learned = node.table.add_static(key, client, monotonic_millis());
            if learned == Learned::Refused {
                return Err(Refusal::TableFull { max_entries: node.table.max_entries() });
            }
            tracing::info!(%proto, %lb, %rs, %client, "static mapping added");
            Ok(json!(format!("{learned:?}").to_lowercase()))
        }
        Request::MapDel { proto, lb, rs, client } => {
            let key = FlowKey { proto, lb, rs };
            match node.table.remove(&key, client) {
                Ok(removed) => {
                    tracing::info!(%proto, %lb, %rs, client = %removed.client, "mapping removed");
                    Ok(json!({ "client": removed.client.to_string(), "via": removed.via.as_str() }))
                }
                Err(Some(stays)) => {
                    Err(Refusal::OtherClient { flow: Box::new(key), shows: stays.client, given: client })
                }
                Err(None) => Err(Refusal::NoMapping { flow: key }),
            }
        }
        Request::Attach { .. } | Request::Mappings { .. } => Err(Refusal::ServerOnly),
    }
}

/// An address the capture could have learned: a real IP (not unspecified, not an
/// IPv4-mapped IPv6 form, which the capture never produces) and a port.
fn check_address(what: &'static str, a: SocketAddr) -> Result<(), Refusal> {
    let mapped = matches!(a.ip(), std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if a.ip().is_unspecified() || a.port() == 0 || mapped {
        return Err(Refusal::NotAnAddress { what, addr: a });
    }
    Ok(())
}

fn get(node: &Node, name: &str) -> Result<Value, Refusal> {
    let secs = |p| node.table.timeout(p).as_secs().to_string();
    match name {
        "tcp_timeout" => Ok(json!(secs(Proto::Tcp))),
        "udp_timeout" => Ok(json!(secs(Proto::Udp))),
        "max_entries" => Ok(json!(node.table.max_entries().to_string())),
        "tcpopt_addr" => {
            let kinds = match &node.capture {
                Some(c) => c.learner().kinds(),
                None => return Err(Refusal::NoCapture),
            };
            Ok(json!(kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" ")))
        }
        other => Err(Refusal::UnknownSetting { name: other.to_owned() }),
    }
}

fn set(node: &Node, name: &str, value: &str) -> Result<(), Refusal> {
    let timeout = |p| -> Result<(), Refusal> {
        let secs: u64 =
            value.trim().parse().map_err(|_| Refusal::NotSeconds { name: name.to_owned(), value: value.to_owned() })?;
        if secs == 0 || secs > u64::from(u32::MAX) {
            return Err(Refusal::TimeoutOutOfRange { name: name.to_owned(), secs });
        }
        node.table.set_timeout(p, Duration::from_secs(secs));
        Ok(())
    };
    match name {
        "tcp_timeout" => timeout(Proto::Tcp),
        "udp_timeout" => timeout(Proto::Udp),
        "tcpopt_addr" => {
            let kinds = parse_kinds(value)?;
            let capture = node.capture.as_ref().ok_or(Refusal::NoCapture)?;
            capture.set_kinds(kinds).map_err(Refusal::Kinds)
        }
        "max_entries" => {
            let max = capture::table::parse_max_entries(value).map_err(Refusal::MaxEntries)?;
            // Evicts at once when the table holds more.
            node.table.set_max_entries(max);
            Ok(())
        }
        other => Err(Refusal::UnknownSetting { name: other.to_owned() }),
    }
}

/// Kinds separated by spaces or commas, each 2 to 255 (0 ends an option list and 1 is a
/// NOP: neither can be a TOA).
pub(crate) fn parse_kinds(value: &str) -> Result<ToaKinds, Refusal> {
    let mut kinds = Vec::new();
    for word in value.split([' ', ',']).filter(|w| !w.is_empty()) {
        match word.parse::<u8>() {
            Ok(k) if k >= 2 => kinds.push(k),
            _ => return Err(Refusal::NotAnOptionKind { word: word.to_owned() }),
        }
    }
    if kinds.is_empty() {
        return Err(Refusal::NoOptionKind);
    }
    // More would make the kernel filter pass every TCP segment with options (timestamps:
    // nearly all of them) to the capture.
    let kinds = ToaKinds::from_kinds(kinds);
    if kinds.iter().count() > capture::bpf::MAX_FILTERED_KINDS {
        return Err(Refusal::TooManyOptionKinds { max: capture::bpf::MAX_FILTERED_KINDS });
    }
    Ok(kinds)
}

fn section(pairs: Vec<(&'static str, u64)>) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect::<Map<_, _>>())
}

/// Every counter, by section; `ip_vs_ca` first, in the module's own names.
pub(crate) fn stats(node: &Node) -> Value {
    let s = node.counters.snapshot();
    let t = node.table.stats();
    let learner = node.capture.as_ref().map(|c| c.learner());
    let mut table = Map::new();
    table.insert("size".into(), json!(node.table.len()));
    table.insert("provisional_size".into(), json!(node.table.provisional_len()));
    table.insert("max_entries".into(), json!(node.table.max_entries()));
    if let Value::Object(counters) = section(t.pairs()) {
        table.extend(counters);
    }
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "mode": node.mode.as_str(),
        "pid": std::process::id(),
        "uptime_s": node.started.elapsed().as_secs(),
        "ip_vs_ca": {
            "syn_recv_sock_ip_vs_ca": s.accept_rewritten,
            "syn_recv_sock_no_ip_vs_ca": s.accept_unmapped,
            "conn_new": t.created,
            "conn_del": t.expired + t.evicted + t.deleted,
            "getname_ip_vs_ca_ok": s.getpeername_rewritten,
            "getname_ip_vs_ca_mismatch": s.getpeername_unrepresentable,
            "getname_ip_vs_ca_bypass": s.getpeername_bypass,
            "getname_ip_vs_ca_empty": s.getpeername_unmapped,
        },
        "supervisor": section(s.pairs()),
        "capture": learner.map_or(json!({}), |l| section(l.stats().pairs())),
        "malformed": learner.map_or(json!({}), |l| section(l.malformed_by_reason())),
        "table": Value::Object(table),
        "services": {
            "services": node.services.count(),
            "processes": node.services.processes(),
        },
    })
}

#[cfg(test)]
mod tests;
