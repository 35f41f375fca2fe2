//! What the supervisor did: cheap atomics bumped on the hot path, read by `ipvsca stats`
//! and the launcher's exit summary.

use capture::counter_set;

counter_set! {
    /// Supervisor counters.
    pub struct SupervisorCounters => SupervisorStats {
        /// Trapped calls received.
        notifications,
        /// ... of which `accept`.
        accept,
        /// ... of which `accept4`.
        accept4,
        /// ... of which `getpeername`.
        getpeername,
        /// ... of which `recvfrom`.
        recvfrom,
        /// ... of which `sendto`.
        sendto,
        /// ... of which `connect`.
        connect,
        /// ... of which `recvmsg` (`--msg`).
        recvmsg,
        /// ... of which `recvmmsg` (`--msg`).
        recvmmsg,
        /// ... of which `sendmsg` (`--msg`).
        sendmsg,
        /// ... of which `sendmmsg` (`--msg`).
        sendmmsg,
        /// ... of which `getsockopt`: DPVS's `TOA_SO_GET_LOOKUP` and `UOA_SO_GET_LOOKUP`.
        getsockopt,
        /// `TOA_SO_GET_LOOKUP` answered with an IPv6 client (DPVS toa's `getname_toa_ok`).
        toa_lookup_ok,
        /// `TOA_SO_GET_LOOKUP` failed: no mapping, not NAT64, not connected, bad length.
        toa_lookup_failed,
        /// `UOA_SO_GET_LOOKUP` answered with a client (DPVS uoa's `success`).
        uoa_lookup_ok,
        /// `UOA_SO_GET_LOOKUP` found no mapping (DPVS uoa's `miss`).
        uoa_lookup_miss,
        /// DPVS's UOA carriers (empty datagrams that only carried the option) received and
        /// dropped rather than handed to the service.
        uoa_carriers_dropped,
        /// msg-family calls of i386 and x32 programs, let through unchanged (their
        /// `msghdr` is not rewritten).
        other_abi,
        /// ... of which i386 `socketcall`.
        socketcall,
        /// Addresses shown as the client instead of the balancer (rx).
        rewrites_rx,
        /// Destinations sent to the balancer instead of the client (tx).
        rewrites_tx,
        /// Accepted inet connections shown with their client (ip_vs_ca's
        /// `syn_recv_sock_ip_vs_ca`).
        accept_rewritten,
        /// Accepted inet connections shown as the kernel gave them: no mapping
        /// (`syn_recv_sock_no_ip_vs_ca`).
        accept_unmapped,
        /// `getpeername` calls shown the client (`getname_ip_vs_ca_ok`).
        getpeername_rewritten,
        /// `getpeername` of an inet peer with no mapping (`getname_ip_vs_ca_empty`).
        getpeername_unmapped,
        /// `getpeername` of a peer mapped to a client the socket's family cannot show
        /// (`getname_ip_vs_ca_mismatch`).
        getpeername_unrepresentable,
        /// `getpeername` left to the kernel: not an inet socket, not connected, or an error
        /// (`getname_ip_vs_ca_bypass`).
        getpeername_bypass,
        /// Calls let through unchanged (`CONTINUE`): nothing to rewrite.
        continued,
        /// rx lookups of an inet peer that found no mapping, even after a drain.
        unmapped,
        /// Capture drains before declaring a miss.
        drains,
        /// Mapped clients the socket's address family cannot show (an IPv6 client on an
        /// `AF_INET` socket); the balancer's address is shown.
        unrepresentable,
        /// Answers the kernel refused because the caller was interrupted by a signal.
        interrupted,
        /// Connections accepted for an interrupted call, kept for the next `accept`.
        stashed_connections,
        /// Datagrams received for an interrupted call, or with a UOA carrier in one
        /// `recvmmsg`, kept for the next receive.
        stashed_datagrams,
        /// Datagrams a `recvmmsg` had received past a message whose buffers faulted, dropped
        /// (the kernel would leave them queued; docs/design.md, The msg family).
        dropped_after_fault,
        /// Stashed connections and datagrams handed to a later call.
        stash_delivered,
        /// Stashed connections and datagrams nobody asked for within a minute, dropped.
        stash_expired,
        /// Blocking `accept`/`recvfrom` calls that waited for their socket (parked) rather
        /// than finding their connection or datagram there.
        parked,
        /// Worker threads started for blocking calls.
        workers_started,
        /// Calls answered with an error because the supervisor itself failed (logged).
        supervisor_errors,
    }
}
