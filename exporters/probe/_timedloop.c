/*
 * hpcobs.exporters.probe._timedloop: the probe's compiled timing loop.
 *
 * One function, run(kind, handle_bytes, fn, args, out): calls the MPI function at address
 * `fn` (for a ping-pong: MPI_Send, then MPI_Recv from args) len(out) times with the integer
 * arguments `args` (buffer addresses, counts, MPI handles), times every call on its own with
 * clock_gettime(CLOCK_MONOTONIC) (the clock behind Python's perf_counter and Open MPI's
 * MPI_Wtime), and stores each call's seconds in `out`, a writable float64 buffer. It
 * returns 0, or the first non-zero MPI return code, at which it stops. The GIL is released
 * for the whole loop, so the probe's watchdog thread can still abort a hung run.
 *
 * Nothing here includes mpi.h or links libmpi: Python resolves the function addresses in
 * the library mpi4py loaded and passes the handles mpi4py holds (MPI._handleof), so the
 * loop uses exactly the MPI that mpi4py uses. `handle_bytes` is the size of an MPI handle
 * in that library (MPI._sizeof(MPI.Comm)): 8 for Open MPI (pointers), 4 for MPICH (ints);
 * every handle is passed with that C type.
 *
 * kind  signature (MPI-3)
 *   0   Barrier(comm)
 *   1   Bcast(buf, count, datatype, root, comm)
 *   2   Allreduce(sendbuf, recvbuf, count, datatype, op, comm)
 *   3   Allgather / Alltoall(sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype, comm)
 *   4   Reduce_scatter(sendbuf, recvbuf, recvcounts[], datatype, op, comm)
 *   5   one-argument test call fn(arg) returning int (for the unit tests: no MPI needed)
 *   6   ping: Send(buf, count, datatype, peer, tag, comm) then Recv(buf, count, datatype,
 *       peer, tag, comm, status); each round trip timed. args: buf, count, datatype, peer,
 *       tag, comm, the address of MPI_Recv, the address of an MPI_Status (fn is MPI_Send)
 *   7   pong: the answering side of 6, Recv then Send with the same args; not timed (nothing
 *       but the two calls runs between a message's arrival and its answer), out gets zeros
 *
 * A status is passed rather than MPI_STATUS_IGNORE, whose value differs between MPI
 * libraries (Open MPI: 0, MPICH: 1). With peer = MPI_PROC_NULL, 6 is the pairwise phase's
 * no-op calibration: MPI returns from both calls at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

static const int NARGS[] = {1, 5, 6, 7, 6, 1, 8, 8};
#define NKINDS ((int)(sizeof NARGS / sizeof NARGS[0]))

static inline double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* One loop per (kind, handle type): the call in the timed window is a direct call through
 * a correctly typed function pointer, nothing else. */
#define TIMED_LOOP(CALL)                                   \
    for (Py_ssize_t i = 0; i < n; i++) {                   \
        double t0 = now();                                 \
        int rc = (CALL);                                   \
        out[i] = now() - t0;                               \
        if (rc != 0) return rc;                            \
    }                                                      \
    return 0;

/* The answering side of a ping-pong: no clock reads between a message and its answer. */
#define UNTIMED_LOOP(CALL)                                 \
    for (Py_ssize_t i = 0; i < n; i++) {                   \
        int rc = (CALL);                                   \
        out[i] = 0.0;                                      \
        if (rc != 0) return rc;                            \
    }                                                      \
    return 0;

#define DEFINE_LOOPS(SUFFIX, H)                                                              \
    typedef int (*barrier_##SUFFIX)(H);                                                      \
    typedef int (*bcast_##SUFFIX)(void *, int, H, int, H);                                   \
    typedef int (*allreduce_##SUFFIX)(const void *, void *, int, H, H, H);                   \
    typedef int (*exchange_##SUFFIX)(const void *, int, H, void *, int, H, H);               \
    typedef int (*reduce_scatter_##SUFFIX)(const void *, void *, const int *, H, H, H);      \
    typedef int (*send_##SUFFIX)(const void *, int, H, int, int, H);                         \
    typedef int (*recv_##SUFFIX)(void *, int, H, int, int, H, void *);                       \
    static int loop_##SUFFIX(int kind, void *fn, const intptr_t *a, double *out,             \
                             Py_ssize_t n) {                                                 \
        switch (kind) {                                                                      \
        case 0: {                                                                            \
            barrier_##SUFFIX f = (barrier_##SUFFIX)fn;                                       \
            H comm = (H)a[0];                                                                \
            TIMED_LOOP(f(comm))                                                              \
        }                                                                                    \
        case 1: {                                                                            \
            bcast_##SUFFIX f = (bcast_##SUFFIX)fn;                                           \
            void *buf = (void *)a[0];                                                        \
            int count = (int)a[1], root = (int)a[3];                                         \
            H type = (H)a[2], comm = (H)a[4];                                                \
            TIMED_LOOP(f(buf, count, type, root, comm))                                      \
        }                                                                                    \
        case 2: {                                                                            \
            allreduce_##SUFFIX f = (allreduce_##SUFFIX)fn;                                   \
            const void *sbuf = (const void *)a[0];                                           \
            void *rbuf = (void *)a[1];                                                       \
            int count = (int)a[2];                                                           \
            H type = (H)a[3], op = (H)a[4], comm = (H)a[5];                                  \
            TIMED_LOOP(f(sbuf, rbuf, count, type, op, comm))                                 \
        }                                                                                    \
        case 3: {                                                                            \
            exchange_##SUFFIX f = (exchange_##SUFFIX)fn;                                     \
            const void *sbuf = (const void *)a[0];                                           \
            int scount = (int)a[1], rcount = (int)a[4];                                      \
            H stype = (H)a[2], rtype = (H)a[5], comm = (H)a[6];                              \
            void *rbuf = (void *)a[3];                                                       \
            TIMED_LOOP(f(sbuf, scount, stype, rbuf, rcount, rtype, comm))                    \
        }                                                                                    \
        case 4: {                                                                            \
            reduce_scatter_##SUFFIX f = (reduce_scatter_##SUFFIX)fn;                         \
            const void *sbuf = (const void *)a[0];                                           \
            void *rbuf = (void *)a[1];                                                       \
            const int *counts = (const int *)a[2];                                           \
            H type = (H)a[3], op = (H)a[4], comm = (H)a[5];                                  \
            TIMED_LOOP(f(sbuf, rbuf, counts, type, op, comm))                                \
        }                                                                                    \
        case 6:                                                                              \
        case 7: {                                                                            \
            send_##SUFFIX snd = (send_##SUFFIX)fn;                                           \
            recv_##SUFFIX rcv = (recv_##SUFFIX)(uintptr_t)a[6];                              \
            void *buf = (void *)a[0], *status = (void *)a[7];                                \
            int count = (int)a[1], peer = (int)a[3], tag = (int)a[4], first;                 \
            H type = (H)a[2], comm = (H)a[5];                                                \
            if (kind == 6) {                                                                 \
                TIMED_LOOP((first = snd(buf, count, type, peer, tag, comm)) != 0             \
                               ? first                                                       \
                               : rcv(buf, count, type, peer, tag, comm, status))             \
            }                                                                                \
            UNTIMED_LOOP((first = rcv(buf, count, type, peer, tag, comm, status)) != 0       \
                             ? first                                                         \
                             : snd(buf, count, type, peer, tag, comm))                       \
        }                                                                                    \
        default: {                                                                           \
            int (*f)(intptr_t) = (int (*)(intptr_t))fn;                                      \
            intptr_t arg = a[0];                                                             \
            TIMED_LOOP(f(arg))                                                               \
        }                                                                                    \
        }                                                                                    \
    }

DEFINE_LOOPS(ptr, intptr_t)
DEFINE_LOOPS(int, int)

static PyObject *run(PyObject *self, PyObject *pyargs) {
    int kind, handle_bytes;
    unsigned long long fn_address;
    PyObject *seq;
    Py_buffer view;
    (void)self;
    if (!PyArg_ParseTuple(pyargs, "iiKOw*", &kind, &handle_bytes, &fn_address, &seq, &view))
        return NULL;
    PyObject *result = NULL;
    PyObject *fast = NULL;
    if (kind < 0 || kind >= NKINDS) {
        PyErr_Format(PyExc_ValueError, "kind must be 0..%d, not %d", NKINDS - 1, kind);
        goto done;
    }
    if (handle_bytes != (int)sizeof(intptr_t) && handle_bytes != (int)sizeof(int)) {
        PyErr_Format(PyExc_ValueError, "handle_bytes must be %d or %d, not %d",
                     (int)sizeof(intptr_t), (int)sizeof(int), handle_bytes);
        goto done;
    }
    if (fn_address == 0) {
        PyErr_SetString(PyExc_ValueError, "fn must be a function address, not 0");
        goto done;
    }
    if (view.len % (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_TypeError, "out must be a contiguous float64 buffer");
        goto done;
    }
    fast = PySequence_Fast(seq, "args must be a sequence of integers");
    if (fast == NULL) goto done;
    if (PySequence_Fast_GET_SIZE(fast) != NARGS[kind]) {
        PyErr_Format(PyExc_ValueError, "kind %d takes %d arguments, got %zd", kind, NARGS[kind],
                     PySequence_Fast_GET_SIZE(fast));
        goto done;
    }
    intptr_t a[8];
    for (int i = 0; i < NARGS[kind]; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        long long v = PyLong_AsLongLong(item);
        if (v == -1 && PyErr_Occurred()) {
            /* addresses above 2**63 */
            PyErr_Clear();
            unsigned long long u = PyLong_AsUnsignedLongLong(item);
            if (u == (unsigned long long)-1 && PyErr_Occurred()) goto done;
            v = (long long)u;
        }
        a[i] = (intptr_t)v;
    }
    if ((kind == 6 || kind == 7) && a[6] == 0) {
        PyErr_SetString(PyExc_ValueError, "args[6] must be MPI_Recv's address, not 0");
        goto done;
    }
    Py_ssize_t n = view.len / (Py_ssize_t)sizeof(double);
    double *out = (double *)view.buf;
    void *fn = (void *)(uintptr_t)fn_address;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    if (handle_bytes == (int)sizeof(intptr_t))
        rc = loop_ptr(kind, fn, a, out, n);
    else
        rc = loop_int(kind, fn, a, out, n);
    Py_END_ALLOW_THREADS
    result = PyLong_FromLong(rc);
done:
    Py_XDECREF(fast);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"run", run, METH_VARARGS,
     "run(kind, handle_bytes, fn, args, out) -> int\n\n"
     "Call the function at address fn len(out) times with args, timing each call into out\n"
     "(seconds, float64; kind 7, a ping-pong's answering side, is not timed: zeros); return\n"
     "0 or the first non-zero return code, where it stops."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_timedloop",
    "The probe's compiled timing loop (see exporters/probe/_timedloop.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__timedloop(void) { return PyModule_Create(&module); }
