/*
 * Executor support in C: the parent watchdog of worker processes, a
 * byte-for-byte compare of two buffers and a type scan of task arguments
 * and results.
 *
 * The watchdog is a native thread, not a Python one, so that it runs while
 * the worker's main thread holds the GIL inside a long C call, and it
 * polls a pidfd (no FD_SETSIZE limit, unlike select()).  When the watched
 * process dies it ends the worker with _exit(), which needs no GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

#include "ext.h"

/* Exit status of a worker whose parent died (as a shell reports SIGHUP). */
#define ORPHAN_STATUS 129
/* Where pidfd is unavailable: how often to look at the parent. */
#define POLL_NS 200000000L

typedef struct {
    pid_t pid;
    unsigned long long start;   /* the parent's start time (clock ticks); 0: unknown */
} watch_args;

/* The start time of `pid` from /proc/<pid>/stat (field 22), 0 when it
 * cannot be read (no such process, or no /proc).  Async-signal-safe
 * calls only: the thread may run beside anything. */
static unsigned long long
start_time(pid_t pid)
{
    char path[64], buf[1024];
    const char *p;
    ssize_t n;
    int fd, field;
    unsigned long long value = 0;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    p = strrchr(buf, ')');          /* the command may hold spaces and ')' */
    if (p == NULL) {
        return 0;
    }
    /* After ")": field 3 (state) onwards; field 22 is the start time. */
    for (field = 2; field < 22 && *p != '\0'; p++) {
        if (*p == ' ') {
            field++;
        }
    }
    while (*p >= '0' && *p <= '9') {
        value = value * 10 + (unsigned long long)(*p - '0');
        p++;
    }
    return value;
}

/* Whether the process we watch is still the one we were told about. */
static int
still_there(const watch_args *w)
{
    if (w->start != 0) {
        return start_time(w->pid) == w->start;
    }
    return kill(w->pid, 0) == 0 || errno == EPERM;
}

static void
poll_forever(const watch_args *w)
{
    struct timespec ts = {0, POLL_NS};
    while (still_there(w)) {
        nanosleep(&ts, NULL);
    }
}

static void *
watch_main(void *arg)
{
    watch_args w = *(watch_args *)arg;
    free(arg);
#if defined(__linux__) && defined(SYS_pidfd_open)
    int fd = (int)syscall(SYS_pidfd_open, w.pid, 0);
    if (fd >= 0) {
        /* The pidfd pins one process; the start time proves it is the one
         * we were given and not a later process that reused its pid. */
        if (still_there(&w)) {
            struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
            while (poll(&p, 1, -1) < 0 && errno == EINTR) {
            }
        }
        _exit(ORPHAN_STATUS);
    }
#endif
    poll_forever(&w);
    _exit(ORPHAN_STATUS);
    return NULL;
}

/* watch_parent(pid, start_time): end this process when `pid` dies. */
PyObject *
ext_watch_parent(PyObject *module, PyObject *args)
{
    int pid, err;
    unsigned long long start;
    pthread_t thread;
    pthread_attr_t attr;
    sigset_t all, old;
    watch_args *w;

    if (!PyArg_ParseTuple(args, "iK:watch_parent", &pid, &start)) {
        return NULL;
    }
    if (pid <= 0) {
        PyErr_SetString(PyExc_ValueError, "watch_parent(): pid must be positive");
        return NULL;
    }
    if (start != 0 && start_time((pid_t)pid) != start) {
        _exit(ORPHAN_STATUS);          /* gone before we could watch it */
    }
    w = malloc(sizeof *w);
    if (w == NULL) {
        return PyErr_NoMemory();
    }
    w->pid = (pid_t)pid;
    w->start = start;
    err = pthread_attr_init(&attr);
    if (err == 0) {
        err = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (err == 0) {
            err = pthread_attr_setstacksize(&attr, 64 * 1024);
        }
        if (err == 0) {
            /* No signal is ever delivered to this thread: the worker's
             * Python handlers run in its main thread as usual. */
            sigfillset(&all);
            pthread_sigmask(SIG_SETMASK, &all, &old);
            err = pthread_create(&thread, &attr, watch_main, w);
            pthread_sigmask(SIG_SETMASK, &old, NULL);
        }
        pthread_attr_destroy(&attr);
    }
    if (err != 0) {
        free(w);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* start_time(pid): what the watchdog compares, for the parent to send. */
PyObject *
ext_start_time(PyObject *module, PyObject *arg)
{
    long pid = PyLong_AsLong(arg);
    if (pid == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(start_time((pid_t)pid));
}

/* same_bytes(a, b): whether two C-contiguous buffers hold the same bytes. */
PyObject *
ext_same_bytes(PyObject *module, PyObject *args)
{
    Py_buffer a = {0}, b = {0};
    PyObject *result = NULL;
    int same;

    if (!PyArg_ParseTuple(args, "y*y*:same_bytes", &a, &b)) {
        goto cleanup;
    }
    if (a.len != b.len) {
        result = Py_NewRef(Py_False);
        goto cleanup;
    }
    Py_BEGIN_ALLOW_THREADS
    same = a.buf == b.buf || memcmp(a.buf, b.buf, (size_t)a.len) == 0;
    Py_END_ALLOW_THREADS
    result = PyBool_FromLong(same);

cleanup:
    if (a.obj != NULL) {
        PyBuffer_Release(&a);
    }
    if (b.obj != NULL) {
        PyBuffer_Release(&b);
    }
    return result;
}

/* Whether the exact type of `obj` is one of the `n` types in `types`. */
static inline int
type_in(PyObject *obj, PyObject *const *types, Py_ssize_t n)
{
    PyObject *t = (PyObject *)Py_TYPE(obj);
    for (Py_ssize_t j = 0; j < n; j++) {
        if (t == types[j]) {
            return 1;
        }
    }
    return 0;
}

/* Objects only_types() looks at, at most: a larger structure is "no" (the
 * executor then pickles it its own way, which is correct for anything). */
#define ONLY_TYPES_BUDGET 1024

/* Whether `obj` is of one of the `nt` exact types `ts`, or - with `depth`
 * levels left - an exact tuple, list or dict of such (keys too), nested.
 * Pointer compares only: no Python code runs, so nothing can change under
 * us (a list's size, a dict's entries). */
static int
only_of(PyObject *obj, PyObject *const *ts, Py_ssize_t nt, int depth,
        Py_ssize_t *budget)
{
    PyObject *key, *value;
    Py_ssize_t pos = 0;

    if (--*budget < 0) {
        return 0;
    }
    if (type_in(obj, ts, nt)) {
        return 1;
    }
    if (depth <= 0) {
        return 0;
    }
    if (PyTuple_CheckExact(obj) || PyList_CheckExact(obj)) {
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(obj); i++) {
            if (!only_of(PySequence_Fast_GET_ITEM(obj, i), ts, nt, depth - 1, budget)) {
                return 0;
            }
        }
        return 1;
    }
    if (PyDict_CheckExact(obj)) {
        while (PyDict_Next(obj, &pos, &key, &value)) {
            if (!only_of(key, ts, nt, depth - 1, budget)
                    || !only_of(value, ts, nt, depth - 1, budget)) {
                return 0;
            }
        }
        return 1;
    }
    return 0;
}

/* only_types(obj, types, depth): whether `obj` is made only of objects
 * whose exact type is in the tuple `types`, through at most `depth` levels
 * of exact tuples, lists and dicts, and at most ONLY_TYPES_BUDGET objects.
 * The executor calls this once per task and per result (Python's loop
 * costs ~40 ns per object). */
PyObject *
ext_only_types(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t budget = ONLY_TYPES_BUDGET;
    long depth;

    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "only_types expected 3 arguments, got %zd", nargs);
        return NULL;
    }
    if (!PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "only_types: types must be a tuple");
        return NULL;
    }
    depth = PyLong_AsLong(args[2]);
    if (depth == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (depth < 0 || depth > 8) {
        PyErr_SetString(PyExc_ValueError, "only_types: depth must be 0 to 8");
        return NULL;
    }
    return PyBool_FromLong(only_of(args[0], &PyTuple_GET_ITEM(args[1], 0),
                                   PyTuple_GET_SIZE(args[1]), (int)depth, &budget));
}
