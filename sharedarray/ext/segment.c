/*
 * sharedarray._ext -- the mechanism under sharedarray.
 *
 * One type, Segment, owns one shared mapping of a POSIX shared memory object
 * or of a regular file.  Module functions create (atomically, with the space
 * reserved up front), attach, unlink and stat such objects.  Everything about
 * names, dtypes, headers and ownership policy lives in Python.
 *
 * Lifetime: a Segment unmaps its memory only in its deallocator.  Every numpy
 * array built on it keeps the Segment as its base (a reference; numpy drops
 * the buffer export at once), so no array can outlive the mapping it points
 * into.  `exports` counts only exports still held, such as memoryviews.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

#include "ext.h"

#define KIND_SHM 0
#define KIND_FILE 1

/* .npy: 6 magic bytes, 2 version bytes, then a 2-byte (v1) or 4-byte (v2, v3)
 * little-endian header length. */
#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6

/* The largest header length field accepted (bytes after the preamble).
 * create, attach, handles and list() all use this one limit (exported as
 * MAX_HEADER); it is checked before a byte of the header is copied. */
#define MAX_HEADER (1 << 20)

/* attach reads this much of an object with pread: the preamble and, for
 * every header create writes short of huge structured dtypes, all of the
 * header (data starts at 4096). */
#define HEAD_BYTES 4096

#ifndef MAP_POPULATE
#define MAP_POPULATE 0
#endif

/* ------------------------------------------------------------------ */
/* Segment type                                                         */
/* ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    void *addr;           /* NULL until mapped */
    Py_ssize_t size;      /* bytes mapped */
    PyObject *name;       /* the user-facing name, as given */
    int readonly;
    int fd;               /* -1, or kept open holding a shared flock (attach lock=True) */
    Py_ssize_t exports;   /* live buffer exports */
    PyObject *meta;       /* what Python knows of the contents (header) */
    PyObject *after_unmap; /* released once unmapped and unlocked (see dealloc) */
    PyObject *weakreflist;
    /* What fstat said of the object when it was mapped: the device (for
     * shm: which /dev/shm), inode and modification time identify it. */
    unsigned long long st_dev;
    unsigned long long st_ino;
    long long mtime_ns;
    long long ctime_ns;   /* with the above: the key of the header cache */
} Segment;

/* The header cache: what Python validated for an object (seg.meta), by
 * the object's device, inode, size, mtime and ctime.  A header this
 * library wrote is immutable once its name is published (the one
 * exception, refilling, happens only under an exclusive flock, on names
 * that attach locks and never caches), so an attach that finds its
 * object here needs neither to read nor to parse the header again.
 * Python fills it (remember()) only for shm objects with its own header;
 * read and written only with the GIL held. */
#define HEADER_CACHE_SLOTS 64

typedef struct {
    unsigned long long st_dev;
    unsigned long long st_ino;
    long long mtime_ns;
    long long ctime_ns;
    Py_ssize_t size;
    PyObject *meta;       /* NULL: empty */
} header_entry;

typedef struct {
    PyTypeObject *segment_type;
    header_entry headers[HEADER_CACHE_SLOTS];
} module_state;

static module_state *
get_state(PyObject *module)
{
    return (module_state *)PyModule_GetState(module);
}

static void
unmap(void *addr, Py_ssize_t size)
{
    if (addr == NULL) {
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    munmap(addr, (size_t)size);
    Py_END_ALLOW_THREADS
}

static int
Segment_traverse(Segment *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->meta);
    return 0;
}

static int
Segment_clear(Segment *self)
{
    Py_CLEAR(self->meta);
    return 0;
}

static void
Segment_dealloc(Segment *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    unmap(self->addr, self->size);
    self->addr = NULL;
    if (self->fd >= 0) {
        close(self->fd);      /* releases the shared lock: nothing maps it here */
        self->fd = -1;
    }
    /* Last, once this process neither maps the object nor holds its lock:
     * a finalizer on this object may hand the object on (the executor
     * keeps a released result for a worker to rewrite).  Weak references
     * to the segment itself die before the unmap, so they cannot. */
    Py_CLEAR(self->after_unmap);
    Py_CLEAR(self->name);
    Py_CLEAR(self->meta);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
Segment_new_disallowed(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyErr_SetString(PyExc_TypeError,
                    "Segment objects are made by create() and attach()");
    return NULL;
}

static Segment *
segment_alloc(PyTypeObject *type, PyObject *name, int readonly)
{
    Segment *self = PyObject_GC_New(Segment, type);
    if (self == NULL) {
        return NULL;
    }
    self->addr = NULL;
    self->size = 0;
    self->exports = 0;
    self->fd = -1;
    self->weakreflist = NULL;
    self->meta = NULL;
    self->after_unmap = NULL;
    self->readonly = readonly;
    self->st_dev = self->st_ino = 0;
    self->mtime_ns = self->ctime_ns = 0;
    Py_INCREF(name);
    self->name = name;
    PyObject_GC_Track(self);
    return self;
}

static int
Segment_getbuffer(Segment *self, Py_buffer *view, int flags)
{
    if (self->addr == NULL) {
        PyErr_SetString(PyExc_ValueError, "segment is not mapped");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->size,
                          self->readonly, flags) < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void
Segment_releasebuffer(Segment *self, Py_buffer *view)
{
    self->exports--;
}

static int
check_mapped(Segment *self)
{
    if (self->addr == NULL) {
        PyErr_SetString(PyExc_ValueError, "segment is not mapped");
        return -1;
    }
    return 0;
}

static PyObject *
Segment_msync(Segment *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"flags", NULL};
    int flags = MS_SYNC;
    int rc;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i:msync", kwlist, &flags)) {
        return NULL;
    }
    if (check_mapped(self) < 0) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = msync(self->addr, (size_t)self->size, flags);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, self->name);
    }
    Py_RETURN_NONE;
}

static PyObject *
Segment_mlock(Segment *self, PyObject *Py_UNUSED(ignored))
{
    int rc;
    if (check_mapped(self) < 0) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = mlock(self->addr, (size_t)self->size);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, self->name);
    }
    Py_RETURN_NONE;
}

static PyObject *
Segment_munlock(Segment *self, PyObject *Py_UNUSED(ignored))
{
    int rc;
    if (check_mapped(self) < 0) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = munlock(self->addr, (size_t)self->size);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, self->name);
    }
    Py_RETURN_NONE;
}

/* Map every page of the object into this process now, in one call, so
 * that a large copy into the mapping takes no page faults.  Returns False
 * where the kernel cannot (MADV_POPULATE_READ is Linux 5.14+). */
static PyObject *
Segment_populate(Segment *self, PyObject *Py_UNUSED(ignored))
{
    if (check_mapped(self) < 0) {
        return NULL;
    }
#ifdef MADV_POPULATE_READ
    int rc, err = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = madvise(self->addr, (size_t)self->size, MADV_POPULATE_READ);
    if (rc < 0) {
        err = errno;
    }
    Py_END_ALLOW_THREADS
    if (rc == 0) {
        Py_RETURN_TRUE;
    }
    if (err != EINVAL) {
        errno = err;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, self->name);
    }
#endif
    Py_RETURN_FALSE;
}

static PyObject *
Segment_get_addr(Segment *self, void *closure)
{
    return PyLong_FromVoidPtr(self->addr);
}

static PyObject *
Segment_get_size(Segment *self, void *closure)
{
    return PyLong_FromSsize_t(self->size);
}

static PyObject *
Segment_get_readonly(Segment *self, void *closure)
{
    return PyBool_FromLong(self->readonly);
}

static PyObject *
Segment_get_exports(Segment *self, void *closure)
{
    return PyLong_FromSsize_t(self->exports);
}

static PyObject *
Segment_get_identity(Segment *self, void *closure)
{
    return Py_BuildValue("(KKnL)", self->st_dev, self->st_ino, self->size,
                         self->mtime_ns);
}

static PyObject *
Segment_get_after_unmap(Segment *self, void *closure)
{
    return Py_NewRef(self->after_unmap != NULL ? self->after_unmap : Py_None);
}

/* Not visited by the GC: the object must not refer back to the segment
 * (it is a plain marker that a finalizer watches). */
static int
Segment_set_after_unmap(Segment *self, PyObject *value, void *closure)
{
    Py_XSETREF(self->after_unmap, value == Py_None ? NULL : Py_XNewRef(value));
    return 0;
}

static void
set_identity(Segment *self, const struct stat *st)
{
    self->st_dev = (unsigned long long)st->st_dev;
    self->st_ino = (unsigned long long)st->st_ino;
#if defined(__APPLE__)
    self->mtime_ns = (long long)st->st_mtimespec.tv_sec * 1000000000LL +
                     st->st_mtimespec.tv_nsec;
    self->ctime_ns = (long long)st->st_ctimespec.tv_sec * 1000000000LL +
                     st->st_ctimespec.tv_nsec;
#else
    self->mtime_ns = (long long)st->st_mtim.tv_sec * 1000000000LL +
                     st->st_mtim.tv_nsec;
    self->ctime_ns = (long long)st->st_ctim.tv_sec * 1000000000LL +
                     st->st_ctim.tv_nsec;
#endif
}

static header_entry *
header_slot(module_state *state, const Segment *seg)
{
    return &state->headers[(seg->st_ino ^ seg->st_dev) % HEADER_CACHE_SLOTS];
}

/* The meta remembered for the object seg maps, or NULL (borrowed). */
static PyObject *
cached_meta(module_state *state, const Segment *seg)
{
    const header_entry *e = header_slot(state, seg);
    if (e->meta != NULL && e->st_dev == seg->st_dev &&
        e->st_ino == seg->st_ino && e->size == seg->size &&
        e->mtime_ns == seg->mtime_ns && e->ctime_ns == seg->ctime_ns) {
        return e->meta;
    }
    return NULL;
}

static PyObject *
Segment_repr(Segment *self)
{
    return PyUnicode_FromFormat("<sharedarray.Segment name=%R size=%zd%s>",
                                self->name, self->size,
                                self->readonly ? " readonly" : "");
}

static PyMethodDef Segment_methods[] = {
    {"msync", (PyCFunction)(void (*)(void))Segment_msync,
     METH_VARARGS | METH_KEYWORDS,
     "msync(flags=MS_SYNC)\n--\n\nFlush the mapping to its backing object."},
    {"mlock", (PyCFunction)Segment_mlock, METH_NOARGS,
     "mlock()\n--\n\nLock the mapping's pages in memory."},
    {"munlock", (PyCFunction)Segment_munlock, METH_NOARGS,
     "munlock()\n--\n\nUnlock the mapping's pages."},
    {"populate", (PyCFunction)Segment_populate, METH_NOARGS,
     "populate()\n--\n\nMap every page into this process now; False where "
     "the kernel cannot."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Segment_getset[] = {
    {"addr", (getter)Segment_get_addr, NULL, "address of the mapping", NULL},
    {"size", (getter)Segment_get_size, NULL, "bytes mapped", NULL},
    {"readonly", (getter)Segment_get_readonly, NULL, "mapped read-only", NULL},
    {"exports", (getter)Segment_get_exports, NULL,
     "number of live buffer exports", NULL},
    {"identity", (getter)Segment_get_identity, NULL,
     "(st_dev, st_ino, size, st_mtime in ns) of the object when mapped", NULL},
    {"after_unmap", (getter)Segment_get_after_unmap, (setter)Segment_set_after_unmap,
     "an object this segment holds until it is unmapped and its lock released", NULL},
    {NULL},
};

static PyMemberDef Segment_members[] = {
    {"name", T_OBJECT, offsetof(Segment, name), READONLY, "the segment's name"},
    {"meta", T_OBJECT, offsetof(Segment, meta), 0,
     "what the Python layer parsed from the header (None until set)"},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(Segment, weakreflist),
     READONLY, NULL},
    {NULL},
};

static PyType_Slot Segment_slots[] = {
    {Py_tp_doc, "One shared mapping; unmapped when the last user goes."},
    {Py_tp_dealloc, Segment_dealloc},
    {Py_tp_traverse, Segment_traverse},
    {Py_tp_clear, Segment_clear},
    {Py_tp_new, Segment_new_disallowed},
    {Py_tp_repr, Segment_repr},
    {Py_tp_methods, Segment_methods},
    {Py_tp_getset, Segment_getset},
    {Py_tp_members, Segment_members},
    {Py_bf_getbuffer, Segment_getbuffer},
    {Py_bf_releasebuffer, Segment_releasebuffer},
    {0, NULL},
};

static PyType_Spec Segment_spec = {
    .name = "sharedarray._ext.Segment",
    .basicsize = sizeof(Segment),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Segment_slots,
};

/* ------------------------------------------------------------------ */
/* Opening names                                                        */
/* ------------------------------------------------------------------ */

/* Open an existing object; returns an fd or -1 with errno set.
 * O_NONBLOCK: a FIFO under the name must not block the open forever (the
 * caller rejects anything that is not a regular file); it changes nothing
 * for regular files and shm objects.  Called without the GIL. */
static int
open_existing(const char *path, int kind, int flags)
{
    int fd;
    flags |= O_NONBLOCK;
    do {
        if (kind == KIND_SHM) {
            fd = shm_open(path, flags | O_CLOEXEC, 0);
        }
        else {
            fd = open(path, flags | O_CLOEXEC);
        }
    } while (fd < 0 && errno == EINTR);
    return fd;
}

static PyObject *
raise_errno(int err, PyObject *name)
{
    errno = err;
    return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
}

/* ------------------------------------------------------------------ */
/* create                                                               */
/* ------------------------------------------------------------------ */

/* Reserve `size` bytes; posix_fallocate returns its error, it does not
 * set errno.  Returns 0 or an errno value. */
static int
reserve(int fd, off_t size)
{
    int err;
    do {
        err = posix_fallocate(fd, 0, size);
    } while (err == EINTR);
    if (err == EOPNOTSUPP || err == EINVAL) {
        /* No fallocate on this file system (or object type, e.g. macOS shm):
         * size it without reservation. */
        if (ftruncate(fd, size) < 0) {
            return errno;
        }
        return 0;
    }
    return err;
}

#ifdef __linux__
/* Make an unnamed file in `dir` (O_TMPFILE).  Returns fd or -1. */
static int
open_unnamed(const char *dir, mode_t mode)
{
#ifdef O_TMPFILE
    int fd;
    do {
        fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
#else
    errno = EOPNOTSUPP;
    return -1;
#endif
}

/* Give the unnamed file `fd` the name `path`; fails with EEXIST if the name
 * is taken, which makes creation atomic: the name appears only once the
 * object is complete.  Returns 0 or -1 with errno set. */
static int
publish_unnamed(int fd, const char *path)
{
    char proc[64];
    if (linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH) == 0) {
        return 0;
    }
    if (errno == EEXIST) {
        return -1;
    }
    /* AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc works without it. */
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW);
}
#endif

typedef struct {
    const char *path;      /* shm name ("/x") or file path */
    const char *fspath;    /* Linux: the path of the final name in a file system */
    const char *dir;       /* Linux: its directory */
    const char *tmppath;   /* fallback: a unique temporary name in dir */
    int kind;
    mode_t mode;
    off_t size;
    int populate;
    const char *header;
    Py_ssize_t header_len;
    const char *data;      /* optional contents, copied right after the header */
    Py_ssize_t data_len;
} create_args;

/* pwrite all of buf at off (in chunks of at most 1 GiB).  Returns 0 or an
 * errno value. */
static int
write_all(int fd, const char *buf, Py_ssize_t len, off_t off)
{
    Py_ssize_t done = 0;
    while (done < len) {
        size_t chunk = (size_t)(len - done);
        ssize_t w;
        if (chunk > ((size_t)1 << 30)) {
            chunk = (size_t)1 << 30;
        }
        w = pwrite(fd, buf + done, chunk, off + done);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        done += w;
    }
    return 0;
}

/* Fill fd: write the header, reserve the space, map it.  The header goes
 * first, so that a staging file left by a killed create is recognisable
 * (its header's token is in its name) from its first byte on.  Returns
 * the mapping or MAP_FAILED with *err set.  Called without the GIL. */
static void *
fill(int fd, const create_args *a, int *err)
{
    void *addr;
    int flags = MAP_SHARED;
    /* tmpfs allocates a page as write() fills it and fails with ENOSPC when
     * it cannot: contents that cover the whole object reserve it as they
     * are written, without fallocate's zero-fill of every page first. */
    int written_whole = a->kind == KIND_SHM && a->data_len > 0 &&
                        a->header_len + a->data_len == (Py_ssize_t)a->size;
    *err = write_all(fd, a->header, a->header_len, 0);
    if (*err != 0) {
        return MAP_FAILED;
    }
    if (!written_whole) {
        *err = reserve(fd, a->size);
        if (*err != 0) {
            return MAP_FAILED;
        }
    }
    if (a->data_len > 0) {
        /* Contents given: write() them.  The kernel copies straight into
         * the page cache: no page faults and no page tables in this
         * process.  Before the name is published: readers see all of it
         * or nothing. */
        *err = write_all(fd, a->data, a->data_len, (off_t)a->header_len);
        if (*err != 0) {
            return MAP_FAILED;
        }
        addr = mmap(NULL, (size_t)a->size, PROT_READ | PROT_WRITE, flags, fd, 0);
        if (addr == MAP_FAILED) {
            *err = errno;
        }
        return addr;
    }
#ifdef MADV_POPULATE_WRITE
    addr = mmap(NULL, (size_t)a->size, PROT_READ | PROT_WRITE, flags, fd, 0);
    /* Pre-fault the reserved pages in one call (Linux 5.14+), cheaper than
     * MAP_POPULATE's per-page fault path; older kernels: MAP_POPULATE. */
    if (addr != MAP_FAILED && a->populate &&
        madvise(addr, (size_t)a->size, MADV_POPULATE_WRITE) < 0) {
        munmap(addr, (size_t)a->size);
        addr = mmap(NULL, (size_t)a->size, PROT_READ | PROT_WRITE,
                    flags | MAP_POPULATE, fd, 0);
    }
#else
    addr = mmap(NULL, (size_t)a->size, PROT_READ | PROT_WRITE,
                flags | (a->populate ? MAP_POPULATE : 0), fd, 0);
#endif
    if (addr == MAP_FAILED) {
        *err = errno;
    }
    return addr;
}

/* Atomic creation.  Returns the mapping, or MAP_FAILED with *err set and
 * nothing left behind.  Called without the GIL. */
static void *
create_mapping(const create_args *a, struct stat *st, int *err)
{
    int fd = -1;
    void *addr = MAP_FAILED;
    const char *made = NULL;   /* a name this call created, to undo */

#ifdef __linux__
    fd = open_unnamed(a->dir, a->mode);
    if (fd >= 0) {
        addr = fill(fd, a, err);
        if (addr == MAP_FAILED) {
            goto error;
        }
        if (publish_unnamed(fd, a->fspath) < 0) {
            *err = errno;
            goto error;
        }
        goto done;
    }
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
        *err = errno;
        goto error;
    }
    /* No O_TMPFILE here: fill a unique temporary name, then link it. */
    do {
        fd = open(a->tmppath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, a->mode);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        *err = errno;
        goto error;
    }
    made = a->tmppath;
    addr = fill(fd, a, err);
    if (addr == MAP_FAILED) {
        goto error;
    }
    if (link(a->tmppath, a->fspath) < 0) {
        *err = errno;
        goto error;
    }
    unlink(a->tmppath);
    made = NULL;
    goto done;
#else
    /* POSIX without O_TMPFILE: exclusive create under the final name. */
    if (a->kind == KIND_SHM) {
        fd = shm_open(a->path, O_RDWR | O_CREAT | O_EXCL, a->mode);
    }
    else {
        fd = open(a->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, a->mode);
    }
    if (fd < 0) {
        *err = errno;
        goto error;
    }
    made = a->path;
    addr = fill(fd, a, err);
    if (addr == MAP_FAILED) {
        goto error;
    }
    made = NULL;
    goto done;
#endif

error:
    if (addr != MAP_FAILED) {
        munmap(addr, (size_t)a->size);
        addr = MAP_FAILED;
    }
    if (made != NULL) {
        if (a->kind == KIND_SHM && made == a->path) {
            shm_unlink(made);
        }
        else {
            unlink(made);
        }
    }
done:
    if (fd >= 0) {
        if (addr != MAP_FAILED && fstat(fd, st) < 0) {
            memset(st, 0, sizeof(*st));   /* published: only the identity is unknown */
        }
        close(fd);
    }
    return addr;
}

static PyObject *
ext_create(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "path", "kind", "size", "header", "mode",
                             "populate", "fspath", "dir", "tmppath", "data", NULL};
    PyObject *name;
    create_args a = {0};
    Py_buffer header = {0};
    Py_buffer data = {0};
    Py_ssize_t size;
    unsigned int mode;
    int err = 0;
    void *addr;
    struct stat st;
    Segment *seg = NULL;
    PyObject *result = NULL;

    a.fspath = a.dir = a.tmppath = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Usiny*Ip|zzzz*:create", kwlist,
                                     &name, &a.path, &a.kind, &size, &header,
                                     &mode, &a.populate, &a.fspath, &a.dir,
                                     &a.tmppath, &data)) {
        return NULL;
    }
    if (size <= 0 || header.len > size || data.len > size - header.len) {
        PyErr_SetString(PyExc_ValueError, "size must cover the header and data");
        goto cleanup;
    }
#ifdef __linux__
    if (a.fspath == NULL || a.dir == NULL || a.tmppath == NULL) {
        PyErr_SetString(PyExc_ValueError, "fspath, dir and tmppath are required");
        goto cleanup;
    }
#endif
    a.size = (off_t)size;
    a.mode = (mode_t)mode;
    a.header = header.buf;
    a.header_len = header.len;
    a.data = data.buf;
    a.data_len = data.obj != NULL ? data.len : 0;

    seg = segment_alloc(get_state(module)->segment_type, name, 0);
    if (seg == NULL) {
        goto cleanup;
    }
    Py_BEGIN_ALLOW_THREADS
    addr = create_mapping(&a, &st, &err);
    Py_END_ALLOW_THREADS
    if (addr == MAP_FAILED) {
        raise_errno(err, name);
        goto cleanup;
    }
    seg->addr = addr;
    seg->size = size;
    set_identity(seg, &st);
    result = (PyObject *)seg;
    seg = NULL;

cleanup:
    Py_XDECREF(seg);
    PyBuffer_Release(&header);
    if (data.obj != NULL) {
        PyBuffer_Release(&data);
    }
    return result;
}

/* ------------------------------------------------------------------ */
/* attach                                                               */
/* ------------------------------------------------------------------ */

static uint32_t
read_le(const unsigned char *p, int n)
{
    uint32_t v = 0;
    for (int i = n - 1; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* Headers are padded to a page with spaces: skip them back from `end` a
 * word at a time (one aligned-or-not load and compare per 8 bytes). */
static Py_ssize_t
skip_spaces(const unsigned char *p, Py_ssize_t start, Py_ssize_t end)
{
    const uint64_t spaces = 0x2020202020202020ULL;
    uint64_t word;
    while (end - start >= 8) {
        memcpy(&word, p + end - 8, sizeof word);
        if (word != spaces) {
            break;
        }
        end -= 8;
    }
    return end;
}

/* Check the .npy preamble at the start of an object of `size` bytes whose
 * first `avail` bytes are at p (avail >= min(size, 12)); sets the header
 * text's start and length, or raises ValueError.  Reads only the preamble. */
static int
check_preamble(const unsigned char *p, Py_ssize_t avail, Py_ssize_t size,
               PyObject *name, Py_ssize_t *start, Py_ssize_t *hlen,
               int *version)
{
    int major, lenbytes;

    if (size < NPY_MAGIC_LEN + 4 || avail < NPY_MAGIC_LEN + 4 ||
        memcmp(p, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%R is not a .npy array (bad magic or too short: %zd bytes)",
                     name, size);
        return -1;
    }
    major = p[6];
    if (major < 1 || major > 3 || p[7] != 0) {
        PyErr_Format(PyExc_ValueError, "%R: unsupported .npy version %d.%d",
                     name, major, p[7]);
        return -1;
    }
    *version = major;
    lenbytes = major == 1 ? 2 : 4;
    *start = 8 + lenbytes;
    if (size < *start || avail < *start) {
        PyErr_Format(PyExc_ValueError, "%R: truncated .npy preamble", name);
        return -1;
    }
    *hlen = (Py_ssize_t)read_le(p + 8, lenbytes);
    if (*hlen > MAX_HEADER) {
        /* Before anything is copied: a forged length cannot cost memory. */
        PyErr_Format(PyExc_ValueError,
                     "%R: .npy header length %zd is over the limit of %d bytes",
                     name, *hlen, MAX_HEADER);
        return -1;
    }
    if (*hlen > size - *start) {
        PyErr_Format(PyExc_ValueError,
                     "%R: header length %zd runs past the end of the %zd-byte "
                     "object", name, *hlen, size);
        return -1;
    }
    return 0;
}

/* The header text at p[start, start + hlen) without its trailing padding. */
static PyObject *
header_text(const unsigned char *p, Py_ssize_t start, Py_ssize_t hlen)
{
    Py_ssize_t end = start + hlen;
    while (end > start && (p[end - 1] == '\n' || p[end - 1] == '\0')) {
        end--;
    }
    end = skip_spaces(p, start, end);
    while (end > start && (p[end - 1] == ' ' || p[end - 1] == '\n' ||
                           p[end - 1] == '\0')) {
        end--;
    }
    return PyBytes_FromStringAndSize((const char *)p + start, end - start);
}

/* What attach() makes of an object: check the preamble and return the
 * header text, or set ValueError.  `head` holds the object's first `got`
 * bytes (read with pread, so that attaching touches no page of the
 * mapping: no fault, no page table, no TLB flush at unmap); a header that
 * does not fit in them is read from the mapping `addr` (NULL: none). */
static PyObject *
parse_header(const unsigned char *head, Py_ssize_t got,
             const unsigned char *addr, Py_ssize_t size, PyObject *name,
             Py_ssize_t *data_offset, int *version)
{
    Py_ssize_t start, hlen;
    if (check_preamble(head, got, size, name, &start, &hlen, version) < 0) {
        return NULL;
    }
    if (start + hlen > got) {
        if (addr == NULL || got < (size < HEAD_BYTES ? size : HEAD_BYTES)) {
            /* Shrunk since fstat: the mapping may not cover the header. */
            PyErr_Format(PyExc_ValueError, "%R: truncated .npy header", name);
            return NULL;
        }
        head = addr;
    }
    *data_offset = start + hlen;
    return header_text(head, start, hlen);
}

/* Take a shared flock on fd, waiting while another process holds it
 * exclusively.  Returns 0 or an errno value. */
static int
lock_shared(int fd)
{
    while (flock(fd, LOCK_SH) < 0) {
        if (errno != EINTR) {
            return errno;
        }
    }
    return 0;
}

/* Read the first bytes of fd (up to HEAD_BYTES) into head: *got says how
 * many.  Returns 0 or an errno value. */
static int
read_head(int fd, unsigned char *head, Py_ssize_t want, Py_ssize_t *got)
{
    ssize_t n;
    *got = 0;
    while (*got < want) {
        n = pread(fd, head + *got, (size_t)(want - *got), (off_t)*got);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        if (n == 0) {
            break;
        }
        *got += n;
    }
    return 0;
}

/* fstat fd and check it is a non-empty regular file.  Returns 0, or -1
 * with *err set (0 for "not a regular file" or "empty", *size telling
 * which, as raise_map_error wants).  Called without the GIL. */
static int
stat_regular(int fd, struct stat *st, Py_ssize_t *size, int *err)
{
    if (fstat(fd, st) < 0) {
        *err = errno;
        return -1;
    }
    if (!S_ISREG(st->st_mode) || st->st_size <= 0) {
        *err = 0;
        *size = S_ISREG(st->st_mode) ? 0 : -1;
        return -1;
    }
    *size = (Py_ssize_t)st->st_size;
    return 0;
}

/* Read the head of an object of `size` bytes (see HEAD_BYTES).  Returns 0
 * or an errno value.  Called without the GIL. */
static int
read_object_head(int fd, Py_ssize_t size, unsigned char *head, Py_ssize_t *got)
{
    return read_head(fd, head, size < HEAD_BYTES ? size : HEAD_BYTES, got);
}

/* open (+ shared flock) + fstat + mmap.  Called without the GIL.  Returns
 * the mapping with its fd still open in *fdp, or MAP_FAILED with *err set
 * (see stat_regular) and nothing left open.  With `lock`, the shared flock
 * is taken before anything of the object is read: a process that rewrites
 * the object in place takes the lock exclusively first, so it can do so
 * only while nobody maps it (the fd then stays with the segment). */
static void *
open_and_map(const char *path, int kind, int readonly, int populate, int lock,
             Py_ssize_t *size, struct stat *st, int *fdp, int *err)
{
    void *addr = MAP_FAILED;
    int prot = readonly ? PROT_READ : PROT_READ | PROT_WRITE;
    int flags = MAP_SHARED | (populate ? MAP_POPULATE : 0);
    int fd = open_existing(path, kind, readonly ? O_RDONLY : O_RDWR);

    if (fd < 0) {
        *err = errno;
        return MAP_FAILED;
    }
    if (lock && (*err = lock_shared(fd)) != 0) {
        goto cleanup;
    }
    if (stat_regular(fd, st, size, err) < 0) {
        goto cleanup;
    }
    addr = mmap(NULL, (size_t)*size, prot, flags, fd, 0);
    if (addr == MAP_FAILED) {
        *err = errno;
        goto cleanup;
    }
    *fdp = fd;
    return addr;

cleanup:
    close(fd);
    return MAP_FAILED;
}

/* The error of a failed open_and_map / map_fd. */
static void
raise_map_error(int err, Py_ssize_t size, PyObject *name)
{
    if (err != 0) {
        raise_errno(err, name);
    }
    else if (size < 0) {
        PyErr_Format(PyExc_ValueError, "%R is not a regular file", name);
    }
    else {
        PyErr_Format(PyExc_ValueError, "%R is empty: not a .npy array", name);
    }
}

/* fstat + mmap of an fd the caller keeps.  Called without the GIL; same
 * errors as open_and_map; reads the head too. */
static void *
map_fd(int fd, int readonly, Py_ssize_t *size, struct stat *st,
       unsigned char *head, Py_ssize_t *got, int *err)
{
    void *addr;
    int prot = readonly ? PROT_READ : PROT_READ | PROT_WRITE;
    if (stat_regular(fd, st, size, err) < 0 ||
        (*err = read_object_head(fd, *size, head, got)) != 0) {
        return MAP_FAILED;
    }
    addr = mmap(NULL, (size_t)st->st_size, prot, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) {
        *err = errno;
    }
    return addr;
}

/* What attach() and attach_fd() return for a mapped segment: (segment,
 * header text, data offset, .npy version), the header checked from the
 * `got` bytes read into `head` (or the mapping). */
static PyObject *
attach_result(Segment *seg, const unsigned char *head, Py_ssize_t got,
              PyObject *name)
{
    Py_ssize_t data_offset = 0;
    int version = 0;
    PyObject *result, *header = parse_header(head, got, seg->addr, seg->size,
                                             name, &data_offset, &version);
    if (header == NULL) {
        return NULL;
    }
    result = Py_BuildValue("(OOni)", seg, header, data_offset, version);
    Py_DECREF(header);
    return result;
}

/* attach_fd(name, fd, readonly, lock=False): map the object behind an open
 * fd (one passed by another process; its name may be gone).  The fd stays
 * open.  With `lock`, the segment keeps a duplicate of it holding a shared
 * flock (as attach(lock=True) does), taken before the header is read.
 * Returns what attach() returns. */
static PyObject *
ext_attach_fd(PyObject *module, PyObject *args)
{
    PyObject *name, *result = NULL;
    int fd, readonly, lock = 0, err = 0, lockfd = -1;
    Py_ssize_t size = 0, got = 0;
    unsigned char head[HEAD_BYTES];
    struct stat st;
    void *addr = MAP_FAILED;
    Segment *seg;

    if (!PyArg_ParseTuple(args, "Uip|p:attach_fd", &name, &fd, &readonly, &lock)) {
        return NULL;
    }
    seg = segment_alloc(get_state(module)->segment_type, name, readonly);
    if (seg == NULL) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (lock) {
        lockfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        err = lockfd < 0 ? errno : lock_shared(lockfd);
    }
    if (err == 0) {
        addr = map_fd(fd, readonly, &size, &st, head, &got, &err);
    }
    Py_END_ALLOW_THREADS
    seg->fd = lockfd;           /* closed (lock released) with the segment */
    if (addr == MAP_FAILED) {
        raise_map_error(err, size, name);
        goto cleanup;
    }
    seg->addr = addr;
    seg->size = size;
    set_identity(seg, &st);
    result = attach_result(seg, head, got, name);

cleanup:
    Py_DECREF(seg);
    return result;
}

/* preamble(data, name): what attach() makes of a segment's first bytes,
 * for a bytes-like object: (header_text, data_offset, version). */
static PyObject *
ext_preamble(PyObject *module, PyObject *args)
{
    Py_buffer data;
    PyObject *name, *header, *result = NULL;
    Py_ssize_t data_offset = 0;
    int version = 0;
    if (!PyArg_ParseTuple(args, "y*U:preamble", &data, &name)) {
        return NULL;
    }
    header = parse_header(data.buf, data.len, NULL, data.len, name,
                          &data_offset, &version);
    if (header != NULL) {
        result = Py_BuildValue("(Nni)", header, data_offset, version);
    }
    PyBuffer_Release(&data);
    return result;
}

/* attach(name, path, kind, readonly, populate=False, lock=False): positional
 * only and parsed by hand, because attach is the hot path of every handle. */
static int
attach_args(PyObject *const *args, Py_ssize_t nargs, PyObject **name,
            const char **path, int *kind, int *readonly, int *populate,
            int *lock)
{
    Py_ssize_t path_len;
    long kind_value;
    if (nargs < 4 || nargs > 6) {
        PyErr_Format(PyExc_TypeError,
                     "attach() takes 4 to 6 positional arguments (%zd given)", nargs);
        return -1;
    }
    if (!PyUnicode_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "attach(): name and path must be str");
        return -1;
    }
    *name = args[0];
    *path = PyUnicode_AsUTF8AndSize(args[1], &path_len);
    if (*path == NULL) {
        return -1;
    }
    if ((size_t)path_len != strlen(*path)) {
        PyErr_SetString(PyExc_ValueError, "attach(): embedded null character in path");
        return -1;
    }
    kind_value = PyLong_AsLong(args[2]);
    if (kind_value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (kind_value != KIND_SHM && kind_value != KIND_FILE) {
        PyErr_Format(PyExc_ValueError, "attach(): unknown kind %ld", kind_value);
        return -1;
    }
    *kind = (int)kind_value;
    *readonly = PyObject_IsTrue(args[3]);
    *populate = nargs >= 5 ? PyObject_IsTrue(args[4]) : 0;
    *lock = nargs >= 6 ? PyObject_IsTrue(args[5]) : 0;
    return *readonly < 0 || *populate < 0 || *lock < 0 ? -1 : 0;
}

/* The result of an attach whose object is in the header cache:
 * (segment, None, 0, 0), seg.meta set.  Closes fd: it is a shm object's,
 * whose close never waits, so this is done with the GIL held. */
static PyObject *
attached_cached(Segment *seg, PyObject *meta, int fd)
{
    close(fd);
    Py_INCREF(meta);
    Py_XSETREF(seg->meta, meta);
    return Py_BuildValue("(OOni)", seg, Py_None, (Py_ssize_t)0, 0);
}

/* Returns (segment, header_text, data_offset, npy_version), or (segment,
 * None, 0, 0) with segment.meta already set when the header cache holds
 * this very object (shm, attached without the lock). */
static PyObject *
ext_attach(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    module_state *state = get_state(module);
    PyObject *name;
    const char *path;
    int kind, readonly, populate, lock, err = 0, fd = -1;
    int cacheable;
    Py_ssize_t size = 0, got = 0;
    unsigned char head[HEAD_BYTES];
    void *addr;
    struct stat st;
    Segment *seg = NULL;
    PyObject *result = NULL, *meta;

    if (attach_args(args, nargs, &name, &path, &kind, &readonly, &populate,
                    &lock) < 0) {
        return NULL;
    }
    seg = segment_alloc(state->segment_type, name, readonly);
    if (seg == NULL) {
        return NULL;
    }
    /* Not cacheable: read the head right away, in the same release of
     * the GIL.  Cacheable: only after looking the object up. */
    cacheable = kind == KIND_SHM && !lock;
    Py_BEGIN_ALLOW_THREADS
    addr = open_and_map(path, kind, readonly, populate, lock, &size, &st, &fd,
                        &err);
    if (addr != MAP_FAILED && !cacheable) {
        err = read_object_head(fd, size, head, &got);
        if (!lock) {
            close(fd);
            fd = -1;
        }
    }
    Py_END_ALLOW_THREADS
    if (addr == MAP_FAILED) {
        raise_map_error(err, size, name);
        goto cleanup;
    }
    seg->addr = addr;
    seg->size = size;
    set_identity(seg, &st);
    if (lock) {
        seg->fd = fd;           /* closed (lock released) with the segment */
        fd = -1;
    }
    if (cacheable) {
        meta = cached_meta(state, seg);
        if (meta != NULL) {
            result = attached_cached(seg, meta, fd);
            fd = -1;
            goto cleanup;
        }
        Py_BEGIN_ALLOW_THREADS
        err = read_object_head(fd, size, head, &got);
        close(fd);
        Py_END_ALLOW_THREADS
        fd = -1;
    }
    if (err != 0) {
        raise_errno(err, name);
        goto cleanup;
    }
    result = attach_result(seg, head, got, name);

cleanup:
    Py_XDECREF(seg);
    return result;
}

/* remember(segment): record segment.meta, the validated header of the
 * object it maps, in the header cache under the object's identity. */
static PyObject *
ext_remember(PyObject *module, PyObject *arg)
{
    module_state *state = get_state(module);
    Segment *seg;
    header_entry *e;
    if (!PyObject_TypeCheck(arg, state->segment_type)) {
        PyErr_SetString(PyExc_TypeError, "remember() takes a Segment");
        return NULL;
    }
    seg = (Segment *)arg;
    if (seg->meta == NULL || seg->meta == Py_None) {
        PyErr_SetString(PyExc_ValueError, "remember(): the segment has no meta");
        return NULL;
    }
    e = header_slot(state, seg);
    e->st_dev = seg->st_dev;
    e->st_ino = seg->st_ino;
    e->size = seg->size;
    e->mtime_ns = seg->mtime_ns;
    e->ctime_ns = seg->ctime_ns;
    Py_INCREF(seg->meta);
    Py_XSETREF(e->meta, seg->meta);
    Py_RETURN_NONE;
}

/* forget(): empty the header cache. */
static PyObject *
ext_forget(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    module_state *state = get_state(module);
    for (int i = 0; i < HEADER_CACHE_SLOTS; i++) {
        Py_CLEAR(state->headers[i].meta);
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ */
/* unlink, stat                                                         */
/* ------------------------------------------------------------------ */

static PyObject *
ext_unlink(PyObject *module, PyObject *args)
{
    PyObject *name;
    const char *path;
    int kind, rc;
    if (!PyArg_ParseTuple(args, "Usi:unlink", &name, &path, &kind)) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = kind == KIND_SHM ? shm_unlink(path) : unlink(path);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
    }
    Py_RETURN_NONE;
}

#if defined(__linux__) && !defined(RENAME_NOREPLACE)
#define RENAME_NOREPLACE (1 << 0)
#endif

/* rename_noreplace(src, dst): rename the file src to dst, failing with
 * FileExistsError if dst exists (renameat2's RENAME_NOREPLACE; a plain
 * rename() would replace it).  Exactly one of several processes renaming
 * the same src succeeds; the others get FileNotFoundError.  Linux 3.15+
 * (tmpfs 3.17+); elsewhere OSError(ENOSYS). */
static PyObject *
ext_rename_noreplace(PyObject *module, PyObject *args)
{
    const char *src, *dst;
    int rc, err = 0;
    if (!PyArg_ParseTuple(args, "ss:rename_noreplace", &src, &dst)) {
        return NULL;
    }
#if defined(__linux__) && defined(SYS_renameat2)
    Py_BEGIN_ALLOW_THREADS
    rc = (int)syscall(SYS_renameat2, AT_FDCWD, src, AT_FDCWD, dst, RENAME_NOREPLACE);
    if (rc < 0) {
        err = errno;
    }
    Py_END_ALLOW_THREADS
#else
    rc = -1;
    err = ENOSYS;
#endif
    if (rc < 0) {
        errno = err;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, err == EEXIST ? dst : src);
    }
    Py_RETURN_NONE;
}

/* The address of the first element of a buffer-exporting object (a numpy
 * array): what reduction needs to compute a view's offset in its segment. */
static PyObject *
ext_address(PyObject *module, PyObject *obj)
{
    Py_buffer view;
    PyObject *result;
    if (PyObject_GetBuffer(obj, &view, PyBUF_STRIDES) < 0) {
        return NULL;
    }
    result = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return result;
}

/* (size, mtime, uid, mode) of an existing object. */
static PyObject *
ext_stat(PyObject *module, PyObject *args)
{
    PyObject *name;
    const char *path;
    int kind, fd, rc = -1, err = 0;
    struct stat st;
    if (!PyArg_ParseTuple(args, "Usi:stat", &name, &path, &kind)) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    fd = open_existing(path, kind, O_RDONLY);
    if (fd >= 0) {
        rc = fstat(fd, &st);
        err = errno;
        close(fd);
    }
    else {
        err = errno;
    }
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        return raise_errno(err, name);
    }
    return Py_BuildValue("(LdII)", (long long)st.st_size, (double)st.st_mtime,
                         (unsigned int)st.st_uid, (unsigned int)st.st_mode);
}

/* ------------------------------------------------------------------ */
/* module                                                               */
/* ------------------------------------------------------------------ */

static PyMethodDef ext_methods[] = {
    {"create", (PyCFunction)(void (*)(void))ext_create,
     METH_VARARGS | METH_KEYWORDS,
     "Atomically create, reserve, map and fill the header of a new object."},
    {"attach", (PyCFunction)(void (*)(void))ext_attach, METH_FASTCALL,
     "Map an existing object; returns (segment, header_text, data_offset, npy_version)."},
    {"remember", ext_remember, METH_O,
     "remember($module, segment, /)\n--\n\nCache segment.meta for the object it maps "
     "(its device, inode, size, mtime, ctime): attach() of that object "
     "then reads no header."},
    {"forget", ext_forget, METH_NOARGS,
     "forget($module, /)\n--\n\nEmpty the header cache."},
    {"attach_fd", ext_attach_fd, METH_VARARGS,
     "Map the object behind an open fd; returns what attach() returns."},
    {"preamble", ext_preamble, METH_VARARGS,
     "attach()'s check of a .npy preamble, on bytes: (header_text, "
     "data_offset, version)."},
    {"unlink", ext_unlink, METH_VARARGS, "Remove a name."},
    {"rename_noreplace", ext_rename_noreplace, METH_VARARGS,
     "rename_noreplace($module, src, dst, /)\n--\n\nRename the file src to dst; "
     "FileExistsError if dst exists (Linux)."},
    {"address", ext_address, METH_O, "Address of an exporter's first element."},
    {"stat", ext_stat, METH_VARARGS, "(size, mtime, uid, mode) of a name."},
    {"watch_parent", ext_watch_parent, METH_VARARGS,
     "watch_parent($module, pid, start_time, /)\n--\n\nEnd this process (_exit) when "
     "process pid, started at start_time, dies; a native thread watches."},
    {"start_time", ext_start_time, METH_O,
     "start_time($module, pid, /)\n--\n\nThe start time of pid (clock ticks since boot); 0 if unknown."},
    {"same_bytes", ext_same_bytes, METH_VARARGS,
     "same_bytes($module, a, b, /)\n--\n\nWhether two contiguous buffers hold the same bytes."},
    {"only_types", (PyCFunction)(void (*)(void))ext_only_types, METH_FASTCALL,
     "only_types($module, obj, types, depth, /)\n--\n\nWhether obj is made only of "
     "objects of exactly these types (a tuple), through at most depth levels of tuples, "
     "lists and dicts."},
    {NULL, NULL, 0, NULL},
};

static int
ext_exec(PyObject *module)
{
    module_state *state = get_state(module);
    state->segment_type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &Segment_spec, NULL);
    if (state->segment_type == NULL) {
        return -1;
    }
    if (PyModule_AddType(module, state->segment_type) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "MS_ASYNC", MS_ASYNC) < 0 ||
        PyModule_AddIntConstant(module, "MS_SYNC", MS_SYNC) < 0 ||
        PyModule_AddIntConstant(module, "MS_INVALIDATE", MS_INVALIDATE) < 0 ||
        PyModule_AddIntConstant(module, "KIND_SHM", KIND_SHM) < 0 ||
        PyModule_AddIntConstant(module, "KIND_FILE", KIND_FILE) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "MAX_HEADER", MAX_HEADER) < 0) {
        return -1;
    }
    return 0;
}

static int
ext_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *state = get_state(module);
    Py_VISIT(state->segment_type);
    for (int i = 0; i < HEADER_CACHE_SLOTS; i++) {
        Py_VISIT(state->headers[i].meta);
    }
    return 0;
}

static int
ext_clear(PyObject *module)
{
    module_state *state = get_state(module);
    Py_CLEAR(state->segment_type);
    for (int i = 0; i < HEADER_CACHE_SLOTS; i++) {
        Py_CLEAR(state->headers[i].meta);
    }
    return 0;
}

static void
ext_free(void *module)
{
    ext_clear((PyObject *)module);
}

static PyModuleDef_Slot ext_slots[] = {
    {Py_mod_exec, ext_exec},
    {0, NULL},
};

static struct PyModuleDef ext_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sharedarray._ext",
    .m_doc = "Shared memory segments: create, attach, unlink, stat.",
    .m_size = sizeof(module_state),
    .m_methods = ext_methods,
    .m_slots = ext_slots,
    .m_traverse = ext_traverse,
    .m_clear = ext_clear,
    .m_free = ext_free,
};

PyMODINIT_FUNC
PyInit__ext(void)
{
    return PyModuleDef_Init(&ext_module);
}
