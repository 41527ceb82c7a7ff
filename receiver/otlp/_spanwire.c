/*
 * _spanwire: read the few span fields the receiver and the service graph need straight from the
 * OTLP ExportTraceServiceRequest wire bytes, without building protobuf objects.
 *
 * Through the protobuf Python API every field read costs 50-250 ns; the graph needs ~8 of them per
 * span plus an attribute scan, which made it 2-3 us/span. Walking the wire format here costs a few
 * tens of ns per span. The Python reference that defines the same results from decoded protobuf
 * objects lives in receiver/otlp/spanwire.py; tests compare the two on generated requests.
 *
 * Protobuf semantics kept: a known field with an unexpected wire type is an unknown field (skipped);
 * for a repeated-in-practice singular field the last occurrence wins; embedded messages that occur
 * more than once (resource, status) merge, so their fields are read across all occurrences.
 *
 * Field numbers (opentelemetry-proto v1):
 *   ExportTraceServiceRequest: 1 resource_spans
 *   ResourceSpans: 1 resource, 2 scope_spans          Resource: 1 attributes (KeyValue)
 *   ScopeSpans: 2 spans                                KeyValue: 1 key, 2 value (AnyValue: 1 string_value)
 *   Span: 1 trace_id, 2 span_id, 4 parent_span_id, 6 kind, 7 start (fixed64), 8 end (fixed64),
 *         9 attributes, 13 links (Link: 1 trace_id, 2 span_id), 15 status (Status: 3 code)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };
enum { K_SERVER = 2, K_CLIENT = 3, K_PRODUCER = 4, K_CONSUMER = 5 };

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Buf;

typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
} Slice;

static PyObject *WireError; /* ValueError subclass */

static int fail(const char *what) {
    PyErr_Format(WireError, "malformed OTLP trace request: %s", what);
    return -1;
}

static int read_varint(Buf *b, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p >= b->end)
            return fail("truncated varint");
        uint8_t c = *b->p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return fail("varint longer than 10 bytes");
}

/* Read one field header; 1 = got one, 0 = end of buffer, -1 = error. */
static int next_field(Buf *b, uint32_t *field, int *wt) {
    if (b->p >= b->end)
        return 0;
    uint64_t tag;
    if (read_varint(b, &tag) < 0)
        return -1;
    if ((tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
        return fail("bad field number");
    *field = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    return 1;
}

static int read_len(Buf *b, Slice *s) {
    uint64_t n;
    if (read_varint(b, &n) < 0)
        return -1;
    if (n > (uint64_t)(b->end - b->p))
        return fail("length past the end of the buffer");
    s->p = b->p;
    s->n = (Py_ssize_t)n;
    b->p += n;
    return 0;
}

static int skip_group(Buf *b, uint32_t field, int depth);

static int skip_value(Buf *b, uint32_t field, int wt, int depth) {
    uint64_t v;
    Slice s;
    switch (wt) {
    case WT_VARINT:
        return read_varint(b, &v);
    case WT_I64:
        if (b->end - b->p < 8)
            return fail("truncated fixed64");
        b->p += 8;
        return 0;
    case WT_LEN:
        return read_len(b, &s);
    case WT_I32:
        if (b->end - b->p < 4)
            return fail("truncated fixed32");
        b->p += 4;
        return 0;
    case WT_SGROUP:
        return skip_group(b, field, depth + 1);
    default:
        return fail("bad wire type");
    }
}

static int skip_group(Buf *b, uint32_t field, int depth) {
    if (depth > 100)
        return fail("groups nested too deep");
    uint32_t f;
    int wt, r;
    while ((r = next_field(b, &f, &wt)) == 1) {
        if (wt == WT_EGROUP)
            return f == field ? 0 : fail("mismatched end group");
        if (skip_value(b, f, wt, depth) < 0)
            return -1;
    }
    return r < 0 ? -1 : fail("unterminated group");
}

static uint64_t le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* OTLP fixed64 is little-endian; so are the machines we build for */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* A KeyValue, decoded: its key and which member of the AnyValue oneof is set (0 none, 1 string,
 * 2 bool, 3 int, 4 double, 5 array, 6 kvlist, 7 bytes) with the string, bool and int values. Merge
 * rules: the key's last occurrence wins; `value` occurring twice merges, so the oneof member set last
 * on the wire wins, with that member's last value. */
typedef struct {
    Slice key, str;
    int which, b;
    int64_t i;
    int decoded; /* 0: `str` still holds the whole undecoded KeyValue */
} KV;

static int read_keyvalue(Slice kv, KV *o) {
    Buf b = {kv.p, kv.p + kv.n};
    uint32_t f;
    int wt, r;
    o->key.p = o->str.p = kv.p;
    o->key.n = o->str.n = 0;
    o->which = o->b = 0;
    o->i = 0;
    o->decoded = 1;
    while ((r = next_field(&b, &f, &wt)) == 1) {
        if (f == 1 && wt == WT_LEN) {
            if (read_len(&b, &o->key) < 0)
                return -1;
        } else if (f == 2 && wt == WT_LEN) {
            Slice val;
            if (read_len(&b, &val) < 0)
                return -1;
            Buf vb = {val.p, val.p + val.n};
            uint32_t vf;
            int vwt, vr;
            while ((vr = next_field(&vb, &vf, &vwt)) == 1) {
                uint64_t v;
                if (vf == 1 && vwt == WT_LEN) {
                    if (read_len(&vb, &o->str) < 0)
                        return -1;
                    o->which = 1;
                } else if ((vf == 2 || vf == 3) && vwt == WT_VARINT) {
                    if (read_varint(&vb, &v) < 0)
                        return -1;
                    if (vf == 2)
                        o->b = v != 0;
                    else
                        o->i = (int64_t)v;
                    o->which = (int)vf;
                } else {
                    if ((vf == 4 && vwt == WT_I64) || (vf >= 5 && vf <= 7 && vwt == WT_LEN))
                        o->which = (int)vf;
                    if (skip_value(&vb, vf, vwt, 0) < 0)
                        return -1;
                }
            }
            if (vr < 0)
                return -1;
        } else if (skip_value(&b, f, wt, 0) < 0) {
            return -1;
        }
    }
    if (r < 0)
        return -1;
    if (o->which != 1)
        o->str.n = 0; /* string_value reads "" unless the string member is the one set */
    return 0;
}

static int slice_eq(Slice s, PyObject *bytes) {
    return PyBytes_GET_SIZE(bytes) == s.n && memcmp(PyBytes_AS_STRING(bytes), s.p, (size_t)s.n) == 0;
}

/* ---------------------------------------------------------------------------------- one span */
/* Decode, in place, the KeyValues of `kvs` still held as raw slices. */
static int decode_kvs(KV *kvs, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!kvs[i].decoded && read_keyvalue(kvs[i].str, &kvs[i]) < 0)
            return -1;
    }
    return 0;
}

typedef struct {
    Slice trace_id, span_id, parent, status_msg;
    int32_t kind, status_code; /* enums: protobuf keeps the low 32 bits of the varint, signed */
    uint64_t start, end;
    /* attributes (decoded on demand), link and event slices, collected in order */
    KV *attrs;
    Py_ssize_t n_attrs, cap_attrs;
    Slice *links;
    Py_ssize_t n_links, cap_links;
    Slice *events;
    Py_ssize_t n_events, cap_events;
} Span;

static void span_free(Span *o) {
    PyMem_Free(o->attrs);
    PyMem_Free(o->links);
    PyMem_Free(o->events);
}

/* grow *arr (of `size`-byte items) to hold one more; 0 or -1 (MemoryError) */
static int grow(void **arr, Py_ssize_t n, Py_ssize_t *cap, size_t size) {
    if (n < *cap)
        return 0;
    Py_ssize_t nc = *cap ? *cap * 2 : 16;
    void *na = PyMem_Realloc(*arr, (size_t)nc * size);
    if (!na) {
        PyErr_NoMemory();
        return -1;
    }
    *arr = na;
    *cap = nc;
    return 0;
}

/* collect: also keep the attribute, link and event slices (the row readers need them, check_spans
 * not). */
static int read_span(Slice sp, Span *o, int collect) {
    Buf b = {sp.p, sp.p + sp.n};
    uint32_t f;
    int wt, r;
    Slice empty = {sp.p, 0};
    o->trace_id = o->span_id = o->parent = o->status_msg = empty;
    o->kind = o->start = o->end = o->status_code = 0;
    o->n_attrs = o->n_links = o->n_events = 0;
    while ((r = next_field(&b, &f, &wt)) == 1) {
        Slice s;
        if (wt == WT_LEN && (f == 1 || f == 2 || f == 4 || f == 9 || f == 11 || f == 13 || f == 15)) {
            if (read_len(&b, &s) < 0)
                return -1;
            switch (f) {
            case 1: o->trace_id = s; break;
            case 2: o->span_id = s; break;
            case 4: o->parent = s; break;
            case 9: /* kept as KeyValue slices: decoded only for the spans that need them */
                if (collect) {
                    if (grow((void **)&o->attrs, o->n_attrs, &o->cap_attrs, sizeof(KV)) < 0)
                        return -1;
                    o->attrs[o->n_attrs].decoded = 0;
                    o->attrs[o->n_attrs++].str = s;
                }
                break;
            case 11:
                if (collect) {
                    if (grow((void **)&o->events, o->n_events, &o->cap_events, sizeof(Slice)) < 0)
                        return -1;
                    o->events[o->n_events++] = s;
                }
                break;
            case 13:
                if (collect) {
                    if (grow((void **)&o->links, o->n_links, &o->cap_links, sizeof(Slice)) < 0)
                        return -1;
                    o->links[o->n_links++] = s;
                }
                break;
            case 15: { /* Status (merged across occurrences): message is field 2, code field 3 */
                Buf sb = {s.p, s.p + s.n};
                uint32_t sf;
                int swt, sr;
                while ((sr = next_field(&sb, &sf, &swt)) == 1) {
                    if (sf == 3 && swt == WT_VARINT) {
                        uint64_t v;
                        if (read_varint(&sb, &v) < 0)
                            return -1;
                        o->status_code = (int32_t)(uint32_t)v;
                    } else if (sf == 2 && swt == WT_LEN) {
                        if (read_len(&sb, &o->status_msg) < 0)
                            return -1;
                    } else if (skip_value(&sb, sf, swt, 0) < 0) {
                        return -1;
                    }
                }
                if (sr < 0)
                    return -1;
                break;
            }
            }
        } else if (f == 6 && wt == WT_VARINT) {
            uint64_t v;
            if (read_varint(&b, &v) < 0)
                return -1;
            o->kind = (int32_t)(uint32_t)v;
        } else if ((f == 7 || f == 8) && wt == WT_I64) {
            if (b.end - b.p < 8)
                return fail("truncated fixed64");
            if (f == 7)
                o->start = le64(b.p);
            else
                o->end = le64(b.p);
            b.p += 8;
        } else if (skip_value(&b, f, wt, 0) < 0) {
            return -1;
        }
    }
    return r < 0 ? -1 : 0;
}

/* Iterate the repeated LEN field `field` of `msg`, calling fn(slice, ctx, index) for each. */
typedef int (*each_fn)(Slice s, void *ctx, Py_ssize_t i);

static int each(Slice msg, uint32_t field, each_fn fn, void *ctx) {
    Buf b = {msg.p, msg.p + msg.n};
    uint32_t f;
    int wt, r;
    Py_ssize_t i = 0;
    while ((r = next_field(&b, &f, &wt)) == 1) {
        if (f == field && wt == WT_LEN) {
            Slice s;
            if (read_len(&b, &s) < 0)
                return -1;
            if (fn(s, ctx, i++) < 0)
                return -1;
        } else if (skip_value(&b, f, wt, 0) < 0) {
            return -1;
        }
    }
    return r < 0 ? -1 : 0;
}

/* A ResourceSpans' service.name and service.version: the string value of the FIRST attribute with
 * each key (pdata's Get() in the Collector), across all occurrences of `resource` (they merge); empty
 * when the key is missing or its value is not a string. */
typedef struct {
    Slice svc, ver;
    int has_svc, has_ver;
} Names;

static int names_attr(Slice s, void *vctx, Py_ssize_t i) {
    Names *o = vctx;
    KV kv;
    (void)i;
    if (o->has_svc && o->has_ver)
        return 0;
    if (read_keyvalue(s, &kv) < 0)
        return -1;
    if (!o->has_svc && kv.key.n == 12 && memcmp(kv.key.p, "service.name", 12) == 0) {
        o->svc = kv.str;
        o->has_svc = 1;
    } else if (!o->has_ver && kv.key.n == 15 && memcmp(kv.key.p, "service.version", 15) == 0) {
        o->ver = kv.str;
        o->has_ver = 1;
    }
    return 0;
}

static int names_msg(Slice s, void *vctx, Py_ssize_t i) {
    (void)i;
    return each(s, 1, names_attr, vctx); /* Resource.attributes */
}

static int resource_names(Slice rs, Names *o) {
    o->svc.p = o->ver.p = rs.p;
    o->svc.n = o->ver.n = 0;
    o->has_svc = o->has_ver = 0;
    return each(rs, 1, names_msg, o); /* ResourceSpans.resource */
}

/* ============================================================================ check_spans(buf) */
/* (total spans, [(resource index, scope index, span index) of spans with ids we never accept]):
 * trace_id 16 bytes not all zero, span_id 8 bytes not all zero, parent_span_id empty or 8 bytes. */
typedef struct {
    Span span;
    PyObject *bad;
    Py_ssize_t total, ri, si;
} CheckCtx;

static int all_zero(Slice s) {
    for (Py_ssize_t i = 0; i < s.n; i++)
        if (s.p[i])
            return 0;
    return 1;
}

static int check_span(Slice s, void *vctx, Py_ssize_t pi) {
    CheckCtx *c = vctx;
    Span *o = &c->span;
    if (read_span(s, o, 0) < 0)
        return -1;
    c->total++;
    if (o->trace_id.n != 16 || o->span_id.n != 8 || all_zero(o->trace_id) || all_zero(o->span_id)
        || (o->parent.n != 0 && o->parent.n != 8)) {
        PyObject *t = Py_BuildValue("(nnn)", c->ri, c->si, pi);
        if (!t || PyList_Append(c->bad, t) < 0) {
            Py_XDECREF(t);
            return -1;
        }
        Py_DECREF(t);
    }
    return 0;
}

static int check_scope(Slice s, void *vctx, Py_ssize_t si) {
    CheckCtx *c = vctx;
    c->si = si;
    return each(s, 2, check_span, c);
}

static int check_resource(Slice s, void *vctx, Py_ssize_t ri) {
    CheckCtx *c = vctx;
    c->ri = ri;
    return each(s, 2, check_scope, c);
}

static PyObject *check_spans(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    CheckCtx c;
    memset(&c, 0, sizeof c);
    c.bad = PyList_New(0);
    PyObject *out = NULL;
    if (c.bad) {
        Slice all = {view.buf, view.len};
        if (each(all, 1, check_resource, &c) == 0)
            out = Py_BuildValue("(nO)", c.total, c.bad);
    }
    Py_XDECREF(c.bad);
    PyBuffer_Release(&view);
    return out;
}

/* ================================================================ graph_rows(buf, peer, db) */
/* Rows for the service graph, one per SERVER / CLIENT / PRODUCER / CONSUMER span of a resource
 * with a non-empty service.name:
 *   (kind, trace_id + span_id, trace_id + parent_span_id or b"", service, latency_s, end_ns,
 *    failed, is_db, callee, link_keys)
 * latency_s = max(0, (end - start) / 1e9); failed = status.code == ERROR (2);
 * is_db / callee only for CLIENT and PRODUCER spans (else False / None): is_db = an attribute key is
 * one of `db`; callee = the string value of the first attribute whose key is, in order, one of
 * `peer` then (if is_db) `db`, taking the first attribute of that key, skipping empty values; else
 * "unknown". link_keys: for CONSUMER spans with links, the (trace_id + span_id) of each link in
 * order (duplicates kept), else None.
 * Returns (rows, spans in the request, spans skipped: of resources without service.name). */
typedef struct {
    Span span;
    PyObject *rows;
    PyObject *svc;    /* current resource's service name (borrowed from the resource loop) */
    PyObject *peer;   /* tuple of bytes */
    PyObject *db;     /* tuple of bytes */
    PyObject *unknown;
    Py_ssize_t total, skipped;
    int has_svc;
} RowsCtx;

static PyObject *join_ids(Slice a, Slice b) {
    PyObject *o = PyBytes_FromStringAndSize(NULL, a.n + b.n);
    if (!o)
        return NULL;
    char *d = PyBytes_AS_STRING(o);
    memcpy(d, a.p, (size_t)a.n);
    memcpy(d + a.n, b.p, (size_t)b.n);
    return o;
}

static int key_in(Slice key, PyObject *keys) {
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < n; i++)
        if (slice_eq(key, PyTuple_GET_ITEM(keys, i)))
            return 1;
    return 0;
}

static PyObject *callee(RowsCtx *c, Span *o, int *is_db) {
    *is_db = 0;
    if (decode_kvs(o->attrs, o->n_attrs) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < o->n_attrs && !*is_db; i++)
        *is_db = key_in(o->attrs[i].key, c->db);
    PyObject *lists[2] = {c->peer, c->db};
    for (int l = 0; l < (*is_db ? 2 : 1); l++) {
        Py_ssize_t n = PyTuple_GET_SIZE(lists[l]);
        for (Py_ssize_t j = 0; j < n; j++) {
            PyObject *want = PyTuple_GET_ITEM(lists[l], j);
            for (Py_ssize_t i = 0; i < o->n_attrs; i++) {
                if (slice_eq(o->attrs[i].key, want)) { /* the first attribute of that key */
                    Slice v = o->attrs[i].str;
                    if (v.n)
                        return PyUnicode_DecodeUTF8((const char *)v.p, v.n, "replace");
                    break;
                }
            }
        }
    }
    Py_INCREF(c->unknown);
    return c->unknown;
}

static int row_span(Slice s, void *vctx, Py_ssize_t pi) {
    RowsCtx *c = vctx;
    Span *o = &c->span;
    (void)pi;
    c->total++;
    if (!c->has_svc) {
        c->skipped++;
        return 0;
    }
    if (read_span(s, o, 1) < 0)
        return -1;
    int32_t kind = o->kind;
    if (kind < K_SERVER || kind > K_CONSUMER)
        return 0;
    int client = kind == K_CLIENT || kind == K_PRODUCER;
    double lat = o->end > o->start ? (double)(o->end - o->start) / 1e9 : 0.0;
    PyObject *key = join_ids(o->trace_id, o->span_id);
    PyObject *pkey = o->parent.n ? join_ids(o->trace_id, o->parent) : PyBytes_FromStringAndSize(NULL, 0);
    PyObject *name = NULL, *links = NULL, *row = NULL;
    int is_db = 0;
    if (!key || !pkey)
        goto done;
    if (client) {
        name = callee(c, o, &is_db);
        if (!name)
            goto done;
    } else {
        name = Py_NewRef(Py_None);
    }
    if (kind == K_CONSUMER && o->n_links) {
        links = PyTuple_New(o->n_links);
        if (!links)
            goto done;
        for (Py_ssize_t i = 0; i < o->n_links; i++) {
            Buf lb = {o->links[i].p, o->links[i].p + o->links[i].n};
            Slice tid = {lb.p, 0}, sid = {lb.p, 0};
            uint32_t f;
            int wt, r;
            while ((r = next_field(&lb, &f, &wt)) == 1) {
                if ((f == 1 || f == 2) && wt == WT_LEN) {
                    if (read_len(&lb, f == 1 ? &tid : &sid) < 0)
                        goto done;
                } else if (skip_value(&lb, f, wt, 0) < 0) {
                    goto done;
                }
            }
            if (r < 0)
                goto done;
            PyObject *lk = join_ids(tid, sid);
            if (!lk)
                goto done;
            PyTuple_SET_ITEM(links, i, lk);
        }
    } else {
        links = Py_NewRef(Py_None);
    }
    {
        PyObject *k = PyLong_FromLong(kind), *l = PyFloat_FromDouble(lat),
                 *e = PyLong_FromUnsignedLongLong(o->end);
        row = k && l && e ? PyTuple_New(10) : NULL;
        if (!row) {
            Py_XDECREF(k);
            Py_XDECREF(l);
            Py_XDECREF(e);
            goto done;
        }
        PyTuple_SET_ITEM(row, 0, k);
        PyTuple_SET_ITEM(row, 1, Py_NewRef(key));
        PyTuple_SET_ITEM(row, 2, Py_NewRef(pkey));
        PyTuple_SET_ITEM(row, 3, Py_NewRef(c->svc));
        PyTuple_SET_ITEM(row, 4, l);
        PyTuple_SET_ITEM(row, 5, e);
        PyTuple_SET_ITEM(row, 6, Py_NewRef(o->status_code == 2 ? Py_True : Py_False));
        PyTuple_SET_ITEM(row, 7, Py_NewRef(is_db ? Py_True : Py_False));
        PyTuple_SET_ITEM(row, 8, Py_NewRef(name));
        PyTuple_SET_ITEM(row, 9, Py_NewRef(links));
        if (PyList_Append(c->rows, row) < 0)
            Py_CLEAR(row);
    }
done:
    Py_XDECREF(key);
    Py_XDECREF(pkey);
    Py_XDECREF(name);
    Py_XDECREF(links);
    if (!row)
        return -1;
    Py_DECREF(row);
    return 0;
}

static int row_scope(Slice s, void *vctx, Py_ssize_t si) {
    (void)si;
    return each(s, 2, row_span, vctx);
}

static int row_resource(Slice s, void *vctx, Py_ssize_t ri) {
    RowsCtx *c = vctx;
    (void)ri;
    Names names;
    if (resource_names(s, &names) < 0)
        return -1;
    c->has_svc = names.svc.n > 0;
    c->svc = NULL;
    if (c->has_svc) {
        c->svc = PyUnicode_DecodeUTF8((const char *)names.svc.p, names.svc.n, "replace");
        if (!c->svc)
            return -1;
    }
    int r = each(s, 2, row_scope, c);
    Py_CLEAR(c->svc);
    return r;
}

static int bytes_tuple(PyObject *o, const char *what) {
    if (!PyTuple_Check(o))
        return PyErr_Format(PyExc_TypeError, "%s must be a tuple of bytes", what), -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(o); i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(o, i)))
            return PyErr_Format(PyExc_TypeError, "%s must be a tuple of bytes", what), -1;
    return 0;
}

static PyObject *graph_rows(PyObject *self, PyObject *args) {
    PyObject *data, *peer, *db;
    if (!PyArg_ParseTuple(args, "OOO:graph_rows", &data, &peer, &db))
        return NULL;
    if (bytes_tuple(peer, "peer") < 0 || bytes_tuple(db, "db") < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    RowsCtx c;
    memset(&c, 0, sizeof c);
    c.peer = peer;
    c.db = db;
    c.rows = PyList_New(0);
    c.unknown = PyUnicode_FromString("unknown");
    PyObject *out = NULL;
    if (c.rows && c.unknown) {
        Slice all = {view.buf, view.len};
        if (each(all, 1, row_resource, &c) == 0)
            out = Py_BuildValue("(Onn)", c.rows, c.total, c.skipped);
    }
    span_free(&c.span);
    Py_XDECREF(c.svc);
    Py_XDECREF(c.rows);
    Py_XDECREF(c.unknown);
    PyBuffer_Release(&view);
    return out;
}

/* ================================================================= signal_rows(buf, peer) */
/* Rows for the RCA span signals, every span, grouped by resource:
 *   ([(service, version, [span row, ...]), ...], total spans)
 * service / version: as `resource_names` ("" if none). Span row:
 *   (trace_id, span_id, parent_span_id, kind, start_ns, end_ns, status_code, status_message,
 *    peer, messaging, attr_error, exceptions)
 * peer / messaging, for CLIENT and PRODUCER spans only (else "" / False): peer = the non-empty string
 * value of the attribute whose key comes first in `peer` (ties: the later attribute); messaging = a
 * non-empty string `messaging.system`. attr_error, for status UNSET only (else False): an attribute
 * `error` holding bool true, or `http.status_code` / `http.response.status_code` holding an int >= 500
 * or a string of ASCII digits >= 500. exceptions, for status ERROR only (else None): the last non-empty
 * string `exception.message` of each event named `exception`, in order (a tuple, maybe empty). */
typedef struct {
    Span span;
    PyObject *peer; /* tuple of bytes, no duplicates */
    PyObject *out, *spans, *empty_bytes, *empty_str;
    Py_ssize_t total;
} SigCtx;

static int key_is(Slice k, const char *lit) {
    size_t n = strlen(lit);
    return (size_t)k.n == n && memcmp(k.p, lit, n) == 0;
}

/* the last non-empty string value of attribute `key` among the KeyValue slices of `msg`'s field `field` */
typedef struct {
    const char *key;
    Slice *found;
} LastStr;

static int last_str_kv(Slice s, void *vctx, Py_ssize_t i) {
    LastStr *c = vctx;
    KV kv;
    (void)i;
    if (read_keyvalue(s, &kv) < 0)
        return -1;
    if (kv.str.n && key_is(kv.key, c->key))
        *c->found = kv.str;
    return 0;
}

static int attr_error(KV *kv) {
    if (key_is(kv->key, "error"))
        return kv->which == 2 && kv->b;
    if (!key_is(kv->key, "http.status_code") && !key_is(kv->key, "http.response.status_code"))
        return 0;
    if (kv->which == 3)
        return kv->i >= 500;
    if (kv->which != 1 || kv->str.n == 0)
        return 0;
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i < kv->str.n; i++) {
        uint8_t ch = kv->str.p[i];
        if (ch < '0' || ch > '9')
            return 0;
        if (v < 1000000)
            v = v * 10 + (ch - '0');
    }
    return v >= 500;
}

static PyObject *str_of(SigCtx *c, Slice s) {
    if (!s.n)
        return Py_NewRef(c->empty_str);
    return PyUnicode_DecodeUTF8((const char *)s.p, s.n, "replace");
}

static PyObject *bytes_of(SigCtx *c, Slice s) {
    if (!s.n)
        return Py_NewRef(c->empty_bytes);
    return PyBytes_FromStringAndSize((const char *)s.p, s.n);
}

static PyObject *exceptions(SigCtx *c, Span *o) {
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (Py_ssize_t e = 0; e < o->n_events; e++) {
        Buf b = {o->events[e].p, o->events[e].p + o->events[e].n};
        Slice name = {b.p, 0}, msg = {b.p, 0};
        uint32_t f;
        int wt, r;
        while ((r = next_field(&b, &f, &wt)) == 1) {
            Slice s;
            if (f == 2 && wt == WT_LEN) {
                if (read_len(&b, &name) < 0)
                    goto fail;
            } else if (f == 3 && wt == WT_LEN) {
                if (read_len(&b, &s) < 0)
                    goto fail;
                LastStr ls = {"exception.message", &msg};
                if (last_str_kv(s, &ls, 0) < 0)
                    goto fail;
            } else if (skip_value(&b, f, wt, 0) < 0) {
                goto fail;
            }
        }
        if (r < 0)
            goto fail;
        if (msg.n && key_is(name, "exception")) {
            PyObject *m = str_of(c, msg);
            if (!m || PyList_Append(out, m) < 0) {
                Py_XDECREF(m);
                goto fail;
            }
            Py_DECREF(m);
        }
    }
    Py_SETREF(out, PyList_AsTuple(out));
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static int sig_span(Slice s, void *vctx, Py_ssize_t pi) {
    SigCtx *c = vctx;
    Span *o = &c->span;
    (void)pi;
    c->total++;
    if (read_span(s, o, 1) < 0)
        return -1;
    Slice peer = {s.p, 0};
    int messaging = 0, aerr = 0;
    int32_t kind = o->kind, code = o->status_code;
    int client = kind == K_CLIENT || kind == K_PRODUCER;
    if (client || code == 0) {
        if (decode_kvs(o->attrs, o->n_attrs) < 0)
            return -1;
        Py_ssize_t np = PyTuple_GET_SIZE(c->peer), best = np;
        for (Py_ssize_t i = 0; i < o->n_attrs; i++) {
            KV *kv = &o->attrs[i];
            if (client) {
                for (Py_ssize_t r = 0; r <= best && r < np; r++) {
                    if (slice_eq(kv->key, PyTuple_GET_ITEM(c->peer, r))) {
                        if (kv->str.n) {
                            best = r;
                            peer = kv->str;
                        }
                        break;
                    }
                }
                if (kv->str.n && key_is(kv->key, "messaging.system"))
                    messaging = 1;
            }
            if (code == 0 && !aerr)
                aerr = attr_error(kv);
        }
    }
    PyObject *v[12] = {NULL};
    v[0] = bytes_of(c, o->trace_id);
    v[1] = bytes_of(c, o->span_id);
    v[2] = bytes_of(c, o->parent);
    v[3] = PyLong_FromLong(kind);
    v[4] = PyLong_FromUnsignedLongLong(o->start);
    v[5] = PyLong_FromUnsignedLongLong(o->end);
    v[6] = PyLong_FromLong(code);
    v[7] = str_of(c, o->status_msg);
    v[8] = str_of(c, peer);
    v[9] = Py_NewRef(messaging ? Py_True : Py_False);
    v[10] = Py_NewRef(aerr ? Py_True : Py_False);
    v[11] = code == 2 ? exceptions(c, o) : Py_NewRef(Py_None);
    PyObject *row = NULL;
    int ok = 1;
    for (int i = 0; i < 12; i++)
        ok &= v[i] != NULL;
    if (ok)
        row = PyTuple_New(12);
    if (!row) {
        for (int i = 0; i < 12; i++)
            Py_XDECREF(v[i]);
        return -1;
    }
    for (int i = 0; i < 12; i++)
        PyTuple_SET_ITEM(row, i, v[i]);
    int r = PyList_Append(c->spans, row);
    Py_DECREF(row);
    return r;
}

static int sig_scope(Slice s, void *vctx, Py_ssize_t si) {
    (void)si;
    return each(s, 2, sig_span, vctx);
}

static int sig_resource(Slice s, void *vctx, Py_ssize_t ri) {
    SigCtx *c = vctx;
    (void)ri;
    Names names;
    if (resource_names(s, &names) < 0)
        return -1;
    PyObject *svc = str_of(c, names.svc), *ver = str_of(c, names.ver);
    c->spans = PyList_New(0);
    PyObject *group = NULL;
    int r = -1;
    if (svc && ver && c->spans && each(s, 2, sig_scope, c) == 0) {
        group = PyTuple_Pack(3, svc, ver, c->spans);
        if (group)
            r = PyList_Append(c->out, group);
    }
    Py_XDECREF(group);
    Py_XDECREF(svc);
    Py_XDECREF(ver);
    Py_CLEAR(c->spans);
    return r;
}

static PyObject *signal_rows(PyObject *self, PyObject *args) {
    PyObject *data, *peer;
    if (!PyArg_ParseTuple(args, "OO:signal_rows", &data, &peer))
        return NULL;
    if (bytes_tuple(peer, "peer") < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    SigCtx c;
    memset(&c, 0, sizeof c);
    c.peer = peer;
    c.out = PyList_New(0);
    c.empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    c.empty_str = PyUnicode_FromStringAndSize(NULL, 0);
    PyObject *out = NULL;
    if (c.out && c.empty_bytes && c.empty_str) {
        Slice all = {view.buf, view.len};
        if (each(all, 1, sig_resource, &c) == 0)
            out = Py_BuildValue("(On)", c.out, c.total);
    }
    span_free(&c.span);
    Py_XDECREF(c.out);
    Py_XDECREF(c.spans);
    Py_XDECREF(c.empty_bytes);
    Py_XDECREF(c.empty_str);
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"check_spans", check_spans, METH_O,
     "check_spans(buf) -> (total, [(ri, si, pi), ...] of spans with invalid ids)"},
    {"signal_rows", signal_rows, METH_VARARGS,
     "signal_rows(buf, peer_keys) -> (resources, total); see receiver/otlp/spanwire.py"},
    {"graph_rows", graph_rows, METH_VARARGS,
     "graph_rows(buf, peer_keys, db_keys) -> (rows, total, skipped); see receiver/otlp/spanwire.py"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spanwire", NULL, -1, methods};

PyMODINIT_FUNC PyInit__spanwire(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    WireError = PyErr_NewException("_spanwire.WireError", PyExc_ValueError, NULL);
    if (!WireError || PyModule_AddObject(m, "WireError", Py_NewRef(WireError)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
