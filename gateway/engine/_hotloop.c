/* The movement engine's hot loop, compiled: Engine._judge_python (core.py) in C.
 *
 * Why: at 100k-1M tracked tags the Python loop spends ~3.5 us a read, most of it in the
 * interpreter (a bare dict update per read runs at 2M reads/s on the same data). This file
 * repeats that loop's rules for the common read (a confirmed tag read again where it is, a
 * cross-read of it, a weak or late or unknown read) on the engine's own typed arrays, and
 * hands every other read to the same Python methods the Python loop calls (_slot, _challenge,
 * _tentative_read, _refresh_state). The rules live in core.py; this is their fast copy.
 *
 * Exactness: every comparison and sum is done in the order and the types Python does them
 * (int arithmetic on times, double on levels, float32 stores), and the build turns off FMA
 * contraction (pyproject.toml), so both loops decide identically; tests/unit/
 * test_engine_golden.py runs both against the reference engine on every scenario and on
 * hypothesis-generated traffic.
 *
 * Memory safety: the arrays are held through the buffer protocol, which blocks resizing them;
 * only _slot() appends to them, so they are released around that call and taken again.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

/* core.py's constants, handed over once by setup() so the two cannot disagree. */
static long long NONE_LOC = -1;
static long long NEVER = 0;
static long long NO_EVIDENCE = 0;
static double ROUNDS = 0.0;
static double IV_WEIGHT = 0.0;
static long long OUTREAD = 0;
static int is_set_up = 0;

static PyObject *str_epc, *str_reader, *str_antenna, *str_rssi, *str_time_us;

/* --- the engine's per-tag arrays ------------------------------------------------------------ */

enum {
    A_LOC, A_TENTATIVE, A_S_CUR, A_T_CUR, A_IV, A_CAND, A_S_CAND, A_T_CAND, A_T_LEAD,
    A_N_CAND, A_T_SINCE, A_SEEN, A_EV, A_K_LEAD, N_ARRAYS
};
static const char *const ARRAY_NAMES[N_ARRAYS] = {
    "_loc", "_tentative", "_s_cur", "_t_cur", "_iv", "_cand", "_s_cand", "_t_cand", "_t_lead",
    "_n_cand", "_t_since", "_seen", "_ev", "_k_lead",
};
static const char ARRAY_TYPES[N_ARRAYS] = {
    'h', 'b', 'f', 'q', 'f', 'h', 'f', 'q', 'q', 'H', 'q', 'q', 'q', 'b',
};
static const Py_ssize_t ARRAY_ITEMSIZES[N_ARRAYS] = {
    sizeof(short), sizeof(signed char), sizeof(float), sizeof(long long), sizeof(float),
    sizeof(short), sizeof(float), sizeof(long long), sizeof(long long),
    sizeof(unsigned short), sizeof(long long), sizeof(long long), sizeof(long long),
    sizeof(signed char),
};

typedef struct {
    Py_buffer views[N_ARRAYS];
    int held;
    Py_ssize_t len; /* the shortest array's length: every slot index is below it */
    short *loc;
    signed char *tentative;
    float *s_cur;
    long long *t_cur;
    float *iv;
    short *cand;
    float *s_cand;
    long long *t_cand;
    long long *t_lead;
    unsigned short *n_cand;
    long long *t_since;
    long long *seen;
    long long *ev;
    signed char *k_lead;
} Arrays;

static void release_arrays(Arrays *a)
{
    for (int k = 0; k < a->held; k++)
        PyBuffer_Release(&a->views[k]);
    a->held = 0;
}

static int take_arrays(PyObject *engine, Arrays *a)
{
    void **const targets[N_ARRAYS] = {
        (void **)&a->loc, (void **)&a->tentative, (void **)&a->s_cur, (void **)&a->t_cur,
        (void **)&a->iv, (void **)&a->cand, (void **)&a->s_cand, (void **)&a->t_cand,
        (void **)&a->t_lead, (void **)&a->n_cand, (void **)&a->t_since, (void **)&a->seen,
        (void **)&a->ev, (void **)&a->k_lead,
    };
    a->held = 0;
    a->len = PY_SSIZE_T_MAX;
    for (int k = 0; k < N_ARRAYS; k++) {
        PyObject *obj = PyObject_GetAttrString(engine, ARRAY_NAMES[k]);
        if (obj == NULL)
            goto fail;
        int rc = PyObject_GetBuffer(obj, &a->views[k], PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND);
        Py_DECREF(obj);
        if (rc < 0)
            goto fail;
        a->held = k + 1;
        Py_buffer *v = &a->views[k];
        if (v->ndim != 1 || v->itemsize != ARRAY_ITEMSIZES[k] || v->format == NULL ||
            v->format[0] != ARRAY_TYPES[k] || v->format[1] != '\0') {
            PyErr_Format(PyExc_TypeError, "Engine.%s: expected array('%c')", ARRAY_NAMES[k],
                         ARRAY_TYPES[k]);
            goto fail;
        }
        Py_ssize_t n = v->shape[0];
        if (n < a->len)
            a->len = n;
        *targets[k] = v->buf;
    }
    return 0;
fail:
    release_arrays(a);
    return -1;
}

/* --- the engine's per-location numbers (Engine._per_location_lists) ------------------------- */

typedef struct {
    double alpha, iv_cap, decay, threshold, floor;
    long long refresh, holdoff, gap;
    int present; /* a present tag's state names it (not offsite): refreshed while it stays */
} LocNumbers;

static double float_item(PyObject *list, Py_ssize_t k)
{
    return PyFloat_AsDouble(PyList_GET_ITEM(list, k));
}

static long long int_item(PyObject *list, Py_ssize_t k)
{
    return PyLong_AsLongLong(PyList_GET_ITEM(list, k));
}

/* The lists as C numbers (a few dozen locations: copied once per call). */
static LocNumbers *take_locations(PyObject *engine, Py_ssize_t *count)
{
    static const char *const names[] = {
        "_alpha", "_iv_cap", "_decay", "_threshold", "_floor", "_refresh", "_holdoff",
        "_present_state", "_gap",
    };
    enum { N = sizeof(names) / sizeof(names[0]) };
    PyObject *lists[N] = {NULL};
    LocNumbers *locs = NULL;
    Py_ssize_t n = -1;
    for (int k = 0; k < N; k++) {
        lists[k] = PyObject_GetAttrString(engine, names[k]);
        if (lists[k] == NULL)
            goto done;
        if (!PyList_Check(lists[k])) {
            PyErr_Format(PyExc_TypeError, "Engine.%s: expected a list", names[k]);
            goto done;
        }
        Py_ssize_t len = PyList_GET_SIZE(lists[k]);
        if (n >= 0 && len != n) {
            PyErr_SetString(PyExc_ValueError, "Engine: per-location lists differ in length");
            goto done;
        }
        n = len;
    }
    locs = PyMem_Calloc(n > 0 ? (size_t)n : 1, sizeof(LocNumbers));
    if (locs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        LocNumbers *l = &locs[k];
        l->alpha = float_item(lists[0], k);
        l->iv_cap = float_item(lists[1], k);
        l->decay = float_item(lists[2], k);
        l->threshold = float_item(lists[3], k);
        l->floor = float_item(lists[4], k);
        l->refresh = int_item(lists[5], k);
        l->holdoff = int_item(lists[6], k);
        l->present = PyList_GET_ITEM(lists[7], k) != Py_None;
        l->gap = int_item(lists[8], k);
    }
    if (PyErr_Occurred()) {
        PyMem_Free(locs);
        locs = NULL;
    }
    *count = n;
done:
    for (int k = 0; k < N; k++)
        Py_XDECREF(lists[k]);
    return locs;
}

/* --- the loop -------------------------------------------------------------------------------- */

typedef struct {
    PyObject *engine, *step, *places, *index;
    PyObject *slot, *challenge, *tentative_read, *late_tentative_read, *refresh_state,
        *drop_stale;
    double min_rssi, margin;
    long long xr_window;
    LocNumbers *locs;
    Py_ssize_t n_locs;
    Arrays a;
    long long unknown, weak, late, cross;
} Judge;

/* A slow path: method(i, lid, place, rssi, t, read, step), as the Python loop calls it. `i` is
 * the index's own int object, as in the Python loop: the slow paths keep it (in the absence
 * wheel, the evidence heap), and a copy would cost 28 bytes a tracked tag. */
static int call_slow(Judge *j, PyObject *method, PyObject *i, PyObject *lid, PyObject *place,
                     double rssi, PyObject *t, PyObject *read)
{
    PyObject *py_rssi = PyFloat_FromDouble(rssi);
    PyObject *result = NULL;
    if (py_rssi != NULL) {
        PyObject *args[] = {i, lid, place, py_rssi, t, read, j->step};
        result = PyObject_Vectorcall(method, args, 7, NULL);
    }
    Py_XDECREF(py_rssi);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* A new tag: Engine._slot(epc, t), with the arrays let go (it may grow them). Returns its
 * slot number (a new reference), or NULL with an exception set. */
static PyObject *new_slot(Judge *j, PyObject *epc, PyObject *t)
{
    release_arrays(&j->a);
    PyObject *args[] = {epc, t};
    PyObject *slot = PyObject_Vectorcall(j->slot, args, 2, NULL);
    if (take_arrays(j->engine, &j->a) < 0)
        Py_CLEAR(slot);
    return slot;
}

/* (Engine._read_here, as inlined in the Python loop.) */
static inline void read_here(Arrays *a, Py_ssize_t i, const LocNumbers *here, long long t)
{
    long long last_here = a->t_cur[i];
    if (t > last_here) {
        double g = (double)(t - last_here);
        if (g > here->iv_cap)
            g = here->iv_cap;
        double v = a->iv[i];
        a->iv[i] = (float)(v == 0.0 ? g : v + IV_WEIGHT * (g - v));
        a->t_cur[i] = t;
    }
}

/* The challenger's lead after a read where the tag is (Engine._silence and Loc.offset, as
 * inlined in the Python loop): times stay integers until the read rounds excuse some. */
static inline void check_lead(Arrays *a, Py_ssize_t i, const LocNumbers *here, double s,
                              long long t)
{
    long long since_int = t - a->t_cur[i];
    double v = a->iv[i];
    double extra = ROUNDS * v - (double)here->holdoff;
    double off = here->threshold;
    if (extra > 0.0 && (double)a->n_cand[i] < ROUNDS) {
        double since = (double)since_int - extra;
        if (since > (double)here->holdoff) {
            off = here->threshold - here->decay * (since - (double)here->holdoff);
            if (off <= here->floor)
                off = here->floor;
        }
    }
    else if (extra <= 0.0 && v > 0.0) {
        /* read in quick rounds here: silence weighs more (Engine._silence) */
        double since = (double)since_int * ((double)here->holdoff / (ROUNDS * v));
        if (since > (double)here->holdoff) {
            off = here->threshold - here->decay * (since - (double)here->holdoff);
            if (off <= here->floor)
                off = here->floor;
        }
    }
    else if (since_int > here->holdoff) {
        off = here->threshold - here->decay * (double)(since_int - here->holdoff);
        if (off <= here->floor)
            off = here->floor;
    }
    if ((long long)a->k_lead[i] >= OUTREAD)
        off = here->floor; /* out-read here: the levels need only be close (_OUTREAD) */
    if ((double)a->s_cand[i] <= s + off)
        a->t_lead[i] = NEVER; /* read strongly where it is: the challenger lost its lead */
}

/* One read; 0 done, -1 error (an exception is set). */
static int judge_one(Judge *j, PyObject *read)
{
    int rc = -1;
    PyObject *epc = NULL, *reader = NULL, *antenna = NULL, *rssi_obj = NULL, *t_obj = NULL;
    PyObject *place = NULL, *slot_obj = NULL;

    reader = PyObject_GetAttr(read, str_reader);
    antenna = reader ? PyObject_GetAttr(read, str_antenna) : NULL;
    if (antenna == NULL)
        goto done;
    PyObject *antennas = PyDict_GetItemWithError(j->places, reader);
    if (antennas == NULL) {
        if (PyErr_Occurred())
            goto done;
        j->unknown++;
        rc = 0;
        goto done;
    }
    if (!PyDict_Check(antennas)) {
        PyErr_SetString(PyExc_TypeError, "Engine._places: expected a dict of antennas");
        goto done;
    }
    place = PyDict_GetItemWithError(antennas, antenna);
    if (place == NULL) {
        if (PyErr_Occurred())
            goto done;
        j->unknown++;
        rc = 0;
        goto done;
    }
    Py_INCREF(place); /* held across the slow paths' Python code */
    if (!PyTuple_Check(place) || PyTuple_GET_SIZE(place) != 3) {
        PyErr_SetString(PyExc_TypeError, "Engine._places: expected (lid, offset, place)");
        goto done;
    }
    PyObject *lid_obj = PyTuple_GET_ITEM(place, 0);
    Py_ssize_t lid = PyLong_AsSsize_t(lid_obj);
    if (lid == -1 && PyErr_Occurred())
        goto done;
    if (lid < 0 || lid >= j->n_locs) {
        PyErr_SetString(PyExc_IndexError, "Engine._places: location id out of range");
        goto done;
    }
    double offset = PyFloat_AsDouble(PyTuple_GET_ITEM(place, 1));
    if (offset == -1.0 && PyErr_Occurred())
        goto done;
    rssi_obj = PyObject_GetAttr(read, str_rssi);
    if (rssi_obj == NULL)
        goto done;
    double rssi = PyFloat_AsDouble(rssi_obj);
    if (rssi == -1.0 && PyErr_Occurred())
        goto done;
    rssi += offset;
    t_obj = PyObject_GetAttr(read, str_time_us);
    if (t_obj == NULL)
        goto done;
    long long t = PyLong_AsLongLong(t_obj);
    if (t == -1 && PyErr_Occurred())
        goto done;
    epc = PyObject_GetAttr(read, str_epc);
    if (epc == NULL)
        goto done;

    Arrays *a = &j->a;
    Py_ssize_t i;
    long long prev_seen = t; /* the tag's newest read before this one (a new tag: this one) */
    slot_obj = PyDict_GetItemWithError(j->index, epc);
    if (slot_obj == NULL) {
        if (PyErr_Occurred())
            goto done;
        if (rssi < j->min_rssi) {
            j->weak++;
            rc = 0;
            goto done;
        }
        slot_obj = new_slot(j, epc, t_obj);
        if (slot_obj == NULL)
            goto done;
        i = PyLong_AsSsize_t(slot_obj);
        if (i == -1 && PyErr_Occurred())
            goto done;
    }
    else {
        Py_INCREF(slot_obj); /* held across the slow paths' Python code */
        i = PyLong_AsSsize_t(slot_obj);
        if (i < 0 || i >= a->len) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_IndexError, "Engine._index: slot out of range");
            goto done;
        }
        prev_seen = a->seen[i];
        if (t > prev_seen)
            a->seen[i] = t;
        if (rssi < j->min_rssi) {
            j->weak++;
            rc = 0;
            goto done;
        }
    }
    if (i < 0 || i >= a->len) {
        PyErr_SetString(PyExc_IndexError, "Engine._slot: slot out of range");
        goto done;
    }
    if (t < prev_seen) { /* older than a read of this tag already judged */
        if ((long long)lid == (long long)a->loc[i] && a->tentative[i]) {
            /* still evidence where the tag tentatively is (Engine._late_tentative_read) */
            rc = call_slow(j, j->late_tentative_read, slot_obj, lid_obj,
                           PyTuple_GET_ITEM(place, 2), rssi, t_obj, read);
            goto done;
        }
        j->late++;
        rc = 0;
        goto done;
    }
    PyObject *place_info = PyTuple_GET_ITEM(place, 2);
    if ((long long)lid != (long long)a->loc[i]) {
        rc = call_slow(j, j->challenge, slot_obj, lid_obj, place_info, rssi, t_obj, read);
        goto done;
    }
    if (a->tentative[i]) {
        rc = call_slow(j, j->tentative_read, slot_obj, lid_obj, place_info, rssi, t_obj, read);
        goto done;
    }
    const LocNumbers *here = &j->locs[lid];
    double s = a->s_cur[i];
    s = isnan(s) ? rssi : s + here->alpha * (rssi - s);
    a->s_cur[i] = (float)s;
    long long c = a->cand[i];
    if (c != NONE_LOC && c >= 0 && c < j->n_locs && t - a->t_cand[i] > j->locs[c].gap) {
        /* a stale challenger: no evidence any more (Engine._drop_stale) */
        PyObject *args[] = {slot_obj};
        PyObject *result = PyObject_Vectorcall(j->drop_stale, args, 1, NULL);
        if (result == NULL)
            goto done;
        Py_DECREF(result);
        c = NONE_LOC;
    }
    if (c == NONE_LOC) {
        read_here(a, i, here, t);
    }
    else {
        if (c < 0 || c >= j->n_locs) {
            PyErr_SetString(PyExc_IndexError, "Engine._cand: location id out of range");
            goto done;
        }
        const LocNumbers *cl = &j->locs[c];
        if (a->k_lead[i] > 0)
            a->k_lead[i]--; /* read here: the challenger's count lead shrinks */
        long long tc = t - a->t_cand[i];
        /* Read far more strongly elsewhere right now: a cross-read (see the Python loop). */
        double fade = tc <= cl->holdoff ? 0.0 : cl->decay * (double)(tc - cl->holdoff);
        if (tc <= j->xr_window && rssi < (double)a->s_cand[i] - fade - j->margin)
            j->cross++;
        else
            read_here(a, i, here, t);
        if (a->t_lead[i] != NEVER) {
            check_lead(a, i, here, s, t);
            rc = 0;
            goto done;
        }
    }
    if (t - a->t_since[i] >= here->refresh && a->ev[i] == NO_EVIDENCE && here->present) {
        PyObject *args[] = {slot_obj, t_obj, j->step};
        PyObject *result = PyObject_Vectorcall(j->refresh_state, args, 3, NULL);
        if (result == NULL)
            goto done;
        Py_DECREF(result);
    }
    rc = 0;
done:
    Py_XDECREF(slot_obj);
    Py_XDECREF(place);
    Py_XDECREF(epc);
    Py_XDECREF(reader);
    Py_XDECREF(antenna);
    Py_XDECREF(rssi_obj);
    Py_XDECREF(t_obj);
    return rc;
}

static PyObject *get_method(PyObject *engine, const char *name)
{
    PyObject *m = PyObject_GetAttrString(engine, name);
    if (m != NULL && !PyCallable_Check(m)) {
        PyErr_Format(PyExc_TypeError, "Engine.%s: not callable", name);
        Py_CLEAR(m);
    }
    return m;
}

static double get_double(PyObject *engine, const char *name)
{
    PyObject *v = PyObject_GetAttrString(engine, name);
    if (v == NULL)
        return -1.0;
    double d = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return d;
}

static long long get_int(PyObject *engine, const char *name)
{
    PyObject *v = PyObject_GetAttrString(engine, name);
    if (v == NULL)
        return -1;
    long long d = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return d;
}

PyDoc_STRVAR(judge_doc,
"judge(engine, reads, step) -> (unknown, weak, late, cross)\n\n"
"Engine._judge_python's loop over `reads` (a list, in time order), on the engine's arrays;\n"
"returns the suppression counts it made itself.");

static PyObject *judge(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!is_set_up) {
        PyErr_SetString(PyExc_RuntimeError, "_hotloop.setup() was not called");
        return NULL;
    }
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "judge(engine, reads, step)");
        return NULL;
    }
    PyObject *reads = args[1];
    if (!PyList_Check(reads)) {
        PyErr_SetString(PyExc_TypeError, "judge: reads must be a list");
        return NULL;
    }
    Judge j;
    memset(&j, 0, sizeof(j));
    j.engine = args[0];
    j.step = args[2];
    PyObject *result = NULL;
    j.places = PyObject_GetAttrString(j.engine, "_places");
    j.index = PyObject_GetAttrString(j.engine, "_index");
    j.slot = get_method(j.engine, "_slot");
    j.challenge = get_method(j.engine, "_challenge");
    j.tentative_read = get_method(j.engine, "_tentative_read");
    j.late_tentative_read = get_method(j.engine, "_late_tentative_read");
    j.refresh_state = get_method(j.engine, "_refresh_state");
    j.drop_stale = get_method(j.engine, "_drop_stale");
    if (!j.places || !j.index || !j.slot || !j.challenge || !j.tentative_read ||
        !j.late_tentative_read || !j.refresh_state || !j.drop_stale)
        goto done;
    if (!PyDict_Check(j.places) || !PyDict_Check(j.index)) {
        PyErr_SetString(PyExc_TypeError, "Engine._places and _index must be dicts");
        goto done;
    }
    j.min_rssi = get_double(j.engine, "_min_rssi");
    j.margin = get_double(j.engine, "_xr_margin");
    j.xr_window = get_int(j.engine, "_xr_window_us");
    if (PyErr_Occurred())
        goto done;
    j.locs = take_locations(j.engine, &j.n_locs);
    if (j.locs == NULL)
        goto done;
    if (take_arrays(j.engine, &j.a) < 0)
        goto done;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(reads); k++) {
        PyObject *read = PyList_GET_ITEM(reads, k);
        Py_INCREF(read);
        int rc = judge_one(&j, read);
        Py_DECREF(read);
        if (rc < 0)
            goto done;
    }
    result = Py_BuildValue("(LLLL)", j.unknown, j.weak, j.late, j.cross);
done:
    release_arrays(&j.a);
    PyMem_Free(j.locs);
    Py_XDECREF(j.places);
    Py_XDECREF(j.index);
    Py_XDECREF(j.slot);
    Py_XDECREF(j.challenge);
    Py_XDECREF(j.tentative_read);
    Py_XDECREF(j.late_tentative_read);
    Py_XDECREF(j.refresh_state);
    Py_XDECREF(j.drop_stale);
    return result;
}

PyDoc_STRVAR(setup_doc,
"setup(none, never, no_evidence, rounds, iv_weight, outread)\n\n"
"core.py's constants: NONE, NEVER, NO_EVIDENCE, _ROUNDS, _IV_WEIGHT, _OUTREAD.");

static PyObject *setup(PyObject *module, PyObject *args)
{
    long long none, never, no_evidence;
    double rounds, iv_weight;
    long long outread;
    if (!PyArg_ParseTuple(args, "LLLddL", &none, &never, &no_evidence, &rounds, &iv_weight,
                          &outread))
        return NULL;
    OUTREAD = outread;
    NONE_LOC = none;
    NEVER = never;
    NO_EVIDENCE = no_evidence;
    ROUNDS = rounds;
    IV_WEIGHT = iv_weight;
    is_set_up = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"judge", (PyCFunction)(void (*)(void))judge, METH_FASTCALL, judge_doc},
    {"setup", setup, METH_VARARGS, setup_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_hotloop",
    .m_doc = "The movement engine's hot loop, compiled (see core.py: Engine._judge_python).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__hotloop(void)
{
    str_epc = PyUnicode_InternFromString("epc");
    str_reader = PyUnicode_InternFromString("reader");
    str_antenna = PyUnicode_InternFromString("antenna");
    str_rssi = PyUnicode_InternFromString("rssi");
    str_time_us = PyUnicode_InternFromString("time_us");
    if (!str_epc || !str_reader || !str_antenna || !str_rssi || !str_time_us)
        return NULL;
    return PyModule_Create(&module_def);
}
