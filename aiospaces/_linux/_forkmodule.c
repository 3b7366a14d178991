/* aiospaces._linux._fork: clone3 with the interpreter's fork protocol.
 *
 * Why C: between the clone syscall returning in the child and
 * PyOS_AfterFork_Child() no Python bytecode may run. If it does (as it must
 * when both are called through ctypes), a GIL drop request that another
 * thread posted before the clone makes the child wait forever in drop_gil()
 * for a thread that does not exist in it. os.fork() does the same three
 * steps in C for the same reason; this is os.fork() with clone3's flags.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

struct clone_args_v2 {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
    uint64_t cgroup;
};

#define CLONE_ARGS_SIZE_VER0 64
#define CLONE_ARGS_SIZE_VER2 88

static PyObject *
fork_clone3(PyObject *module, PyObject *args)
{
    unsigned long long flags;
    int exit_signal = SIGCHLD;
    int cgroup_fd = -1;
    if (!PyArg_ParseTuple(args, "K|ii:clone3", &flags, &exit_signal, &cgroup_fd)) {
        return NULL;
    }
    int pidfd = -1;
    struct clone_args_v2 ca;
    memset(&ca, 0, sizeof(ca));
    ca.flags = flags | CLONE_PIDFD;
    ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
    ca.exit_signal = (uint64_t)exit_signal;
    size_t size = CLONE_ARGS_SIZE_VER0;
    if (cgroup_fd >= 0) {
        ca.flags |= CLONE_INTO_CGROUP;
        ca.cgroup = (uint64_t)cgroup_fd;
        size = CLONE_ARGS_SIZE_VER2;
    }

    PyOS_BeforeFork();
    long pid = syscall(SYS_clone3, &ca, size);
    if (pid == 0) {
        PyOS_AfterFork_Child();
        return Py_BuildValue("(ii)", 0, -1);
    }
    int saved_errno = errno;
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(li)", pid, pidfd);
}

static PyObject *
fork_clone_legacy(PyObject *module, PyObject *args)
{
    unsigned long flags;
    int exit_signal = SIGCHLD;
    if (!PyArg_ParseTuple(args, "k|i:clone_legacy", &flags, &exit_signal)) {
        return NULL;
    }
    int pidfd = -1;
    unsigned long word = (flags & ~0xffUL) | CLONE_PIDFD | ((unsigned long)exit_signal & 0xffUL);

    PyOS_BeforeFork();
    /* With CLONE_PIDFD the pidfd is stored through parent_tid. The child
     * pointer and tls are 0, so the architecture's argument order of the
     * last two does not matter. */
    long pid = syscall(SYS_clone, word, NULL, &pidfd, NULL, NULL);
    if (pid == 0) {
        PyOS_AfterFork_Child();
        return Py_BuildValue("(ii)", 0, -1);
    }
    int saved_errno = errno;
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(li)", pid, pidfd);
}


/* ------------------------------------------------------------------------
 * serve: the spawner process' request loop (see aiospaces/_spawner_main.py).
 *
 * In C because of copy-on-write: every page the spawner writes while a child
 * still shares it is copied (about 4 us a fault on a small VM), and a Python
 * loop touches some 160 pages per request. This loop touches a few: it
 * receives a request, clones, answers, and relays exit statuses, and only
 * returns to Python in the fresh child (with its request) or for requests
 * it does not handle itself.
 *
 *   supervisor -> spawner   'C' u64 flags, u8 has_cgroup, u8 pdeathsig, payload
 *                               + fds [chan, (cgroup)]
 *                           any other kind: returned to Python
 *   spawner -> supervisor   'K' i32 pid + fd [pidfd]   cloned
 *                           'F' i32 errno              clone failed
 *                           'X' i32 pid, i32 status    reaped (status: exit code, -signal)
 *
 * SIGCHLD must be blocked by the caller; it is read from a signalfd.
 */
#include <poll.h>
#include <sys/signalfd.h>

static int sv_no_clone3 = 0;

static void
sv_send(int sock, const char *buf, size_t len, int fd)
{
    struct iovec iov = {(void *)buf, len};
    struct msghdr msg;
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        memset(cbuf, 0, sizeof(cbuf));
        msg.msg_control = cbuf;
        msg.msg_controllen = sizeof(cbuf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    while (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
}

static void
sv_reap(int sock)
{
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG) < 0 || si.si_pid == 0) {
            return;
        }
        char out[9];
        int32_t pid = si.si_pid;
        int32_t rc = si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
        out[0] = 'X';
        memcpy(out + 1, &pid, 4);
        memcpy(out + 5, &rc, 4);
        sv_send(sock, out, sizeof(out), -1);
    }
}

static long
sv_clone(uint64_t flags, int cgroup_fd, int *pidfd)
{
    if (!sv_no_clone3) {
        struct clone_args_v2 ca;
        memset(&ca, 0, sizeof(ca));
        ca.flags = flags | CLONE_PIDFD;
        ca.pidfd = (uint64_t)(uintptr_t)pidfd;
        ca.exit_signal = SIGCHLD;
        size_t size = CLONE_ARGS_SIZE_VER0;
        if (cgroup_fd >= 0) {
            ca.flags |= CLONE_INTO_CGROUP;
            ca.cgroup = (uint64_t)cgroup_fd;
            size = CLONE_ARGS_SIZE_VER2;
        }
        long pid = syscall(SYS_clone3, &ca, size);
        if (pid >= 0 || errno != ENOSYS || cgroup_fd >= 0) {
            return pid;
        }
        sv_no_clone3 = 1;
    }
    unsigned long word = ((unsigned long)flags & ~0xffUL) | CLONE_PIDFD | SIGCHLD;
    return syscall(SYS_clone, word, NULL, pidfd, NULL, NULL);
}

static PyObject *
fork_serve(PyObject *module, PyObject *args)
{
    int sock, self_pidfd;
    Py_ssize_t maxmsg;
    if (!PyArg_ParseTuple(args, "ini:serve", &sock, &maxmsg, &self_pidfd)) {
        return NULL;
    }
    static int sfd = -1;
    static char *buf = NULL;
    static Py_ssize_t bufsize = 0;
    if (sfd < 0) {
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
        if (sfd < 0) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    if (bufsize < maxmsg) {
        PyMem_RawFree(buf);
        buf = PyMem_RawMalloc((size_t)maxmsg);
        bufsize = buf ? maxmsg : 0;
        if (!buf) {
            return PyErr_NoMemory();
        }
    }
    for (;;) {
        struct pollfd p[2] = {{sock, POLLIN, 0}, {sfd, POLLIN, 0}};
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = poll(p, 2, -1);
        Py_END_ALLOW_THREADS
        if (r < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) {
                    return NULL;
                }
                continue;
            }
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (p[1].revents) {
            struct signalfd_siginfo ssi;
            while (read(sfd, &ssi, sizeof(ssi)) > 0) {
            }
            sv_reap(sock);
        }
        if (!p[0].revents) {
            continue;
        }
        for (;;) {
            int fds[4] = {-1, -1, -1, -1};
            int nfds = 0;
            char cbuf[CMSG_SPACE(sizeof(fds))];
            struct iovec iov = {buf, (size_t)bufsize};
            struct msghdr msg;
            memset(&msg, 0, sizeof(msg));
            msg.msg_iov = &iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf;
            msg.msg_controllen = sizeof(cbuf);
            ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                break;
            }
            for (struct cmsghdr *c = n >= 0 ? CMSG_FIRSTHDR(&msg) : NULL; c; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                    for (int i = 0; i < k && nfds < 4; i++) {
                        memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                    }
                }
            }
            if (n <= 0) { /* EOF or a broken socket: the supervisor is gone */
                for (int i = 0; i < nfds; i++) {
                    close(fds[i]);
                }
                sv_reap(sock);
                Py_RETURN_NONE;
            }
            if (buf[0] != 'C' || n < 11 || nfds < 1) {
                /* not ours: Python handles it (it owns the fds now) */
                PyObject *fdl = PyList_New(nfds);
                if (!fdl) {
                    return NULL;
                }
                for (int i = 0; i < nfds; i++) {
                    PyList_SET_ITEM(fdl, i, PyLong_FromLong(fds[i]));
                }
                return Py_BuildValue("(cy#N)", buf[0], buf + 1, (Py_ssize_t)(n - 1), fdl);
            }
            uint64_t flags;
            memcpy(&flags, buf + 1, 8);
            int cgroup_fd = (buf[9] && nfds > 1) ? fds[1] : -1;
            int pdeathsig = (unsigned char)buf[10];
            int pidfd = -1;
            PyOS_BeforeFork();
            long pid = sv_clone(flags, cgroup_fd, &pidfd);
            if (pid == 0) {
                /* First, as in every fresh child (see _child.child_main). The
                 * spawner may have died before this ran (the supervisor can
                 * be told the pid before the child is first scheduled): its
                 * pidfd is readable then. (getppid() cannot tell: in a new
                 * pid namespace it is 0 either way; a pipe cannot either:
                 * a sibling not yet scheduled still holds its write end.) */
                if (pdeathsig) {
                    prctl(PR_SET_PDEATHSIG, pdeathsig);
                    struct pollfd lp = {self_pidfd, POLLIN, 0};
                    if (poll(&lp, 1, 0) > 0 && (lp.revents & (POLLIN | POLLHUP))) {
                        _exit(124); /* EXIT_PARENT_GONE */
                    }
                }
                close(self_pidfd);
                PyOS_AfterFork_Child();
                close(sfd);
                sfd = -1;
                PyObject *fdl = PyList_New(nfds);
                if (!fdl) {
                    return NULL;
                }
                for (int i = 0; i < nfds; i++) {
                    PyList_SET_ITEM(fdl, i, PyLong_FromLong(fds[i]));
                }
                return Py_BuildValue("(cy#N)", 'C', buf + 11, (Py_ssize_t)(n - 11), fdl);
            }
            int err = errno;
            PyOS_AfterFork_Parent();
            char out[5];
            if (pid < 0) {
                int32_t e = err;
                out[0] = 'F';
                memcpy(out + 1, &e, 4);
                sv_send(sock, out, 5, -1);
            } else {
                int32_t p32 = (int32_t)pid;
                out[0] = 'K';
                memcpy(out + 1, &p32, 4);
                sv_send(sock, out, 5, pidfd);
                close(pidfd);
            }
            for (int i = 0; i < nfds; i++) {
                close(fds[i]);
            }
        }
    }
}

/* ------------------------------------------------------------------------
 * spawn_exec: exec mode without copying the interpreter (CLONE_VM).
 *
 * The protocol is documented in aiospaces/_fastexec.py. Everything the
 * child needs is copied into one mmap'd region (plan header, strings,
 * pointer arrays, two stacks); the child runs C on its own stack while it
 * shares memory with the live interpreter, so from the clone to execve it
 * makes raw system calls only: no libc function (errno is the parent
 * thread's TLS, a PLT call could resolve a symbol and write the GOT), no
 * malloc, no stdio, and it writes nothing outside its stack and the region.
 * ------------------------------------------------------------------------ */


#ifndef CLONE_VM
#define CLONE_VM 0x00000100
#endif
#ifndef CLONE_VFORK
#define CLONE_VFORK 0x00004000
#endif
#ifndef CLONE_NEWPID
#define CLONE_NEWPID 0x20000000
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0x4000
#endif

#if defined(__x86_64__) || defined(__aarch64__)
#define AIOSPACES_HAVE_SPAWN_EXEC 1
#endif

#ifdef AIOSPACES_HAVE_SPAWN_EXEC

#define SX_DIE_WITH_PARENT 1
#define SX_WITH_INIT 2
#define SX_CLOSE_FDS 4
#define SX_STDERR_TO_STDOUT 8
#define SX_WAIT_EXEC 16 /* the init sends R once execve has completed */
#define SX_NEW_SESSION 32 /* setsid(): kill(0, sig) cannot reach the parent's group */

#define SX_STEP_EXECVE 0
#define SX_STEP_CHDIR 1
#define SX_STEP_SETUP 2
#define SX_NSTEPS 3

#define SX_STACK_SIZE (64 * 1024)
#define SX_EXIT_PARENT_GONE 124
#define SX_EXIT_FAILED 125
#define SX_NSIG 65 /* signals 1..64 */

/* The kernel's struct sigaction (x86_64 and arm64 both have sa_restorer). */
struct k_sigaction {
    unsigned long handler;
    unsigned long flags;
    unsigned long restorer;
    uint64_t mask;
};

struct sx_err {
    const char *pre; /* JSON up to the errno value */
    size_t pre_len;
    const char *suf; /* JSON after it */
    size_t suf_len;
};

struct sx_plan {
    int flags;       /* SX_* */
    int chan;        /* the child's end of the channel (>= 3, close-on-exec) */
    int parent_end;  /* the parent's end: closed in the child */
    int n_dups;
    int n_sources;
    int n_keep;
    int *dups;       /* pairs (source, target) */
    int *sources;
    int *keep;       /* sorted; fds >= 3 that survive close_fds */
    int n_pass;
    int *pass;       /* made inheritable */
    char **candidates; /* NULL-terminated */
    char **argv;
    char **envp;
    const char *cwd; /* NULL: keep ours */
    struct sx_err err[SX_NSTEPS];
    volatile int prog_errno;  /* written by the init's program child */
    volatile int prog_traced; /* the program child is traced by the init */
    char *stack1_top;
    char *stack2_top;
};

#if defined(__x86_64__)
static inline long
sx_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* clone3 whose child calls fn(arg) on its new stack and never returns here:
 * after the syscall the child's stack pointer is the new stack, so it must
 * not run compiler-generated code that addresses this frame. */
static long
sx_clone3_run(struct clone_args_v2 *ca, size_t size, void (*fn)(struct sx_plan *),
              struct sx_plan *arg)
{
    register long rax __asm__("rax") = SYS_clone3;
    register long rdi __asm__("rdi") = (long)ca;
    register long rsi __asm__("rsi") = (long)size;
    register long r12 __asm__("r12") = (long)fn;
    register long r13 __asm__("r13") = (long)arg;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "ud2\n"
                     "1:\n\t"
                     : "+r"(rax)
                     : "r"(rdi), "r"(rsi), "r"(r12), "r"(r13)
                     : "rcx", "r11", "memory", "cc");
    return rax;
}
#elif defined(__aarch64__)
static inline long
sx_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc #0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory", "cc");
    return x0;
}

static long
sx_clone3_run(struct clone_args_v2 *ca, size_t size, void (*fn)(struct sx_plan *),
              struct sx_plan *arg)
{
    register long x8 __asm__("x8") = SYS_clone3;
    register long x0 __asm__("x0") = (long)ca;
    register long x1 __asm__("x1") = (long)size;
    register long x19 __asm__("x19") = (long)fn;
    register long x20 __asm__("x20") = (long)arg;
    __asm__ volatile("svc #0\n\t"
                     "cbnz x0, 1f\n\t"
                     "mov x29, xzr\n\t"
                     "mov x30, xzr\n\t"
                     "mov x0, x20\n\t"
                     "blr x19\n\t"
                     "brk #0\n"
                     "1:\n\t"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x19), "r"(x20)
                     : "memory", "cc");
    return x0;
}
#endif

#define SYS0(n) sx_sys6((n), 0, 0, 0, 0, 0, 0)
#define SYS1(n, a) sx_sys6((n), (long)(a), 0, 0, 0, 0, 0)
#define SYS2(n, a, b) sx_sys6((n), (long)(a), (long)(b), 0, 0, 0, 0)
#define SYS3(n, a, b, c) sx_sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define SYS4(n, a, b, c, d) sx_sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define SYS6(n, a, b, c, d, e, f) \
    sx_sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

static const int sx_forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define SX_NFORWARDED ((int)(sizeof(sx_forwarded) / sizeof(sx_forwarded[0])))

__attribute__((noreturn)) static void
sx_exit(int code)
{
    for (;;) {
        SYS1(SYS_exit, code);
    }
}

static void
sx_send(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        long n = sx_sys6(SYS_sendto, fd, (long)buf, (long)len, MSG_NOSIGNAL, 0, 0);
        if (n == -EINTR) {
            continue;
        }
        if (n <= 0) {
            return; /* the parent is gone: nobody to tell */
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void
sx_put_header(char *out, char kind, uint64_t len)
{
    out[0] = kind;
    for (int i = 0; i < 8; i++) {
        out[1 + i] = (char)((len >> (8 * (7 - i))) & 0xff);
    }
}

/* An E frame: the parent's JSON template with the errno's digits in it. */
__attribute__((noreturn)) static void
sx_fail(struct sx_plan *p, int step, long err)
{
    char digits[24];
    int nd = 0;
    unsigned long v = (unsigned long)(err < 0 ? -err : err);
    char rev[24];
    do {
        rev[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && nd < 20);
    for (int i = 0; i < nd; i++) {
        digits[i] = rev[nd - 1 - i];
    }
    const struct sx_err *e = &p->err[step];
    char head[9];
    sx_put_header(head, 'E', (uint64_t)(e->pre_len + (size_t)nd + e->suf_len));
    sx_send(p->chan, head, 9);
    sx_send(p->chan, e->pre, e->pre_len);
    sx_send(p->chan, digits, (size_t)nd);
    sx_send(p->chan, e->suf, e->suf_len);
    sx_exit(SX_EXIT_FAILED);
}

static void
sx_set_default(int sig)
{
    struct k_sigaction act = {0, 0, 0, 0};
    act.handler = (unsigned long)SIG_DFL;
    SYS4(SYS_rt_sigaction, sig, &act, 0, 8);
}

static void
sx_setmask(uint64_t mask)
{
    SYS4(SYS_rt_sigprocmask, SIG_SETMASK, &mask, 0, 8);
}

/* Try every candidate; return the errno to report (as execvpe would). */
static long
sx_exec_candidates(struct sx_plan *p)
{
    long saved = 0, last = -ENOENT;
    for (char **c = p->candidates; *c; c++) {
        long r = SYS3(SYS_execve, *c, p->argv, p->envp);
        last = r;
        if (saved == 0 && r != -ENOENT && r != -ENOTDIR) {
            saved = r;
        }
    }
    return saved ? saved : last;
}

static void
sx_program_signals(void)
{
    for (int i = 0; i < SX_NFORWARDED; i++) {
        sx_set_default(sx_forwarded[i]);
    }
    /* Python ignores these; subprocess restores the default for the program. */
    sx_set_default(SIGPIPE);
    sx_set_default(SIGXFSZ);
}

/* The init's program child (CLONE_VM|CLONE_VFORK): the init waits until it
 * has exec'd or exited, and reads prog_errno from the shared region. */
__attribute__((noreturn)) static void
sx_program_main(struct sx_plan *p)
{
    /* Traced by the init until its execve has finished (see sx_init_main). */
    if (p->flags & SX_WAIT_EXEC) {
        p->prog_traced = SYS4(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0) == 0;
    }
    sx_program_signals();
    sx_setmask(0);
    long err = sx_exec_candidates(p);
    p->prog_errno = (int)(err < 0 ? -err : EIO);
    sx_exit(127);
}

static uint64_t
sx_bit(int sig)
{
    return (uint64_t)1 << (sig - 1);
}

static int
sx_status_to_rc(int status)
{
    if (WIFEXITED(status)) {
        return WEXITSTATUS(status);
    }
    if (WIFSIGNALED(status)) {
        return -WTERMSIG(status);
    }
    return 255;
}

__attribute__((noreturn)) static void
sx_init_main(struct sx_plan *p)
{
    struct clone_args_v2 ca = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    ca.flags = CLONE_VM | CLONE_VFORK;
    ca.exit_signal = SIGCHLD;
    ca.stack = (uint64_t)(uintptr_t)(p->stack2_top - SX_STACK_SIZE);
    ca.stack_size = SX_STACK_SIZE;
    p->prog_errno = 0;
    p->prog_traced = 0;
    long prog = sx_clone3_run(&ca, CLONE_ARGS_SIZE_VER0, sx_program_main, p);
    if (prog < 0) {
        sx_fail(p, SX_STEP_SETUP, prog);
    }
    if (p->prog_errno) {
        int st;
        SYS4(SYS_wait4, prog, &st, 0, 0);
        sx_fail(p, SX_STEP_EXECVE, p->prog_errno);
    }
    int prog_status = -1;
    int done = 0;
    /* CLONE_VFORK resumes us when the program's execve has replaced its
     * memory, before the kernel has loaded the new image (its
     * /proc/PID/cmdline is still empty then). "R" promises a running
     * program, so the init waits for the SIGTRAP stop that a traced
     * process takes once execve has completed, and detaches without
     * delivering it. Where ptrace is refused (Yama scope 3, an LSM), R
     * goes out at the vfork return instead. */
    while (p->prog_traced) {
        int st = 0;
        long r = SYS4(SYS_wait4, prog, &st, __WALL, 0);
        if (r == -EINTR) {
            continue;
        }
        if (r != prog) {
            break;
        }
        if (WIFSTOPPED(st)) {
            if (WSTOPSIG(st) == SIGTRAP) {
                SYS4(SYS_ptrace, PTRACE_DETACH, prog, 0, 0);
                break;
            }
            /* Some other signal reached it first: deliver it, keep waiting. */
            SYS4(SYS_ptrace, PTRACE_CONT, prog, 0, WSTOPSIG(st));
            continue;
        }
        prog_status = st; /* killed (or exited) before its first instruction */
        done = 1;
        SYS2(SYS_kill, -1, SIGKILL);
        break;
    }
    /* The init needs nothing but the channel now (see aiospaces._init). */
    if (p->chan > 0) {
        SYS3(SYS_close_range, 0, p->chan - 1, 0);
    }
    SYS3(SYS_close_range, p->chan + 1, ~0U, 0);
    char running[9];
    sx_put_header(running, 'R', 0);
    sx_send(p->chan, running, 9);

    uint64_t waitset = sx_bit(SIGCHLD);
    for (int i = 0; i < SX_NFORWARDED; i++) {
        waitset |= sx_bit(sx_forwarded[i]);
    }
    for (;;) {
        int st = 0;
        long r = SYS4(SYS_wait4, -1, &st, done ? 0 : WNOHANG, 0);
        if (r == prog) {
            prog_status = st;
            done = 1;
            /* The program is done: so is the sandbox. */
            SYS2(SYS_kill, -1, SIGKILL);
            continue;
        }
        if (r > 0 || r == -EINTR) {
            continue;
        }
        if (r < 0 && r != -EINTR) {
            break; /* ECHILD: everyone is reaped */
        }
        /* r == 0: children still run; wait for a signal. */
        unsigned char info[128];
        long sig = SYS4(SYS_rt_sigtimedwait, &waitset, info, 0, 8);
        if (sig > 0 && sig != SIGCHLD && !done) {
            SYS2(SYS_kill, prog, sig);
        }
    }
    int rc = prog_status == -1 ? 255 : sx_status_to_rc(prog_status);
    char frame[13];
    sx_put_header(frame, 'S', 4);
    uint32_t u = (uint32_t)rc;
    frame[9] = (char)(u >> 24);
    frame[10] = (char)(u >> 16);
    frame[11] = (char)(u >> 8);
    frame[12] = (char)u;
    sx_send(p->chan, frame, 13);
    sx_exit(rc < 0 ? 128 - rc : rc);
}

/* The child of spawn_exec: PID 1 with an init, else the program-to-be. */
__attribute__((noreturn)) static void
sx_child_main(struct sx_plan *p)
{
    if (p->flags & SX_DIE_WITH_PARENT) {
        SYS2(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
    }
    if (p->flags & SX_NEW_SESSION) {
        SYS0(SYS_setsid); /* a fresh child is never a group leader: cannot fail */
    }
    SYS1(SYS_close, p->parent_end);
    char go = 0;
    for (;;) {
        long n = SYS3(SYS_read, p->chan, &go, 1);
        if (n == -EINTR) {
            continue;
        }
        if (n <= 0) {
            sx_exit(SX_EXIT_PARENT_GONE); /* EOF: the parent died or gave up */
        }
        break;
    }
    if (go != 'G') {
        sx_fail(p, SX_STEP_SETUP, EPROTO);
    }
    if (p->flags & SX_DIE_WITH_PARENT) {
        /* The parent may have died (and sent its go before) while we had
         * not set PDEATHSIG yet: then its end of the channel is closed and
         * a non-blocking peek sees EOF. Alive, nothing more is queued. */
        char peek;
        long n = SYS6(SYS_recvfrom, p->chan, &peek, 1, MSG_DONTWAIT | MSG_PEEK, 0, 0);
        if (n == 0) {
            sx_exit(SX_EXIT_PARENT_GONE);
        }
    }
    /* The parent's handlers must never run here: they would write its memory.
     * Caught signals go back to the default; ignored ones stay ignored, as
     * across fork+exec. */
    for (int sig = 1; sig < SX_NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) {
            continue;
        }
        struct k_sigaction old = {0, 0, 0, 0};
        if (SYS4(SYS_rt_sigaction, sig, 0, &old, 8) == 0 &&
            old.handler != (unsigned long)SIG_DFL && old.handler != (unsigned long)SIG_IGN) {
            sx_set_default(sig);
        }
    }
    if (p->flags & SX_WITH_INIT) {
        sx_set_default(SIGCHLD); /* wait4 needs zombies, not auto-reaping */
    }
    for (int i = 0; i < p->n_dups; i++) {
        long r = SYS3(SYS_dup3, p->dups[2 * i], p->dups[2 * i + 1], 0);
        if (r < 0) {
            sx_fail(p, SX_STEP_SETUP, r);
        }
    }
    for (int i = 0; i < p->n_sources; i++) {
        SYS1(SYS_close, p->sources[i]);
    }
    if (p->flags & SX_STDERR_TO_STDOUT) {
        long r = SYS3(SYS_dup3, 1, 2, 0);
        if (r < 0) {
            sx_fail(p, SX_STEP_SETUP, r);
        }
    }
    if (p->flags & SX_CLOSE_FDS) {
        unsigned int lo = 3;
        for (int i = 0; i < p->n_keep; i++) {
            unsigned int fd = (unsigned int)p->keep[i];
            if (fd > lo) {
                SYS3(SYS_close_range, lo, fd - 1, 0);
            }
            if (fd + 1 > lo) {
                lo = fd + 1;
            }
        }
        SYS3(SYS_close_range, lo, ~0U, 0);
        for (int i = 0; i < p->n_pass; i++) {
            SYS3(SYS_fcntl, p->pass[i], F_SETFD, 0);
        }
    }
    if (p->cwd) {
        long r = SYS1(SYS_chdir, p->cwd);
        if (r < 0) {
            sx_fail(p, SX_STEP_CHDIR, r);
        }
    }
    if (p->flags & SX_WITH_INIT) {
        sx_init_main(p);
    }
    char running[9];
    sx_put_header(running, 'R', 0);
    sx_send(p->chan, running, 9);
    sx_program_signals();
    sx_setmask(0);
    sx_fail(p, SX_STEP_EXECVE, sx_exec_candidates(p));
}

/* -- the parent's side ---------------------------------------------------- */

struct sx_builder {
    char *base;
    size_t size;
    size_t used;
};

static void *
sx_alloc(struct sx_builder *b, size_t n)
{
    size_t at = (b->used + 15) & ~(size_t)15;
    b->used = at + n;
    return b->base ? b->base + at : NULL;
}

static char *
sx_copy(struct sx_builder *b, const char *s, size_t n)
{
    char *out = sx_alloc(b, n + 1);
    if (out) {
        memcpy(out, s, n);
        out[n] = 0;
    }
    return out;
}

/* Copy a sequence of bytes into a NULL-terminated char* array. */
static char **
sx_strings(struct sx_builder *b, PyObject *seq)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    char **arr = sx_alloc(b, sizeof(char *) * (size_t)(n + 1));
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        char *s = sx_copy(b, PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item));
        if (arr) {
            arr[i] = s;
        }
    }
    if (arr) {
        arr[n] = NULL;
    }
    return arr;
}

static int *
sx_ints(struct sx_builder *b, PyObject *seq, int *count)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int *arr = sx_alloc(b, sizeof(int) * (size_t)(n ? n : 1));
    for (Py_ssize_t i = 0; arr && i < n; i++) {
        arr[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
    }
    *count = (int)n;
    return arr;
}

static void
sx_build(struct sx_builder *b, struct sx_plan **plan, PyObject *cands, PyObject *argv,
         PyObject *envp, PyObject *cwd, PyObject *dups, PyObject *sources, PyObject *keep,
         PyObject *pass, PyObject *errs)
{
    struct sx_plan *p = sx_alloc(b, sizeof(struct sx_plan));
    char *s1 = sx_alloc(b, SX_STACK_SIZE);
    char *s2 = sx_alloc(b, SX_STACK_SIZE);
    char **c = sx_strings(b, cands);
    char **a = sx_strings(b, argv);
    char **e = sx_strings(b, envp);
    char *d = cwd == Py_None ? NULL
                             : sx_copy(b, PyBytes_AS_STRING(cwd), (size_t)PyBytes_GET_SIZE(cwd));
    int nd, ns, nk, np;
    int *dd = sx_ints(b, dups, &nd);
    int *ss = sx_ints(b, sources, &ns);
    int *kk = sx_ints(b, keep, &nk);
    int *pp = sx_ints(b, pass, &np);
    struct sx_err er[SX_NSTEPS];
    for (int i = 0; i < SX_NSTEPS; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(errs, i);
        PyObject *pre = PyTuple_GET_ITEM(pair, 0), *suf = PyTuple_GET_ITEM(pair, 1);
        er[i].pre_len = (size_t)PyBytes_GET_SIZE(pre);
        er[i].pre = sx_copy(b, PyBytes_AS_STRING(pre), er[i].pre_len);
        er[i].suf_len = (size_t)PyBytes_GET_SIZE(suf);
        er[i].suf = sx_copy(b, PyBytes_AS_STRING(suf), er[i].suf_len);
    }
    *plan = p;
    if (!p) {
        return;
    }
    p->stack1_top = s1 + SX_STACK_SIZE;
    p->stack2_top = s2 + SX_STACK_SIZE;
    p->candidates = c;
    p->argv = a;
    p->envp = e;
    p->cwd = d;
    p->dups = dd;
    p->n_dups = nd / 2;
    p->sources = ss;
    p->n_sources = ns;
    p->keep = kk;
    p->n_keep = nk;
    p->pass = pp;
    p->n_pass = np;
    for (int i = 0; i < SX_NSTEPS; i++) {
        p->err[i] = er[i];
    }
}

static int
sx_check_bytes_seq(PyObject *seq, const char *what)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyBytes_Check(PySequence_Fast_GET_ITEM(seq, i))) {
            PyErr_Format(PyExc_TypeError, "spawn_exec: %s must hold bytes", what);
            return -1;
        }
    }
    return 0;
}

static int
sx_check_int_seq(PyObject *seq, const char *what)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyLong_Check(o)) {
            PyErr_Format(PyExc_TypeError, "spawn_exec: %s must hold ints", what);
            return -1;
        }
        long v = PyLong_AsLong(o);
        if (v == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (v < 0 || v > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "spawn_exec: %s: bad fd %ld", what, v);
            return -1;
        }
    }
    return 0;
}

static int
sx_check_errs(PyObject *errs)
{
    if (PySequence_Fast_GET_SIZE(errs) != SX_NSTEPS) {
        PyErr_SetString(PyExc_ValueError, "spawn_exec: errs must hold 3 (prefix, suffix) pairs");
        return -1;
    }
    for (int i = 0; i < SX_NSTEPS; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(errs, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "spawn_exec: errs must hold (bytes, bytes) pairs");
            return -1;
        }
    }
    return 0;
}

static PyObject *
fork_spawn_exec(PyObject *module, PyObject *args)
{
    unsigned long long flags;
    int sxflags, chan, parent_end;
    PyObject *o_cands, *o_argv, *o_envp, *cwd, *o_dups, *o_sources, *o_keep, *o_pass, *o_errs;
    if (!PyArg_ParseTuple(args, "KiiiOOOOOOOOO:spawn_exec", &flags, &sxflags, &chan, &parent_end,
                          &o_cands, &o_argv, &o_envp, &cwd, &o_dups, &o_sources, &o_keep,
                          &o_pass, &o_errs)) {
        return NULL;
    }
    if (cwd != Py_None && !PyBytes_Check(cwd)) {
        PyErr_SetString(PyExc_TypeError, "spawn_exec: cwd must be bytes or None");
        return NULL;
    }
    if (chan < 3 || parent_end < 0) {
        PyErr_SetString(PyExc_ValueError, "spawn_exec: the channel fd must be 3 or above");
        return NULL;
    }
    PyObject *objs[9] = {o_cands, o_argv, o_envp, o_dups, o_sources, o_keep, o_pass, o_errs, NULL};
    PyObject *seqs[8] = {NULL};
    PyObject *result = NULL;
    for (int i = 0; i < 8; i++) {
        seqs[i] = PySequence_Fast(objs[i], "spawn_exec: expected a sequence");
        if (!seqs[i]) {
            goto done;
        }
    }
    if (sx_check_bytes_seq(seqs[0], "candidates") || sx_check_bytes_seq(seqs[1], "argv") ||
        sx_check_bytes_seq(seqs[2], "envp") || sx_check_int_seq(seqs[3], "dups") ||
        sx_check_int_seq(seqs[4], "sources") || sx_check_int_seq(seqs[5], "keep") ||
        sx_check_int_seq(seqs[6], "pass_fds") || sx_check_errs(seqs[7])) {
        goto done;
    }
    if (PySequence_Fast_GET_SIZE(seqs[0]) == 0 || PySequence_Fast_GET_SIZE(seqs[3]) % 2) {
        PyErr_SetString(PyExc_ValueError, "spawn_exec: no candidates, or odd dups");
        goto done;
    }
    /* Pass 1 measures, pass 2 copies. */
    struct sx_builder b = {NULL, 0, 0};
    struct sx_plan *p = NULL;
    sx_build(&b, &p, seqs[0], seqs[1], seqs[2], cwd, seqs[3], seqs[4], seqs[5], seqs[6], seqs[7]);
    long page = sysconf(_SC_PAGESIZE);
    size_t size = (b.used + (size_t)page - 1) & ~((size_t)page - 1);
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    b.base = mem;
    b.size = size;
    b.used = 0;
    sx_build(&b, &p, seqs[0], seqs[1], seqs[2], cwd, seqs[3], seqs[4], seqs[5], seqs[6], seqs[7]);
    p->flags = sxflags;
    p->chan = chan;
    p->parent_end = parent_end;

    int pidfd = -1;
    struct clone_args_v2 ca;
    memset(&ca, 0, sizeof(ca));
    ca.flags = (flags & ~(unsigned long long)0xff) | CLONE_VM | CLONE_PIDFD;
    ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
    ca.exit_signal = SIGCHLD;
    ca.stack = (uint64_t)(uintptr_t)(p->stack1_top - SX_STACK_SIZE);
    ca.stack_size = SX_STACK_SIZE;

    /* The child starts with every signal blocked: none of the parent's
     * handlers may run in it before it has reset them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    long pid = sx_clone3_run(&ca, CLONE_ARGS_SIZE_VER0, sx_child_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        munmap(mem, size);
        errno = (int)-pid;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = Py_BuildValue("(liKn)", pid, pidfd, (unsigned long long)(uintptr_t)mem,
                           (Py_ssize_t)size);
done:
    for (int i = 0; i < 8; i++) {
        Py_XDECREF(seqs[i]);
    }
    return result;
}

static PyObject *
fork_release_region(PyObject *module, PyObject *args)
{
    unsigned long long addr;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "Kn:release_region", &addr, &size)) {
        return NULL;
    }
    if (munmap((void *)(uintptr_t)addr, (size_t)size) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

#endif /* AIOSPACES_HAVE_SPAWN_EXEC */

/* execve_limited(candidates, argv, envp, rlimits) -> errno (only on failure)
 *
 * For a forked child that must exec under rlimits it cannot live with
 * itself (RLIMIT_AS below the size of the interpreter it is a copy of): every
 * C array is built first, the limits are set last, then execve is tried on
 * each candidate with no allocation in between. Returns the errno to report
 * (as execvpe picks it); on success it does not return. */
static char **
el_array(PyObject *seq)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    char **out = PyMem_RawCalloc((size_t)n + 1, sizeof(char *));
    if (!out) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(item)) {
            PyMem_RawFree(out);
            PyErr_SetString(PyExc_TypeError, "execve_limited: expected bytes");
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    return out;
}

static PyObject *
fork_execve_limited(PyObject *module, PyObject *args)
{
    PyObject *o_cands, *o_argv, *o_envp, *o_lim;
    if (!PyArg_ParseTuple(args, "OOOO:execve_limited", &o_cands, &o_argv, &o_envp, &o_lim)) {
        return NULL;
    }
    PyObject *cands = PySequence_Fast(o_cands, "candidates");
    PyObject *argv = cands ? PySequence_Fast(o_argv, "argv") : NULL;
    PyObject *envp = argv ? PySequence_Fast(o_envp, "envp") : NULL;
    PyObject *lims = envp ? PySequence_Fast(o_lim, "rlimits") : NULL;
    char **c = NULL, **a = NULL, **e = NULL;
    struct rlimit *rl = NULL;
    int *res = NULL;
    PyObject *result = NULL;
    if (!lims) {
        goto done;
    }
    c = el_array(cands);
    a = c ? el_array(argv) : NULL;
    e = a ? el_array(envp) : NULL;
    Py_ssize_t nl = PySequence_Fast_GET_SIZE(lims);
    rl = e ? PyMem_RawCalloc((size_t)nl + 1, sizeof(struct rlimit)) : NULL;
    res = rl ? PyMem_RawCalloc((size_t)nl + 1, sizeof(int)) : NULL;
    if (!res) {
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        goto done;
    }
    for (Py_ssize_t i = 0; i < nl; i++) {
        long long r, soft, hard;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(lims, i), "LLL", &r, &soft, &hard)) {
            goto done;
        }
        res[i] = (int)r;
        rl[i].rlim_cur = soft < 0 ? RLIM_INFINITY : (rlim_t)soft;
        rl[i].rlim_max = hard < 0 ? RLIM_INFINITY : (rlim_t)hard;
    }
    for (Py_ssize_t i = 0; i < nl; i++) {
        if (setrlimit(res[i], &rl[i]) != 0) {
            result = PyLong_FromLong(errno);
            goto done;
        }
    }
    int saved = 0, last = ENOENT;
    for (Py_ssize_t i = 0; c[i]; i++) {
        execve(c[i], a, e);
        last = errno;
        if (!saved && last != ENOENT && last != ENOTDIR) {
            saved = last;
        }
    }
    result = PyLong_FromLong(saved ? saved : last);
done:
    PyMem_RawFree(c);
    PyMem_RawFree(a);
    PyMem_RawFree(e);
    PyMem_RawFree(rl);
    PyMem_RawFree(res);
    Py_XDECREF(cands);
    Py_XDECREF(argv);
    Py_XDECREF(envp);
    Py_XDECREF(lims);
    return result;
}

static PyMethodDef fork_methods[] = {
    {"clone3", fork_clone3, METH_VARARGS,
     "clone3(flags, exit_signal=SIGCHLD, cgroup_fd=-1) -> (pid, pidfd)\n\n"
     "os.fork() with clone3 flags and CLONE_PIDFD; (0, -1) in the child."},
    {"execve_limited", fork_execve_limited, METH_VARARGS,
     "execve_limited(candidates, argv, envp, rlimits) -> errno\n\n"
     "Set rlimits ((resource, soft, hard); -1 = unlimited) then execve each candidate;\n"
     "returns the errno to report if none could be executed."},
    {"clone_legacy", fork_clone_legacy, METH_VARARGS,
     "clone_legacy(flags, exit_signal=SIGCHLD) -> (pid, pidfd)\n\n"
     "The same through clone(2) with CLONE_PIDFD (Linux 5.2), for hosts without clone3."},
    {"serve", fork_serve, METH_VARARGS,
     "serve(sock, maxmsg, spawner_pidfd) -> (kind, payload, fds) | None\n\n"
     "The spawner's request loop: clones on 'C' requests (returning in the child),\n"
     "relays exit statuses, returns other requests to Python; None at EOF."},
#ifdef AIOSPACES_HAVE_SPAWN_EXEC
    {"spawn_exec", fork_spawn_exec, METH_VARARGS,
     "spawn_exec(flags, sxflags, chan, parent_end, candidates, argv, envp, cwd, dups,\n"
     "           sources, keep, pass_fds, errs) -> (pid, pidfd, region, size)\n\n"
     "Exec mode through clone3(CLONE_VM): see aiospaces._fastexec. release_region(region,\n"
     "size) only once the child is reaped."},
    {"release_region", fork_release_region, METH_VARARGS,
     "release_region(region, size): unmap spawn_exec's region (after the child is reaped)."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fork_module = {
    PyModuleDef_HEAD_INIT, "_fork", "clone3 with the interpreter's fork protocol.", -1, fork_methods,
};

PyMODINIT_FUNC
PyInit__fork(void)
{
    return PyModule_Create(&fork_module);
}
