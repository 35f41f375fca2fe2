//! The probe's error battery (`ipvsca-probe errors`): every case run natively and under
//! ipvsca, and what must then be the same. The cases that show an address are checked by
//! each test for its own addresses; the rest is checked here.

use serde_json::Value;

/// Asserts the truncated addresses (`*addrlen` 4 or 6): family then port, the balancer's
/// natively (ports 40001 for TCP, 50001 for UDP), the client's (`client_port`) supervised,
/// and the bytes past the length the caller gave untouched.
pub fn assert_truncated_addresses(native: &Value, supervised: &Value, client_port: u16) {
    let bytes = |v: &Value, case: &str| v[case]["bytes"].as_str().unwrap_or_else(|| panic!("{case}: {v}")).to_owned();
    let port_hex = |p: u16| format!("0200{p:04x}");
    for (case, native_port) in
        [("getpeername_len_4", 40001), ("accept_short_addrlen", 40001), ("recvfrom_addrlen_4", 50001)]
    {
        assert!(bytes(native, case).starts_with(&port_hex(native_port)), "{case}: {}", native[case]);
        assert!(bytes(supervised, case).starts_with(&port_hex(client_port)), "{case}: {}", supervised[case]);
    }
    assert!(bytes(supervised, "accept_short_addrlen").ends_with("c633eeee"), "6 bytes written, then untouched");
    assert!(bytes(supervised, "getpeername_len_4").ends_with("eeeeeeee"), "4 bytes written, then untouched");
}

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
    // An address buffer that faults, offered 100 bytes: EFAULT, and `*addrlen` left where
    // this kernel leaves it (16, written before the address, since Linux 6.12; 100 before),
    // with a datagram's data copied first.
    for case in ["accept_faulting_addr", "recvfrom_faulting_addr"] {
        assert_eq!(native[case]["o"]["errno"], libc::EFAULT, "{case} natively: {}", native[case]);
        assert_eq!(
            supervised[case], native[case],
            "{case}: supervised {} vs native {}",
            supervised[case], native[case]
        );
    }
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
