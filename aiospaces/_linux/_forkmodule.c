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
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
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

static PyMethodDef fork_methods[] = {
    {"clone3", fork_clone3, METH_VARARGS,
     "clone3(flags, exit_signal=SIGCHLD, cgroup_fd=-1) -> (pid, pidfd)\n\n"
     "os.fork() with clone3 flags and CLONE_PIDFD; (0, -1) in the child."},
    {"clone_legacy", fork_clone_legacy, METH_VARARGS,
     "clone_legacy(flags, exit_signal=SIGCHLD) -> (pid, pidfd)\n\n"
     "The same through clone(2) with CLONE_PIDFD (Linux 5.2), for hosts without clone3."},
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
