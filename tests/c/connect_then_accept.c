/* A blocking connect interrupted by a signal without SA_RESTART (alarm(), the classic
 * connect timeout), then a blocking accept on another socket of the same thread: under
 * ipvsca the connect waits on a worker, which is still busy when the accept arrives.
 * Usage: connect_then_accept RS_IP LISTEN_PORT SOURCE_PORT DEST_IP DEST_PORT
 * Prints one JSON line per step. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void ignore(int sig) { (void)sig; }

static struct sockaddr_in address(const char *ip, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static int bound(int type, const char *ip, int port) {
    int one = 1, s = socket(AF_INET, type, 0);
    struct sockaddr_in a = address(ip, port);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("bind");
        exit(1);
    }
    return s;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s RS_IP LISTEN_PORT SOURCE_PORT DEST_IP DEST_PORT\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = ignore; /* no SA_RESTART: the connect fails with EINTR */
    sigaction(SIGALRM, &action, NULL);
    int listener = bound(SOCK_STREAM, argv[1], atoi(argv[2]));
    if (listen(listener, 16) != 0) {
        perror("listen");
        return 1;
    }
    int c = bound(SOCK_STREAM, argv[1], atoi(argv[3]));
    printf("{\"ready\":true}\n");
    struct sockaddr_in to = address(argv[4], atoi(argv[5]));
    alarm(1);
    int r = connect(c, (struct sockaddr *)&to, sizeof to);
    printf("{\"connect\":%d,\"errno\":%d}\n", r, r < 0 ? errno : 0);
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    int fd = accept(listener, (struct sockaddr *)&peer, &len);
    char ip[INET_ADDRSTRLEN] = "";
    if (fd >= 0)
        inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
    printf("{\"accept\":%d,\"errno\":%d,\"peer\":\"%s:%d\"}\n", fd, fd < 0 ? errno : 0, ip, ntohs(peer.sin_port));
    return 0;
}
