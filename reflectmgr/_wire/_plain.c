/* The common message's pickle, written and read without a Pickler (see codec.py's dumps_plain
 * and loads_plain).
 *
 * A small call's request and reply are tuples of atoms: (REQUEST, (), op, oid, (index, ("k",))),
 * (OK, (), 0). pickle.dumps and pickle.loads spend most of their time on a Pickler or Unpickler
 * object, its memo and its output buffer, not on the few opcodes (callgrind, each call alone in a
 * loop, the loop subtracted: 5.3k + 3.9k + 3.3k + 2.5k instructions for the four, about 15k of a
 * d[k]'s 63k; here 2.1k + 2.3k + 1.3k + 1.3k, about 7k).
 *
 * Nothing changes on the wire. dumps writes an ordinary protocol-5 pickle, which pickle.loads
 * reads back equal; loads reads the opcodes that pickle.dumps (and dumps here) write for such
 * values, and declines (returns None) anything else: the caller then calls pickle.loads, which
 * does what it always did, errors included. So either end of a connection may lack this module.
 *
 * dumps takes exact built-in types only (a subclass, an IntEnum, may reduce to something else):
 * None, bool, int in 64 bits, float, str (without lone surrogates), bytes under the caller's
 * limit, and tuples, lists and dicts of them, nested at most MAX_DEPTH deep; the whole pickle
 * under the limit too. Otherwise None, and nothing is raised but MemoryError.
 *
 * loads never allocates beyond what the data holds (no memo: a pickle that reads its memo, or
 * writes it by index, is declined), declines a deeper nesting than MAX_MARKS, and returns a value
 * only where pickle.loads would return an equal one (tests/unit/test_plain_pickle.py checks this
 * against pickle on mutated and random input).
 *
 * The module keeps no state, so it loads in every subinterpreter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 16
#define MAX_MARKS 32

/* -- dumps ------------------------------------------------------------------------------------ */

typedef struct {
    char *buf;
    Py_ssize_t len, cap, limit;
    char small[256];
} Out;

enum { OK = 0, DECLINE = 1, FAILED = -1 }; /* FAILED: an exception is set (MemoryError) */

static int
put(Out *out, const void *data, Py_ssize_t n)
{
    if (n > out->limit - out->len) {
        return DECLINE;
    }
    if (out->len + n > out->cap) {
        Py_ssize_t cap = out->cap * 2;
        while (cap < out->len + n) {
            cap *= 2;
        }
        char *grown = out->buf == out->small ? PyMem_Malloc(cap) : PyMem_Realloc(out->buf, cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return FAILED;
        }
        if (out->buf == out->small) {
            memcpy(grown, out->small, out->len);
        }
        out->buf = grown;
        out->cap = cap;
    }
    memcpy(out->buf + out->len, data, n);
    out->len += n;
    return OK;
}

static int
put_op(Out *out, char op)
{
    return put(out, &op, 1);
}

/* An opcode followed by a length in 1 byte (short) or 4 bytes little-endian, then the data. */
static int
put_sized(Out *out, char short_op, char long_op, const char *data, Py_ssize_t n)
{
    unsigned char head[5];
    Py_ssize_t h;
    if (n < 256) {
        head[0] = (unsigned char)short_op;
        head[1] = (unsigned char)n;
        h = 2;
    }
    else if ((uint64_t)n <= 0xffffffffu) {
        head[0] = (unsigned char)long_op;
        for (int i = 0; i < 4; i++) {
            head[1 + i] = (unsigned char)((uint64_t)n >> (8 * i));
        }
        h = 5;
    }
    else {
        return DECLINE;
    }
    int rc = put(out, head, h);
    return rc != OK ? rc : put(out, data, n);
}

static int
put_int(Out *out, PyObject *obj)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow) {
        return DECLINE;
    }
    if (v == -1 && PyErr_Occurred()) {
        return FAILED;
    }
    unsigned char b[10];
    Py_ssize_t n;
    if (v >= 0 && v < 256) {
        b[0] = 'K';
        b[1] = (unsigned char)v;
        n = 2;
    }
    else if (v >= 0 && v < 65536) {
        b[0] = 'M';
        b[1] = (unsigned char)v;
        b[2] = (unsigned char)(v >> 8);
        n = 3;
    }
    else if (v >= INT32_MIN && v <= INT32_MAX) {
        uint32_t u = (uint32_t)(int32_t)v;
        b[0] = 'J';
        for (int i = 0; i < 4; i++) {
            b[1 + i] = (unsigned char)(u >> (8 * i));
        }
        n = 5;
    }
    else { /* LONG1: 8 bytes of two's complement, little-endian */
        uint64_t u = (uint64_t)v;
        b[0] = (unsigned char)0x8a;
        b[1] = 8;
        for (int i = 0; i < 8; i++) {
            b[2 + i] = (unsigned char)(u >> (8 * i));
        }
        n = 10;
    }
    return put(out, b, n);
}

static int encode(Out *out, PyObject *obj, int depth);

/* The items of a tuple or a list, in order. */
static int
encode_items(Out *out, PyObject *const *items, Py_ssize_t n, int depth)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        int rc = encode(out, items[i], depth);
        if (rc != OK) {
            return rc;
        }
    }
    return OK;
}

static int
encode_tuple(Out *out, PyObject *obj, int depth)
{
    Py_ssize_t n = PyTuple_GET_SIZE(obj);
    if (n == 0) {
        return put_op(out, ')');
    }
    int rc = n > 3 ? put_op(out, '(') : OK;
    if (rc == OK) {
        rc = encode_items(out, &PyTuple_GET_ITEM(obj, 0), n, depth);
    }
    if (rc == OK) {
        static const char ops[] = {0, (char)0x85, (char)0x86, (char)0x87};
        rc = put_op(out, n > 3 ? 't' : ops[n]);
    }
    return rc;
}

static int
encode_list(Out *out, PyObject *obj, int depth)
{
    int rc = put_op(out, ']');
    if (rc != OK || PyList_GET_SIZE(obj) == 0) {
        return rc;
    }
    rc = put_op(out, '(');
    if (rc == OK) { /* nothing here runs Python code: the list cannot change while it is read */
        rc = encode_items(out, &PyList_GET_ITEM(obj, 0), PyList_GET_SIZE(obj), depth);
    }
    return rc != OK ? rc : put_op(out, 'e');
}

static int
encode_dict(Out *out, PyObject *obj, int depth)
{
    int rc = put_op(out, '}');
    if (rc != OK || PyDict_GET_SIZE(obj) == 0) {
        return rc;
    }
    rc = put_op(out, '(');
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (rc == OK && PyDict_Next(obj, &pos, &key, &value)) {
        rc = encode(out, key, depth);
        if (rc == OK) {
            rc = encode(out, value, depth);
        }
    }
    return rc != OK ? rc : put_op(out, 'u');
}

static int
encode(Out *out, PyObject *obj, int depth)
{
    if (obj == Py_None) {
        return put_op(out, 'N');
    }
    if (obj == Py_True || obj == Py_False) {
        return put_op(out, obj == Py_True ? (char)0x88 : (char)0x89);
    }
    PyTypeObject *type = Py_TYPE(obj);
    if (type == &PyLong_Type) {
        return put_int(out, obj);
    }
    if (type == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(obj, &n);
        if (utf8 == NULL) { /* a lone surrogate: pickle writes it with surrogatepass */
            PyErr_Clear();
            return DECLINE;
        }
        return put_sized(out, (char)0x8c, 'X', utf8, n);
    }
    if (type == &PyBytes_Type) {
        return put_sized(out, 'C', 'B', PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
    }
    if (type == &PyFloat_Type) {
        unsigned char b[9];
        b[0] = 'G';
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(obj), (char *)b + 1, 0) < 0) { /* big-endian */
            return FAILED;
        }
        return put(out, b, 9);
    }
    if (depth >= MAX_DEPTH) {
        return DECLINE;
    }
    if (type == &PyTuple_Type) {
        return encode_tuple(out, obj, depth + 1);
    }
    if (type == &PyList_Type) {
        return encode_list(out, obj, depth + 1);
    }
    if (type == &PyDict_Type) {
        return encode_dict(out, obj, depth + 1);
    }
    return DECLINE;
}

/* dumps(obj, limit): a protocol-5 pickle of obj, or None (see the top of this file). */
static PyObject *
plain_dumps(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "dumps(obj, limit) takes 2 arguments");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Out out = {.len = 0, .cap = sizeof(out.small), .limit = limit};
    out.buf = out.small;
    int rc = put(&out, "\x80\x05", 2);
    if (rc == OK) {
        rc = encode(&out, args[0], 0);
    }
    if (rc == OK) {
        rc = put_op(&out, '.');
    }
    PyObject *result = NULL;
    if (rc == OK) {
        result = PyBytes_FromStringAndSize(out.buf, out.len);
    }
    else if (rc == DECLINE) {
        result = Py_NewRef(Py_None);
    }
    if (out.buf != out.small) {
        PyMem_Free(out.buf);
    }
    return result;
}

/* -- loads ------------------------------------------------------------------------------------ */

typedef struct {
    const unsigned char *at, *end;
    PyObject **stack; /* owned references */
    Py_ssize_t len, cap;
    Py_ssize_t marks[MAX_MARKS];
    int nmarks;
    PyObject *small[32];
} In;

static int
take(In *in, Py_ssize_t n, const unsigned char **data)
{
    if (in->end - in->at < n) {
        return DECLINE;
    }
    *data = in->at;
    in->at += n;
    return OK;
}

static uint64_t
little_endian(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* Push a new reference (NULL: the exception set by whatever made it). */
static int
push(In *in, PyObject *obj)
{
    if (obj == NULL) {
        return FAILED;
    }
    if (in->len == in->cap) {
        Py_ssize_t cap = in->cap * 2;
        PyObject **grown = in->stack == in->small ? PyMem_Malloc(cap * sizeof(PyObject *))
                                                  : PyMem_Realloc(in->stack, cap * sizeof(PyObject *));
        if (grown == NULL) {
            Py_DECREF(obj);
            PyErr_NoMemory();
            return FAILED;
        }
        if (in->stack == in->small) {
            memcpy(grown, in->small, in->len * sizeof(PyObject *));
        }
        in->stack = grown;
        in->cap = cap;
    }
    in->stack[in->len++] = obj;
    return OK;
}

/* Drop the references from ``from`` to the top. */
static void
drop(In *in, Py_ssize_t from)
{
    while (in->len > from) {
        Py_DECREF(in->stack[--in->len]);
    }
}

/* The stack's length above the last mark (the items pickle may pop). */
static Py_ssize_t
above_fence(In *in)
{
    return in->len - (in->nmarks ? in->marks[in->nmarks - 1] : 0);
}

/* The top n items (n <= above_fence) replaced by a tuple of them. */
static int
pop_tuple(In *in, Py_ssize_t n)
{
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL) {
        return FAILED;
    }
    in->len -= n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTuple_SET_ITEM(tuple, i, in->stack[in->len + i]); /* the stack's reference moves in */
    }
    return push(in, tuple);
}

static int
decode_text(In *in, Py_ssize_t n, int is_bytes)
{
    const unsigned char *data;
    if (take(in, n, &data) != OK) {
        return DECLINE;
    }
    if (is_bytes) {
        return push(in, PyBytes_FromStringAndSize((const char *)data, n));
    }
    PyObject *text = PyUnicode_DecodeUTF8((const char *)data, n, "surrogatepass");
    if (text == NULL) { /* pickle.loads raises its own error for it */
        PyErr_Clear();
        return DECLINE;
    }
    return push(in, text);
}

/* The items from ``from`` to the top, added to the list or dict just below them, which must lie
 * above the fence (the mark before them, if any): APPEND and SETITEM take the top one or two
 * items, APPENDS and SETITEMS (marked) those above the last mark, which they pop. */
static int
fill(In *in, int dict, int marked)
{
    Py_ssize_t len = in->len, from;
    int fence_mark = in->nmarks - 1;
    if (marked) {
        if (!in->nmarks) {
            return DECLINE;
        }
        from = in->marks[in->nmarks - 1];
        fence_mark--;
    }
    else {
        from = len - (dict ? 2 : 1);
    }
    if (from < 1 || from - 1 < (fence_mark >= 0 ? in->marks[fence_mark] : 0)) {
        return DECLINE; /* no container, or one below the fence */
    }
    PyObject *target = in->stack[from - 1];
    if (dict ? !PyDict_CheckExact(target) || (len - from) % 2 : !PyList_CheckExact(target)) {
        return DECLINE;
    }
    for (Py_ssize_t i = from; i < len; i += dict ? 2 : 1) {
        PyObject *item = in->stack[i];
        int rc = dict ? PyDict_SetItem(target, item, in->stack[i + 1]) : PyList_Append(target, item);
        if (rc < 0) { /* an unhashable key: pickle.loads raises it */
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                return FAILED;
            }
            PyErr_Clear();
            return DECLINE;
        }
    }
    if (marked) {
        in->nmarks--;
    }
    drop(in, from);
    return OK;
}

static int
step(In *in, unsigned char op, PyObject **result)
{
    const unsigned char *p;
    switch (op) {
    case 0x95: /* FRAME: only a length; the opcodes go on */
        return take(in, 8, &p) == OK && little_endian(p, 8) <= (uint64_t)(in->end - in->at) ? OK : DECLINE;
    case 0x94: /* MEMOIZE: nothing here reads the memo (a GET is declined); pickle wants an item */
        return above_fence(in) >= 1 ? OK : DECLINE;
    case 'N':
        return push(in, Py_NewRef(Py_None));
    case 0x88:
        return push(in, Py_NewRef(Py_True));
    case 0x89:
        return push(in, Py_NewRef(Py_False));
    case 'K':
        return take(in, 1, &p) == OK ? push(in, PyLong_FromLong(p[0])) : DECLINE;
    case 'M':
        return take(in, 2, &p) == OK ? push(in, PyLong_FromLong((long)little_endian(p, 2))) : DECLINE;
    case 'J':
        return take(in, 4, &p) == OK ? push(in, PyLong_FromLong((int32_t)(uint32_t)little_endian(p, 4))) : DECLINE;
    case 0x8a: { /* LONG1: up to 8 bytes of two's complement here */
        if (take(in, 1, &p) != OK || p[0] > 8) {
            return DECLINE;
        }
        int n = p[0];
        if (take(in, n, &p) != OK) {
            return DECLINE;
        }
        uint64_t u = little_endian(p, n);
        if (n && n < 8 && (p[n - 1] & 0x80)) {
            u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
        }
        return push(in, PyLong_FromLongLong((long long)u));
    }
    case 'G': {
        if (take(in, 8, &p) != OK) {
            return DECLINE;
        }
        double x = PyFloat_Unpack8((const char *)p, 0); /* big-endian */
        return x == -1.0 && PyErr_Occurred() ? FAILED : push(in, PyFloat_FromDouble(x));
    }
    case 0x8c:
    case 'C':
        return take(in, 1, &p) == OK ? decode_text(in, p[0], op == 'C') : DECLINE;
    case 'X':
    case 'B':
        return take(in, 4, &p) == OK ? decode_text(in, (Py_ssize_t)little_endian(p, 4), op == 'B') : DECLINE;
    case ')':
        return push(in, PyTuple_New(0));
    case 0x85:
    case 0x86:
    case 0x87: {
        Py_ssize_t n = op - 0x84;
        return above_fence(in) >= n ? pop_tuple(in, n) : DECLINE;
    }
    case '(':
        if (in->nmarks == MAX_MARKS) {
            return DECLINE;
        }
        in->marks[in->nmarks++] = in->len;
        return OK;
    case 't': {
        if (!in->nmarks) {
            return DECLINE;
        }
        Py_ssize_t n = above_fence(in);
        in->nmarks--;
        return pop_tuple(in, n);
    }
    case ']':
        return push(in, PyList_New(0));
    case '}':
        return push(in, PyDict_New());
    case 'a':
        return fill(in, 0, 0);
    case 'e':
        return fill(in, 0, 1);
    case 's':
        return fill(in, 1, 0);
    case 'u':
        return fill(in, 1, 1);
    case '.':
        if (in->nmarks || in->len != 1 || in->at != in->end) {
            return DECLINE;
        }
        *result = in->stack[--in->len];
        return OK;
    default: /* anything else (globals, reduce, the memo's GET and PUT...): pickle.loads */
        return DECLINE;
    }
}

/* loads(data): the value of a pickle made of the opcodes above, or None (see the top). */
static PyObject *
plain_loads(PyObject *module, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    In in = {.at = view.buf, .end = (const unsigned char *)view.buf + view.len, .len = 0, .nmarks = 0};
    in.stack = in.small;
    in.cap = sizeof(in.small) / sizeof(in.small[0]);
    PyObject *result = NULL;
    int rc = DECLINE;
    /* PROTO 2 to 5: what pickle.dumps writes first for every protocol that has these opcodes. */
    if (view.len >= 3 && in.at[0] == 0x80 && in.at[1] >= 2 && in.at[1] <= 5) {
        in.at += 2;
        rc = OK;
        while (rc == OK && result == NULL) {
            if (in.at == in.end) {
                rc = DECLINE;
                break;
            }
            unsigned char op = *in.at++;
            rc = step(&in, op, &result);
        }
    }
    drop(&in, 0);
    if (in.stack != in.small) {
        PyMem_Free(in.stack);
    }
    PyBuffer_Release(&view);
    if (rc == FAILED) {
        Py_XDECREF(result);
        return NULL;
    }
    if (rc == DECLINE) {
        Py_XDECREF(result);
        Py_RETURN_NONE;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"dumps", (PyCFunction)(void (*)(void))plain_dumps, METH_FASTCALL, "A plain value's pickle, or None."},
    {"loads", plain_loads, METH_O, "A plain pickle's value, or None."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "reflectmgr._wire._plain",
    .m_doc = "The common message's pickle, written and read without a Pickler.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__plain(void)
{
    return PyModuleDef_Init(&module);
}
