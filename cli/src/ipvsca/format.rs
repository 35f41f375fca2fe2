//! How `ipvsca stats` and `ipvsca mappings` print what a supervisor answered: text for
//! people (the `stats` text opens with ip_vs_ca's `/proc/net/ip_vs_ca_stats` layout),
//! Prometheus text exposition for scrapers.

use std::fmt::Write;

use serde_json::Value;

/// Sections of the stats answer whose counters are gauges (a current level), not totals.
const GAUGE_SECTIONS: [&str; 1] = ["services"];

/// Members of the `table` section that are levels, with their metric name and help.
const TABLE_GAUGES: [(&str, &str, &str); 3] = [
    ("size", "ipvsca_table_entries", "Mappings stored"),
    ("provisional_size", "ipvsca_table_provisional_entries", "Provisional entries stored"),
    ("max_entries", "ipvsca_table_max_entries", "The bound on entries, provisional ones included"),
];

/// Counters of the `supervisor` section that count notifications of one call (i386's
/// `socketcall` ones are counted there too, by the call they carry, and again on their own).
const SYSCALLS: [&str; 6] = ["accept", "accept4", "getpeername", "recvfrom", "sendto", "connect"];

fn counters(v: &Value) -> Vec<(&str, u64)> {
    v.as_object().map(|o| o.iter().map(|(k, v)| (k.as_str(), v.as_u64().unwrap_or(0))).collect()).unwrap_or_default()
}

/// The text view: ip_vs_ca's layout (version line, a column header, `name: value`), then
/// ipvsca's own sections.
pub fn stats_text(stats: &Value) -> String {
    let mut out = String::new();
    let version = stats["version"].as_str().unwrap_or("?");
    let _ = writeln!(out, "IP_VS_CA(ipvsca {version})");
    let _ = writeln!(out, "{:<32}{:>12}", "", "Total");
    for (name, value) in counters(&stats["ip_vs_ca"]) {
        let _ = writeln!(out, "{:<32}{value:>12}", format!("{name}:"));
    }
    let _ = writeln!(
        out,
        "\nipvsca {} (pid {}), up {} s",
        stats["mode"].as_str().unwrap_or("?"),
        stats["pid"],
        stats["uptime_s"]
    );
    for section in ["supervisor", "capture", "malformed", "table", "services"] {
        let pairs = counters(&stats[section]);
        if pairs.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{section}:");
        for (name, value) in pairs {
            let _ = writeln!(out, "  {name:<30}{value:>12}");
        }
    }
    out
}

/// Prometheus text exposition (version 0.0.4).
pub fn stats_prometheus(stats: &Value) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let version = stats["version"].as_str().unwrap_or("?");
    let mode = stats["mode"].as_str().unwrap_or("?");
    metric(
        "ipvsca_info",
        "gauge",
        "ipvsca version and mode",
        &[(format!("{{version=\"{version}\",mode=\"{mode}\"}}"), 1)],
    );
    metric(
        "ipvsca_uptime_seconds",
        "gauge",
        "Seconds since the supervisor started",
        &[(String::new(), stats["uptime_s"].as_u64().unwrap_or(0))],
    );
    let supervisor = counters(&stats["supervisor"]);
    let by_call: Vec<(String, u64)> = supervisor
        .iter()
        .filter(|(k, _)| SYSCALLS.contains(k))
        .map(|(k, v)| (format!("{{syscall=\"{k}\"}}"), *v))
        .collect();
    metric("ipvsca_notifications_by_syscall_total", "counter", "Trapped calls received, by system call", &by_call);
    for (name, value) in supervisor.iter().filter(|(k, _)| !SYSCALLS.contains(k)) {
        metric(
            &format!("ipvsca_supervisor_{name}_total"),
            "counter",
            &format!("Supervisor counter {name}"),
            &[(String::new(), *value)],
        );
    }
    for (name, value) in counters(&stats["capture"]) {
        metric(
            &format!("ipvsca_capture_{name}_total"),
            "counter",
            &format!("Capture counter {name}"),
            &[(String::new(), value)],
        );
    }
    let malformed: Vec<(String, u64)> =
        counters(&stats["malformed"]).into_iter().map(|(k, v)| (format!("{{reason=\"{k}\"}}"), v)).collect();
    if !malformed.is_empty() {
        metric(
            "ipvsca_capture_malformed_by_reason_total",
            "counter",
            "Malformed packets dropped, by reason",
            &malformed,
        );
    }
    for (name, value) in counters(&stats["table"]) {
        if let Some((_, gauge, help)) = TABLE_GAUGES.iter().find(|(member, _, _)| *member == name) {
            metric(gauge, "gauge", help, &[(String::new(), value)]);
        } else {
            metric(
                &format!("ipvsca_table_{name}_total"),
                "counter",
                &format!("Table counter {name}"),
                &[(String::new(), value)],
            );
        }
    }
    for section in GAUGE_SECTIONS {
        for (name, value) in counters(&stats[section]) {
            metric(
                &format!("ipvsca_{name}"),
                "gauge",
                &format!("Currently supervised {name}"),
                &[(String::new(), value)],
            );
        }
    }
    out
}

/// The header line of the mappings table.
pub fn mappings_header() -> String {
    format!("{:<5} {:<47} {:<47} {:<47} {:<6} {:>6}\n", "PROTO", "LB", "RS", "CLIENT", "VIA", "IDLE_S")
}

/// One mapping (an element of the `mappings` answer) as a line of the table under
/// [`mappings_header`].
pub fn mapping_line(m: &Value) -> String {
    let s = |k: &str| m[k].as_str().unwrap_or("?");
    format!(
        "{:<5} {:<47} {:<47} {:<47} {:<6} {:>6}\n",
        s("proto"),
        s("lb"),
        s("rs"),
        s("client"),
        s("via"),
        m["idle_s"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "version": "0.1.0", "mode": "daemon", "pid": 7, "uptime_s": 3,
            "ip_vs_ca": {"syn_recv_sock_ip_vs_ca": 5, "conn_new": 2},
            "supervisor": {"notifications": 9, "accept4": 5, "rewrites_rx": 5},
            "capture": {"packets": 11},
            "malformed": {"tcp_option_truncated": 1},
            "table": {"size": 2, "provisional_size": 1, "max_entries": 16, "created": 2},
            "services": {"services": 1, "processes": 3},
        })
    }

    #[test]
    fn text_opens_with_the_module_layout() {
        let text = stats_text(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "IP_VS_CA(ipvsca 0.1.0)");
        assert!(lines[1].trim() == "Total");
        assert!(lines[2].starts_with("syn_recv_sock_ip_vs_ca:") && lines[2].ends_with(" 5"));
        assert!(text.contains("  processes") && text.contains("tcp_option_truncated"));
    }

    #[test]
    fn prometheus_has_one_type_per_metric_and_labels_by_syscall() {
        let text = stats_prometheus(&sample());
        assert!(text.contains("ipvsca_notifications_by_syscall_total{syscall=\"accept4\"} 5\n"));
        assert!(text.contains("ipvsca_supervisor_notifications_total 9\n"));
        assert!(text.contains("# TYPE ipvsca_table_entries gauge\nipvsca_table_entries 2\n"));
        assert!(text.contains("# TYPE ipvsca_table_provisional_entries gauge\nipvsca_table_provisional_entries 1\n"));
        assert!(text.contains("# TYPE ipvsca_table_max_entries gauge\nipvsca_table_max_entries 16\n"));
        assert!(text.contains("ipvsca_processes 3\n"));
        assert!(text.contains("ipvsca_capture_malformed_by_reason_total{reason=\"tcp_option_truncated\"} 1\n"));
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), types.len(), "a metric declared twice");
    }
}
