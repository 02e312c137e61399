/* Functions of sharedarray._ext defined outside segment.c. */
#ifndef SHAREDARRAY_EXT_H
#define SHAREDARRAY_EXT_H

#include <Python.h>

/* watch.c */
PyObject *ext_watch_parent(PyObject *module, PyObject *args);
PyObject *ext_start_time(PyObject *module, PyObject *arg);
PyObject *ext_same_bytes(PyObject *module, PyObject *args);
PyObject *ext_only_types(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
