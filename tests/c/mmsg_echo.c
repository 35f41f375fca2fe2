/* A UDP echo server built on the batch calls, for the lab under `ipvsca-run --msg`:
 * recvmmsg with MSG_WAITFORONE (up to 8 datagrams a call), then one sendmmsg for the
 * batch's replies. Each reply carries the datagram twice with UDP_SEGMENT set to its
 * length, so the kernel sends it as two datagrams (GSO): a client that reads one gets
 * its echo, and a broken segmentation would show as one datagram of double length.
 * Prints "ready", then each source address, a line each.
 * Usage: mmsg_echo PORT */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define BATCH 8
#define SIZE 1024

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("socket/bind");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    static char in[BATCH][SIZE], out[BATCH][2 * SIZE];
    static struct sockaddr_in from[BATCH];
    static union {
        char buf[CMSG_SPACE(sizeof(unsigned short))];
        struct cmsghdr align;
    } control[BATCH];
    struct iovec iov_in[BATCH], iov_out[BATCH];
    struct mmsghdr msgs[BATCH], replies[BATCH];
    for (;;) {
        memset(msgs, 0, sizeof msgs);
        for (int i = 0; i < BATCH; i++) {
            iov_in[i] = (struct iovec){in[i], SIZE};
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof from[i];
            msgs[i].msg_hdr.msg_iov = &iov_in[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(s, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            perror("recvmmsg");
            return 1;
        }
        memset(replies, 0, sizeof replies);
        for (int i = 0; i < n; i++) {
            char ip[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &from[i].sin_addr, ip, sizeof ip);
            printf("%s\n", ip);
            unsigned len = msgs[i].msg_len;
            memcpy(out[i], in[i], len);
            memcpy(out[i] + len, in[i], len);
            iov_out[i] = (struct iovec){out[i], 2 * len};
            struct msghdr *h = &replies[i].msg_hdr;
            h->msg_name = &from[i];
            h->msg_namelen = msgs[i].msg_hdr.msg_namelen;
            h->msg_iov = &iov_out[i];
            h->msg_iovlen = 1;
            h->msg_control = control[i].buf;
            h->msg_controllen = sizeof control[i].buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(unsigned short));
            unsigned short segment = len;
            memcpy(CMSG_DATA(c), &segment, sizeof segment);
        }
        fflush(stdout);
        if (sendmmsg(s, replies, n, 0) != n) {
            perror("sendmmsg");
            return 1;
        }
    }
}
