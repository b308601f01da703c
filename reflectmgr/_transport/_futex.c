/* The futex and the CPU number, called from Python without ctypes (see waiting.py).
 *
 * A round trip makes up to four futex calls and two CPU lookups per side; through ctypes each
 * costs about 1 us of argument conversion and libffi around a syscall of a fraction of that. These
 * three functions take plain ints and a float, and nothing else. The module keeps no state, so
 * it loads in every subinterpreter (each with its own GIL). Built where a C compiler is; without
 * it, waiting.py uses ctypes (or the socket doorbell) and behaves the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __linux__
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* wait(address, expected, seconds): sleep while the u32 at address holds expected (its low 32
 * bits), at most seconds; returns 0 when woken or timed out, else the errno (EAGAIN: the word
 * already differed; EINTR: a signal). The GIL is released while asleep. Shared futex (not
 * PRIVATE): the word lives in a mapping two processes share. */
static PyObject *
futex_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "wait(address, expected, seconds) takes 3 arguments");
        return NULL;
    }
    void *address = PyLong_AsVoidPtr(args[0]);
    if (address == NULL && PyErr_Occurred()) {
        return NULL;
    }
    unsigned long long expected = PyLong_AsUnsignedLongLongMask(args[1]);
    if (expected == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    double seconds = PyFloat_AsDouble(args[2]);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (seconds < 0) {
        seconds = 0;
    }
    struct timespec ts;
    ts.tv_sec = (time_t)seconds;
    ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_nsec = 999999999L;
    }
    long rc;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_futex, address, FUTEX_WAIT, (uint32_t)expected, &ts, NULL, 0);
    if (rc < 0) {
        err = errno;
    }
    Py_END_ALLOW_THREADS
    if (err == ETIMEDOUT) {
        err = 0;
    }
    return PyLong_FromLong(err);
}

/* wake(address): wake every sleeper on the u32 at address; returns how many woke (or -errno).
 * The GIL is kept: the call does not block, and releasing it would invite a GIL hand-off. */
static PyObject *
futex_wake(PyObject *module, PyObject *address_obj)
{
    void *address = PyLong_AsVoidPtr(address_obj);
    if (address == NULL && PyErr_Occurred()) {
        return NULL;
    }
    long rc = syscall(SYS_futex, address, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    return PyLong_FromLong(rc < 0 ? -errno : rc);
}

/* cpu(): the CPU this thread runs on now (the vDSO: no system call), -1 if unknown. */
static PyObject *
current_cpu(PyObject *module, PyObject *unused)
{
    return PyLong_FromLong(sched_getcpu());
}

static PyMethodDef methods[] = {
    {"wait", (PyCFunction)(void (*)(void))futex_wait, METH_FASTCALL, "Sleep on a shared u32 while it holds a value."},
    {"wake", futex_wake, METH_O, "Wake the sleepers on a shared u32."},
    {"cpu", current_cpu, METH_NOARGS, "The CPU this thread runs on now."},
    {NULL, NULL, 0, NULL},
};
#else
static PyMethodDef methods[] = {{NULL, NULL, 0, NULL}}; /* no futex here: waiting.py uses the doorbell */
#endif

static PyModuleDef_Slot slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "reflectmgr._transport._futex",
    .m_doc = "The futex and the CPU number without ctypes (Linux).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__futex(void)
{
    return PyModuleDef_Init(&module);
}
