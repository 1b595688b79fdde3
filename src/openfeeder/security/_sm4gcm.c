/* SM4-GCM for OpenFeeder's payload protection: one key schedule and one GHASH table per key.
 *
 * SM4 is the block cipher of GB/T 32907-2016 (ISO/IEC 18033-3:2010/Amd 1:2021); GCM is the mode
 * of NIST SP 800-38D with 96-bit nonces and 128-bit tags. The Python package `cryptography` offers
 * SM4-GCM only as a cipher context made anew for every message (the nonce is fixed when the
 * context is made), which costs more than the rest of sealing a message; this module keeps
 * the expanded key and the GHASH multiplication table of a key in one object and seals or
 * opens a message in one call. Its output is checked against OpenSSL's SM4-GCM (through
 * `cryptography`) in the tests, on random keys, nonces, lengths and associated data.
 *
 * Side channels: SM4's S-box and GHASH are table look-ups indexed by secret data, as in
 * OpenSSL's portable C code; a process sharing the CPU caches could learn from their timing.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 16
#define NONCE_BYTES 12
#define TAG_BYTES 16

static const uint8_t SBOX[256] = {
    0xd6, 0x90, 0xe9, 0xfe, 0xcc, 0xe1, 0x3d, 0xb7, 0x16, 0xb6, 0x14, 0xc2, 0x28, 0xfb, 0x2c, 0x05,
    0x2b, 0x67, 0x9a, 0x76, 0x2a, 0xbe, 0x04, 0xc3, 0xaa, 0x44, 0x13, 0x26, 0x49, 0x86, 0x06, 0x99,
    0x9c, 0x42, 0x50, 0xf4, 0x91, 0xef, 0x98, 0x7a, 0x33, 0x54, 0x0b, 0x43, 0xed, 0xcf, 0xac, 0x62,
    0xe4, 0xb3, 0x1c, 0xa9, 0xc9, 0x08, 0xe8, 0x95, 0x80, 0xdf, 0x94, 0xfa, 0x75, 0x8f, 0x3f, 0xa6,
    0x47, 0x07, 0xa7, 0xfc, 0xf3, 0x73, 0x17, 0xba, 0x83, 0x59, 0x3c, 0x19, 0xe6, 0x85, 0x4f, 0xa8,
    0x68, 0x6b, 0x81, 0xb2, 0x71, 0x64, 0xda, 0x8b, 0xf8, 0xeb, 0x0f, 0x4b, 0x70, 0x56, 0x9d, 0x35,
    0x1e, 0x24, 0x0e, 0x5e, 0x63, 0x58, 0xd1, 0xa2, 0x25, 0x22, 0x7c, 0x3b, 0x01, 0x21, 0x78, 0x87,
    0xd4, 0x00, 0x46, 0x57, 0x9f, 0xd3, 0x27, 0x52, 0x4c, 0x36, 0x02, 0xe7, 0xa0, 0xc4, 0xc8, 0x9e,
    0xea, 0xbf, 0x8a, 0xd2, 0x40, 0xc7, 0x38, 0xb5, 0xa3, 0xf7, 0xf2, 0xce, 0xf9, 0x61, 0x15, 0xa1,
    0xe0, 0xae, 0x5d, 0xa4, 0x9b, 0x34, 0x1a, 0x55, 0xad, 0x93, 0x32, 0x30, 0xf5, 0x8c, 0xb1, 0xe3,
    0x1d, 0xf6, 0xe2, 0x2e, 0x82, 0x66, 0xca, 0x60, 0xc0, 0x29, 0x23, 0xab, 0x0d, 0x53, 0x4e, 0x6f,
    0xd5, 0xdb, 0x37, 0x45, 0xde, 0xfd, 0x8e, 0x2f, 0x03, 0xff, 0x6a, 0x72, 0x6d, 0x6c, 0x5b, 0x51,
    0x8d, 0x1b, 0xaf, 0x92, 0xbb, 0xdd, 0xbc, 0x7f, 0x11, 0xd9, 0x5c, 0x41, 0x1f, 0x10, 0x5a, 0xd8,
    0x0a, 0xc1, 0x31, 0x88, 0xa5, 0xcd, 0x7b, 0xbd, 0x2d, 0x74, 0xd0, 0x12, 0xb8, 0xe5, 0xb4, 0xb0,
    0x89, 0x69, 0x97, 0x4a, 0x0c, 0x96, 0x77, 0x7e, 0x65, 0xb9, 0xf1, 0x09, 0xc5, 0x6e, 0xc6, 0x84,
    0x18, 0xf0, 0x7d, 0xec, 0x3a, 0xdc, 0x4d, 0x20, 0x79, 0xee, 0x5f, 0x3e, 0xd7, 0xcb, 0x39, 0x48,
};

static const uint32_t FK[4] = {0xa3b1bac6, 0x56aa3350, 0x677d9197, 0xb27022dc};

/* the round function's table look-ups: T[i][b] = L(S(b) << (24 - 8 i)) */
static uint32_t T[4][256];
/* the key schedule's: L'(S(b) << (24 - 8 i)) */
static uint32_t TK[4][256];
static uint32_t CK[32];

static inline uint32_t rotl(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline uint64_t load_be64(const uint8_t *p)
{
    return ((uint64_t)load_be32(p) << 32) | load_be32(p + 4);
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
    store_be32(p, (uint32_t)(v >> 32));
    store_be32(p + 4, (uint32_t)v);
}

static void init_tables(void)
{
    for (int i = 0; i < 4; i++) {
        for (int b = 0; b < 256; b++) {
            uint32_t s = (uint32_t)SBOX[b] << (24 - 8 * i);
            T[i][b] = s ^ rotl(s, 2) ^ rotl(s, 10) ^ rotl(s, 18) ^ rotl(s, 24);
            TK[i][b] = s ^ rotl(s, 13) ^ rotl(s, 23);
        }
    }
    for (int i = 0; i < 32; i++) {
        uint32_t ck = 0;
        for (int j = 0; j < 4; j++) {
            ck = (ck << 8) | (uint32_t)(((4 * i + j) * 7) & 0xff);
        }
        CK[i] = ck;
    }
}

static inline uint32_t tau_l(const uint32_t table[4][256], uint32_t x)
{
    return table[0][x >> 24] ^ table[1][(x >> 16) & 0xff] ^ table[2][(x >> 8) & 0xff]
           ^ table[3][x & 0xff];
}

static void sm4_expand(const uint8_t key[16], uint32_t rk[32])
{
    uint32_t k[4];
    for (int i = 0; i < 4; i++) {
        k[i] = load_be32(key + 4 * i) ^ FK[i];
    }
    for (int i = 0; i < 32; i++) {
        uint32_t next = k[0] ^ tau_l(TK, k[1] ^ k[2] ^ k[3] ^ CK[i]);
        rk[i] = next;
        k[0] = k[1];
        k[1] = k[2];
        k[2] = k[3];
        k[3] = next;
    }
}

static void sm4_encrypt_block(const uint32_t rk[32], const uint8_t in[16], uint8_t out[16])
{
    uint32_t x0 = load_be32(in), x1 = load_be32(in + 4), x2 = load_be32(in + 8),
             x3 = load_be32(in + 12);
    for (int i = 0; i < 32; i += 4) {
        x0 ^= tau_l(T, x1 ^ x2 ^ x3 ^ rk[i]);
        x1 ^= tau_l(T, x2 ^ x3 ^ x0 ^ rk[i + 1]);
        x2 ^= tau_l(T, x3 ^ x0 ^ x1 ^ rk[i + 2]);
        x3 ^= tau_l(T, x0 ^ x1 ^ x2 ^ rk[i + 3]);
    }
    store_be32(out, x3);
    store_be32(out + 4, x2);
    store_be32(out + 8, x1);
    store_be32(out + 12, x0);
}

/* GHASH with 4-bit tables (Shoup's method): hl/hh[i] hold i * H for the 16 4-bit values i */
static const uint64_t LAST4[16] = {0x0000, 0x1c20, 0x3840, 0x2460, 0x7080, 0x6ca0,
                                   0x48c0, 0x54e0, 0xe100, 0xfd20, 0xd940, 0xc560,
                                   0x9180, 0x8da0, 0xa9c0, 0xb5e0};

typedef struct {
    uint32_t rk[32];
    uint64_t hl[16];
    uint64_t hh[16];
} Key;

static void ghash_table(Key *k, const uint8_t h[16])
{
    uint64_t vh = load_be64(h), vl = load_be64(h + 8);
    k->hl[0] = 0;
    k->hh[0] = 0;
    k->hl[8] = vl;
    k->hh[8] = vh;
    for (int i = 4; i > 0; i >>= 1) {
        uint64_t t = (vl & 1) * 0xe100000000000000ULL;
        vl = (vh << 63) | (vl >> 1);
        vh = (vh >> 1) ^ t;
        k->hl[i] = vl;
        k->hh[i] = vh;
    }
    for (int i = 2; i <= 8; i *= 2) {
        for (int j = 1; j < i; j++) {
            k->hh[i + j] = k->hh[i] ^ k->hh[j];
            k->hl[i + j] = k->hl[i] ^ k->hl[j];
        }
    }
}

/* x = x * H */
static void ghash_mult(const Key *k, uint8_t x[16])
{
    unsigned lo = x[15] & 0xf;
    uint64_t zh = k->hh[lo], zl = k->hl[lo];
    for (int i = 15; i >= 0; i--) {
        unsigned hi = x[i] >> 4;
        lo = x[i] & 0xf;
        unsigned rem;
        if (i != 15) {
            rem = (unsigned)zl & 0xf;
            zl = (zh << 60) | (zl >> 4);
            zh = (zh >> 4) ^ (LAST4[rem] << 48) ^ k->hh[lo];
            zl ^= k->hl[lo];
        }
        rem = (unsigned)zl & 0xf;
        zl = (zh << 60) | (zl >> 4);
        zh = (zh >> 4) ^ (LAST4[rem] << 48) ^ k->hh[hi];
        zl ^= k->hl[hi];
    }
    store_be64(x, zh);
    store_be64(x + 8, zl);
}

static void ghash_update(const Key *k, uint8_t y[16], const uint8_t *data, Py_ssize_t len)
{
    while (len > 0) {
        Py_ssize_t n = len < BLOCK ? len : BLOCK;
        for (Py_ssize_t i = 0; i < n; i++) {
            y[i] ^= data[i];
        }
        ghash_mult(k, y);
        data += n;
        len -= n;
    }
}

/* CTR from counter block 2 on (J0 = nonce || 1 is the tag's), and GHASH of aad and ciphertext */
static void gcm_crypt(const Key *k, const uint8_t nonce[NONCE_BYTES], const uint8_t *in,
                      uint8_t *out, Py_ssize_t len, const uint8_t *aad, Py_ssize_t aad_len,
                      int encrypting, uint8_t tag[TAG_BYTES])
{
    uint8_t counter[BLOCK], stream[BLOCK], y[BLOCK] = {0}, lengths[BLOCK];
    memcpy(counter, nonce, NONCE_BYTES);
    ghash_update(k, y, aad, aad_len);
    if (!encrypting) {
        ghash_update(k, y, in, len);
    }
    uint32_t c = 2;
    for (Py_ssize_t at = 0; at < len; at += BLOCK, c++) {
        store_be32(counter + NONCE_BYTES, c);
        sm4_encrypt_block(k->rk, counter, stream);
        Py_ssize_t n = len - at < BLOCK ? len - at : BLOCK;
        for (Py_ssize_t i = 0; i < n; i++) {
            out[at + i] = in[at + i] ^ stream[i];
        }
    }
    if (encrypting) {
        ghash_update(k, y, out, len);
    }
    store_be64(lengths, (uint64_t)aad_len * 8);
    store_be64(lengths + 8, (uint64_t)len * 8);
    ghash_update(k, y, lengths, BLOCK);
    store_be32(counter + NONCE_BYTES, 1);
    sm4_encrypt_block(k->rk, counter, stream);
    for (int i = 0; i < TAG_BYTES; i++) {
        tag[i] = y[i] ^ stream[i];
    }
    memset(stream, 0, sizeof stream);
    memset(y, 0, sizeof y);
}

/* --- the Python type ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Key key;
} SM4GCMObject;

static int sm4gcm_init(SM4GCMObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", NULL};
    Py_buffer key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &key)) {
        return -1;
    }
    if (key.len != 16) {
        PyErr_Format(PyExc_ValueError, "an SM4 key is 16 bytes, not %zd", key.len);
        PyBuffer_Release(&key);
        return -1;
    }
    uint8_t zero[BLOCK] = {0}, h[BLOCK];
    sm4_expand(key.buf, self->key.rk);
    PyBuffer_Release(&key);
    sm4_encrypt_block(self->key.rk, zero, h);
    ghash_table(&self->key, h);
    memset(h, 0, sizeof h);
    return 0;
}

static void sm4gcm_dealloc(SM4GCMObject *self)
{
    volatile uint8_t *p = (volatile uint8_t *)&self->key;
    for (size_t i = 0; i < sizeof self->key; i++) {
        p[i] = 0;
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse(PyObject *const *args, Py_ssize_t nargs, Py_buffer *nonce, Py_buffer *data,
                 Py_buffer *aad)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "takes (nonce, data, associated_data), %zd given", nargs);
        return -1;
    }
    if (PyObject_GetBuffer(args[0], nonce, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (PyObject_GetBuffer(args[1], data, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(nonce);
        return -1;
    }
    if (PyObject_GetBuffer(args[2], aad, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(nonce);
        PyBuffer_Release(data);
        return -1;
    }
    if (nonce->len != NONCE_BYTES) {
        PyErr_Format(PyExc_ValueError, "the nonce is %d bytes, not %zd", NONCE_BYTES, nonce->len);
        PyBuffer_Release(nonce);
        PyBuffer_Release(data);
        PyBuffer_Release(aad);
        return -1;
    }
    return 0;
}

/* encrypt(nonce, plaintext, associated_data) -> ciphertext || tag */
static PyObject *sm4gcm_encrypt(SM4GCMObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer nonce, data, aad;
    if (parse(args, nargs, &nonce, &data, &aad) < 0) {
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, data.len + TAG_BYTES);
    if (out != NULL) {
        uint8_t *buf = (uint8_t *)PyBytes_AS_STRING(out);
        gcm_crypt(&self->key, nonce.buf, data.buf, buf, data.len, aad.buf, aad.len, 1,
                  buf + data.len);
    }
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&data);
    PyBuffer_Release(&aad);
    return out;
}

/* decrypt(nonce, ciphertext || tag, associated_data) -> plaintext, or None if it does not
   authenticate (nothing of the plaintext is returned then) */
static PyObject *sm4gcm_decrypt(SM4GCMObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer nonce, data, aad;
    if (parse(args, nargs, &nonce, &data, &aad) < 0) {
        return NULL;
    }
    PyObject *out = NULL;
    if (data.len < TAG_BYTES) {
        Py_INCREF(Py_None);
        out = Py_None;
    }
    else {
        Py_ssize_t len = data.len - TAG_BYTES;
        out = PyBytes_FromStringAndSize(NULL, len);
        if (out != NULL) {
            uint8_t tag[TAG_BYTES], diff = 0;
            const uint8_t *sealed = data.buf;
            gcm_crypt(&self->key, nonce.buf, sealed, (uint8_t *)PyBytes_AS_STRING(out), len,
                      aad.buf, aad.len, 0, tag);
            for (int i = 0; i < TAG_BYTES; i++) {
                diff |= tag[i] ^ sealed[len + i];
            }
            if (diff != 0) {
                memset(PyBytes_AS_STRING(out), 0, (size_t)len);
                Py_DECREF(out);
                Py_INCREF(Py_None);
                out = Py_None;
            }
        }
    }
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&data);
    PyBuffer_Release(&aad);
    return out;
}

static PyMethodDef sm4gcm_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))sm4gcm_encrypt, METH_FASTCALL,
     "encrypt(nonce, plaintext, associated_data) -> ciphertext followed by the 16-byte tag"},
    {"decrypt", (PyCFunction)(void (*)(void))sm4gcm_decrypt, METH_FASTCALL,
     "decrypt(nonce, sealed, associated_data) -> plaintext, or None if it does not authenticate"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SM4GCMType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "openfeeder.security._sm4gcm.SM4GCM",
    .tp_doc = "SM4-GCM under one 16-byte key (96-bit nonces, 128-bit tags).",
    .tp_basicsize = sizeof(SM4GCMObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sm4gcm_init,
    .tp_dealloc = (destructor)sm4gcm_dealloc,
    .tp_methods = sm4gcm_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_sm4gcm",
    .m_doc = "SM4-GCM with the key schedule and the GHASH table kept per key.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__sm4gcm(void)
{
    init_tables();
    if (PyType_Ready(&SM4GCMType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&SM4GCMType);
    if (PyModule_AddObject(m, "SM4GCM", (PyObject *)&SM4GCMType) < 0) {
        Py_DECREF(&SM4GCMType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
