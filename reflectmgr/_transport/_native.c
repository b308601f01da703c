/* The hot half of the shared-memory transport in C: the futex, the CPU number, and a frame's
 * way into and out of a ring (see shm.py for the layout and waiting.py for the policy); and the
 * byte-level reads and writes of a manager's serving thread on a pipe or tcp socket (stream.py's
 * ServedStream), which take part in the same hand-over of the GIL.
 *
 * Everything here has a Python twin that does the same on the same bytes (shm.py's general path,
 * ctypes for the futex), so either side of a connection may run either: this module only makes
 * the common case shorter. A round trip's Python on each side was about twenty function calls, of
 * which the ring and the futex were more than half; here each is one call. Nothing else is done
 * in C: the spin policy's decisions, timeouts, EOF, large and out-of-band frames stay in Python.
 *
 * The rings are reached through the caller's memoryviews (the buffer protocol on every call), so a
 * connection disposed of meanwhile raises ValueError as the Python path does, never touches
 * unmapped memory. The positions and flags are aligned u64s in the mapping; they are loaded and
 * stored with the C11 atomics' builtins (acquire, release, and a full fence between a store and
 * the load of the peer's flag: the Dekker pair of shm.py), which the Python path approximates
 * with a lock pair.
 *
 * Ends holds one side's four views and spin policy, so that a frame's way in or out is one call
 * with two arguments (the positions are the control blocks' own). Ends.take() is a reader's whole
 * wait in one call: the frame if it is there, else the spin and the sleep; when to spin stays the
 * Python policy's call (waiting.SpinPolicy: take() calls its begin, end and slept), as do
 * timeouts and EOF (take() returns a code, the caller looks around).
 *
 * The module's only state is the method names take() calls, interned per interpreter (module
 * state), and Ends is a heap type made per module, so it loads in every subinterpreter (each with its own GIL). Built
 * where a C compiler is; without it, the Python path runs and behaves the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __linux__
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* The control block of a ring, in u64 indices (shm.py's _HEAD, _TAIL...; checked against them
 * there: LAYOUT). */
enum { HEAD = 0, TAIL = 8, READER_ASLEEP = 16, READER_CPU = 17, WRITER_ASLEEP = 24, DIRECT = 32, WOKEN_AT = 40, CLOSED = 41 };
/* The manager's bell page, in u64 indices (shm.py's _BELL_ASLEEP, _BELL_CPU; checked there too). */
enum { BELL_ASLEEP = 8, BELL_CPU = 9, BELL_WORDS = 12 };
enum { CTL_WORDS = 48 };
#define HEADER_SIZE 9 /* framing.py: u64 big-endian length, one flags byte */

static void *
low_word(uint64_t *word)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return (void *)word;
#else
    return (void *)((char *)word + 4);
#endif
}

static long
wake_word(uint64_t *word)
{
    long rc = syscall(SYS_futex, low_word(word), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    return rc < 0 ? -errno : rc;
}

static uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.perf_counter_ns's clock: the same in every process */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int
timeout_of(PyObject *seconds_obj, struct timespec *ts)
{
    double seconds = PyFloat_AsDouble(seconds_obj);
    if (seconds == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (seconds < 0) {
        seconds = 0;
    }
    ts->tv_sec = (time_t)seconds;
    ts->tv_nsec = (long)((seconds - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_nsec = 999999999L;
    }
    return 0;
}

/* A writable view of a ring's control block (CTL_WORDS u64s), or NULL with an exception set. */
static uint64_t *
control(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (view->len < (Py_ssize_t)(CTL_WORDS * sizeof(uint64_t)) || ((uintptr_t)view->buf & 7)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "not a ring's control block");
        return NULL;
    }
    return (uint64_t *)view->buf;
}

/* A ring's control block (args[0]) and its bytes (args[1]), or NULL with an exception set. */
static uint64_t *
ring_of(PyObject *const *args, Py_buffer *cv, Py_buffer *rv, int flags)
{
    uint64_t *ctl = control(args[0], cv);
    if (ctl != NULL && PyObject_GetBuffer(args[1], rv, flags) < 0) {
        PyBuffer_Release(cv);
        return NULL;
    }
    return ctl;
}

/* The value a sleeper saw (its low 32 bits are compared) and its bound, from args[1] and args[2]. */
static int
seen_and_bound(PyObject *const *args, uint32_t *seen, struct timespec *ts)
{
    unsigned long long value = PyLong_AsUnsignedLongLongMask(args[1]);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *seen = (uint32_t)value;
    return timeout_of(args[2], ts);
}

static void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The hand-over between a manager's serving threads (one per connection, one GIL). A thread that
 * takes a request marks itself the holder (with the time and its CPU) and unmarks itself once it
 * has let the GIL go to wait for the next one. A thread whose request arrives while another
 * holds looks, before it asks for the GIL, until the holder lets go: a small request is served
 * in a few microseconds, and a thread that asked for the GIL meanwhile would sleep on it and be
 * woken again (a second wake-up, tens of microseconds on an idle virtual CPU). It looks at most
 * until HAND_NS after the holder began (a long request: it sleeps on the GIL as before), and not
 * at all when the holder last ran on its own CPU (it could not let go while we look). Per
 * interpreter (each has its own GIL): the module's state. */
typedef struct {
    uintptr_t holder; /* the holding Ends, or 0 */
    uint64_t since;   /* when it took its request (now_ns) */
    int cpu;          /* where it took it */
} hand_t;

#define HAND_NS 20000

static void
hand_take(hand_t *hand, uintptr_t me)
{
    __atomic_store_n(&hand->since, now_ns(), __ATOMIC_RELAXED);
    __atomic_store_n(&hand->cpu, sched_getcpu(), __ATOMIC_RELAXED);
    __atomic_store_n(&hand->holder, me, __ATOMIC_RELEASE);
}

/* Called with the GIL released: we no longer hold (if we did). */
static void
hand_let_go(hand_t *hand, uintptr_t me)
{
    if (hand != NULL) {
        uintptr_t mine = me;
        __atomic_compare_exchange_n(&hand->holder, &mine, 0, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED);
    }
}

/* Called with the GIL released, before asking for it: wait for another holder to let go. */
static void
hand_wait(hand_t *hand, uintptr_t me)
{
    if (hand == NULL) {
        return;
    }
    uintptr_t holder = __atomic_load_n(&hand->holder, __ATOMIC_ACQUIRE);
    if (holder == 0 || holder == me || __atomic_load_n(&hand->cpu, __ATOMIC_RELAXED) == sched_getcpu()) {
        return;
    }
    uint64_t until = __atomic_load_n(&hand->since, __ATOMIC_RELAXED) + HAND_NS;
    while (__atomic_load_n(&hand->holder, __ATOMIC_ACQUIRE) == holder && now_ns() < until) {
        cpu_relax();
    }
}

/* FUTEX_WAIT on the u32 at address while it holds seen, the GIL released; 0 or the errno. With
 * hand, a serving thread's: it lets go of the hand-over first and waits on it before the GIL. */
static int
sleep_on(void *address, uint32_t seen, struct timespec *ts, hand_t *hand, uintptr_t me)
{
    long rc;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    hand_let_go(hand, me);
    rc = syscall(SYS_futex, address, FUTEX_WAIT, seen, ts, NULL, 0);
    if (rc < 0) {
        err = errno;
    }
    hand_wait(hand, me);
    Py_END_ALLOW_THREADS
    return err;
}

static int
args_ok(Py_ssize_t nargs, Py_ssize_t want, const char *usage)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", usage, want);
        return 0;
    }
    return 1;
}

/* wait(address, expected, seconds): sleep while the u32 at address holds expected (its low 32
 * bits), at most seconds; returns 0 when woken or timed out, else the errno (EAGAIN: the word
 * already differed; EINTR: a signal). The GIL is released while asleep. Shared futex (not
 * PRIVATE): the word lives in a mapping two processes share. */
static PyObject *
futex_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!args_ok(nargs, 3, "wait(address, expected, seconds)")) {
        return NULL;
    }
    void *address = PyLong_AsVoidPtr(args[0]);
    if (address == NULL && PyErr_Occurred()) {
        return NULL;
    }
    uint32_t expected;
    struct timespec ts;
    if (seen_and_bound(args, &expected, &ts) < 0) {
        return NULL;
    }
    int err = sleep_on(address, expected, &ts, NULL, 0);
    return PyLong_FromLong(err == ETIMEDOUT ? 0 : err);
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

/* fence(): a full memory fence, in one call: the Python path's FULL (shm.py). A pair of lock
 * calls would leave a bytecode between them, where a collection or a signal handler may run code
 * that fences too, on this thread, with the lock taken. */
static PyObject *
full_fence(PyObject *module, PyObject *unused)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/* Write one frame at position head of the ring (header and payload in place), publish the new
 * head and wake the reader if it sleeps: 1 if it woke the reader, 0 if not, -1 if the frame does
 * not fit contiguously in the free space or the payload is not one contiguous buffer (nothing
 * written: the caller's general path sends it). */
static long
send_frame(uint64_t *ctl, Py_buffer *rv, uint64_t head, long flags, PyObject *payload)
{
    Py_buffer pv;
    if (PyObject_GetBuffer(payload, &pv, PyBUF_SIMPLE) < 0) { /* not contiguous: the general path */
        PyErr_Clear();
        return -1;
    }
    long result = -1;
    uint64_t size = (uint64_t)rv->len, n = (uint64_t)pv.len, total = HEADER_SIZE + n;
    uint64_t tail = __atomic_load_n(&ctl[TAIL], __ATOMIC_ACQUIRE); /* the reader is done with it */
    uint64_t start = size ? head % size : 0;
    if (size && start + total <= size && head + total - tail <= size) {
        unsigned char *at = (unsigned char *)rv->buf + start;
        for (int i = 0; i < 8; i++) {
            at[i] = (unsigned char)(n >> (56 - 8 * i));
        }
        at[8] = (unsigned char)flags;
        memcpy(at + HEADER_SIZE, pv.buf, (size_t)n);
        __atomic_store_n(&ctl[HEAD], head + total, __ATOMIC_RELEASE);
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* Dekker: the head before the reader's flag */
        result = 0;
        if (__atomic_load_n(&ctl[READER_ASLEEP], __ATOMIC_RELAXED)) {
            ctl[WOKEN_AT] = now_ns();
            wake_word(&ctl[HEAD]);
            result = 1;
        }
    }
    PyBuffer_Release(&pv);
    return result;
}

/* (flags, payload bytes), or NULL with an exception set (a tuple packed by hand: Py_BuildValue
 * parses its format at every call, about 500 instructions of a round trip's 64k). */
static PyObject *
frame_of(unsigned char flags, const char *payload, Py_ssize_t n)
{
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        return NULL;
    }
    PyObject *flags_obj = PyLong_FromLong(flags); /* a small int: cached, never fails in practice */
    PyObject *bytes = flags_obj == NULL ? NULL : PyBytes_FromStringAndSize(payload, n);
    if (bytes == NULL) {
        Py_XDECREF(flags_obj);
        Py_DECREF(result);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, flags_obj);
    PyTuple_SET_ITEM(result, 1, bytes);
    return result;
}

/* The frame at position tail of a ring, if it lies there whole, unwrapped, with a payload of at
 * most limit bytes: (flags, payload bytes), with the new tail published and the writer woken if it
 * waits for space. Otherwise Py_None, not a new reference (nothing consumed); NULL on error. */
static PyObject *
take_frame(uint64_t *ctl, Py_buffer *rv, uint64_t tail, uint64_t limit)
{
    PyObject *result = Py_None;
    uint64_t size = (uint64_t)rv->len;
    uint64_t avail = __atomic_load_n(&ctl[HEAD], __ATOMIC_ACQUIRE) - tail; /* then the data */
    uint64_t start = size ? tail % size : 0;
    uint64_t contiguous = size - start < avail ? size - start : avail;
    if (size && contiguous >= HEADER_SIZE) {
        const unsigned char *at = (const unsigned char *)rv->buf + start;
        uint64_t n = 0;
        for (int i = 0; i < 8; i++) {
            n = (n << 8) | at[i];
        }
        if (n <= limit && n <= contiguous - HEADER_SIZE) {
            result = frame_of(at[8], (const char *)at + HEADER_SIZE, (Py_ssize_t)n);
            if (result != NULL) {
                __atomic_store_n(&ctl[TAIL], tail + HEADER_SIZE + n, __ATOMIC_RELEASE); /* copied out */
                __atomic_thread_fence(__ATOMIC_SEQ_CST); /* Dekker: the tail before the writer's flag */
                if (__atomic_load_n(&ctl[WRITER_ASLEEP], __ATOMIC_RELAXED)) {
                    wake_word(&ctl[TAIL]);
                }
            }
        }
    }
    return result;
}

/* The reader's sleep until the head moves past seen (low: its low 32 bits): raise the "asleep"
 * flag, fence, look again (and at the writer's "closed" flag), then the futex on the head's low
 * word, at most ts; the flag is lowered before returning. 0 if the head moved, 2 if the writer
 * closed with nothing more published, 1 otherwise. */
static long
sleep_once(uint64_t *ctl, uint64_t seen, uint32_t low, struct timespec *ts, hand_t *hand, uintptr_t me)
{
    long result = 1;
    __atomic_store_n(&ctl[READER_ASLEEP], 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* Dekker: the flag before we look at the head again */
    if (__atomic_load_n(&ctl[HEAD], __ATOMIC_ACQUIRE) != seen) {
        result = 0;
    }
    else if (__atomic_load_n(&ctl[CLOSED], __ATOMIC_ACQUIRE)) {
        result = __atomic_load_n(&ctl[HEAD], __ATOMIC_ACQUIRE) != seen ? 0 : 2;
    }
    else {
        sleep_on(low_word(&ctl[HEAD]), low, ts, hand, me);
        if (__atomic_load_n(&ctl[HEAD], __ATOMIC_ACQUIRE) != seen) {
            result = 0;
        }
    }
    __atomic_store_n(&ctl[READER_ASLEEP], 0, __ATOMIC_RELAXED);
    return result;
}

/* sleep(ctl, seen, seconds): sleep_once, at most seconds; returns its 0, 1 or 2 (after 1, woken
 * for nothing, a signal or the bound, the caller looks at the socket for EOF and at its deadline,
 * and calls again). */
static PyObject *
ring_sleep(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!args_ok(nargs, 3, "sleep(ctl, seen, seconds)")) {
        return NULL;
    }
    unsigned long long seen = PyLong_AsUnsignedLongLong(args[1]);
    if (seen == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    uint32_t low;
    struct timespec ts;
    if (seen_and_bound(args, &low, &ts) < 0) {
        return NULL;
    }
    Py_buffer cv;
    uint64_t *ctl = control(args[0], &cv);
    if (ctl == NULL) {
        return NULL;
    }
    long result = sleep_once(ctl, seen, low, &ts, NULL, 0);
    PyBuffer_Release(&cv);
    return PyLong_FromLong(result);
}

/* The interned names take() calls its spin policy by (per interpreter: the module's state). */
typedef struct {
    PyObject *window, *begin, *end, *slept, *max_ns, *words;
    hand_t hand; /* the serving threads' hand-over (above) */
} names_t;

static names_t *
names_of(PyObject *module)
{
    return (names_t *)PyModule_GetState(module);
}

/* The policy's int attribute name (window, max_ns); -1 with an exception set if it is missing or
 * not an int (the callers check PyErr_Occurred: a negative value alone means "no window"). */
static long long
int_attr(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        return -1;
    }
    long long n = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return n;
}

/* Is the side that writes to us awake, and did it last wait on our CPU (shm.py's _peer_state)?
 * Its flags are on our out ring (the thread that reads our frames and answers them), or, for a
 * client of a dispatching manager, the dispatcher's on the bell. 0, or -1 on error. */
static int
peer_state(names_t *names, uint64_t *out, PyObject *bell, uint64_t cpu, int *running, int *here)
{
    if (bell != Py_None && !__atomic_load_n(&out[DIRECT], __ATOMIC_RELAXED) &&
        !__atomic_load_n(&out[READER_ASLEEP], __ATOMIC_RELAXED)) {
        PyObject *words_obj = PyObject_GetAttr(bell, names->words);
        if (words_obj == NULL) {
            return -1;
        }
        Py_buffer wv;
        int rc = PyObject_GetBuffer(words_obj, &wv, PyBUF_SIMPLE);
        Py_DECREF(words_obj);
        if (rc < 0) {
            return -1;
        }
        if (wv.len < (Py_ssize_t)(BELL_WORDS * sizeof(uint64_t)) || ((uintptr_t)wv.buf & 7)) {
            PyBuffer_Release(&wv);
            PyErr_SetString(PyExc_ValueError, "not a bell page");
            return -1;
        }
        const uint64_t *words = (const uint64_t *)wv.buf;
        *running = !__atomic_load_n(&words[BELL_ASLEEP], __ATOMIC_RELAXED);
        *here = __atomic_load_n(&words[BELL_CPU], __ATOMIC_RELAXED) == cpu;
        PyBuffer_Release(&wv);
        return 0;
    }
    *running = !__atomic_load_n(&out[READER_ASLEEP], __ATOMIC_RELAXED);
    *here = __atomic_load_n(&out[READER_CPU], __ATOMIC_RELAXED) == cpu;
    return 0;
}

/* Spin on the head for at most window ns; 1 if it moved past tail. The GIL is released: the
 * process's other threads run meanwhile (a manager's other connections, a client's own work), and
 * taking it back costs nothing when nobody else wants it (a Python spin held it, letting others
 * in only at the switch interval). */
static int
spin_on(uint64_t *ctl, uint64_t tail, long long window, hand_t *hand, uintptr_t me)
{
    int moved = 0;
    Py_BEGIN_ALLOW_THREADS
    hand_let_go(hand, me);
    uint64_t deadline = now_ns() + (uint64_t)window;
    do {
        if (__atomic_load_n(&ctl[HEAD], __ATOMIC_ACQUIRE) != tail) {
            moved = 1;
            break;
        }
        cpu_relax();
    } while (now_ns() < deadline);
    if (!moved) {
        moved = __atomic_load_n(&ctl[HEAD], __ATOMIC_ACQUIRE) != tail;
    }
    if (moved) {
        hand_wait(hand, me);
    }
    Py_END_ALLOW_THREADS
    return moved;
}

/* Spin while spin's policy allows (spin.begin(running, here) gives the window in ns, spin.end(caught)
 * closes it); 1 if the head moved meanwhile, 0 if not, -1 on error. */
static int
spin_for(names_t *names, uint64_t *ctl, uint64_t *out, PyObject *bell, PyObject *spin, uint64_t tail, uint64_t cpu,
         hand_t *hand, uintptr_t me)
{
    long long open = int_attr(spin, names->window);
    if (open <= 0) {
        return open < 0 && PyErr_Occurred() ? -1 : 0;
    }
    int running, here;
    if (peer_state(names, out, bell, cpu, &running, &here) < 0) {
        return -1;
    }
    PyObject *window_obj = PyObject_CallMethodObjArgs(spin, names->begin, running ? Py_True : Py_False,
                                                      here ? Py_True : Py_False, NULL);
    if (window_obj == NULL) {
        return -1;
    }
    long long window = PyLong_AsLongLong(window_obj);
    Py_DECREF(window_obj);
    if (window == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (window <= 0) {
        return 0;
    }
    int caught = spin_on(ctl, tail, window, hand, me); /* the policy's spinner is held until end() */
    PyObject *done = PyObject_CallMethodOneArg(spin, names->end, caught ? Py_True : Py_False);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    return caught;
}

/* A reader's whole wait for the frame at tail of the ring (ctl, rv), in one call (shm.py's recv
 * and _await, where nothing unusual happens). Takes the frame at tail if it is there. If nothing
 * is there: marks our CPU on the ring, spins if spin (the connection's waiting.SpinPolicy; None:
 * never) allows, given the peer's state from out (our out ring's control block) or bell (the
 * manager's Bell, or None); then sleeps at most ts as sleep() does, and tells spin how soon the
 * data came. Returns the frame; None if something is there but not a frame this path takes (the
 * general path reads it); 1 if the sleep ended with nothing (woken for nothing, a signal, the
 * bound: the caller looks around and calls again without spinning); 2 if the writer closed with
 * nothing more published. */
static PyObject *
take_in(names_t *names, uint64_t *ctl, Py_buffer *rv, uint64_t tail, uint64_t limit, uint64_t *out, PyObject *bell,
        PyObject *spin, struct timespec *ts, hand_t *hand, uintptr_t me)
{
    if (__atomic_load_n(&ctl[HEAD], __ATOMIC_ACQUIRE) == tail) { /* nothing there: wait */
        uint64_t cpu = (uint64_t)(sched_getcpu() + 1);
        __atomic_store_n(&ctl[READER_CPU], cpu, __ATOMIC_RELAXED); /* a peer here must not spin against us */
        int caught = spin == Py_None ? 0 : spin_for(names, ctl, out, bell, spin, tail, cpu, hand, me);
        if (caught < 0) {
            return NULL;
        }
        if (!caught) {
            uint64_t began = now_ns();
            long woke = sleep_once(ctl, tail, (uint32_t)tail, ts, hand, me);
            if (woke) {
                return PyLong_FromLong(woke);
            }
            if (spin != Py_None) {
                long long max_ns = int_attr(spin, names->max_ns);
                if (max_ns < 0 && PyErr_Occurred()) {
                    return NULL;
                }
                if (max_ns > 0) {
                    /* How soon after we began to wait the data came (the writer's stamp, not when
                     * we woke: a wake-up on an idle virtual CPU alone can take longer than a spin). */
                    uint64_t woken_at = __atomic_load_n(&ctl[WOKEN_AT], __ATOMIC_RELAXED);
                    uint64_t arrived = (woken_at > began ? woken_at : now_ns()) - began;
                    PyObject *arrived_obj = PyLong_FromUnsignedLongLong(arrived);
                    if (arrived_obj == NULL) {
                        return NULL;
                    }
                    PyObject *told = PyObject_CallMethodOneArg(spin, names->slept, arrived_obj);
                    Py_DECREF(arrived_obj);
                    if (told == NULL) {
                        return NULL;
                    }
                    Py_DECREF(told);
                }
            }
        }
    }
    PyObject *result = take_frame(ctl, rv, tail, limit);
    if (result == Py_None) {
        Py_INCREF(result);
    }
    return result;
}

/* -- Ends: one side's two rings, for the calls of every frame ----------------------------------- */

/* Ends(in_ctl, in_ring, out_ctl, out_ring, spin): the four views of one side of a connection and
 * its spin policy, held so that the common frame's call passes none of them. The positions are
 * the control blocks' own: our in ring's TAIL and our out ring's HEAD, which only this side
 * writes (shm.py reads them there too). bell: the manager's Bell (a client of a dispatching
 * manager), or None. */
typedef struct {
    PyObject_HEAD
    PyObject *in_ctl, *in_ring, *out_ctl, *out_ring, *spin, *bell;
    int hand; /* a manager's serving thread: takes part in the hand-over */
} Ends;

static int
ends_init(Ends *self, PyObject *args, PyObject *kwargs)
{
    PyObject *in_ctl, *in_ring, *out_ctl, *out_ring, *spin;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "Ends() takes no keyword arguments");
        return -1;
    }
    if (!PyArg_UnpackTuple(args, "Ends", 5, 5, &in_ctl, &in_ring, &out_ctl, &out_ring, &spin)) {
        return -1;
    }
    Py_XSETREF(self->in_ctl, Py_NewRef(in_ctl));
    Py_XSETREF(self->in_ring, Py_NewRef(in_ring));
    Py_XSETREF(self->out_ctl, Py_NewRef(out_ctl));
    Py_XSETREF(self->out_ring, Py_NewRef(out_ring));
    Py_XSETREF(self->spin, Py_NewRef(spin));
    if (self->bell == NULL) {
        self->bell = Py_NewRef(Py_None);
    }
    return 0;
}

static int
ends_traverse(Ends *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->in_ctl);
    Py_VISIT(self->in_ring);
    Py_VISIT(self->out_ctl);
    Py_VISIT(self->out_ring);
    Py_VISIT(self->spin);
    Py_VISIT(self->bell);
    return 0;
}

static int
ends_clear(Ends *self)
{
    Py_CLEAR(self->in_ctl);
    Py_CLEAR(self->in_ring);
    Py_CLEAR(self->out_ctl);
    Py_CLEAR(self->out_ring);
    Py_CLEAR(self->spin);
    Py_CLEAR(self->bell);
    return 0;
}

static void
ends_dealloc(Ends *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    ends_clear(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int
ends_ready(Ends *self)
{
    if (self->in_ctl == NULL) {
        PyErr_SetString(PyExc_ValueError, "Ends() was not initialised");
        return 0;
    }
    return 1;
}

/* take(limit, seconds, spin=True): take_in() on our in ring at its TAIL, with our out ring, the
 * bell and (unless spin is false) the policy; the frame, None, 1 or 2, as there. */
static PyObject *
ends_take(Ends *self, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 2 && nargs != 3) || !ends_ready(self)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "take(limit, seconds, spin=True) takes 2 or 3 arguments");
        }
        return NULL;
    }
    unsigned long long limit = PyLong_AsUnsignedLongLong(args[0]);
    if (limit == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    struct timespec ts;
    if (timeout_of(args[1], &ts) < 0) {
        return NULL;
    }
    int spin = nargs == 3 ? PyObject_IsTrue(args[2]) : 1;
    if (spin < 0) {
        return NULL;
    }
    names_t *names = (names_t *)PyType_GetModuleState(Py_TYPE(self));
    if (names == NULL) {
        return NULL;
    }
    PyObject *views[2] = {self->in_ctl, self->in_ring};
    Py_buffer cv, rv, ov;
    uint64_t *ctl = ring_of(views, &cv, &rv, PyBUF_SIMPLE);
    if (ctl == NULL) {
        return NULL;
    }
    uint64_t *out = control(self->out_ctl, &ov);
    if (out == NULL) {
        PyBuffer_Release(&rv);
        PyBuffer_Release(&cv);
        return NULL;
    }
    uint64_t tail = __atomic_load_n(&ctl[TAIL], __ATOMIC_RELAXED); /* our own store */
    hand_t *hand = self->hand ? &names->hand : NULL;
    PyObject *result = take_in(names, ctl, &rv, tail, limit, out, spin ? self->bell : Py_None,
                               spin ? self->spin : Py_None, &ts, hand, (uintptr_t)self);
    if (hand != NULL && result != NULL && PyTuple_CheckExact(result)) {
        hand_take(hand, (uintptr_t)self); /* serving it now */
    }
    PyBuffer_Release(&ov);
    PyBuffer_Release(&rv);
    PyBuffer_Release(&cv);
    return result;
}

/* send(flags, payload): send_frame() on our out ring at its HEAD; 1, 0 or -1, as there. */
static PyObject *
ends_send(Ends *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !ends_ready(self)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "send(flags, payload) takes 2 arguments");
        }
        return NULL;
    }
    long flags = PyLong_AsLong(args[0]);
    if (flags == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *views[2] = {self->out_ctl, self->out_ring};
    Py_buffer cv, rv;
    uint64_t *ctl = ring_of(views, &cv, &rv, PyBUF_WRITABLE);
    if (ctl == NULL) {
        return NULL;
    }
    uint64_t head = __atomic_load_n(&ctl[HEAD], __ATOMIC_RELAXED); /* our own store */
    long result = send_frame(ctl, &rv, head, flags, args[1]);
    PyBuffer_Release(&rv);
    PyBuffer_Release(&cv);
    return PyLong_FromLong(result);
}

/* The settable references (bell, spin), by their offset in Ends: deleting one sets None. */
static PyObject *
ends_get_ref(Ends *self, void *offset)
{
    PyObject *value = *(PyObject **)((char *)self + (size_t)offset);
    return Py_NewRef(value == NULL ? Py_None : value);
}

static int
ends_set_ref(Ends *self, PyObject *value, void *offset)
{
    Py_XSETREF(*(PyObject **)((char *)self + (size_t)offset), Py_NewRef(value == NULL ? Py_None : value));
    return 0;
}

static PyMethodDef ends_methods[] = {
    {"take", (PyCFunction)(void (*)(void))ends_take, METH_FASTCALL, "Wait for the next frame and take it."},
    {"send", (PyCFunction)(void (*)(void))ends_send, METH_FASTCALL, "Write and publish one frame."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
ends_get_hand(Ends *self, void *unused)
{
    return PyBool_FromLong(self->hand);
}

static int
ends_set_hand(Ends *self, PyObject *value, void *unused)
{
    int hand = value == NULL ? 0 : PyObject_IsTrue(value);
    if (hand < 0) {
        return -1;
    }
    self->hand = hand;
    return 0;
}

static PyGetSetDef ends_getset[] = {
    {"hand", (getter)ends_get_hand, (setter)ends_set_hand,
     "A manager's serving thread: hands the GIL over to the others without a second wake-up.", NULL},
    {"bell", (getter)ends_get_ref, (setter)ends_set_ref, "The manager's Bell, or None.", (void *)offsetof(Ends, bell)},
    {"spin", (getter)ends_get_ref, (setter)ends_set_ref, "The reader's spin policy, or None: never spin.",
     (void *)offsetof(Ends, spin)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ends_slots[] = {
    {Py_tp_init, ends_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, ends_dealloc},
    {Py_tp_traverse, ends_traverse},
    {Py_tp_clear, ends_clear},
    {Py_tp_methods, ends_methods},
    {Py_tp_getset, ends_getset},
    {Py_tp_doc, "One side's two rings and spin policy, for the common frame's take and send."},
    {0, NULL},
};

static PyType_Spec ends_spec = {
    .name = "reflectmgr._transport._native.Ends",
    .basicsize = sizeof(Ends),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = ends_slots,
};

/* A manager's serving thread on a stream socket (pipe, tcp): the byte-level steps of
 * stream.py's read (try, spin, wait) and its send, with the hand-over above. What the Python
 * socket methods would do, but: the try and the send keep the GIL (neither blocks while the
 * socket has bytes or room, and letting the GIL go for a system call invites a hand-off in the
 * middle of a request: on every request once two clients call at once); the spin lets the GIL
 * go once for its whole window instead of once per look; and a thread whose bytes arrive while
 * another serves waits on the hand-over before it asks for the GIL. The caller passes the
 * socket's descriptor at each call (its fileno(): -1 once closed, EBADF as for the socket's own
 * methods) and the wait bound in ms (-1: none); a socket with a timeout is non-blocking, so a
 * wait polls for it. The policy (when to spin, how long) stays waiting.SpinPolicy's. */

static uintptr_t
thread_me(void)
{
    return (uintptr_t)PyThread_get_thread_ident();
}

/* The arguments every stream call begins with, (fd, buffer, third): the descriptor, the buffer
 * taken (flags: PyBUF_SIMPLE to send from, PyBUF_WRITABLE to receive into) and, with third, the
 * third argument as a long long. -1 with an exception set (nothing taken), else 0. */
static int
stream_args(PyObject *const *args, Py_ssize_t nargs, const char *usage, int *fd, Py_buffer *buf, int flags,
            long long *third)
{
    if (!args_ok(nargs, third ? 3 : 2, usage)) {
        return -1;
    }
    long number = PyLong_AsLong(args[0]);
    if (number == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (number < -1 || number > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return -1;
    }
    *fd = (int)number; /* -1: the socket was closed (the call fails with EBADF) */
    if (third != NULL) {
        *third = PyLong_AsLongLong(args[2]);
        if (*third == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    return PyObject_GetBuffer(args[1], buf, flags);
}

/* now_ns() + ms (for ever: 0 when ms < 0). */
static uint64_t
deadline_in(long long ms)
{
    return ms < 0 ? 0 : now_ns() + (uint64_t)ms * 1000000 + 1;
}

/* The ms poll() may wait until deadline (0: for ever: -1). */
static int
ms_until(uint64_t deadline)
{
    if (!deadline) {
        return -1;
    }
    uint64_t now = now_ns();
    return now >= deadline ? 0 : (int)((deadline - now + 999999) / 1000000);
}

/* What poll() said, as the callers take it: 1 ready (or an error the next call reports), 0
 * timed out, -1 EINTR (the caller checks signals). Called right after poll(), errno intact. */
static int
polled(int rc)
{
    return rc < 0 ? (errno == EINTR ? -1 : 1) : rc > 0;
}

/* stream_send(fd, data, timeout_ms): send all of data (the GIL kept while the socket takes it). */
static PyObject *
stream_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    long long ms;
    Py_buffer data;
    if (stream_args(args, nargs, "stream_send(fd, data, timeout_ms)", &fd, &data, PyBUF_SIMPLE, &ms) < 0) {
        return NULL;
    }
    uint64_t deadline = deadline_in(ms);
    const char *at = data.buf;
    Py_ssize_t left = data.len;
    int failed = 0;
    while (left > 0 && !failed) {
        ssize_t n = send(fd, at, (size_t)left, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0) {
            at += n;
            left -= n;
            continue;
        }
        int ready = -1; /* EINTR */
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd pfd = {fd, POLLOUT, 0};
            int rc, wait_ms = ms_until(deadline);
            Py_BEGIN_ALLOW_THREADS
            rc = poll(&pfd, 1, wait_ms);
            ready = polled(rc);
            Py_END_ALLOW_THREADS
        }
        else if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            failed = 1;
        }
        if (ready < 0 && !failed && PyErr_CheckSignals() < 0) {
            failed = 1;
        }
        if (ready == 0) {
            PyErr_SetString(PyExc_TimeoutError, "timed out");
            failed = 1;
        }
    }
    PyBuffer_Release(&data);
    if (failed) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* stream_try(fd, buffer): the bytes there now, the GIL kept; None if there are none. */
static PyObject *
stream_try(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    Py_buffer buf;
    if (stream_args(args, nargs, "stream_try(fd, buffer)", &fd, &buf, PyBUF_WRITABLE, NULL) < 0) {
        return NULL;
    }
    ssize_t n;
    do {
        n = recv(fd, buf.buf, (size_t)buf.len, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR && PyErr_CheckSignals() == 0);
    int err = errno;
    PyBuffer_Release(&buf);
    if (n >= 0) {
        hand_take(&names_of(module)->hand, thread_me());
        return PyLong_FromSsize_t(n);
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (err == EAGAIN || err == EWOULDBLOCK) {
        Py_RETURN_NONE;
    }
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* stream_spin(fd, buffer, window_ns): look for bytes until window_ns from now, the GIL let go
 * for the whole window (and the hand-over with it); None if none came. */
static PyObject *
stream_spin(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    long long window;
    Py_buffer buf;
    if (stream_args(args, nargs, "stream_spin(fd, buffer, window_ns)", &fd, &buf, PyBUF_WRITABLE, &window) < 0) {
        return NULL;
    }
    hand_t *hand = &names_of(module)->hand;
    uintptr_t me = thread_me();
    ssize_t n = -1;
    int err = EAGAIN;
    Py_BEGIN_ALLOW_THREADS
    hand_let_go(hand, me);
    uint64_t deadline = now_ns() + (uint64_t)(window > 0 ? window : 0);
    do {
        n = recv(fd, buf.buf, (size_t)buf.len, MSG_DONTWAIT);
        err = n < 0 ? errno : 0;
        if (n >= 0 || (err != EAGAIN && err != EWOULDBLOCK && err != EINTR)) {
            break;
        }
        cpu_relax();
    } while (now_ns() < deadline);
    if (n >= 0) {
        hand_wait(hand, me);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (n >= 0) {
        hand_take(hand, me);
        return PyLong_FromSsize_t(n);
    }
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR) {
        Py_RETURN_NONE; /* a signal: the wait that follows checks it */
    }
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* stream_wait(fd, buffer, timeout_ms): block until bytes come (or EOF: 0), the GIL released;
 * TimeoutError after timeout_ms (-1: never). Waits on the hand-over before taking the GIL. */
static PyObject *
stream_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    long long ms;
    Py_buffer buf;
    if (stream_args(args, nargs, "stream_wait(fd, buffer, timeout_ms)", &fd, &buf, PyBUF_WRITABLE, &ms) < 0) {
        return NULL;
    }
    uint64_t deadline = deadline_in(ms);
    hand_t *hand = &names_of(module)->hand;
    uintptr_t me = thread_me();
    PyObject *result = NULL;
    for (;;) {
        ssize_t n;
        int err, ready = 1;
        Py_BEGIN_ALLOW_THREADS
        hand_let_go(hand, me);
        n = recv(fd, buf.buf, (size_t)buf.len, 0); /* blocks unless the socket has a timeout */
        err = n < 0 ? errno : 0;
        if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
            struct pollfd pfd = {fd, POLLIN, 0};
            ready = polled(poll(&pfd, 1, ms_until(deadline)));
        }
        if (n >= 0) {
            hand_wait(hand, me);
        }
        Py_END_ALLOW_THREADS
        if (n >= 0) {
            hand_take(hand, me);
            result = PyLong_FromSsize_t(n);
            break;
        }
        if (err == EINTR || ready < 0) {
            if (PyErr_CheckSignals() < 0) {
                break;
            }
            continue;
        }
        if (err != EAGAIN && err != EWOULDBLOCK) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            break;
        }
        if (ready == 0) {
            PyErr_SetString(PyExc_TimeoutError, "timed out");
            break;
        }
    }
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"wait", (PyCFunction)(void (*)(void))futex_wait, METH_FASTCALL, "Sleep on a shared u32 while it holds a value."},
    {"wake", futex_wake, METH_O, "Wake the sleepers on a shared u32."},
    {"cpu", current_cpu, METH_NOARGS, "The CPU this thread runs on now."},
    {"fence", full_fence, METH_NOARGS, "A full memory fence."},
    {"sleep", (PyCFunction)(void (*)(void))ring_sleep, METH_FASTCALL, "Sleep until the head moves."},
    {"stream_send", (PyCFunction)(void (*)(void))stream_send, METH_FASTCALL, "Send all of data, the GIL kept while the socket takes it."},
    {"stream_try", (PyCFunction)(void (*)(void))stream_try, METH_FASTCALL, "The bytes there now, the GIL kept; None if none."},
    {"stream_spin", (PyCFunction)(void (*)(void))stream_spin, METH_FASTCALL, "Look for bytes for a window, the GIL released."},
    {"stream_wait", (PyCFunction)(void (*)(void))stream_wait, METH_FASTCALL, "Block until bytes come, with the hand-over."},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    names_t *names = names_of(module);
    names->window = PyUnicode_InternFromString("window");
    names->begin = PyUnicode_InternFromString("begin");
    names->end = PyUnicode_InternFromString("end");
    names->slept = PyUnicode_InternFromString("slept");
    names->max_ns = PyUnicode_InternFromString("max_ns");
    names->words = PyUnicode_InternFromString("words");
    if (!names->window || !names->begin || !names->end || !names->slept || !names->max_ns || !names->words) {
        return -1;
    }
    PyObject *layout = Py_BuildValue("(iiiiiiiiiii)", HEAD, TAIL, READER_ASLEEP, WRITER_ASLEEP, DIRECT, WOKEN_AT,
                                     CLOSED, HEADER_SIZE, READER_CPU, BELL_ASLEEP, BELL_CPU);
    if (layout == NULL) {
        return -1;
    }
    int rc = PyModule_AddObject(module, "LAYOUT", layout);
    if (rc < 0) {
        Py_DECREF(layout);
        return rc;
    }
    PyObject *ends = PyType_FromModuleAndSpec(module, &ends_spec, NULL);
    if (ends == NULL) {
        return -1;
    }
    rc = PyModule_AddObject(module, "Ends", ends);
    if (rc < 0) {
        Py_DECREF(ends);
    }
    return rc;
}

static int
clear_module(PyObject *module)
{
    names_t *names = names_of(module);
    if (names != NULL) {
        Py_CLEAR(names->window);
        Py_CLEAR(names->begin);
        Py_CLEAR(names->end);
        Py_CLEAR(names->slept);
        Py_CLEAR(names->max_ns);
        Py_CLEAR(names->words);
    }
    return 0;
}

static void
free_module(void *module)
{
    clear_module((PyObject *)module);
}

#define STATE_SIZE sizeof(names_t)
#else
static PyMethodDef methods[] = {{NULL, NULL, 0, NULL}}; /* no futex here: the Python path runs */

static int
exec_module(PyObject *module)
{
    return 0;
}

#define STATE_SIZE 0
#define clear_module NULL
#define free_module NULL
#endif

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "reflectmgr._transport._native",
    .m_doc = "The futex, the CPU number and the shared-memory ring's common case, in C (Linux).",
    .m_size = STATE_SIZE,
    .m_methods = methods,
    .m_slots = slots,
    .m_clear = clear_module,
    .m_free = free_module,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&module);
}
