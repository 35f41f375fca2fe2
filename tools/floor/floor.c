/*
 * floor: the least a seccomp supervisor can do to rewrite peer addresses, for ipvsca-bench
 * to measure ipvsca against (docs/performance.md). One answering thread (another only
 * waits for PROGRAM to exit), no table, no capture, no signal-restart handling: correct
 * only for the bench's workloads (one trapped call at a time, nothing interrupted), never
 * for supervising anything else.
 *
 *   floor CLIENT_IPV4 -- PROGRAM [ARGS]...
 *
 * Runs PROGRAM under a filter trapping what ipvsca's traps on x86-64 (getpeername and
 * connect always, accept/accept4 with an address buffer, recvfrom/sendto with an address)
 * and answers each call with the design's minimal work (../shared/spec/seccomp-notify.md,
 * sections 1 and 2): SYNC_WAKE_UP on the listener; one pidfd kept per thread; pidfd_getfd
 * of the socket; the call performed on the copy; process_vm_readv/writev for the caller's
 * memory; NOTIF_ID_VALID after the reads (rule 4); SEND, or ADDFD with SEND for an accept.
 * An IPv4 peer's address becomes CLIENT_IPV4 (its port kept); a sendto to CLIENT_IPV4 goes
 * to the address last replaced. A connect has its destination read and CONTINUEs (nothing
 * is mapped to it). Exits with PROGRAM's status.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* Linux 6.6, missing from Debian's headers (spec, section 1): the flag is passed by value. */
#define NOTIF_SET_FLAGS 0x40082104UL
#define NOTIF_FD_SYNC_WAKE_UP 1UL
/* Linux 6.9: pidfd_open of any thread, not only a thread-group leader. */
#define PIDFD_THREAD_FLAG O_EXCL
/* The most one emulated recvfrom or sendto moves: a UDP datagram. */
#define DATA_MAX 65536
#define THREADS 64

static int listener = -1;
static pid_t child;
static struct in_addr client_ip; /* what an IPv4 peer is shown as */
static struct in_addr last_real; /* the address client_ip last stood for */
static unsigned char data[DATA_MAX];

static void die(const char *what) {
    perror(what);
    if (child > 0) kill(child, SIGKILL);
    exit(111);
}

/* ---- the filter; seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8i (low half first) */

enum { I_LD_ARCH, I_ARCH, I_LD_NR, I_GETPEERNAME, I_CONNECT, I_ACCEPT, I_ACCEPT4, I_RECVFROM,
       I_SENDTO, I_LD_ARG1, I_ARG1_LO, I_LD_ARG1_HI, I_ARG1_HI, I_LD_ARG4, I_ARG4_LO,
       I_LD_ARG4_HI, I_ARG4_HI, I_ALLOW, I_NOTIFY, I_COUNT };
#define ARG(i) (offsetof(struct seccomp_data, args) + 8 * (i))
#define LD(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))
/* The jump at instruction `at`: to instruction t if A == k, else to f (both later). */
#define JEQ(at, k, t, f) [at] = BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (k), (t) - (at) - 1, (f) - (at) - 1)
#define RET(v) BPF_STMT(BPF_RET | BPF_K, (v))

/* Loads the filter in this (the child) process; the listener's descriptor. */
static int load_filter(void) {
    struct sock_filter code[I_COUNT] = {
        [I_LD_ARCH] = LD(offsetof(struct seccomp_data, arch)),
        JEQ(I_ARCH, AUDIT_ARCH_X86_64, I_LD_NR, I_ALLOW),
        [I_LD_NR] = LD(offsetof(struct seccomp_data, nr)),
        JEQ(I_GETPEERNAME, __NR_getpeername, I_NOTIFY, I_CONNECT),
        JEQ(I_CONNECT, __NR_connect, I_NOTIFY, I_ACCEPT),
        JEQ(I_ACCEPT, __NR_accept, I_LD_ARG1, I_ACCEPT4),
        JEQ(I_ACCEPT4, __NR_accept4, I_LD_ARG1, I_RECVFROM),
        JEQ(I_RECVFROM, __NR_recvfrom, I_LD_ARG4, I_SENDTO),
        JEQ(I_SENDTO, __NR_sendto, I_LD_ARG4, I_ALLOW),
        [I_LD_ARG1] = LD(ARG(1)),
        JEQ(I_ARG1_LO, 0, I_LD_ARG1_HI, I_NOTIFY),
        [I_LD_ARG1_HI] = LD(ARG(1) + 4),
        JEQ(I_ARG1_HI, 0, I_ALLOW, I_NOTIFY),
        [I_LD_ARG4] = LD(ARG(4)),
        JEQ(I_ARG4_LO, 0, I_LD_ARG4_HI, I_NOTIFY),
        [I_LD_ARG4_HI] = LD(ARG(4) + 4),
        JEQ(I_ARG4_HI, 0, I_ALLOW, I_NOTIFY),
        [I_ALLOW] = RET(SECCOMP_RET_ALLOW),
        [I_NOTIFY] = RET(SECCOMP_RET_USER_NOTIF),
    };
    struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("prctl(PR_SET_NO_NEW_PRIVS)");
    int fd = syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (fd < 0) die("seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)");
    return fd;
}

/* ---- one pidfd kept per calling thread (spec, rule 5) */

static struct { pid_t tid; int pidfd; } threads[THREADS];
static int thread_count, next_evicted;
static unsigned pidfd_flags = PIDFD_THREAD_FLAG;

/* The thread group of `tid`, for kernels before 6.9 (no PIDFD_THREAD). */
static pid_t thread_group(pid_t tid) {
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/%d/status", tid);
    FILE *f = fopen(path, "re");
    pid_t tgid = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Tgid: %d", &tgid) == 1) break;
    if (f) fclose(f);
    return tgid;
}

static int pidfd_open_thread(pid_t tid) {
    if (pidfd_flags) {
        int fd = syscall(SYS_pidfd_open, tid, pidfd_flags);
        if (fd >= 0 || errno != EINVAL) return fd;
        pidfd_flags = 0;
    }
    return syscall(SYS_pidfd_open, thread_group(tid), 0);
}

static int pidfd_of(pid_t tid) {
    for (int i = 0; i < thread_count; i++)
        if (threads[i].tid == tid) return threads[i].pidfd;
    int fd = pidfd_open_thread(tid);
    if (fd < 0) return -1;
    int slot;
    if (thread_count < THREADS) {
        slot = thread_count++;
    } else {
        slot = next_evicted++ % THREADS;
        close(threads[slot].pidfd);
    }
    threads[slot].tid = tid;
    threads[slot].pidfd = fd;
    return fd;
}

static void forget(pid_t tid) {
    for (int i = 0; i < thread_count; i++)
        if (threads[i].tid == tid) {
            close(threads[i].pidfd);
            threads[i] = threads[--thread_count];
            return;
        }
}

/* A copy of the caller's descriptor `fd`; a kept pidfd whose thread is gone is reopened once. */
static int copy_fd(pid_t tid, uint64_t fd) {
    int pidfd = pidfd_of(tid);
    int copy = pidfd < 0 ? -1 : syscall(SYS_pidfd_getfd, pidfd, (int)fd, 0);
    if (copy < 0 && errno == ESRCH) {
        forget(tid);
        pidfd = pidfd_of(tid);
        copy = pidfd < 0 ? -1 : syscall(SYS_pidfd_getfd, pidfd, (int)fd, 0);
    }
    return copy;
}

/* ---- the caller's memory, and answers */

static int vm_read(pid_t tid, void *to, uint64_t from, size_t len) {
    struct iovec local = {to, len}, remote = {(void *)from, len};
    return process_vm_readv(tid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

/* Writes `count` buffers to the caller's addresses `at`, all or nothing counted. */
static int vm_write(pid_t tid, struct iovec *local, const uint64_t *at, int count) {
    struct iovec remote[3];
    ssize_t total = 0;
    for (int i = 0; i < count; i++) {
        remote[i].iov_base = (void *)at[i];
        remote[i].iov_len = local[i].iov_len;
        total += local[i].iov_len;
    }
    return process_vm_writev(tid, local, count, remote, count, 0) == total ? 0 : -1;
}

static int id_valid(uint64_t id) { return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0; }

/* Answers `id` with `val` or -`err`; a caller that went away (ENOENT) is normal (rule 2). */
static void reply(uint64_t id, int64_t val, int err, uint32_t flags) {
    struct seccomp_notif_resp resp = {.id = id, .val = val, .error = -err, .flags = flags};
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 && errno != ENOENT) die("SECCOMP_IOCTL_NOTIF_SEND");
}

static void cont(uint64_t id) { reply(id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE); }

/* The address the caller is shown: an IPv4 peer becomes client_ip, its port kept. */
static void rewrite_peer(struct sockaddr_storage *sa) {
    struct sockaddr_in *in = (struct sockaddr_in *)sa;
    if (in->sin_family != AF_INET) return;
    last_real = in->sin_addr;
    in->sin_addr = client_ip;
}

/* ---- the calls */

/* getpeername(fd, addr, addrlen): performed on the copy, the rewritten address written back. */
static void getpeername_call(const struct seccomp_notif *n) {
    int copy = copy_fd(n->pid, n->data.args[0]);
    if (copy < 0) return cont(n->id); /* a bad descriptor: the kernel says so */
    struct sockaddr_storage sa;
    socklen_t salen = sizeof sa;
    int32_t len;
    if (getpeername(copy, (struct sockaddr *)&sa, &salen) < 0) {
        reply(n->id, 0, errno, 0);
    } else if (vm_read(n->pid, &len, n->data.args[2], sizeof len) < 0) {
        reply(n->id, 0, EFAULT, 0);
    } else if (len < 0) {
        reply(n->id, 0, EINVAL, 0);
    } else if (id_valid(n->id)) {
        rewrite_peer(&sa);
        struct iovec local[2] = {{&sa, (size_t)len < salen ? (size_t)len : salen}, {&salen, sizeof salen}};
        uint64_t at[2] = {n->data.args[1], n->data.args[2]};
        if (vm_write(n->pid, local, at, 2) < 0) reply(n->id, 0, EFAULT, 0);
        else reply(n->id, 0, 0, 0);
    }
    close(copy);
}

/* accept/accept4(fd, addr, addrlen[, flags]): performed on a copy of the listener (blocking
 * if the listener is), the connection installed in the caller by ADDFD with SEND. */
static void accept_call(const struct seccomp_notif *n) {
    int flags = n->data.nr == __NR_accept4 ? (int)n->data.args[3] : 0;
    int copy = copy_fd(n->pid, n->data.args[0]);
    if (copy < 0) return cont(n->id);
    int32_t len;
    if (vm_read(n->pid, &len, n->data.args[2], sizeof len) < 0) {
        reply(n->id, 0, EFAULT, 0);
    } else if (len < 0) {
        reply(n->id, 0, EINVAL, 0);
    } else if (id_valid(n->id)) {
        struct sockaddr_storage sa;
        socklen_t salen = sizeof sa;
        int conn = accept4(copy, (struct sockaddr *)&sa, &salen, flags & SOCK_NONBLOCK);
        if (conn < 0) {
            reply(n->id, 0, errno, 0);
        } else {
            rewrite_peer(&sa);
            struct iovec local[2] = {{&sa, (size_t)len < salen ? (size_t)len : salen}, {&salen, sizeof salen}};
            uint64_t at[2] = {n->data.args[1], n->data.args[2]};
            if (vm_write(n->pid, local, at, 2) < 0) {
                reply(n->id, 0, EFAULT, 0);
            } else {
                struct seccomp_notif_addfd addfd = {
                    .id = n->id,
                    .flags = SECCOMP_ADDFD_FLAG_SEND,
                    .srcfd = conn,
                    .newfd_flags = flags & SOCK_CLOEXEC ? O_CLOEXEC : 0,
                };
                if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd) < 0 && errno != ENOENT)
                    die("SECCOMP_IOCTL_NOTIF_ADDFD");
            }
            close(conn);
        }
    }
    close(copy);
}

/* A blocking recvfrom that found nothing to receive waits here, its copy polled beside the
 * listener, so the floor goes on answering the caller's other threads (the bench's UDP
 * client connects while its server already waits). One place: the bench's UDP server has
 * one thread. */
static struct {
    int active, copy;
    int32_t len;
    struct seccomp_notif n;
} parked;

/* Receives for recvfrom `n` on `copy` without waiting and answers; 0 (nothing answered)
 * when nothing was there and the caller's call would wait for it. */
static int recvfrom_try(const struct seccomp_notif *n, int copy, int32_t len) {
    struct sockaddr_storage sa;
    socklen_t salen = sizeof sa;
    int flags = (int)n->data.args[3];
    size_t want = n->data.args[2] < DATA_MAX ? n->data.args[2] : DATA_MAX;
    ssize_t got = recvfrom(copy, data, want, flags | MSG_DONTWAIT, (struct sockaddr *)&sa, &salen);
    int err = errno;
    if (got < 0 && err == EAGAIN && !(flags & MSG_DONTWAIT) && !(fcntl(copy, F_GETFL) & O_NONBLOCK)) return 0;
    if (got < 0) {
        reply(n->id, 0, err, 0);
        return 1;
    }
    rewrite_peer(&sa);
    struct iovec local[3] = {{data, (size_t)got}, {&sa, (size_t)len < salen ? (size_t)len : salen}, {&salen, sizeof salen}};
    uint64_t at[3] = {n->data.args[1], n->data.args[4], n->data.args[5]};
    if (vm_write(n->pid, local, at, 3) < 0) reply(n->id, 0, EFAULT, 0);
    else reply(n->id, got, 0, 0);
    return 1;
}

/* recvfrom(fd, buf, len, flags, addr, addrlen): received on the copy, data and rewritten
 * address written back; parked if it would wait. */
static void recvfrom_call(const struct seccomp_notif *n) {
    int copy = copy_fd(n->pid, n->data.args[0]);
    if (copy < 0) return cont(n->id);
    int32_t len;
    if (vm_read(n->pid, &len, n->data.args[5], sizeof len) < 0) {
        reply(n->id, 0, EFAULT, 0);
    } else if (len < 0) {
        reply(n->id, 0, EINVAL, 0);
    } else if (id_valid(n->id) && !recvfrom_try(n, copy, len)) {
        if (!parked.active) {
            parked.active = 1, parked.copy = copy, parked.len = len, parked.n = *n;
            return;
        }
        struct pollfd one = {copy, POLLIN, 0};
        do poll(&one, 1, -1);
        while (!recvfrom_try(n, copy, len));
    }
    close(copy);
}

/* The parked recvfrom, its socket readable: answered unless its caller left or the datagram
 * went to another reader. */
static void parked_readable(void) {
    if (id_valid(parked.n.id) && !recvfrom_try(&parked.n, parked.copy, parked.len)) return;
    close(parked.copy);
    parked.active = 0;
}

/* sendto(fd, buf, len, flags, addr, addrlen): a send to client_ip goes to the address it
 * stands for, sent from the copy. */
static void sendto_call(const struct seccomp_notif *n) {
    size_t len = n->data.args[2], addrlen = n->data.args[5];
    if (len > DATA_MAX || addrlen > sizeof(struct sockaddr_storage)) return cont(n->id);
    int copy = copy_fd(n->pid, n->data.args[0]);
    if (copy < 0) return cont(n->id);
    struct sockaddr_storage sa;
    struct iovec local[2] = {{data, len}, {&sa, addrlen}};
    struct iovec remote[2] = {{(void *)n->data.args[1], len}, {(void *)n->data.args[4], addrlen}};
    if (process_vm_readv(n->pid, local, 2, remote, 2, 0) != (ssize_t)(len + addrlen)) {
        reply(n->id, 0, EFAULT, 0);
    } else if (id_valid(n->id)) {
        struct sockaddr_in *in = (struct sockaddr_in *)&sa;
        if (addrlen >= sizeof *in && in->sin_family == AF_INET && in->sin_addr.s_addr == client_ip.s_addr)
            in->sin_addr = last_real;
        ssize_t sent = sendto(copy, data, len, (int)n->data.args[3] | MSG_NOSIGNAL, (struct sockaddr *)&sa, addrlen);
        reply(n->id, sent, sent < 0 ? errno : 0, 0);
    }
    close(copy);
}

/* connect(fd, addr, addrlen): the destination read, as a lookup needs; nothing maps to it. */
static void connect_call(const struct seccomp_notif *n) {
    struct sockaddr_storage sa;
    size_t addrlen = n->data.args[2];
    if (addrlen <= sizeof sa) vm_read(n->pid, &sa, n->data.args[1], addrlen);
    cont(n->id);
}

/* ---- start: the child loads the filter and passes the listener over a socket pair */

static void send_fd(int sock, int fd) {
    char byte = 0, buf[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = buf, .msg_controllen = sizeof buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(sock, &msg, 0) != 1) die("sending the listener");
}

static int recv_fd(int sock) {
    char byte, buf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&byte, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = buf, .msg_controllen = sizeof buf};
    int fd = -1;
    if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1) die("receiving the listener (the child failed)");
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (!c || c->cmsg_type != SCM_RIGHTS) die("receiving the listener: no descriptor");
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

/* Waits for PROGRAM and exits with its status. A thread of its own, because the kernel
 * keeps the filter (and a RECV waiting on it) alive until the exited child is reaped, and
 * an answer the floor performs for a caller that is gone (a recvfrom nothing will answer)
 * would block forever. */
static void *reap(void *arg) {
    (void)arg;
    int status;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR) die("waitpid");
    exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

int main(int argc, char **argv) {
    if (argc < 4 || strcmp(argv[2], "--") != 0 || inet_pton(AF_INET, argv[1], &client_ip) != 1) {
        fprintf(stderr, "usage: floor CLIENT_IPV4 -- PROGRAM [ARGS]...\n");
        return 2;
    }
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair)) die("socketpair");
    pid_t parent = getpid();
    child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(111);
        int fd = load_filter();
        send_fd(pair[1], fd);
        close(fd);
        execvp(argv[3], argv + 3);
        perror(argv[3]);
        _exit(127);
    }
    close(pair[1]);
    listener = recv_fd(pair[0]);
    close(pair[0]);
    pthread_t reaper;
    if (pthread_create(&reaper, NULL, reap, NULL)) die("pthread_create");
    if (ioctl(listener, NOTIF_SET_FLAGS, NOTIF_FD_SYNC_WAKE_UP) < 0)
        fprintf(stderr, "floor: no SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (Linux 6.6): %s\n", strerror(errno));

    struct seccomp_notif_sizes sizes;
    if (syscall(__NR_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes)) die("SECCOMP_GET_NOTIF_SIZES");
    size_t size = sizes.seccomp_notif > sizeof(struct seccomp_notif) ? sizes.seccomp_notif : sizeof(struct seccomp_notif);
    struct seccomp_notif *n = malloc(size);
    for (;;) {
        if (parked.active) {
            struct pollfd two[2] = {{listener, POLLIN, 0}, {parked.copy, POLLIN, 0}};
            if (poll(two, 2, -1) < 0 && errno != EINTR) die("poll");
            if (two[1].revents) parked_readable();
            if (!(two[0].revents & POLLIN)) continue;
        }
        memset(n, 0, size);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, n) < 0) {
            /* ENOENT: a caller went away (or, 6.6 and later, PROGRAM was reaped: the reaper
             * is exiting). */
            if (errno != ENOENT && errno != EINTR) die("SECCOMP_IOCTL_NOTIF_RECV");
            continue;
        }
        switch (n->data.nr) {
        case __NR_getpeername: getpeername_call(n); break;
        case __NR_accept:
        case __NR_accept4: accept_call(n); break;
        case __NR_recvfrom: recvfrom_call(n); break;
        case __NR_sendto: sendto_call(n); break;
        case __NR_connect: connect_call(n); break;
        default: cont(n->id);
        }
    }
}
