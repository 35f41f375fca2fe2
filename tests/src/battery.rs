//! The probe's error battery (`ipvsca-probe errors`): every case run natively and under
//! ipvsca, and what must then be the same. The cases that show an address are checked by
//! each test for its own addresses; the rest is checked here.

use serde_json::Value;

/// Asserts what the kernel's answers say natively (a send to a shut-down socket is `EPIPE`
/// without a SIGPIPE, a blocking Fast Open send to a closed port is refused, timeouts) and
/// that every case is answered exactly as the kernel answered it: return values, errnos and
/// lengths, and for the cases that show an address, all but the address.
pub fn assert_the_rest_is_the_kernels(native: &Value, supervised: &Value) {
    assert_eq!(native["sendto_after_shutdown"]["errno"], libc::EPIPE, "and the probe was not killed by SIGPIPE");
    assert_eq!(
        native["sendto_fastopen_blocking"]["errno"],
        libc::ECONNREFUSED,
        "{}",
        native["sendto_fastopen_blocking"]
    );
    let timeout = |errno, field: &str| serde_json::json!({"o": {"ret": -1, "errno": errno}, field: true});
    assert_eq!(native["recvfrom_timeout"], timeout(libc::EAGAIN, "in_time"));
    assert_eq!(native["recvfrom_timeout_signalled"], timeout(libc::EINTR, "early"));
    assert_eq!(supervised["accept4_flags"], serde_json::json!({"ok": true, "cloexec": true, "nonblock": true}));
    // Everything else is exactly the kernel's: return values, errnos, lengths.
    let with_addresses = [
        "accept_peer",
        "getpeername",
        "recvfrom_peek",
        "recvfrom_after_peek",
        "connect_udp_peer",
        "getpeername_len_4",
        "accept_short_addrlen",
        "recvfrom_addrlen_4",
    ];
    for (case, n) in native.as_object().unwrap() {
        if with_addresses.contains(&case.as_str()) {
            for part in ["o", "len"] {
                assert_eq!(supervised[case][part], n[part], "{case}.{part}");
            }
            continue;
        }
        assert_eq!(&supervised[case], n, "{case}: supervised {} vs native {n}", supervised[case]);
    }
}
