/* msg_family: the msg family (recvmsg, recvmmsg, sendmsg, sendmmsg) on a UDP socket, and
 * on Unix datagram sockets with SCM_RIGHTS, for ipvsca's tests (tests/tests/msg.rs): run
 * natively and under the filter with --msg, everything it prints must be the same but the
 * addresses the supervisor rewrites.
 *
 * Usage: msg_family GROUP LISTEN PEER UNMAPPED CLOSED   (addresses as IP:PORT)
 *   GROUP     recv, mmsg, gro, send, unix, v6 or basic: which cases to run
 *   LISTEN    the UDP socket's address; its port + 1 is the control port
 *   PEER      where a reply to the balancer goes: the balancer natively, its client under
 *             ipvsca (what the program was shown)
 *   UNMAPPED  a balancer with no mapping (the test listens there)
 *   CLOSED    an address nothing listens on (for an ICMP error)
 *
 * Protocol, one JSON object a line on stdout:
 *   {"ready":true,"pid":N}
 *   {"want":[{"tag":T,"n":N,"size":S,"gso":G,"from":"lb"|"unmapped","gap_ms":M},...],"go":B}
 *       the test sends to LISTEN, from its balancer or unmapped socket, for each entry in
 *       order, N datagrams: "T-i" padded to S bytes with 'a' + offset % 26 (G > 0: N buffers
 *       of S bytes, each sent with UDP_SEGMENT G, which leave as S / G datagrams), sleeping
 *       M ms before each. With "go" true the test then sends one datagram to the control
 *       port, which the program waits for: the datagrams are queued when it goes on.
 *       With "go" false the program goes on at once into a blocking call; the test sleeps
 *       300 ms before sending, so that the call waits.
 *   {"case":NAME,...}   what one call returned and left in the program's memory
 *   {"done":true}
 * Every buffer is filled with a known byte before a call ('#' for data, 0xee for
 * addresses, 0x55 in msg_flags, 777 in msg_len), so that what a call wrote shows. An
 * address is printed "ip:port" when it fits its buffer, else as hex ("name_hex", 16 bytes);
 * a v4-mapped IPv6 one as "ip:port" too ("name6", the v6 group's socket being bound to
 * ::ffff:LISTEN). A buffer a case points elsewhere, to make it fault, prints as
 * "elsewhere". The program ends itself after 60 s (alarm). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif

static struct sockaddr_in listen_addr, peer, unmapped, closed_addr;
static int control_fd;

/* ---- output ---- */

static void put_escaped(const unsigned char *b, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = b[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static uint32_t fnv(const unsigned char *b, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 16777619u;
    }
    return h;
}

/* A buffer: as a string up to 64 bytes, else its length, hash and first 16 bytes. */
static void put_buffer(const unsigned char *b, size_t n) {
    if (n <= 64) {
        put_escaped(b, n);
        return;
    }
    printf("{\"bytes\":%zu,\"fnv\":%u,\"head\":", n, fnv(b, n));
    put_escaped(b, 16);
    putchar('}');
}

static void put_hex(const unsigned char *b, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++)
        printf("%02x", b[i]);
    putchar('"');
}

static void put_inet(const struct sockaddr_in *a) {
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
    printf("\"%s:%u\"", ip, ntohs(a->sin_port));
}

/* An IPv6 address: a v4-mapped one as "ip:port", as the test knows the addresses. */
static void put_inet6(const struct sockaddr_in6 *a) {
    if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
        struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = a->sin6_port};
        memcpy(&v4.sin_addr, &a->sin6_addr.s6_addr[12], 4);
        put_inet(&v4);
        return;
    }
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
    printf("\"[%s]:%u\"", ip, ntohs(a->sin6_port));
}

static void put_ip(struct in_addr a) {
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &a, ip, sizeof ip);
    printf("\"%s\"", ip);
}

/* The control messages of a received message: level, type, length and the value. */
static void put_cmsgs(struct msghdr *m) {
    printf("\"cmsgs\":[");
    if (m->msg_control && m->msg_controllen >= sizeof(struct cmsghdr)) {
        int first = 1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
            size_t have = c->cmsg_len >= CMSG_LEN(0) ? c->cmsg_len - CMSG_LEN(0) : 0;
            printf("%s{\"level\":%d,\"type\":%d,\"len\":%zu", first ? "" : ",", c->cmsg_level, c->cmsg_type,
                   (size_t)c->cmsg_len);
            first = 0;
            if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO && have >= sizeof(struct in_pktinfo)) {
                struct in_pktinfo p;
                memcpy(&p, CMSG_DATA(c), sizeof p);
                printf(",\"ifindex\":%d,\"spec_dst\":", p.ipi_ifindex);
                put_ip(p.ipi_spec_dst);
                printf(",\"addr\":");
                put_ip(p.ipi_addr);
            } else if (c->cmsg_level == SOL_SOCKET && (c->cmsg_type == SO_TIMESTAMPNS || c->cmsg_type == SO_TIMESTAMP)) {
                printf(",\"timestamp\":true");
            } else if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && have >= sizeof(int)) {
                int size;
                memcpy(&size, CMSG_DATA(c), sizeof size);
                printf(",\"gso_size\":%d", size);
            } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                printf(",\"fds\":%zu", have / sizeof(int));
            } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_RECVERR &&
                       have >= sizeof(struct sock_extended_err) + sizeof(struct sockaddr_in)) {
                struct sock_extended_err e;
                struct sockaddr_in offender;
                memcpy(&e, CMSG_DATA(c), sizeof e);
                memcpy(&offender, CMSG_DATA(c) + sizeof e, sizeof offender);
                printf(",\"ee_errno\":%u,\"ee_origin\":%u,\"ee_type\":%u,\"ee_code\":%u,\"offender\":", e.ee_errno,
                       e.ee_origin, e.ee_type, e.ee_code);
                put_inet(&offender);
            }
            putchar('}');
        }
    }
    putchar(']');
}

/* msg_namelen and the address: "ip:port" when it was written whole, else the buffer's
 * first 16 bytes in hex. */
static void put_name(const struct msghdr *m, socklen_t given) {
    printf("\"namelen\":%u", m->msg_namelen);
    if (!m->msg_name) {
        printf(",\"name_null\":true");
        return;
    }
    const struct sockaddr_in *a = m->msg_name;
    const struct sockaddr_in6 *a6 = m->msg_name;
    if (m->msg_namelen == sizeof *a && given >= sizeof *a && a->sin_family == AF_INET) {
        printf(",\"name\":");
        put_inet(a);
    } else if (m->msg_namelen == sizeof *a6 && given >= offsetof(struct sockaddr_in6, sin6_scope_id) &&
               a6->sin6_family == AF_INET6) {
        /* The address whole (a short buffer may lack the scope id, printed apart). */
        printf(",\"scope_id_hex\":");
        put_hex((const unsigned char *)&a6->sin6_scope_id, sizeof a6->sin6_scope_id);
        printf(",\"name6\":");
        put_inet6(a6);
    } else {
        printf(",\"name_hex\":");
        put_hex(m->msg_name, 16);
    }
}

static long ms_since(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000 + (now.tv_nsec - start->tv_nsec) / 1000000;
}

/* ---- the test's datagrams ---- */

/* Asks the test for datagrams (`entries`, JSON objects) and, with `go`, waits until they
 * are queued. */
static void want(const char *entries, int go) {
    printf("{\"want\":[%s],\"go\":%s}\n", entries, go ? "true" : "false");
    fflush(stdout);
    if (!go)
        return;
    char b[16];
    if (read(control_fd, b, sizeof b) <= 0) {
        fprintf(stderr, "no go from the test: %s\n", strerror(errno));
        exit(3);
    }
}

/* One entry of a want: `n` datagrams "tag-i" of `size` bytes from `from`. */
static const char *entry(char *out, size_t len, const char *tag, int n, int size, int gso, const char *from,
                         int gap_ms) {
    snprintf(out, len, "{\"tag\":\"%s\",\"n\":%d,\"size\":%d,\"gso\":%d,\"from\":\"%s\",\"gap_ms\":%d}", tag, n, size,
             gso, from, gap_ms);
    return out;
}

static void want_from_lb(const char *tag, int n, int size) {
    char e[256];
    want(entry(e, sizeof e, tag, n, size, 0, "lb", 0), 1);
}

/* ---- receiving ---- */

#define BUF 4096

/* One message to receive into, its buffers filled with known bytes. */
struct rx {
    struct sockaddr_storage name;
    unsigned char buf[2][BUF];
    struct iovec iov[2];
    union {
        struct cmsghdr align;
        unsigned char bytes[512];
    } control;
    socklen_t given_namelen;
};

/* Prepares `r` and `m`: msg_name NULL or `namelen` of the address buffer, one or two
 * iovecs (`len1` 0: one), `controllen` bytes of control buffer (0: msg_control NULL). */
static void rx_prepare(struct rx *r, struct msghdr *m, int name_null, socklen_t namelen, size_t len0, size_t len1,
                       size_t controllen) {
    memset(&r->name, 0xee, sizeof r->name);
    memset(r->buf, '#', sizeof r->buf);
    memset(&r->control, 0, sizeof r->control);
    r->iov[0].iov_base = r->buf[0];
    r->iov[0].iov_len = len0;
    r->iov[1].iov_base = r->buf[1];
    r->iov[1].iov_len = len1;
    r->given_namelen = namelen;
    memset(m, 0, sizeof *m);
    m->msg_name = name_null ? NULL : &r->name;
    m->msg_namelen = namelen;
    m->msg_iov = r->iov;
    m->msg_iovlen = len1 ? 2 : 1;
    m->msg_control = controllen ? r->control.bytes : NULL;
    m->msg_controllen = controllen;
    m->msg_flags = 0x55;
}

/* The message's fields and buffers (control messages only after a success, and only
 * where they are the program's buffers: a case may point the kernel elsewhere). */
static void put_message(struct rx *r, struct msghdr *m, long ret) {
    if (m->msg_name && m->msg_name != &r->name)
        printf("\"namelen\":%u,\"name\":\"elsewhere\"", m->msg_namelen);
    else
        put_name(m, r->given_namelen);
    printf(",\"flags\":%d,\"controllen\":%zu,", m->msg_flags, (size_t)m->msg_controllen);
    if (m->msg_control && m->msg_control != (void *)r->control.bytes)
        printf("\"cmsgs\":\"elsewhere\"");
    else if (ret >= 0)
        put_cmsgs(m);
    else
        printf("\"cmsgs\":null");
    printf(",\"iov\":[");
    for (size_t i = 0; i < m->msg_iovlen; i++) {
        if (i)
            putchar(',');
        put_buffer(r->buf[i], r->iov[i].iov_len);
    }
    putchar(']');
}

static struct rx one;

/* recvmsg on `s` into `one` as prepared, printed as case `name`. */
static long rx_case(const char *name, int s, struct msghdr *m, int flags) {
    errno = 0;
    long ret = recvmsg(s, m, flags);
    int err = ret < 0 ? errno : 0;
    printf("{\"case\":\"%s\",\"ret\":%ld,\"errno\":%d,", name, ret, err);
    put_message(&one, m, ret);
    printf("}\n");
    return ret;
}

static int udp_socket(const struct sockaddr_in *at) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0 || bind(s, (const struct sockaddr *)at, sizeof *at) != 0) {
        perror("bind");
        exit(1);
    }
    return s;
}

static void set_int(int s, int level, int name, int value, const char *what) {
    if (setsockopt(s, level, name, &value, sizeof value) != 0) {
        perror(what);
        exit(1);
    }
}

/* recvmsg: addresses, truncation, control messages, peek, non-blocking and blocking. */
static void group_recv(int s) {
    struct msghdr m;
    set_int(s, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");
    set_int(s, SOL_SOCKET, SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS");

    want_from_lb("full", 1, 0);
    rx_prepare(&one, &m, 0, sizeof one.name, 4, 60, 512);
    rx_case("recvmsg", s, &m, 0);

    want_from_lb("short", 1, 0);
    rx_prepare(&one, &m, 0, 6, 64, 0, 512);
    rx_case("recvmsg_namelen_6", s, &m, 0);

    want_from_lb("zero", 1, 0);
    rx_prepare(&one, &m, 0, 0, 64, 0, 512);
    rx_case("recvmsg_namelen_0", s, &m, 0);

    want_from_lb("null", 1, 0);
    rx_prepare(&one, &m, 1, sizeof(struct sockaddr_in), 64, 0, 512);
    rx_case("recvmsg_name_null", s, &m, 0);

    want_from_lb("trunc", 1, 100);
    rx_prepare(&one, &m, 0, sizeof one.name, 8, 8, 512);
    rx_case("recvmsg_truncated", s, &m, 0);

    want_from_lb("truncflag", 1, 100);
    rx_prepare(&one, &m, 0, sizeof one.name, 8, 8, 512);
    rx_case("recvmsg_msg_trunc_flag", s, &m, MSG_TRUNC);

    /* The timestamp comes first (32 bytes), IP_PKTINFO (28) does not fit after it. */
    want_from_lb("ctrunc", 1, 0);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 40);
    rx_case("recvmsg_control_40", s, &m, 0);

    want_from_lb("ctrunc20", 1, 0);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 20);
    rx_case("recvmsg_control_20", s, &m, 0);

    want_from_lb("noctl", 1, 0);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 0);
    rx_case("recvmsg_control_null", s, &m, 0);

    want_from_lb("peek", 1, 0);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 512);
    rx_case("recvmsg_peek", s, &m, MSG_PEEK);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 512);
    rx_case("recvmsg_after_peek", s, &m, 0);

    /* Pointers that fault: the control buffer (put_cmsg's EFAULT is ignored: the call
     * succeeds with no control message), the address buffer (EFAULT, the datagram gone),
     * the second iovec (EFAULT, the first one written). */
    want_from_lb("ctlbad", 1, 0);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 64);
    m.msg_control = (void *)8;
    rx_case("recvmsg_control_faults", s, &m, 0);

    want_from_lb("namebad", 1, 0);
    rx_prepare(&one, &m, 0, sizeof(struct sockaddr_in), 64, 0, 512);
    m.msg_name = (void *)8;
    rx_case("recvmsg_name_faults", s, &m, 0);

    want_from_lb("iovbad", 1, 0);
    rx_prepare(&one, &m, 0, sizeof one.name, 4, 60, 512);
    one.iov[1].iov_base = (void *)8;
    rx_case("recvmsg_second_iov_faults", s, &m, 0);

    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 512);
    rx_case("recvmsg_dontwait_nothing_queued", s, &m, MSG_DONTWAIT);

    char e[256];
    want(entry(e, sizeof e, "unmapped", 1, 0, 0, "unmapped", 0), 1);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 512);
    rx_case("recvmsg_from_unmapped", s, &m, 0);

    /* A blocking call that waits for the datagram. */
    want(entry(e, sizeof e, "block", 1, 0, 0, "lb", 0), 0);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 512);
    errno = 0;
    long ret = recvmsg(s, &m, 0);
    printf("{\"case\":\"recvmsg_blocking\",\"ret\":%ld,\"errno\":%d,\"waited\":%s,", ret, ret < 0 ? errno : 0,
           ms_since(&start) >= 100 ? "true" : "false");
    put_message(&one, &m, ret);
    printf("}\n");

    int fl = fcntl(s, F_GETFL);
    fcntl(s, F_SETFL, fl | O_NONBLOCK);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 512);
    rx_case("recvmsg_nonblocking_socket_nothing_queued", s, &m, 0);
    fcntl(s, F_SETFL, fl);

    struct timeval tv = {.tv_sec = 0, .tv_usec = 200000};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    clock_gettime(CLOCK_MONOTONIC, &start);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 512);
    errno = 0;
    ret = recvmsg(s, &m, 0);
    long waited = ms_since(&start);
    printf("{\"case\":\"recvmsg_rcvtimeo_200ms\",\"ret\":%ld,\"errno\":%d,\"timed_out\":%s,", ret,
           ret < 0 ? errno : 0, waited >= 150 && waited < 2000 ? "true" : "false");
    put_message(&one, &m, ret);
    printf("}\n");
    tv.tv_usec = 0;
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

/* ---- recvmmsg ---- */

#define VLEN 8
static struct rx many[VLEN];
static struct mmsghdr vec[VLEN];

/* Prepares `vlen` messages of `len` bytes of data each, 128 bytes of control and a
 * sockaddr_storage for the address. */
static void mrx_prepare(unsigned vlen, size_t len) {
    for (unsigned i = 0; i < vlen; i++) {
        rx_prepare(&many[i], &vec[i].msg_hdr, 0, sizeof many[i].name, len, 0, 128);
        vec[i].msg_len = 777;
    }
}

/* recvmmsg of `vlen` messages as prepared, printed as case `name` with every message's
 * fields (the ones past the count show untouched); the caller ends the line, after its
 * own fields. */
static int mrx_case(const char *name, int s, unsigned vlen, int flags, struct timespec *timeout) {
    errno = 0;
    int ret = recvmmsg(s, vec, vlen, flags, timeout);
    int err = ret < 0 ? errno : 0;
    printf("{\"case\":\"%s\",\"ret\":%d,\"errno\":%d,\"msgs\":[", name, ret, err);
    for (unsigned i = 0; i < vlen; i++) {
        printf("%s{\"msg_len\":%u,", i ? "," : "", vec[i].msg_len);
        put_message(&many[i], &vec[i].msg_hdr, (int)i < ret ? 0 : -1);
        putchar('}');
    }
    printf("]");
    return ret;
}

/* After a batch that failed part way: the next call (not waiting) and what is left. */
static void after_batch_error(int s, const char *tag) {
    char name[64];
    struct msghdr m;
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 128);
    snprintf(name, sizeof name, "recvmsg_after_%s", tag);
    rx_case(name, s, &m, MSG_DONTWAIT);
    mrx_prepare(VLEN, 64);
    snprintf(name, sizeof name, "recvmmsg_left_after_%s", tag);
    mrx_case(name, s, VLEN, MSG_DONTWAIT, NULL);
    printf("}\n");
}

#define BIG_VLEN 64
#define BIG_BUF 65536
static unsigned char big_buf[BIG_VLEN][BIG_BUF];
static struct sockaddr_in big_names[BIG_VLEN];
static struct iovec big_iov[BIG_VLEN];
static union {
    struct cmsghdr align;
    unsigned char bytes[64];
} big_control[BIG_VLEN];
static struct mmsghdr big_vec[BIG_VLEN];

/* recvmmsg of 64 messages of 64 KiB each and 64 bytes of control: the count, each
 * message's length and address; then what is left. */
static void big_case(int s) {
    for (int i = 0; i < BIG_VLEN; i++) {
        big_iov[i] = (struct iovec){big_buf[i], BIG_BUF};
        memset(&big_vec[i], 0, sizeof big_vec[i]);
        big_vec[i].msg_hdr = (struct msghdr){.msg_name = &big_names[i], .msg_namelen = sizeof big_names[i],
                                             .msg_iov = &big_iov[i], .msg_iovlen = 1,
                                             .msg_control = big_control[i].bytes,
                                             .msg_controllen = sizeof big_control[i].bytes};
        big_vec[i].msg_len = 777;
    }
    errno = 0;
    int ret = recvmmsg(s, big_vec, BIG_VLEN, MSG_WAITFORONE, NULL);
    printf("{\"case\":\"recvmmsg_64_buffers_of_64k\",\"ret\":%d,\"errno\":%d,\"msgs\":[", ret,
           ret < 0 ? errno : 0);
    for (int i = 0; i < BIG_VLEN; i++) {
        printf("%s{\"msg_len\":%u,\"name\":", i ? "," : "", big_vec[i].msg_len);
        if (i < ret)
            put_inet(&big_names[i]);
        else
            printf("null");
        putchar('}');
    }
    printf("]}\n");
    mrx_prepare(VLEN, 64);
    mrx_case("recvmmsg_left_after_64", s, VLEN, MSG_DONTWAIT, NULL);
    printf("}\n");
}

static void group_mmsg(int s) {
    char e[1024], e1[256], e2[256], e3[256];
    set_int(s, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");

    want_from_lb("mm", 5, 0);
    mrx_prepare(VLEN, 64);
    mrx_case("recvmmsg_waitforone_5_queued", s, VLEN, MSG_WAITFORONE, NULL);
    printf("}\n");

    want_from_lb("mt", 3, 0);
    mrx_prepare(VLEN, 64);
    struct timespec t = {.tv_sec = 1, .tv_nsec = 0};
    int ret = mrx_case("recvmmsg_waitforone_timeout", s, VLEN, MSG_WAITFORONE, &t);
    printf(",\"timeout_sec\":%ld,\"timeout_less\":%s,\"timeout_valid\":%s}\n", (long)t.tv_sec,
           ret > 0 && t.tv_sec == 0 && t.tv_nsec > 0 ? "true" : "false",
           t.tv_nsec >= 0 && t.tv_nsec < 1000000000 ? "true" : "false");

    want_from_lb("all", 8, 0);
    mrx_prepare(VLEN, 64);
    t.tv_sec = 5;
    t.tv_nsec = 0;
    ret = mrx_case("recvmmsg_8_queued_timeout", s, VLEN, 0, &t);
    printf(",\"timeout_sec\":%ld,\"timeout_less\":%s}\n", (long)t.tv_sec,
           ret > 0 && t.tv_sec == 4 && t.tv_nsec > 0 ? "true" : "false");

    /* Blocking without MSG_WAITFORONE: waits for all three, sent 100 ms apart. */
    want(entry(e, sizeof e, "wait", 3, 0, 0, "lb", 100), 0);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    mrx_prepare(3, 64);
    mrx_case("recvmmsg_blocking_waits_for_all", s, 3, 0, NULL);
    printf(",\"waited\":%s}\n", ms_since(&start) >= 300 ? "true" : "false");

    want(entry(e, sizeof e, "wf", 1, 0, 0, "lb", 0), 0);
    mrx_prepare(4, 64);
    mrx_case("recvmmsg_waitforone_blocking", s, 4, MSG_WAITFORONE, NULL);
    printf("}\n");

    /* The same with a 2 s timeout, the datagram coming some 300 ms into the call: the time
     * left counts from the call's start, the wait included. */
    want(entry(e, sizeof e, "wt", 1, 0, 0, "lb", 0), 0);
    mrx_prepare(4, 64);
    t.tv_sec = 2;
    t.tv_nsec = 0;
    ret = mrx_case("recvmmsg_waitforone_blocking_timeout", s, 4, MSG_WAITFORONE, &t);
    long left_ms = (long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
    printf(",\"left_counts_the_wait\":%s}\n", ret == 1 && left_ms <= 1800 ? "true" : "false");

    snprintf(e, sizeof e, "%s,%s,%s", entry(e1, sizeof e1, "mixa", 2, 0, 0, "lb", 0),
             entry(e2, sizeof e2, "mixu", 1, 0, 0, "unmapped", 0), entry(e3, sizeof e3, "mixb", 1, 0, 0, "lb", 0));
    want(e, 1);
    mrx_prepare(VLEN, 64);
    mrx_case("recvmmsg_mapped_and_unmapped", s, VLEN, MSG_WAITFORONE, NULL);
    printf("}\n");

    /* 8-byte buffers for 50-byte datagrams; the first message's msg_name NULL, the
     * second's msg_namelen 6. */
    want_from_lb("tr", 2, 50);
    mrx_prepare(2, 8);
    vec[0].msg_hdr.msg_name = NULL;
    vec[1].msg_hdr.msg_namelen = 6;
    many[1].given_namelen = 6;
    mrx_case("recvmmsg_truncated", s, 2, MSG_WAITFORONE, NULL);
    printf("}\n");

    want_from_lb("pk", 2, 0);
    mrx_prepare(2, 64);
    mrx_case("recvmmsg_peek", s, 2, MSG_PEEK | MSG_WAITFORONE, NULL);
    printf("}\n");
    mrx_prepare(VLEN, 64);
    mrx_case("recvmmsg_after_peek", s, VLEN, MSG_WAITFORONE, NULL);
    printf("}\n");

    /* The third message's iovec array faults: the kernel returns the two before and keeps
     * the error for the socket's next call (do_recvmmsg, sk_err). */
    want_from_lb("hdrbad", 4, 0);
    mrx_prepare(4, 64);
    vec[2].msg_hdr.msg_iov = (void *)8;
    mrx_case("recvmmsg_third_iovec_array_faults", s, 4, MSG_WAITFORONE, NULL);
    printf("}\n");
    after_batch_error(s, "hdrbad");

    /* The third message's buffer faults: its datagram is taken and lost, and the error kept
     * for the next call; the fourth stays queued. */
    want_from_lb("bufbad", 4, 0);
    mrx_prepare(4, 64);
    many[2].iov[0].iov_base = (void *)8;
    mrx_case("recvmmsg_third_buffer_faults", s, 4, MSG_WAITFORONE, NULL);
    printf("}\n");
    after_batch_error(s, "bufbad");

    /* 64 buffers of 64 KiB with room for control messages: 64 datagrams queued, 64
     * received. */
    int rcvbuf = 1 << 20;
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    want_from_lb("big", BIG_VLEN, 0);
    big_case(s);

    mrx_prepare(VLEN, 64);
    mrx_case("recvmmsg_dontwait_nothing_queued", s, VLEN, MSG_DONTWAIT, NULL);
    printf("}\n");
}

/* ---- UDP_GRO ---- */

static void group_gro(int s) {
    char e[256];
    struct msghdr m;
    int one_ = 1;
    int r = setsockopt(s, SOL_UDP, UDP_GRO, &one_, sizeof one_);
    printf("{\"case\":\"udp_gro_enabled\",\"ret\":%d,\"errno\":%d}\n", r, r < 0 ? errno : 0);

    want(entry(e, sizeof e, "gro", 1, 3000, 1000, "lb", 0), 1);
    rx_prepare(&one, &m, 0, sizeof one.name, BUF, 0, 128);
    rx_case("gro_recvmsg", s, &m, 0);

    want(entry(e, sizeof e, "grom", 2, 2000, 500, "lb", 0), 1);
    mrx_prepare(4, BUF);
    mrx_case("gro_recvmmsg", s, 4, MSG_WAITFORONE, NULL);
    printf("}\n");

    want(entry(e, sizeof e, "grot", 1, 3000, 1000, "lb", 0), 1);
    rx_prepare(&one, &m, 0, sizeof one.name, 1500, 0, 128);
    rx_case("gro_recvmsg_truncated", s, &m, 0);

    want(entry(e, sizeof e, "single", 1, 500, 0, "lb", 0), 1);
    rx_prepare(&one, &m, 0, sizeof one.name, BUF, 0, 128);
    rx_case("gro_recvmsg_single_datagram", s, &m, 0);
}

/* ---- sending ---- */

/* What a send may change in the program's memory: the headers, addresses, iovecs. */
struct tx_snapshot {
    struct mmsghdr vec[4];
    struct sockaddr_storage names[4];
    struct iovec iovs[4][2];
};

struct tx {
    struct mmsghdr vec[4];
    struct sockaddr_storage names[4];
    struct iovec iovs[4][2];
    char data[4][2][64];
    union {
        struct cmsghdr align;
        unsigned char bytes[64];
    } control;
};

static struct tx out;

/* Message `i` of `out`: `text` to `to` (namelen `namelen`; NULL: no address), in one iovec,
 * or two when `split` > 0 (the first `split` bytes in the first). */
static void tx_message(int i, const struct sockaddr_in *to, socklen_t namelen, const char *text, size_t split) {
    struct msghdr *m = &out.vec[i].msg_hdr;
    memset(&out.names[i], 0, sizeof out.names[i]);
    if (to)
        memcpy(&out.names[i], to, sizeof *to);
    size_t len = strlen(text);
    memset(out.data[i], 0, sizeof out.data[i]);
    if (split) {
        memcpy(out.data[i][0], text, split);
        memcpy(out.data[i][1], text + split, len - split);
        out.iovs[i][0] = (struct iovec){out.data[i][0], split};
        out.iovs[i][1] = (struct iovec){out.data[i][1], len - split};
    } else {
        memcpy(out.data[i][0], text, len);
        out.iovs[i][0] = (struct iovec){out.data[i][0], len};
    }
    memset(m, 0, sizeof *m);
    m->msg_name = to ? &out.names[i] : NULL;
    m->msg_namelen = to ? namelen : 0;
    m->msg_iov = out.iovs[i];
    m->msg_iovlen = split ? 2 : 1;
    out.vec[i].msg_len = 777;
}

static void snapshot(struct tx_snapshot *s) {
    memcpy(s->vec, out.vec, sizeof s->vec);
    memcpy(s->names, out.names, sizeof s->names);
    memcpy(s->iovs, out.iovs, sizeof s->iovs);
}

/* Whether the headers (but msg_len), addresses and iovecs are as in `before`. */
static int unchanged(const struct tx_snapshot *before) {
    struct tx_snapshot now;
    snapshot(&now);
    for (int i = 0; i < 4; i++)
        now.vec[i].msg_len = before->vec[i].msg_len;
    return memcmp(&now, before, sizeof now) == 0;
}

/* sendmsg of `out`'s first message, printed as case `name`. */
static void tx_case(const char *name, int s, int flags) {
    struct tx_snapshot before;
    snapshot(&before);
    errno = 0;
    long ret = sendmsg(s, &out.vec[0].msg_hdr, flags);
    int err = ret < 0 ? errno : 0;
    printf("{\"case\":\"%s\",\"ret\":%ld,\"errno\":%d,\"name\":", name, ret, err);
    put_inet((struct sockaddr_in *)&out.names[0]);
    printf(",\"unchanged\":%s}\n", unchanged(&before) ? "true" : "false");
}

/* sendmmsg of `out`'s first `vlen` messages, printed as case `name`. */
static void tx_batch_case(const char *name, int s, unsigned vlen) {
    struct tx_snapshot before;
    snapshot(&before);
    errno = 0;
    int ret = sendmmsg(s, out.vec, vlen, 0);
    int err = ret < 0 ? errno : 0;
    printf("{\"case\":\"%s\",\"ret\":%d,\"errno\":%d,\"msgs\":[", name, ret, err);
    for (unsigned i = 0; i < vlen; i++) {
        printf("%s{\"msg_len\":%u,\"name\":", i ? "," : "", out.vec[i].msg_len);
        put_inet((struct sockaddr_in *)&out.names[i]);
        putchar('}');
    }
    printf("],\"unchanged\":%s}\n", unchanged(&before) ? "true" : "false");
}

/* Adds one control message to `out`'s first message. */
static void tx_cmsg(int level, int type, const void *value, size_t len) {
    struct msghdr *m = &out.vec[0].msg_hdr;
    memset(&out.control, 0, sizeof out.control);
    m->msg_control = out.control.bytes;
    m->msg_controllen = CMSG_SPACE(len);
    struct cmsghdr *c = CMSG_FIRSTHDR(m);
    c->cmsg_level = level;
    c->cmsg_type = type;
    c->cmsg_len = CMSG_LEN(len);
    memcpy(CMSG_DATA(c), value, len);
}

static void group_send(int s) {
    const socklen_t in_len = sizeof(struct sockaddr_in);

    tx_message(0, &peer, in_len, "send-plain", 5);
    tx_case("sendmsg", s, 0);

    tx_message(0, &peer, in_len, "send-pktinfo", 0);
    struct in_pktinfo info = {.ipi_ifindex = 0, .ipi_spec_dst = listen_addr.sin_addr};
    tx_cmsg(IPPROTO_IP, IP_PKTINFO, &info, sizeof info);
    tx_case("sendmsg_pktinfo", s, 0);

    int ttl = 5;
    tx_message(0, &peer, in_len, "send-ttl", 0);
    tx_cmsg(IPPROTO_IP, IP_TTL, &ttl, sizeof ttl);
    tx_case("sendmsg_ttl", s, 0);

    /* IP_TTL with one byte: EINVAL. */
    tx_message(0, &peer, in_len, "send-bad-cmsg", 0);
    tx_cmsg(IPPROTO_IP, IP_TTL, &ttl, 1);
    tx_case("sendmsg_bad_cmsg", s, 0);

    /* 3000 bytes in segments of 1000: three datagrams, the j-th "gso-j" then 'A' + j. */
    static char gso[3000];
    for (int j = 0; j < 3; j++) {
        memset(gso + 1000 * j, 'A' + j, 1000);
        memcpy(gso + 1000 * j, "gso-", 4);
        gso[1000 * j + 4] = '0' + j;
    }
    tx_message(0, &peer, in_len, "", 0);
    out.iovs[0][0] = (struct iovec){gso, sizeof gso};
    uint16_t segment = 1000;
    tx_cmsg(SOL_UDP, UDP_SEGMENT, &segment, sizeof segment);
    tx_case("sendmsg_udp_segment", s, 0);

    tx_message(0, &peer, in_len, "send-dontwait", 0);
    tx_case("sendmsg_dontwait", s, MSG_DONTWAIT);

    tx_message(0, &peer, 8, "send-namelen-8", 0);
    tx_case("sendmsg_namelen_8", s, 0);

    tx_message(0, &peer, sizeof(struct sockaddr_storage), "send-namelen-128", 0);
    tx_case("sendmsg_namelen_128", s, 0);

    tx_message(0, NULL, 0, "send-no-name", 0);
    tx_case("sendmsg_no_name", s, 0);

    /* A msg_namelen past sockaddr_storage: the kernel reads 128 bytes and sends. */
    tx_message(0, &peer, 200, "send-namelen-200", 0);
    tx_case("sendmsg_namelen_200", s, 0);

    /* msg_control NULL with a length: the kernel copies from NULL (EFAULT). */
    tx_message(0, &peer, in_len, "send-control-null", 0);
    out.vec[0].msg_hdr.msg_controllen = 16;
    tx_case("sendmsg_control_null_with_length", s, 0);

    /* Corked: two calls, one datagram. */
    tx_message(0, &peer, in_len, "more-1", 0);
    tx_case("sendmsg_msg_more", s, MSG_MORE);
    tx_message(0, &peer, in_len, "more-2", 0);
    tx_case("sendmsg_after_msg_more", s, 0);

    tx_message(0, &unmapped, in_len, "send-unmapped", 0);
    tx_case("sendmsg_unmapped", s, 0);

    char text[32];
    for (int i = 0; i < 4; i++) {
        snprintf(text, sizeof text, "mm-%d", i);
        tx_message(i, &peer, in_len, text, i == 1 ? 2 : 0);
    }
    tx_batch_case("sendmmsg", s, 4);

    for (int i = 0; i < 4; i++) {
        snprintf(text, sizeof text, "badbase-%d", i);
        tx_message(i, &peer, in_len, text, 0);
    }
    out.iovs[2][0].iov_base = (void *)8;
    tx_batch_case("sendmmsg_third_iov_base_bad", s, 4);

    for (int i = 0; i < 4; i++) {
        snprintf(text, sizeof text, "badarray-%d", i);
        tx_message(i, &peer, in_len, text, 0);
    }
    out.vec[2].msg_hdr.msg_iov = (void *)8;
    tx_batch_case("sendmmsg_third_iov_array_bad", s, 4);

    for (int i = 0; i < 2; i++) {
        snprintf(text, sizeof text, "badfirst-%d", i);
        tx_message(i, &peer, in_len, text, 0);
    }
    out.iovs[0][0].iov_base = (void *)8;
    tx_batch_case("sendmmsg_first_iov_base_bad", s, 2);

    /* The first message's address faults: EFAULT. */
    for (int i = 0; i < 2; i++) {
        snprintf(text, sizeof text, "namebad-%d", i);
        tx_message(i, &peer, in_len, text, 0);
    }
    out.vec[0].msg_hdr.msg_name = (void *)8;
    tx_batch_case("sendmmsg_first_name_faults", s, 2);

    tx_message(0, &peer, in_len, "mix-0", 0);
    tx_message(1, &unmapped, in_len, "mix-1", 0);
    tx_message(2, &peer, in_len, "mix-2", 0);
    tx_batch_case("sendmmsg_mapped_and_unmapped", s, 3);

    /* An ICMP port unreachable for a datagram to CLOSED, read from the error queue. */
    struct sockaddr_in any = listen_addr;
    any.sin_port = 0;
    int q = udp_socket(&any);
    set_int(q, IPPROTO_IP, IP_RECVERR, 1, "IP_RECVERR");
    tx_message(0, &closed_addr, in_len, "send-closed", 0);
    tx_case("sendmsg_to_a_closed_port", q, 0);
    struct pollfd p = {.fd = q, .events = 0};
    int ready = poll(&p, 1, 2000);
    printf("{\"case\":\"error_queued\",\"ret\":%d,\"pollerr\":%s}\n", ready, p.revents & POLLERR ? "true" : "false");
    struct msghdr m;
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 512);
    rx_case("recvmsg_errqueue", q, &m, MSG_ERRQUEUE);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 512);
    rx_case("recvmsg_errqueue_empty", q, &m, MSG_ERRQUEUE | MSG_DONTWAIT);
    close(q);

    /* A packet mark needs CAP_NET_RAW or CAP_NET_ADMIN: without them EPERM, whoever sends
       for the service. Last: the effective capabilities are dropped for good. */
    struct __user_cap_header_struct cap_header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct caps[2];
    if (syscall(SYS_capget, &cap_header, caps) == 0) {
        caps[0].effective = caps[1].effective = 0;
        syscall(SYS_capset, &cap_header, caps);
    }
    int mark = 42;
    tx_message(0, &peer, in_len, "send-mark", 0);
    tx_cmsg(SOL_SOCKET, SO_MARK, &mark, sizeof mark);
    tx_case("sendmsg_so_mark_without_capabilities", s, 0);
}

/* ---- Unix datagram sockets and SCM_RIGHTS ---- */

/* Sends a pipe's write end over `from` (to `to`, or unnamed when NULL) and receives it on
 * `at`; the received descriptor must write into the pipe. */
static void pass_fd(const char *name, int from, int at, const struct sockaddr_un *to, socklen_t to_len,
                    const struct sockaddr_un *sender, socklen_t sender_len) {
    int p[2];
    if (pipe(p) != 0) {
        perror("pipe");
        exit(1);
    }
    char data[] = "fd-pass";
    struct iovec iov = {data, sizeof data - 1};
    union {
        struct cmsghdr align;
        unsigned char bytes[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr m = {.msg_name = (void *)to, .msg_namelen = to ? to_len : 0, .msg_iov = &iov, .msg_iovlen = 1,
                       .msg_control = control.bytes, .msg_controllen = sizeof control.bytes};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &p[1], sizeof(int));
    errno = 0;
    long sent = sendmsg(from, &m, 0);
    printf("{\"case\":\"%s_sendmsg\",\"ret\":%ld,\"errno\":%d}\n", name, sent, sent < 0 ? errno : 0);
    close(p[1]);

    struct msghdr r;
    rx_prepare(&one, &r, 0, sizeof one.name, 64, 0, 64);
    errno = 0;
    long got = recvmsg(at, &r, 0);
    int err = got < 0 ? errno : 0;
    int works = 0, sender_shown = 0;
    if (got >= 0) {
        struct cmsghdr *rc = CMSG_FIRSTHDR(&r);
        if (rc && rc->cmsg_level == SOL_SOCKET && rc->cmsg_type == SCM_RIGHTS) {
            int fd;
            memcpy(&fd, CMSG_DATA(rc), sizeof fd);
            char back[16] = "";
            works = write(fd, "through", 7) == 7 && read(p[0], back, sizeof back) == 7 && !memcmp(back, "through", 7);
            close(fd);
        }
        sender_shown = sender ? r.msg_namelen == sender_len && !memcmp(&one.name, sender, sender_len)
                              : r.msg_namelen <= sizeof(sa_family_t);
    }
    printf("{\"case\":\"%s_recvmsg\",\"ret\":%ld,\"errno\":%d,\"namelen\":%u,\"sender_shown\":%s,\"flags\":%d,"
           "\"controllen\":%zu,",
           name, got, err, r.msg_namelen, sender_shown ? "true" : "false", r.msg_flags, (size_t)r.msg_controllen);
    if (got >= 0)
        put_cmsgs(&r);
    else
        printf("\"cmsgs\":null");
    printf(",\"data\":");
    put_escaped(one.buf[0], got > 0 ? (size_t)got : 0);
    printf(",\"fd_works\":%s}\n", works ? "true" : "false");
    close(p[0]);
}

static socklen_t abstract(struct sockaddr_un *a, int which) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    /* Fixed length (the pid zero-padded), so that runs print the same lengths. */
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "ipvsca-msg-%010d-%d", getpid(), which);
    return offsetof(struct sockaddr_un, sun_path) + 1 + n;
}

static void group_unix(void) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, pair) != 0) {
        perror("socketpair");
        exit(1);
    }
    pass_fd("unix_pair", pair[0], pair[1], NULL, 0, NULL, 0);
    close(pair[0]);
    close(pair[1]);

    struct sockaddr_un a, b;
    socklen_t a_len = abstract(&a, 1), b_len = abstract(&b, 2);
    int u1 = socket(AF_UNIX, SOCK_DGRAM, 0), u2 = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (bind(u1, (struct sockaddr *)&a, a_len) != 0 || bind(u2, (struct sockaddr *)&b, b_len) != 0) {
        perror("bind unix");
        exit(1);
    }
    pass_fd("unix_named", u1, u2, &b, b_len, &a, a_len);
    close(u1);
    close(u2);
}

/* ---- an IPv6 socket, v4-mapped addresses ---- */

static struct sockaddr_in6 mapped(const struct sockaddr_in *a) {
    struct sockaddr_in6 m = {.sin6_family = AF_INET6, .sin6_port = a->sin_port};
    m.sin6_addr.s6_addr[10] = 0xff;
    m.sin6_addr.s6_addr[11] = 0xff;
    memcpy(&m.sin6_addr.s6_addr[12], &a->sin_addr, 4);
    return m;
}

/* sendmsg or (`vlen` > 1) sendmmsg of `vlen` messages "tag-i" to `to`, printed as case
 * `name` with the addresses left in the program's memory. */
static void tx6_case(const char *name, int s, const struct sockaddr_in6 *to, unsigned vlen, const char *tag) {
    struct sockaddr_in6 names[4];
    char data[4][32];
    struct iovec iov[4];
    struct mmsghdr v[4];
    memset(v, 0, sizeof v);
    for (unsigned i = 0; i < vlen; i++) {
        names[i] = *to;
        snprintf(data[i], sizeof data[i], "%s-%u", tag, i);
        iov[i] = (struct iovec){data[i], strlen(data[i])};
        v[i].msg_hdr = (struct msghdr){.msg_name = &names[i], .msg_namelen = sizeof names[i], .msg_iov = &iov[i],
                                       .msg_iovlen = 1};
    }
    errno = 0;
    long ret = vlen > 1 ? sendmmsg(s, v, vlen, 0) : sendmsg(s, &v[0].msg_hdr, 0);
    printf("{\"case\":\"%s\",\"ret\":%ld,\"errno\":%d,\"msgs\":[", name, ret, ret < 0 ? errno : 0);
    for (unsigned i = 0; i < vlen; i++) {
        printf("%s{\"msg_len\":%u,\"name\":", i ? "," : "", v[i].msg_len);
        put_inet6(&names[i]);
        printf(",\"unchanged\":%s}", memcmp(&names[i], to, sizeof *to) ? "false" : "true");
    }
    printf("]}\n");
}

static void group_v6(void) {
    struct sockaddr_in6 at = mapped(&listen_addr);
    int s = socket(AF_INET6, SOCK_DGRAM, 0);
    if (s < 0 || bind(s, (struct sockaddr *)&at, sizeof at) != 0) {
        perror("bind ::ffff:LISTEN");
        exit(1);
    }
    struct msghdr m;
    want_from_lb("six", 1, 0);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 0);
    rx_case("v6_recvmsg", s, &m, 0);

    want_from_lb("sixm", 2, 0);
    mrx_prepare(4, 64);
    mrx_case("v6_recvmmsg", s, 4, MSG_WAITFORONE, NULL);
    printf("}\n");

    /* An address a byte short of sockaddr_in6's 28 (the kernel takes 24: no scope id). */
    want_from_lb("sixs", 1, 0);
    rx_prepare(&one, &m, 0, 24, 64, 0, 0);
    rx_case("v6_recvmsg_namelen_24", s, &m, 0);

    struct sockaddr_in6 to = mapped(&peer), other = mapped(&unmapped);
    tx6_case("v6_sendmsg", s, &to, 1, "six-send");
    tx6_case("v6_sendmmsg", s, &to, 3, "six-mm");
    tx6_case("v6_sendmsg_unmapped", s, &other, 1, "six-unmapped");
    close(s);
}

/* ---- without --msg ---- */

static void group_basic(int s) {
    struct msghdr m;
    want_from_lb("basic", 1, 0);
    rx_prepare(&one, &m, 0, sizeof one.name, 64, 0, 0);
    rx_case("recvmsg", s, &m, 0);
    want_from_lb("basicm", 2, 0);
    mrx_prepare(4, 64);
    mrx_case("recvmmsg", s, 4, MSG_WAITFORONE, NULL);
    printf("}\n");
}

static struct sockaddr_in parse(const char *text) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    char ip[64];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof ip) {
        fprintf(stderr, "not IP:PORT: %s\n", text);
        exit(2);
    }
    memcpy(ip, text, colon - text);
    ip[colon - text] = 0;
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "not an IPv4 address: %s\n", ip);
        exit(2);
    }
    a.sin_port = htons(atoi(colon + 1));
    return a;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s recv|mmsg|gro|send|unix|v6|basic LISTEN PEER UNMAPPED CLOSED\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(60);
    const char *group = argv[1];
    listen_addr = parse(argv[2]);
    peer = parse(argv[3]);
    unmapped = parse(argv[4]);
    closed_addr = parse(argv[5]);
    /* The v6 group binds LISTEN itself, with an IPv6 socket; the unix group needs none. */
    int s = strcmp(group, "v6") && strcmp(group, "unix") ? udp_socket(&listen_addr) : -1;
    struct sockaddr_in control_addr = listen_addr;
    control_addr.sin_port = htons(ntohs(listen_addr.sin_port) + 1);
    control_fd = udp_socket(&control_addr);
    struct timeval patience = {.tv_sec = 20};
    setsockopt(control_fd, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
    printf("{\"ready\":true,\"pid\":%d}\n", getpid());

    if (!strcmp(group, "recv"))
        group_recv(s);
    else if (!strcmp(group, "mmsg"))
        group_mmsg(s);
    else if (!strcmp(group, "gro"))
        group_gro(s);
    else if (!strcmp(group, "send"))
        group_send(s);
    else if (!strcmp(group, "unix"))
        group_unix();
    else if (!strcmp(group, "v6"))
        group_v6();
    else if (!strcmp(group, "basic"))
        group_basic(s);
    else {
        fprintf(stderr, "no such group: %s\n", group);
        return 2;
    }
    printf("{\"done\":true}\n");
    return 0;
}
