/* AES-GCM for OpenFeeder's payload protection through the libcrypto that Python's `ssl` uses,
 * with the key set once per key object.
 *
 * `cryptography`'s AESGCM carries its own OpenSSL, linked into its extension, and sets the key up
 * again for every message (key schedule and GHASH key). In a process that also speaks TLS through
 * the `ssl` module the machine then runs two copies of the AES-GCM code for every message, the
 * TLS record's and the payload's; a process woken for one message finds neither in the CPU's
 * caches, and the second copy's misses cost more than the encryption itself (issue 7's benchmark:
 * about 20 us of a sealed command's added latency). This module links the system libcrypto, the
 * one `ssl` links, keeps one encrypting and one decrypting EVP context per key with the key
 * already set, and per message only sets the nonce.
 *
 * One call at a time per object: every call holds the GIL from start to end (no Python code runs
 * between touching a context and finishing with it: the buffers and the output are taken first),
 * so threads sharing a key object are serialized, not interleaved.
 *
 * `decrypt` raises `cryptography.exceptions.InvalidTag` when the message does not authenticate,
 * as `cryptography`'s AESGCM does, and returns nothing of the plaintext then.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <string.h>
#include <openssl/evp.h>

#define NONCE_BYTES 12
#define TAG_BYTES 16
/* EVP takes int lengths; the tag rides on the ciphertext */
#define MAX_DATA_BYTES ((Py_ssize_t)INT_MAX - TAG_BYTES)

static PyObject *InvalidTag;

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
} AESGCMObject;

static const EVP_CIPHER *cipher_of(Py_ssize_t key_bytes)
{
    switch (key_bytes) {
    case 16:
        return EVP_aes_128_gcm();
    case 24:
        return EVP_aes_192_gcm();
    case 32:
        return EVP_aes_256_gcm();
    default:
        return NULL;
    }
}

static void free_contexts(AESGCMObject *self)
{
    EVP_CIPHER_CTX_free(self->enc); /* cleanses the key schedule */
    EVP_CIPHER_CTX_free(self->dec);
    self->enc = NULL;
    self->dec = NULL;
}

static int aesgcm_init(AESGCMObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", NULL};
    Py_buffer key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*", kwlist, &key)) {
        return -1;
    }
    const EVP_CIPHER *cipher = cipher_of(key.len);
    if (cipher == NULL) {
        PyErr_Format(PyExc_ValueError, "an AES key is 16, 24 or 32 bytes, not %zd", key.len);
        PyBuffer_Release(&key);
        return -1;
    }
    free_contexts(self); /* __init__ called again: start over */
    self->enc = EVP_CIPHER_CTX_new();
    self->dec = EVP_CIPHER_CTX_new();
    int ok = self->enc != NULL && self->dec != NULL &&
             EVP_EncryptInit_ex(self->enc, cipher, NULL, key.buf, NULL) == 1 &&
             EVP_DecryptInit_ex(self->dec, cipher, NULL, key.buf, NULL) == 1 &&
             EVP_CIPHER_CTX_ctrl(self->enc, EVP_CTRL_GCM_SET_IVLEN, NONCE_BYTES, NULL) == 1 &&
             EVP_CIPHER_CTX_ctrl(self->dec, EVP_CTRL_GCM_SET_IVLEN, NONCE_BYTES, NULL) == 1;
    PyBuffer_Release(&key);
    if (!ok) {
        free_contexts(self);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto could not set up an AES-GCM context");
        return -1;
    }
    return 0;
}

static void aesgcm_dealloc(AESGCMObject *self)
{
    free_contexts(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int parse(AESGCMObject *self, PyObject *const *args, Py_ssize_t nargs, Py_buffer *nonce,
                 Py_buffer *data, Py_buffer *aad)
{
    if (self->enc == NULL) {
        PyErr_SetString(PyExc_ValueError, "the AESGCM object has no key (__init__ failed)");
        return -1;
    }
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
    const char *wrong = NULL;
    if (nonce->len != NONCE_BYTES) {
        PyErr_Format(PyExc_ValueError, "the nonce is %d bytes, not %zd", NONCE_BYTES, nonce->len);
        wrong = "nonce";
    }
    else if (data->len > MAX_DATA_BYTES || aad->len > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "data or associated data over 2 GiB");
        wrong = "length";
    }
    if (wrong != NULL) {
        PyBuffer_Release(nonce);
        PyBuffer_Release(data);
        PyBuffer_Release(aad);
        return -1;
    }
    return 0;
}

static void release(Py_buffer *nonce, Py_buffer *data, Py_buffer *aad)
{
    PyBuffer_Release(nonce);
    PyBuffer_Release(data);
    PyBuffer_Release(aad);
}

/* encrypt(nonce, plaintext, associated_data) -> ciphertext || tag */
static PyObject *aesgcm_encrypt(AESGCMObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer nonce, data, aad;
    if (parse(self, args, nargs, &nonce, &data, &aad) < 0) {
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, data.len + TAG_BYTES);
    if (out == NULL) {
        release(&nonce, &data, &aad);
        return NULL;
    }
    unsigned char *buf = (unsigned char *)PyBytes_AS_STRING(out);
    int written = 0, last = 0;
    EVP_CIPHER_CTX *ctx = self->enc;
    int ok = EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce.buf) == 1 &&
             (aad.len == 0 ||
              EVP_EncryptUpdate(ctx, NULL, &written, aad.buf, (int)aad.len) == 1) &&
             EVP_EncryptUpdate(ctx, buf, &written, data.buf, (int)data.len) == 1 &&
             EVP_EncryptFinal_ex(ctx, buf + written, &last) == 1 &&
             written + last == data.len &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, buf + data.len) == 1;
    release(&nonce, &data, &aad);
    if (!ok) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to encrypt with AES-GCM");
        return NULL;
    }
    return out;
}

/* decrypt(nonce, ciphertext || tag, associated_data) -> plaintext; InvalidTag if it does not
   authenticate */
static PyObject *aesgcm_decrypt(AESGCMObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer nonce, data, aad;
    if (parse(self, args, nargs, &nonce, &data, &aad) < 0) {
        return NULL;
    }
    if (data.len < TAG_BYTES) {
        release(&nonce, &data, &aad);
        PyErr_SetNone(InvalidTag);
        return NULL;
    }
    Py_ssize_t len = data.len - TAG_BYTES;
    PyObject *out = PyBytes_FromStringAndSize(NULL, len);
    if (out == NULL) {
        release(&nonce, &data, &aad);
        return NULL;
    }
    unsigned char *buf = (unsigned char *)PyBytes_AS_STRING(out);
    unsigned char *sealed = data.buf;
    int written = 0, last = 0;
    EVP_CIPHER_CTX *ctx = self->dec;
    int ok = EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce.buf) == 1 &&
             (aad.len == 0 ||
              EVP_DecryptUpdate(ctx, NULL, &written, aad.buf, (int)aad.len) == 1) &&
             EVP_DecryptUpdate(ctx, buf, &written, sealed, (int)len) == 1 &&
             EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, sealed + len) == 1;
    /* the tag is compared (in constant time) by the final call */
    int authentic = ok && EVP_DecryptFinal_ex(ctx, buf + written, &last) == 1 &&
                    written + last == len;
    release(&nonce, &data, &aad);
    if (!authentic) {
        memset(buf, 0, (size_t)len);
        Py_DECREF(out);
        PyErr_SetNone(InvalidTag);
        return NULL;
    }
    return out;
}

static PyMethodDef aesgcm_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))aesgcm_encrypt, METH_FASTCALL,
     "encrypt(nonce, plaintext, associated_data) -> ciphertext followed by the 16-byte tag"},
    {"decrypt", (PyCFunction)(void (*)(void))aesgcm_decrypt, METH_FASTCALL,
     "decrypt(nonce, sealed, associated_data) -> plaintext; InvalidTag if it does not "
     "authenticate"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject AESGCMType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "openfeeder.security._aesgcm.AESGCM",
    .tp_doc = "AES-GCM under one 16, 24 or 32-byte key (96-bit nonces, 128-bit tags), through "
              "the system libcrypto.",
    .tp_basicsize = sizeof(AESGCMObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)aesgcm_init,
    .tp_dealloc = (destructor)aesgcm_dealloc,
    .tp_methods = aesgcm_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_aesgcm",
    .m_doc = "AES-GCM through the system libcrypto, the key set once per key object.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__aesgcm(void)
{
    PyObject *exceptions = PyImport_ImportModule("cryptography.exceptions");
    if (exceptions == NULL) {
        return NULL;
    }
    InvalidTag = PyObject_GetAttrString(exceptions, "InvalidTag");
    Py_DECREF(exceptions);
    if (InvalidTag == NULL) {
        return NULL;
    }
    if (PyType_Ready(&AESGCMType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&AESGCMType);
    if (PyModule_AddObject(m, "AESGCM", (PyObject *)&AESGCMType) < 0) {
        Py_DECREF(&AESGCMType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
