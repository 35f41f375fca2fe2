/* A server written for DPVS's toa and uoa kernel modules: it asks for its clients with
 * their socket options, TOA_SO_GET_LOOKUP (4096, NAT64 TCP connections) and
 * UOA_SO_GET_LOOKUP (2048, UDP), with the structures of DPVS's headers (kmod/toa/toa.h,
 * include/uoa.h), described here from their documented layouts. Without a module (or
 * ipvsca) both fail with ENOPROTOOPT.
 *
 *   dpvs_lookup tcp FAMILY ADDR PORT COUNT
 *       listens (FAMILY 4: AF_INET, 6: AF_INET6, dual-stack for ::) and for each of COUNT
 *       connections prints what getpeername shows and what TOA_SO_GET_LOOKUP answers, then
 *       the edge cases on that connection; the listener's own lookup first.
 *   dpvs_lookup udp FAMILY ADDR PORT COUNT [QUERY_ADDR QUERY_PORT]
 *       for each of COUNT datagrams, prints the source recvfrom shows (and the length) and
 *       what UOA_SO_GET_LOOKUP answers for it; then the edge cases, and a lookup of the flow
 *       from QUERY_ADDR:QUERY_PORT if given.
 *   dpvs_lookup udp-mmsg FAMILY ADDR PORT COUNT
 *       reads COUNT datagrams with recvmmsg (4 at most a call of 64 bytes each,
 *       MSG_WAITFORONE, a 30 s timeout) and prints each one's source, length, whether it
 *       was cut, and the time the call left in its timeout (microseconds).
 *   dpvs_lookup udp-peek0 FAMILY ADDR PORT COUNT
 *       for each of COUNT datagrams, peeks its source with recvmsg into no room (no
 *       MSG_TRUNC asked), then reads it with recvfrom: both lengths and the peek's flags.
 *
 * One JSON object per line; {"ready":true} once listening. Addresses as ADDR:PORT, IPv6 in
 * brackets, IPv4-mapped ones as IPv4. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TOA_SO_GET_LOOKUP 4096
#define UOA_SO_GET_LOOKUP 2048

struct toa_nat64_peer {
    struct in6_addr saddr;
    uint16_t sport;
};

union inet_addr {
    struct in_addr in;
    struct in6_addr in6;
};

struct uoa_param_map {
    uint16_t af;
    union inet_addr saddr;
    union inet_addr daddr;
    uint16_t sport;
    uint16_t dport;
    uint16_t real_af;
    union inet_addr real_saddr;
    uint16_t real_sport;
} __attribute__((packed));

static void show(char *out, size_t n, int af, const void *addr, uint16_t port_be) {
    char ip[INET6_ADDRSTRLEN];
    if (af == AF_INET6 && IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)addr)) {
        af = AF_INET;
        addr = (const char *)addr + 12;
    }
    inet_ntop(af, addr, ip, sizeof ip);
    snprintf(out, n, af == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, ntohs(port_be));
}

static void show_sockaddr(char *out, size_t n, const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const void *)ss;
        show(out, n, AF_INET, &s->sin_addr, s->sin_port);
    } else {
        const struct sockaddr_in6 *s = (const void *)ss;
        show(out, n, AF_INET6, &s->sin6_addr, s->sin6_port);
    }
}

static int listen_on(int type, int family, const char *addr, int port) {
    int fd = socket(family == 6 ? AF_INET6 : AF_INET, type, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (family == 6) {
        struct sockaddr_in6 *s = (void *)&ss;
        s->sin6_family = AF_INET6;
        s->sin6_port = htons(port);
        inet_pton(AF_INET6, addr, &s->sin6_addr);
        len = sizeof *s;
    } else {
        struct sockaddr_in *s = (void *)&ss;
        s->sin_family = AF_INET;
        s->sin_port = htons(port);
        inet_pton(AF_INET, addr, &s->sin_addr);
        len = sizeof *s;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) || (type == SOCK_STREAM && listen(fd, 16))) {
        printf("{\"error\":\"bind %s:%d: %s\"}\n", addr, port, strerror(errno));
        exit(1);
    }
    printf("{\"ready\":true}\n");
    fflush(stdout);
    return fd;
}

/* One TOA_SO_GET_LOOKUP with an optlen of `len` (through `lenp` when not NULL). */
static void toa(const char *name, int fd, int len, void *optval, socklen_t *lenp) {
    struct toa_nat64_peer peer;
    memset(&peer, 0xaa, sizeof peer);
    socklen_t l = len;
    errno = 0;
    int r = getsockopt(fd, IPPROTO_IP, TOA_SO_GET_LOOKUP, optval == (void *)1 ? (void *)&peer : optval,
                       lenp ? lenp : &l);
    char client[80] = "";
    if (r == 0)
        show(client, sizeof client, AF_INET6, &peer.saddr, peer.sport);
    printf("{\"case\":\"%s\",\"ret\":%d,\"errno\":%d,\"len\":%u,\"client\":\"%s\",\"pad\":\"%02x%02x\"}\n", name, r,
           r ? errno : 0, (unsigned)l, client, ((unsigned char *)&peer)[18], ((unsigned char *)&peer)[19]);
}

static void tcp(int family, const char *addr, int port, int count) {
    int lfd = listen_on(SOCK_STREAM, family, addr, port);
    toa("listener", lfd, sizeof(struct toa_nat64_peer), (void *)1, NULL);
    for (int i = 0; i < count; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int c = accept(lfd, (struct sockaddr *)&ss, &sl);
        if (c < 0) {
            printf("{\"error\":\"accept: %s\"}\n", strerror(errno));
            exit(1);
        }
        char shown[80], peer[80];
        show_sockaddr(shown, sizeof shown, &ss);
        sl = sizeof ss;
        getpeername(c, (struct sockaddr *)&ss, &sl);
        show_sockaddr(peer, sizeof peer, &ss);
        printf("{\"accept\":\"%s\",\"getpeername\":\"%s\"}\n", shown, peer);
        toa("lookup", c, sizeof(struct toa_nat64_peer), (void *)1, NULL);
        toa("longer length", c, 64, (void *)1, NULL);
        toa("short length", c, sizeof(struct toa_nat64_peer) - 1, (void *)1, NULL);
        toa("negative length", c, -1, (void *)1, NULL);
        toa("null buffer", c, sizeof(struct toa_nat64_peer), NULL, NULL);
        toa("bad length pointer", c, 0, (void *)1, (socklen_t *)8);
        fflush(stdout);
        close(c);
    }
    printf("{\"done\":true}\n");
    fflush(stdout);
}

/* One UOA_SO_GET_LOOKUP for the flow from `af`/`saddr`/`sport` to this socket's `dport`. */
static void uoa(const char *name, int fd, int af, const void *saddr, uint16_t sport, uint16_t dport, int len,
                void *optval) {
    struct uoa_param_map map;
    memset(&map, 0, sizeof map);
    memset(&map.real_saddr, 0xaa, sizeof map.real_saddr);
    map.af = af;
    memcpy(&map.saddr, saddr, af == AF_INET ? 4 : 16);
    map.sport = sport;
    map.dport = dport;
    socklen_t l = len;
    errno = 0;
    int r = getsockopt(fd, IPPROTO_IP, UOA_SO_GET_LOOKUP, optval == (void *)1 ? (void *)&map : optval, &l);
    char client[80] = "";
    if (r == 0)
        show(client, sizeof client, map.real_af, &map.real_saddr, map.real_sport);
    const unsigned char *tail = (const unsigned char *)&map.real_saddr + 4;
    printf("{\"case\":\"%s\",\"ret\":%d,\"errno\":%d,\"len\":%u,\"real_af\":%u,\"client\":\"%s\",\"tail\":\"%02x%02x\"}\n",
           name, r, r ? errno : 0, (unsigned)l, map.real_af, client, tail[0], tail[11]);
}

static void udp(int family, const char *addr, int port, int count, const char *qaddr, int qport) {
    int fd = listen_on(SOCK_DGRAM, family, addr, port);
    for (int i = 0; i < count; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        char buf[64];
        ssize_t got = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&ss, &sl);
        if (got < 0) {
            printf("{\"error\":\"recvfrom: %s\"}\n", strerror(errno));
            exit(1);
        }
        char from[80];
        show_sockaddr(from, sizeof from, &ss);
        printf("{\"recvfrom\":\"%s\",\"len\":%zd}\n", from, got);
        int af = ss.ss_family;
        const void *a = af == AF_INET ? (void *)&((struct sockaddr_in *)&ss)->sin_addr
                                      : (void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
        uint16_t p = af == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port : ((struct sockaddr_in6 *)&ss)->sin6_port;
        uoa("lookup", fd, af, a, p, htons(port), sizeof(struct uoa_param_map), (void *)1);
        if (i == 0) {
            uoa("short length", fd, af, a, p, htons(port), sizeof(struct uoa_param_map) - 1, (void *)1);
            uoa("bad buffer", fd, af, a, p, htons(port), sizeof(struct uoa_param_map), (void *)8);
            uoa("other port", fd, af, a, p, htons(port + 1), sizeof(struct uoa_param_map), (void *)1);
        }
        fflush(stdout);
    }
    if (qaddr) {
        struct in6_addr q6;
        struct in_addr q4;
        if (inet_pton(AF_INET, qaddr, &q4) == 1)
            uoa("query", fd, AF_INET, &q4, htons(qport), htons(port), sizeof(struct uoa_param_map), (void *)1);
        else if (inet_pton(AF_INET6, qaddr, &q6) == 1)
            uoa("query", fd, AF_INET6, &q6, htons(qport), htons(port), sizeof(struct uoa_param_map), (void *)1);
    }
    printf("{\"done\":true}\n");
    fflush(stdout);
}

static void udp_mmsg(int family, const char *addr, int port, int count) {
    int fd = listen_on(SOCK_DGRAM, family, addr, port);
    for (int seen = 0; seen < count;) {
        struct mmsghdr msgs[4];
        struct sockaddr_storage names[4];
        char bufs[4][64];
        struct iovec iovs[4];
        memset(msgs, 0, sizeof msgs);
        for (int i = 0; i < 4; i++) {
            iovs[i] = (struct iovec){bufs[i], sizeof bufs[i]};
            msgs[i].msg_hdr = (struct msghdr){.msg_name = &names[i], .msg_namelen = sizeof names[i],
                                              .msg_iov = &iovs[i], .msg_iovlen = 1};
        }
        struct timespec timeout = {30, 0};
        int n = recvmmsg(fd, msgs, 4, MSG_WAITFORONE, &timeout);
        if (n < 0) {
            printf("{\"error\":\"recvmmsg: %s\"}\n", strerror(errno));
            exit(1);
        }
        for (int i = 0; i < n; i++, seen++) {
            char from[80];
            show_sockaddr(from, sizeof from, &names[i]);
            printf("{\"recvfrom\":\"%s\",\"len\":%u,\"cut\":%d,\"left_us\":%lld}\n", from, msgs[i].msg_len,
                   !!(msgs[i].msg_hdr.msg_flags & MSG_TRUNC),
                   (long long)timeout.tv_sec * 1000000 + timeout.tv_nsec / 1000);
        }
    }
    printf("{\"done\":true}\n");
}

static void udp_peek0(int family, const char *addr, int port, int count) {
    int fd = listen_on(SOCK_DGRAM, family, addr, port);
    for (int i = 0; i < count; i++) {
        struct sockaddr_storage ss;
        struct msghdr m = {.msg_name = &ss, .msg_namelen = sizeof ss};
        ssize_t peeked = recvmsg(fd, &m, MSG_PEEK);
        char buf[64];
        socklen_t sl = sizeof ss;
        ssize_t got = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&ss, &sl);
        char from[80];
        show_sockaddr(from, sizeof from, &ss);
        printf("{\"recvfrom\":\"%s\",\"peeked\":%zd,\"cut\":%d,\"len\":%zd}\n", from, peeked,
               !!(m.msg_flags & MSG_TRUNC), got);
    }
    printf("{\"done\":true}\n");
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s tcp|udp 4|6 ADDR PORT COUNT [QUERY_ADDR QUERY_PORT]\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int family = atoi(argv[2]), port = atoi(argv[4]), count = atoi(argv[5]);
    if (!strcmp(argv[1], "tcp"))
        tcp(family, argv[3], port, count);
    else if (!strcmp(argv[1], "udp-mmsg"))
        udp_mmsg(family, argv[3], port, count);
    else if (!strcmp(argv[1], "udp-peek0"))
        udp_peek0(family, argv[3], port, count);
    else
        udp(family, argv[3], port, count, argc > 7 ? argv[6] : NULL, argc > 7 ? atoi(argv[7]) : 0);
    return 0;
}
