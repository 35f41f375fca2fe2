/* i386_peer: a 32-bit server for ipvsca's tests, built with gcc -m32. It accepts one
 * connection on 10.1.0.9:8080 and prints the peer address four ways: accept and
 * getpeername through socketcall(2) (SYS_ACCEPT, SYS_GETPEERNAME), and through the
 * direct i386 system calls (accept4, getpeername, Linux 4.3+). */
#include <arpa/inet.h>
#include <linux/net.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static void show(const char *how, long ret, struct sockaddr_in *a) {
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
    printf("{\"how\":\"%s\",\"ret\":%ld,\"peer\":\"%s:%u\"}\n", how, ret, ip, ntohs(a->sin_port));
    fflush(stdout);
}

int main(void) {
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(8080)};
    inet_pton(AF_INET, "10.1.0.9", &me.sin_addr);
    if (bind(l, (struct sockaddr *)&me, sizeof me) || listen(l, 16)) { perror("listen"); return 1; }
    printf("{\"ready\":true,\"pids\":[%d]}\n", getpid());
    fflush(stdout);

    struct sockaddr_in a; socklen_t len = sizeof a;
    unsigned long args[6] = {(unsigned long)l, (unsigned long)&a, (unsigned long)&len};
    long c1 = syscall(SYS_socketcall, SYS_ACCEPT, args);
    show("socketcall_accept", c1 < 0 ? -1 : 0, &a);
    memset(&a, 0, sizeof a); len = sizeof a;
    unsigned long gargs[3] = {(unsigned long)c1, (unsigned long)&a, (unsigned long)&len};
    show("socketcall_getpeername", syscall(SYS_socketcall, SYS_GETPEERNAME, gargs), &a);

    memset(&a, 0, sizeof a); len = sizeof a;
    long c2 = syscall(__NR_accept4, l, &a, &len, 0);
    show("direct_accept4", c2 < 0 ? -1 : 0, &a);
    memset(&a, 0, sizeof a); len = sizeof a;
    show("direct_getpeername", syscall(__NR_getpeername, c2, &a, &len), &a);
    return 0;
}
