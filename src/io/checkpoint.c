/* checkpoint.c: HDF5 checkpoints. The layout is documented object by object in
 * docs/checkpoint-format.md; keep the two in step.
 *
 * Writing (rank 0 alone, HDF5's default sec2 driver, no MPI-IO): everything goes to
 * PATH.tmp.<pid> in the same directory, which is flushed, closed, read back through the
 * verifying reader, fsync'ed and renamed onto PATH; then the directory is fsync'ed. A crash at
 * any moment leaves at most a temporary file, never a partial file under a final name.
 *
 * Reading trusts nothing: every group, dataset and attribute is checked for presence, type
 * class, size and exact shape; the stored module list is checked for self-consistency (names
 * unique and valid, vector lengths and offsets back to back, total n_trainable); then three
 * checksums (configuration text, data + scalars + model config + module table, projections)
 * are recomputed. Nothing in the reader knows a model family: the module list is what the
 * file says, and whether it is the list of the model being resumed is the trainer's to check.
 * Any problem is a -1 with one line naming the path and the object, never an abort.
 *
 * /model is driven by one table (k_model_fields: attribute name, type, offset in
 * vd_model_config, version that added it): the writer, the reader and data_checksum all walk
 * it, and a compile-time check makes a field added to vd_model_config without a row here a
 * build error. Version-1 files (GPT-2 only) lack the rows added in version 2; they read as 0.
 *
 * Files use HDF5's 1.8 object formats (libver bounds V18..V18), readable by HDF5 >= 1.8 and
 * so by h5py and h5dump. Unlike the 1.0 formats HDF5 picks by default, every metadata block
 * (superblock, object headers with their attributes, group indexes) carries a checksum, so a
 * flipped metadata byte is an HDF5 error rather than a silently different attribute. Raw
 * data has no HDF5 checksum; data_checksum and projection_checksum cover it. */
#define _POSIX_C_SOURCE 200809L
#include "vera/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <hdf5.h>

#include "vera/common.h"

/* The float arrays are hashed and stored as their in-memory bytes, which the format defines
 * as little-endian (the file's float32 datasets are IEEE little-endian too). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c assumes a little-endian host (data_checksum hashes native float bytes)"
#endif

/* Sanity bounds on the size attributes, checked before any size is computed from them, so a
 * corrupt or hostile file cannot make us overflow a size or allocate terabytes. */
#define CK_MAX_LAYERS (1 << 16)
#define CK_MAX_DIM (1 << 24)      /* a layer width: n_embd, out, max_in, max_out */
#define CK_MAX_R (1 << 20)
#define CK_MAX_MODULES (1 << 20)
#define CK_MAX_CONFIG_BYTES ((size_t)16 << 20)

/* ----------------------------------------------------------------------------------------- */
/* /model: every field of vd_model_config, one table */

typedef enum { MF_I32, MF_F32, MF_ENUM, MF_STR } mf_type;

/* Enum fields are stored by name; value i is names[i] (NULL-terminated lists). */
static const char *const k_arch_names[] = {"gpt2", "llama", NULL};      /* vd_arch */
static const char *const k_rope_names[] = {"default", "llama3", NULL};  /* vd_rope_type */

typedef struct {
    const char *name;          /* attribute of /model */
    mf_type type;              /* int32, float32, enum (string in the file), string */
    size_t off, size;          /* offsetof / sizeof the field in vd_model_config */
    int32_t since;             /* first format version that stores it */
    const char *const *names;  /* MF_ENUM: the values' spellings */
} model_field;

/* The one list: attribute, type, vd_model_config field, version, enum spellings. The order is
 * the file's and data_checksum's; version-1 rows first, as version 1 hashed them. */
#define CK_MODEL_FIELDS(X)                                                              \
    X("n_layer", MF_I32, n_layer, 1, NULL)                                              \
    X("n_head", MF_I32, n_head, 1, NULL)                                                \
    X("n_embd", MF_I32, channels, 1, NULL)                                              \
    X("vocab_size", MF_I32, vocab_size, 1, NULL)                                        \
    X("n_positions", MF_I32, max_seq_len, 1, NULL)                                      \
    X("layer_norm_epsilon", MF_F32, ln_eps, 1, NULL)                                    \
    X("arch", MF_ENUM, arch, 2, k_arch_names)                                           \
    X("n_kv_head", MF_I32, n_kv_head, 2, NULL)                                          \
    X("head_dim", MF_I32, head_dim, 2, NULL)                                            \
    X("intermediate_size", MF_I32, intermediate, 2, NULL)                               \
    X("tie_word_embeddings", MF_I32, tied, 2, NULL)                                     \
    X("qkv_bias", MF_I32, qkv_bias, 2, NULL)                                            \
    X("o_bias", MF_I32, o_bias, 2, NULL)                                                \
    X("mlp_bias", MF_I32, mlp_bias, 2, NULL)                                            \
    X("rope_theta", MF_F32, rope_theta, 2, NULL)                                        \
    X("rope_type", MF_ENUM, rope_type, 2, k_rope_names)                                 \
    X("rope_factor", MF_F32, rope_factor, 2, NULL)                                      \
    X("rope_low_freq_factor", MF_F32, rope_low_freq_factor, 2, NULL)                    \
    X("rope_high_freq_factor", MF_F32, rope_high_freq_factor, 2, NULL)                  \
    X("rope_original_max_position_embeddings", MF_I32, rope_original_max_pos, 2, NULL) \
    X("hf_architecture", MF_STR, hf_architecture, 2, NULL)

#define MF_FIELD_SIZE(field) sizeof(((vd_model_config *)0)->field)
#define MF_ROW(attr, type, field, since, names) {attr, type, offsetof(vd_model_config, field), MF_FIELD_SIZE(field), since, names},
static const model_field k_model_fields[] = {CK_MODEL_FIELDS(MF_ROW)};
enum { NUM_MODEL_FIELDS = sizeof(k_model_fields) / sizeof(k_model_fields[0]) };

/* Every byte of vd_model_config belongs to a row (it has no padding: 4-byte fields and a char
 * array), so a field added to the struct without a row here fails to compile... */
#define MF_SIZE(attr, type, field, since, names) +MF_FIELD_SIZE(field)
_Static_assert(0 CK_MODEL_FIELDS(MF_SIZE) == sizeof(vd_model_config),
               "vd_model_config has a field without a row in CK_MODEL_FIELDS (checkpoint.c)");
/* ...and numeric and enum rows are 4 bytes, read and written as int32 / float. */
#define MF_WIDTH(attr, type, field, since, names) \
    _Static_assert((type) == MF_STR || MF_FIELD_SIZE(field) == 4, "/model attribute " attr " is not 4 bytes");
CK_MODEL_FIELDS(MF_WIDTH)
_Static_assert(sizeof(vd_arch) == sizeof(int32_t) && sizeof(vd_rope_type) == sizeof(int32_t),
               "enum fields are stored through int32_t");

static int32_t mf_i32(const vd_model_config *m, const model_field *f) {
    int32_t v;
    memcpy(&v, (const char *)m + f->off, sizeof(v));
    return v;
}

static int32_t mf_num_names(const model_field *f) {
    int32_t n = 0;
    while (f->names[n]) n++;
    return n;
}

/* One field's value as text, as the checkpoint stores it (enums by name, strings quoted). */
static void mf_format(const vd_model_config *m, const model_field *f, char *out, size_t cap) {
    const char *p = (const char *)m + f->off;
    switch (f->type) {
    case MF_I32:
        snprintf(out, cap, "%d", (int)mf_i32(m, f));
        break;
    case MF_F32: {
        float v;
        memcpy(&v, p, sizeof(v));
        snprintf(out, cap, "%.9g", (double)v);
        break;
    }
    case MF_ENUM: {
        int32_t v = mf_i32(m, f);
        if (v >= 0 && v < mf_num_names(f)) snprintf(out, cap, "%s", f->names[v]);
        else snprintf(out, cap, "%d", (int)v);
        break;
    }
    case MF_STR:
        snprintf(out, cap, "'%.*s'", (int)strnlen(p, f->size), p);
        break;
    }
}

int vd_checkpoint_model_difference(const vd_model_config *ck, int32_t version, const vd_model_config *here,
                                   char *out, size_t cap) {
    for (int i = 0; i < NUM_MODEL_FIELDS; i++) {
        const model_field *f = &k_model_fields[i];
        if (f->since > version) continue; /* not stored by that format version */
        const char *a = (const char *)ck + f->off, *b = (const char *)here + f->off;
        int differs = f->type == MF_STR ? strncmp(a, b, f->size) != 0 : memcmp(a, b, f->size) != 0;
        if (!differs) continue;
        char va[160], vb[160];
        mf_format(ck, f, va, sizeof(va));
        mf_format(here, f, vb, sizeof(vb));
        if (cap) snprintf(out, cap, "%s %s in the checkpoint, %s here", f->name, va, vb);
        return 1;
    }
    if (cap) out[0] = 0;
    return 0;
}

/* ----------------------------------------------------------------------------------------- */
/* checksums */

static void store_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

/* The model config as data_checksum words, one per /model row of format `version`, in table
 * order: int32 and enum values sign-extended, floats as their IEEE bits, strings as
 * vd_hash64(bytes without the NUL, 0). Returns the number of words. */
static int model_words(const vd_model_config *m, int32_t version, uint64_t *out) {
    int n = 0;
    for (int i = 0; i < NUM_MODEL_FIELDS; i++) {
        const model_field *f = &k_model_fields[i];
        if (f->since > version) continue;
        const char *p = (const char *)m + f->off;
        switch (f->type) {
        case MF_I32:
        case MF_ENUM: out[n++] = (uint64_t)(int64_t)mf_i32(m, f); break;
        case MF_F32: { float v; memcpy(&v, p, sizeof(v)); out[n++] = float_bits(v); break; }
        case MF_STR: out[n++] = vd_hash64(p, strnlen(p, f->size), 0); break;
        }
    }
    return n;
}

static uint64_t hash_words(const uint64_t *w, int n, uint64_t h) {
    uint8_t rec[8 * (10 + NUM_MODEL_FIELDS + 5)];
    vd_require(n >= 0 && (size_t)n * 8 <= sizeof(rec));
    for (int i = 0; i < n; i++) store_le64(rec + 8 * i, w[i]);
    return vd_hash64(rec, 8 * (size_t)n, h);
}

/* The documented definition (docs/checkpoint-format.md, "data_checksum") for format `version`:
 * vd_hash64 chained from seed 0 over the three flat arrays, then over a record of every numeric
 * field of the struct as 64-bit little-endian words (signed values sign-extended, floats as
 * their IEEE bits; the model config as model_words gives it), then over target_modules; from
 * version 2 on, then over the module table. Every field a resume depends on is covered, so a
 * read that passes returns exactly what was written. */
static uint64_t data_checksum_v(const vd_checkpoint *ck, int32_t version) {
    size_t nbytes = sizeof(float) * ck->n_trainable;
    uint64_t h = vd_hash64(ck->params, ck->params ? nbytes : 0, 0);
    h = vd_hash64(ck->exp_avg, ck->exp_avg ? nbytes : 0, h);
    h = vd_hash64(ck->exp_avg_sq, ck->exp_avg_sq ? nbytes : 0, h);
    uint64_t w[10 + NUM_MODEL_FIELDS + 5];
    int n = 0;
    /* progress: what resume continues from */
    w[n++] = (uint64_t)ck->step;
    w[n++] = ck->tokens_seen;
    w[n++] = ck->next_sequence;
    w[n++] = ck->global_batch_seqs;
    w[n++] = (uint64_t)(int64_t)ck->adam_t;
    /* the rest of the run state */
    w[n++] = (uint64_t)(int64_t)ck->world_size;
    w[n++] = ck->dropout_seed;
    w[n++] = float_bits(ck->last_loss);
    w[n++] = ck->config_hash;
    w[n++] = ck->model_fingerprint;
    n += model_words(&ck->model, version, w + n);
    w[n++] = (uint64_t)(int64_t)ck->r;
    w[n++] = (uint64_t)(int64_t)ck->max_in;
    w[n++] = (uint64_t)(int64_t)ck->max_out;
    w[n++] = ck->projection_prng_key;
    w[n++] = ck->projection_checksum;
    h = hash_words(w, n, h);
    h = vd_hash64(ck->target_modules, strnlen(ck->target_modules, sizeof(ck->target_modules)), h);
    if (version >= VD_CKPT_VERSION_TENSORS) {
        /* the adapter type, then the tensor table: its size, then per tensor its path and layout */
        h = vd_hash64(ck->adapter_type, strnlen(ck->adapter_type, sizeof(ck->adapter_type)), h);
        const uint64_t head[2] = {(uint64_t)(int64_t)ck->n_tensors, (uint64_t)ck->n_trainable};
        h = hash_words(head, 2, h);
        for (int32_t i = 0; ck->tensors && i < ck->n_tensors; i++) {
            const vd_ckpt_tensor *t = &ck->tensors[i];
            h = vd_hash64(t->path, strnlen(t->path, sizeof(t->path)), h);
            uint64_t lay[3 + VD_ADAPTER_MAX_DIM] = {(uint64_t)t->offset, (uint64_t)t->numel, (uint64_t)(int64_t)t->ndim};
            for (int32_t d = 0; d < VD_ADAPTER_MAX_DIM; d++) lay[3 + d] = (uint64_t)t->shape[d];
            h = hash_words(lay, 3 + VD_ADAPTER_MAX_DIM, h);
        }
    } else if (version >= 2) {
        /* the module table: its size, then per module its name and layout */
        const uint64_t head[2] = {(uint64_t)(int64_t)ck->n_modules, (uint64_t)ck->n_trainable};
        h = hash_words(head, 2, h);
        for (int32_t i = 0; ck->modules && i < ck->n_modules; i++) {
            const vd_ckpt_module *md = &ck->modules[i];
            h = vd_hash64(md->name, strnlen(md->name, sizeof(md->name)), h);
            const uint64_t lay[3] = {(uint64_t)(int64_t)md->out, (uint64_t)md->off_b, (uint64_t)md->off_d};
            h = hash_words(lay, 3, h);
        }
    }
    return h;
}

/* The version ck is written in: 2 for VeRA's module table, 3 for any other adapter's tensor table. */
static int32_t ck_write_version(const vd_checkpoint *ck) {
    return (ck->adapter_type[0] == 0 || !strcmp(ck->adapter_type, "vera")) ? VD_CKPT_VERSION : VD_CKPT_VERSION_TENSORS;
}

uint64_t vd_checkpoint_data_checksum(const vd_checkpoint *ck) { return data_checksum_v(ck, ck_write_version(ck)); }

/* How the trainer computes vd_vera.proj_checksum: A's bytes from seed 0, then B's. */
static uint64_t projection_checksum(const float *A, const float *B, int64_t r, int64_t max_in, int64_t max_out) {
    return vd_hash64(B, sizeof(float) * (size_t)(max_out * r), vd_hash64(A, sizeof(float) * (size_t)(r * max_in), 0));
}

/* ----------------------------------------------------------------------------------------- */
/* HDF5 error text */

static herr_t first_error_cb(unsigned n, const H5E_error2_t *e, void *data) {
    char *buf = data;
    if (n == 0 && e && e->desc) snprintf(buf, 256, "%s", e->desc);
    return 0;
}

/* The innermost message on HDF5's error stack (where the problem was detected), as one line.
 * Automatic printing is off (h5_quiet), so this is the only trace of an HDF5 failure. */
static void h5_error_text(char *buf, size_t cap) {
    char tmp[256] = "";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, first_error_cb, tmp);
    for (char *p = tmp; *p; p++) if (*p == '\n' || *p == '\r') *p = ' ';
    snprintf(buf, cap, "%s", tmp[0] ? tmp : "no HDF5 detail");
}

/* HDF5's automatic error printing is switched off for the whole process the first time a
 * checkpoint is touched, and left off: this file is vera-dist's only HDF5 user and turns every
 * failure into one line of its own (h5Check, rfail_h5) instead of a stack dump. Restoring it
 * would be worse than useless: after rejecting a file with a bad metadata checksum, HDF5 1.10.8
 * holds on to a free-list block, and at exit (or MPI_Finalize) it then prints
 * "HDF5: infinite loop closing library" -- but only while automatic printing is on. */
static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* File access properties shared by writer and reader. */
static hid_t make_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return -1;
    /* checksummed metadata (see the top of this file) */
    if (H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18) < 0 ||
        /* closing the file closes every object still open in it: error paths stay simple */
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
        H5Pclose(fapl);
        return -1;
    }
#if H5_VERSION_GE(1, 10, 7)
    /* No flock(): only one process ever writes a given file (rank 0, to its own temporary
     * name) and readers read finished files. Lustre/NFS mounts without flock support would
     * otherwise fail every open with "unable to lock file". */
    if (H5Pset_file_locking(fapl, 0, 1) < 0) {
        H5Pclose(fapl);
        return -1;
    }
#endif
    return fapl;
}

/* ----------------------------------------------------------------------------------------- */
/* writer */

typedef struct {
    const char *path;             /* final name (messages) */
    char tmp[VD_PATH_MAX + 32];   /* path.tmp.<pid> */
    hid_t file;
    int32_t delay_ms;
} ck_writer;

__attribute__((noreturn)) static void writer_fail(ck_writer *w, const char *call, const char *file, int line) {
    char h5msg[256];
    h5_error_text(h5msg, sizeof(h5msg));
    if (w->file >= 0) H5Fclose(w->file);
    unlink(w->tmp);
    vd_die("%s: cannot write checkpoint: %s failed (HDF5: %s) [%s:%d]", w->path, call, h5msg, file, line);
}

static hid_t h5_check_w(hid_t v, ck_writer *w, const char *call, const char *file, int line) {
    if (v < 0) writer_fail(w, call, file, line);
    return v;
}
/* Every HDF5 call of the writer: a negative hid_t / herr_t removes the temporary file and
 * dies naming the checkpoint, the call, HDF5's reason and file:line. */
#define h5Check(w, call) h5_check_w((hid_t)(call), (w), #call, __FILE__, __LINE__)

static void pause_ms(int32_t ms) {
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static void w_attr(ck_writer *w, hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v) {
    hid_t sp = h5Check(w, H5Screate(H5S_SCALAR));
    hid_t a = h5Check(w, H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT));
    h5Check(w, H5Awrite(a, mtype, v));
    h5Check(w, H5Aclose(a));
    h5Check(w, H5Sclose(sp));
}
static void w_i32(ck_writer *w, hid_t loc, const char *name, int32_t v) { w_attr(w, loc, name, H5T_STD_I32LE, H5T_NATIVE_INT32, &v); }
static void w_i64(ck_writer *w, hid_t loc, const char *name, int64_t v) { w_attr(w, loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v); }
static void w_u64(ck_writer *w, hid_t loc, const char *name, uint64_t v) { w_attr(w, loc, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v); }
static void w_f32(ck_writer *w, hid_t loc, const char *name, float v) { w_attr(w, loc, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, &v); }

/* Fixed-length, NUL-terminated UTF-8 string type holding len characters. Fixed rather than
 * variable length: no global heap to parse on read, and the size is checked before reading. */
static hid_t w_str_type(ck_writer *w, size_t len) {
    hid_t t = h5Check(w, H5Tcopy(H5T_C_S1));
    h5Check(w, H5Tset_size(t, len + 1));
    h5Check(w, H5Tset_strpad(t, H5T_STR_NULLTERM));
    h5Check(w, H5Tset_cset(t, H5T_CSET_UTF8));
    return t;
}

static void w_str_attr(ck_writer *w, hid_t loc, const char *name, const char *s) {
    hid_t t = w_str_type(w, strlen(s));
    w_attr(w, loc, name, t, t, s);
    h5Check(w, H5Tclose(t));
}

/* A one-dimensional attribute of n elements. */
static void w_array_attr(ck_writer *w, hid_t loc, const char *name, hid_t ftype, hid_t mtype, hsize_t n, const void *v) {
    hid_t sp = h5Check(w, H5Screate_simple(1, &n, NULL));
    hid_t a = h5Check(w, H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT));
    h5Check(w, H5Awrite(a, mtype, v));
    h5Check(w, H5Aclose(a));
    h5Check(w, H5Sclose(sp));
}

/* /model's attributes, one per k_model_fields row. */
/* A one-dimensional fixed-length string attribute from n NUL-terminated strings at first,
 * first + stride, ... (a field of an array of structs), sized to the longest. */
static void w_str_list_attr(ck_writer *w, hid_t loc, const char *name, int32_t n, const char *first, size_t stride) {
    size_t maxlen = 1;
    for (int32_t i = 0; i < n; i++) {
        size_t len = strlen(first + (size_t)i * stride);
        if (len > maxlen) maxlen = len;
    }
    char *names = callocCheck((size_t)n, maxlen + 1);
    for (int32_t i = 0; i < n; i++) {
        const char *s = first + (size_t)i * stride;
        memcpy(names + (size_t)i * (maxlen + 1), s, strlen(s));
    }
    hsize_t hn = (hsize_t)n;
    hid_t t = w_str_type(w, maxlen);
    hid_t sp = h5Check(w, H5Screate_simple(1, &hn, NULL));
    hid_t a = h5Check(w, H5Acreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT));
    h5Check(w, H5Awrite(a, t, names));
    h5Check(w, H5Aclose(a));
    h5Check(w, H5Sclose(sp));
    h5Check(w, H5Tclose(t));
    free(names);
}

static void w_model(ck_writer *w, hid_t g, const vd_model_config *m) {
    for (int i = 0; i < NUM_MODEL_FIELDS; i++) {
        const model_field *f = &k_model_fields[i];
        const char *p = (const char *)m + f->off;
        switch (f->type) {
        case MF_I32: w_attr(w, g, f->name, H5T_STD_I32LE, H5T_NATIVE_INT32, p); break;
        case MF_F32: w_attr(w, g, f->name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, p); break;
        case MF_ENUM: w_str_attr(w, g, f->name, f->names[mf_i32(m, f)]); break;
        case MF_STR: w_str_attr(w, g, f->name, p); break;
        }
    }
}

static void w_f32_dset(ck_writer *w, hid_t loc, const char *name, int rank, const hsize_t *dims, const float *data) {
    pause_ms(w->delay_ms); /* testing only: widen the window in which a kill lands mid-file */
    hid_t sp = h5Check(w, H5Screate_simple(rank, dims, NULL));
    hid_t d = h5Check(w, H5Dcreate2(loc, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    h5Check(w, H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
    h5Check(w, H5Dclose(d));
    h5Check(w, H5Sclose(sp));
}

static hid_t w_group(ck_writer *w, hid_t loc, const char *name) {
    return h5Check(w, H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
}

/* parent/<module path>/lambda_b (out) and /lambda_d (r) for every module, from flat. */
static void w_vectors(ck_writer *w, hid_t parent, const vd_checkpoint *ck, const float *flat) {
    for (int32_t i = 0; i < ck->n_modules; i++) {
        const vd_ckpt_module *md = &ck->modules[i];
        hid_t g = w_group(w, parent, md->name);
        hsize_t nb = (hsize_t)md->out, nd = (hsize_t)ck->r;
        w_f32_dset(w, g, "lambda_b", 1, &nb, flat + md->off_b);
        w_f32_dset(w, g, "lambda_d", 1, &nd, flat + md->off_d);
        h5Check(w, H5Gclose(g));
    }
}

/* A tensor path is "<name>" or "<group>/<name>": each part a usable HDF5 link name. */
static int ck_path_ok(const char *p, size_t cap) {
    if (!memchr(p, 0, cap) || !p[0]) return 0;
    const char *slash = strchr(p, '/');
    if (slash && strchr(slash + 1, '/')) return 0;
    size_t first = slash ? (size_t)(slash - p) : strlen(p);
    const char *second = slash ? slash + 1 : NULL;
    if (first == 0 || (first == 1 && p[0] == '.') || (first == 2 && p[0] == '.' && p[1] == '.')) return 0;
    return !second || (second[0] && strcmp(second, ".") != 0 && strcmp(second, "..") != 0);
}

/* Opens parent/<group> of a tensor path, creating it on first use; *name = the dataset's name.
 * Returns parent itself (not to be closed) for a path without '/'. */
static hid_t w_tensor_parent(ck_writer *w, hid_t parent, const char *path, char *group, size_t cap, const char **name) {
    const char *slash = strchr(path, '/');
    if (!slash) {
        *name = path;
        return parent;
    }
    snprintf(group, cap, "%.*s", (int)(slash - path), path);
    *name = slash + 1;
    htri_t ex = h5Check(w, H5Lexists(parent, group, H5P_DEFAULT));
    return ex ? h5Check(w, H5Gopen2(parent, group, H5P_DEFAULT)) : w_group(w, parent, group);
}

/* parent/<path> of every tensor of the table, from flat (version 3). */
static void w_tensors(ck_writer *w, hid_t parent, const vd_checkpoint *ck, const float *flat) {
    for (int32_t i = 0; i < ck->n_tensors; i++) {
        const vd_ckpt_tensor *t = &ck->tensors[i];
        char group[160];
        const char *name;
        hid_t g = w_tensor_parent(w, parent, t->path, group, sizeof(group), &name);
        hsize_t dims[VD_ADAPTER_MAX_DIM];
        for (int32_t d = 0; d < t->ndim; d++) dims[d] = (hsize_t)t->shape[d];
        w_f32_dset(w, g, name, t->ndim, dims, flat + t->offset);
        if (g != parent) h5Check(w, H5Gclose(g));
    }
}

/* The adapter's trainable values (or one moment) under parent, in the form of the version. */
static void w_adapter_values(ck_writer *w, hid_t parent, const vd_checkpoint *ck, const float *flat) {
    if (ck_write_version(ck) >= VD_CKPT_VERSION_TENSORS) w_tensors(w, parent, ck, flat);
    else w_vectors(w, parent, ck, flat);
}

/* The writer's own invariants on ck (bugs in the caller, not user input). */
static void check_layout(const vd_checkpoint *ck) {
    vd_require(ck->config_text != NULL);
    for (int i = 0; i < NUM_MODEL_FIELDS; i++) {
        const model_field *f = &k_model_fields[i];
        if (f->type == MF_ENUM) vd_require(mf_i32(&ck->model, f) >= 0 && mf_i32(&ck->model, f) < mf_num_names(f));
        if (f->type == MF_STR) vd_require(memchr((const char *)&ck->model + f->off, 0, f->size) != NULL);
    }
    vd_require(memchr(ck->target_modules, 0, sizeof(ck->target_modules)) != NULL);
    vd_require(ck->params && ck->exp_avg && ck->exp_avg_sq && ck->r > 0);
    vd_require((ck->A == NULL) == (ck->B == NULL));
    size_t off = 0;
    if (ck_write_version(ck) >= VD_CKPT_VERSION_TENSORS) {
        vd_require(ck->n_tensors > 0 && ck->tensors != NULL && memchr(ck->adapter_type, 0, sizeof(ck->adapter_type)));
        for (int32_t i = 0; i < ck->n_tensors; i++) {
            const vd_ckpt_tensor *t = &ck->tensors[i];
            size_t numel = 1;
            vd_require(t->ndim >= 1 && t->ndim <= VD_ADAPTER_MAX_DIM && ck_path_ok(t->path, sizeof(t->path)));
            for (int32_t d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
            vd_require(t->numel == numel && numel > 0 && t->offset == off); /* back to back, in order */
            off += numel;
        }
        vd_require(off == ck->n_trainable);
        return;
    }
    vd_require(ck->n_modules > 0 && ck->modules != NULL);
    for (int32_t i = 0; i < ck->n_modules; i++) {
        const vd_ckpt_module *md = &ck->modules[i];
        /* the flat layout is implied by the module order: [lambda_b, lambda_d] back to back */
        vd_require(md->out > 0 && md->off_b == off && md->off_d == off + (size_t)md->out);
        vd_require(memchr(md->name, 0, sizeof(md->name)) && md->name[0] != 0 && strchr(md->name, '/') == NULL &&
                   strcmp(md->name, ".") != 0 && strcmp(md->name, "..") != 0);
        off += (size_t)md->out + (size_t)ck->r;
    }
    vd_require(off == ck->n_trainable);
}

static void fsync_dir_of(const char *path) {
    char dir[VD_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = 0;       /* "/file" -> "/" */
    else if (slash) *slash = 0;
    else snprintf(dir, sizeof(dir), ".");
    int fd = open(dir, O_RDONLY);
    /* The file is complete under its final name already; a filesystem that cannot fsync a
     * directory (EINVAL on some) only weakens durability of the rename, so warn, don't die. */
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL)) vd_warn("%s: cannot fsync directory (%s)", dir, strerror(errno));
    if (fd >= 0) close(fd);
}

void vd_checkpoint_write(const char *path, const vd_checkpoint *ck, int32_t delay_ms) {
    check_layout(ck);
    ck_writer wr = {.path = path, .file = -1, .delay_ms = delay_ms};
    ck_writer *w = &wr;
    if (snprintf(w->tmp, sizeof(w->tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(w->tmp))
        vd_die("%s: checkpoint path too long", path);
    {   /* the checkpoints directory */
        char dir[VD_PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) { *slash = 0; vd_mkdir_p(dir); }
    }

    h5_quiet(); /* failures are reported by h5Check, in one line */

    int32_t version = ck_write_version(ck);
    uint64_t data_checksum = data_checksum_v(ck, version);
    hid_t fapl = h5Check(w, make_fapl());
    w->file = h5Check(w, H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl));
    h5Check(w, H5Pclose(fapl));
    hid_t f = w->file;

    /* root: identity of the format, progress, run state */
    char created[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", &tm);
    w_str_attr(w, f, "format", VD_CKPT_FORMAT);
    w_i32(w, f, "format_version", version);
    w_i64(w, f, "step", ck->step);
    w_u64(w, f, "tokens_seen", ck->tokens_seen);
    w_u64(w, f, "next_sequence", ck->next_sequence);
    w_u64(w, f, "global_batch_seqs", ck->global_batch_seqs);
    w_u64(w, f, "dropout_seed", ck->dropout_seed);
    w_i32(w, f, "world_size", ck->world_size);
    w_i32(w, f, "adam_t", ck->adam_t);
    w_f32(w, f, "last_loss", ck->last_loss);
    w_u64(w, f, "data_checksum", data_checksum);
    w_str_attr(w, f, "created", created);

    /* /config: the run's configuration text */
    {
        pause_ms(w->delay_ms);
        hid_t t = w_str_type(w, strlen(ck->config_text));
        hid_t sp = h5Check(w, H5Screate(H5S_SCALAR));
        hid_t d = h5Check(w, H5Dcreate2(f, "config", t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
        h5Check(w, H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, ck->config_text));
        w_u64(w, d, "hash", ck->config_hash);
        h5Check(w, H5Dclose(d));
        h5Check(w, H5Sclose(sp));
        h5Check(w, H5Tclose(t));
    }

    /* /model: the base model's config (every field of vd_model_config) and fingerprint */
    hid_t g = w_group(w, f, "model");
    w_model(w, g, &ck->model);
    w_u64(w, g, "fingerprint", ck->model_fingerprint);
    h5Check(w, H5Gclose(g));

    /* /vera: what the shared projections are made from */
    g = w_group(w, f, "vera");
    w_i32(w, g, "r", ck->r);
    w_i32(w, g, "max_in", ck->max_in);
    w_i32(w, g, "max_out", ck->max_out);
    w_u64(w, g, "projection_prng_key", ck->projection_prng_key);
    w_str_attr(w, g, "target_modules", ck->target_modules);
    w_u64(w, g, "projection_checksum", ck->projection_checksum);
    w_i32(w, g, "save_projection", ck->A != NULL);
    h5Check(w, H5Gclose(g));

    /* /adapter: the module table -- module_order (HDF5 lists links alphabetically, "h.10"
     * before "h.2", so the order is stored explicitly), each module's lambda_b length and
     * offsets in the flat arrays, n_trainable -- then one group per module */
    g = w_group(w, f, "adapter");
    if (version >= VD_CKPT_VERSION_TENSORS) {
        /* version 3: adapter_type, then the tensor table -- tensor_order (the paths, in offset
         * order: HDF5 lists links alphabetically) and n_trainable -- then one dataset per tensor */
        w_str_attr(w, g, "adapter_type", ck->adapter_type);
        w_str_list_attr(w, g, "tensor_order", ck->n_tensors, (const char *)ck->tensors[0].path, sizeof(ck->tensors[0]));
        w_u64(w, g, "n_trainable", (uint64_t)ck->n_trainable);
    } else {
        w_str_list_attr(w, g, "module_order", ck->n_modules, (const char *)ck->modules[0].name, sizeof(ck->modules[0]));
        hsize_t n = (hsize_t)ck->n_modules;
        int32_t *outs = callocCheck((size_t)ck->n_modules, sizeof(int32_t));
        uint64_t *offs = callocCheck((size_t)ck->n_modules, sizeof(uint64_t));
        for (int32_t i = 0; i < ck->n_modules; i++) outs[i] = ck->modules[i].out;
        w_array_attr(w, g, "module_out", H5T_STD_I32LE, H5T_NATIVE_INT32, n, outs);
        for (int32_t i = 0; i < ck->n_modules; i++) offs[i] = ck->modules[i].off_b;
        w_array_attr(w, g, "module_off_b", H5T_STD_U64LE, H5T_NATIVE_UINT64, n, offs);
        for (int32_t i = 0; i < ck->n_modules; i++) offs[i] = ck->modules[i].off_d;
        w_array_attr(w, g, "module_off_d", H5T_STD_U64LE, H5T_NATIVE_UINT64, n, offs);
        free(outs);
        free(offs);
        w_u64(w, g, "n_trainable", (uint64_t)ck->n_trainable);
    }
    w_adapter_values(w, g, ck, ck->params);
    h5Check(w, H5Gclose(g));

    /* /optimizer: AdamW moments, same tree as /adapter */
    g = w_group(w, f, "optimizer");
    hid_t gm = w_group(w, g, "exp_avg");
    w_adapter_values(w, gm, ck, ck->exp_avg);
    h5Check(w, H5Gclose(gm));
    gm = w_group(w, g, "exp_avg_sq");
    w_adapter_values(w, gm, ck, ck->exp_avg_sq);
    h5Check(w, H5Gclose(gm));
    h5Check(w, H5Gclose(g));

    /* /projection: only with save_projection */
    if (ck->A) {
        g = w_group(w, f, "projection");
        hsize_t da[2] = {(hsize_t)ck->r, (hsize_t)ck->max_in};
        hsize_t db[2] = {(hsize_t)ck->max_out, (hsize_t)ck->r};
        w_f32_dset(w, g, "A", 2, da, ck->A);
        w_f32_dset(w, g, "B", 2, db, ck->B);
        h5Check(w, H5Gclose(g));
    }

    h5Check(w, H5Fflush(f, H5F_SCOPE_GLOBAL));
    hid_t closing = w->file;
    w->file = -1; /* closed (or failed to close) from here on: writer_fail must not close it again */
    h5Check(w, H5Fclose(closing));

    /* Read it back through the verifying reader before it may take the final name: a file
     * the reader would refuse (a caller bug, a full disk HDF5 did not report) never
     * replaces a good checkpoint. Costs one read from the page cache. */
    {
        vd_checkpoint back;
        char err[1024];
        if (vd_checkpoint_read(w->tmp, &back, err, sizeof(err)) != 0) {
            unlink(w->tmp);
            vd_die("%s: checkpoint written but it does not verify: %s", path, err);
        }
        vd_checkpoint_free(&back);
    }

    /* durable before visible: fsync the data, then rename, then fsync the directory entry */
    int fd = open(w->tmp, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        unlink(w->tmp);
        vd_die("%s: cannot fsync (%s)", w->tmp, strerror(e));
    }
    if (close(fd) != 0) { int e = errno; unlink(w->tmp); vd_die("%s: close failed (%s)", w->tmp, strerror(e)); }
    if (rename(w->tmp, path) != 0) {
        int e = errno;
        unlink(w->tmp);
        vd_die("%s: cannot rename %s onto it (%s)", path, w->tmp, strerror(e));
    }
    fsync_dir_of(path);
}

/* ----------------------------------------------------------------------------------------- */
/* reader */

typedef struct {
    const char *path;
    char *err;
    size_t errcap;
    int failed;
} ck_reader;

/* Records "path: <message>" (the first problem wins) and returns -1. */
__attribute__((format(printf, 2, 3))) static int rfail(ck_reader *r, const char *fmt, ...) {
    if (!r->failed && r->err && r->errcap > 0) {
        char msg[768];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        snprintf(r->err, r->errcap, "%s: %s", r->path, msg);
    }
    r->failed = 1;
    return -1;
}

/* Same, for a failed HDF5 call: appends HDF5's innermost reason. Call it right after the
 * failing call, before any other HDF5 call clears the error stack. */
__attribute__((format(printf, 2, 3))) static int rfail_h5(ck_reader *r, const char *fmt, ...) {
    char h5msg[256], msg[512];
    h5_error_text(h5msg, sizeof(h5msg));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return rfail(r, "%s (HDF5: %s)", msg, h5msg);
}

/* "/a" + "b" -> "/a/b", "/" + "b" -> "/b" (object names in messages) */
static void join(char *out, size_t cap, const char *parent, const char *name) {
    snprintf(out, cap, "%s/%s", strcmp(parent, "/") == 0 ? "" : parent, name);
}

static hid_t r_group(ck_reader *r, hid_t loc, const char *locname, const char *name) {
    char full[256];
    join(full, sizeof(full), locname, name);
    htri_t ex = H5Lexists(loc, name, H5P_DEFAULT);
    if (ex < 0) return rfail_h5(r, "cannot look up %s", full);
    if (ex == 0) return rfail(r, "group %s is missing", full);
    hid_t g = H5Gopen2(loc, name, H5P_DEFAULT);
    if (g < 0) rfail_h5(r, "%s is not a readable group", full);
    return g;
}

static hid_t r_attr_open(ck_reader *r, hid_t obj, const char *objname, const char *name) {
    htri_t ex = H5Aexists(obj, name);
    if (ex < 0) return rfail_h5(r, "cannot look up attribute %s of %s", name, objname);
    if (ex == 0) return rfail(r, "%s has no attribute '%s'", objname, name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) rfail_h5(r, "cannot open attribute %s of %s", name, objname);
    return a;
}

typedef enum { S_I32, S_I64, S_U64, S_F32 } scalar_kind;
static const char *const k_scalar_name[] = {"int32", "int64", "uint64", "float32"};

/* Whether file type t is exactly the documented kind: integer or float class, size and
 * signedness (HDF5 would otherwise convert, e.g. clip an int64 into int32); its memory type. */
static int num_type_ok(hid_t t, scalar_kind kind, hid_t *mtype) {
    H5T_class_t cls = H5Tget_class(t);
    size_t size = H5Tget_size(t);
    switch (kind) {
    case S_I32: *mtype = H5T_NATIVE_INT32; return cls == H5T_INTEGER && size == 4 && H5Tget_sign(t) == H5T_SGN_2;
    case S_I64: *mtype = H5T_NATIVE_INT64; return cls == H5T_INTEGER && size == 8 && H5Tget_sign(t) == H5T_SGN_2;
    case S_U64: *mtype = H5T_NATIVE_UINT64; return cls == H5T_INTEGER && size == 8 && H5Tget_sign(t) == H5T_SGN_NONE;
    default: *mtype = H5T_NATIVE_FLOAT; return cls == H5T_FLOAT && size == 4;
    }
}

/* Reads a scalar attribute after checking it is exactly the documented type. */
static int r_scalar(ck_reader *r, hid_t obj, const char *objname, const char *name, scalar_kind kind, void *out) {
    hid_t a = r_attr_open(r, obj, objname, name);
    if (a < 0) return -1;
    int rc = -1;
    hid_t mtype, t = H5Aget_type(a), sp = H5Aget_space(a);
    if (t < 0 || sp < 0) { rfail_h5(r, "cannot read the type of attribute %s of %s", name, objname); goto done; }
    if (!num_type_ok(t, kind, &mtype)) { rfail(r, "attribute %s of %s is not %s", name, objname, k_scalar_name[kind]); goto done; }
    if (H5Sget_simple_extent_type(sp) != H5S_SCALAR) { rfail(r, "attribute %s of %s is not a scalar", name, objname); goto done; }
    if (H5Aread(a, mtype, out) < 0) { rfail_h5(r, "cannot read attribute %s of %s", name, objname); goto done; }
    rc = 0;
done:
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Aclose(a);
    return rc;
}

/* Reads a one-dimensional attribute of exactly n elements of the documented type. */
static int r_array_attr(ck_reader *r, hid_t obj, const char *objname, const char *name, scalar_kind kind,
                        hsize_t n, void *out) {
    hid_t a = r_attr_open(r, obj, objname, name);
    if (a < 0) return -1;
    int rc = -1;
    hid_t mtype, t = H5Aget_type(a), sp = H5Aget_space(a);
    if (t < 0 || sp < 0) { rfail_h5(r, "cannot read the type of attribute %s of %s", name, objname); goto done; }
    if (!num_type_ok(t, kind, &mtype)) { rfail(r, "attribute %s of %s is not %s", name, objname, k_scalar_name[kind]); goto done; }
    hsize_t got = 0;
    if (H5Sget_simple_extent_type(sp) != H5S_SIMPLE || H5Sget_simple_extent_ndims(sp) != 1 ||
        H5Sget_simple_extent_dims(sp, &got, NULL) != 1) {
        rfail(r, "attribute %s of %s is not a one-dimensional list", name, objname);
        goto done;
    }
    if (got != n) {
        rfail(r, "attribute %s of %s has %llu entries; module_order has %llu", name, objname, (unsigned long long)got,
              (unsigned long long)n);
        goto done;
    }
    if (H5Aread(a, mtype, out) < 0) { rfail_h5(r, "cannot read attribute %s of %s", name, objname); goto done; }
    rc = 0;
done:
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Aclose(a);
    return rc;
}

/* A fixed-length string type's size after checking the class; 0 (with err set) if it is not one. */
static size_t r_str_size(ck_reader *r, hid_t t, const char *what, size_t maxbytes) {
    if (H5Tget_class(t) != H5T_STRING) { rfail(r, "%s is not a string", what); return 0; }
    htri_t vl = H5Tis_variable_str(t);
    if (vl != 0) { rfail(r, "%s is not a fixed-length string", what); return 0; }
    size_t size = H5Tget_size(t);
    if (size == 0 || size > maxbytes) { rfail(r, "%s has a string size of %zu bytes (at most %zu expected)", what, size, maxbytes); return 0; }
    return size;
}

/* Memory type for reading a fixed string of `size` bytes from file type ftype: NUL-terminated,
 * so the last byte HDF5 writes into our buffer is always a NUL whatever the file's padding,
 * and in the file's character set (HDF5 has no ASCII <-> UTF-8 conversion). */
static hid_t str_mem_type(hid_t ftype, size_t size) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return -1;
    H5T_cset_t cset = H5Tget_cset(ftype);
    if (cset < 0 || H5Tset_cset(t, cset) < 0 || H5Tset_size(t, size) < 0 || H5Tset_strpad(t, H5T_STR_NULLTERM) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

/* Scalar fixed-length string attribute into out (cap bytes, NUL-terminated). */
static int r_str_attr(ck_reader *r, hid_t obj, const char *objname, const char *name, char *out, size_t cap) {
    char what[256];
    snprintf(what, sizeof(what), "attribute %s of %s", name, objname);
    hid_t a = r_attr_open(r, obj, objname, name);
    if (a < 0) return -1;
    int rc = -1;
    hid_t mt = -1, t = H5Aget_type(a), sp = H5Aget_space(a);
    if (t < 0 || sp < 0) { rfail_h5(r, "cannot read the type of %s", what); goto done; }
    size_t size = r_str_size(r, t, what, cap);
    if (size == 0) goto done;
    if (H5Sget_simple_extent_type(sp) != H5S_SCALAR) { rfail(r, "%s is not a scalar", what); goto done; }
    mt = str_mem_type(t, size);
    if (mt < 0 || H5Aread(a, mt, out) < 0) { rfail_h5(r, "cannot read %s", what); goto done; }
    out[size - 1] = 0;
    rc = 0;
done:
    if (mt >= 0) H5Tclose(mt);
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Aclose(a);
    return rc;
}

/* Reads dataset locname/name into out after checking: float32 class and size, rank and every
 * dimension exactly as expected. */
static int r_f32_dset(ck_reader *r, hid_t loc, const char *locname, const char *name, int rank,
                      const hsize_t *want, float *out) {
    char full[256];
    join(full, sizeof(full), locname, name);
    htri_t ex = H5Lexists(loc, name, H5P_DEFAULT);
    if (ex < 0) return rfail_h5(r, "cannot look up %s", full);
    if (ex == 0) return rfail(r, "dataset %s is missing", full);
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return rfail_h5(r, "%s is not a readable dataset", full);
    int rc = -1;
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    if (t < 0 || sp < 0) { rfail_h5(r, "cannot read the type of %s", full); goto done; }
    if (H5Tget_class(t) != H5T_FLOAT || H5Tget_size(t) != 4) { rfail(r, "%s is not float32", full); goto done; }
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd < 0) { rfail_h5(r, "cannot read the shape of %s", full); goto done; }
    if (nd != rank) { rfail(r, "%s has %d dimensions, expected %d", full, nd, rank); goto done; }
    hsize_t got[VD_ADAPTER_MAX_DIM] = {0};
    if (nd > VD_ADAPTER_MAX_DIM || H5Sget_simple_extent_dims(sp, got, NULL) < 0) { rfail_h5(r, "cannot read the shape of %s", full); goto done; }
    for (int k = 2; k < rank; k++)
        if (got[k] != want[k]) {
            rfail(r, "%s has dimension %d of %llu, expected %llu", full, k, (unsigned long long)got[k], (unsigned long long)want[k]);
            goto done;
        }
    if (rank == 1 && got[0] != want[0]) {
        rfail(r, "%s has %llu elements, expected %llu", full, (unsigned long long)got[0], (unsigned long long)want[0]);
        goto done;
    }
    if (rank >= 2 && (got[0] != want[0] || got[1] != want[1])) {
        rfail(r, "%s has shape [%llu, %llu], expected [%llu, %llu]", full, (unsigned long long)got[0],
              (unsigned long long)got[1], (unsigned long long)want[0], (unsigned long long)want[1]);
        goto done;
    }
    if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) { rfail_h5(r, "cannot read %s", full); goto done; }
    rc = 0;
done:
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

/* The inverse of w_vectors: parent/<module>/lambda_b, lambda_d into flat at ck's offsets. */
static int r_vectors(ck_reader *r, hid_t parent, const char *parentname, const vd_checkpoint *ck, float *flat) {
    for (int32_t i = 0; i < ck->n_modules; i++) {
        const vd_ckpt_module *md = &ck->modules[i];
        char gname[256];
        join(gname, sizeof(gname), parentname, md->name);
        hid_t g = r_group(r, parent, parentname, md->name);
        if (g < 0) return -1;
        hsize_t nb = (hsize_t)md->out, nd = (hsize_t)ck->r;
        int rc = r_f32_dset(r, g, gname, "lambda_b", 1, &nb, flat + md->off_b);
        if (rc == 0) rc = r_f32_dset(r, g, gname, "lambda_d", 1, &nd, flat + md->off_d);
        H5Gclose(g);
        if (rc) return -1;
    }
    return 0;
}

/* /model's attributes of format `version` into m, one per k_model_fields row; rows added after
 * `version` stay 0 (for a version-1 file: arch gpt2, rope_type default, no Llama fields). */
static int r_model(ck_reader *r, hid_t g, int32_t version, vd_model_config *m) {
    for (int i = 0; i < NUM_MODEL_FIELDS; i++) {
        const model_field *f = &k_model_fields[i];
        if (f->since > version) continue;
        char *p = (char *)m + f->off;
        switch (f->type) {
        case MF_I32:
            if (r_scalar(r, g, "/model", f->name, S_I32, p)) return -1;
            break;
        case MF_F32:
            if (r_scalar(r, g, "/model", f->name, S_F32, p)) return -1;
            break;
        case MF_ENUM: {
            char s[32];
            if (r_str_attr(r, g, "/model", f->name, s, sizeof(s))) return -1;
            int32_t v = 0;
            while (f->names[v] && strcmp(f->names[v], s) != 0) v++;
            if (!f->names[v]) {
                char list[128] = "";
                for (int32_t k = 0; f->names[k]; k++)
                    snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s'%s'", k ? ", " : "", f->names[k]);
                return rfail(r, "attribute %s of /model is '%s', expected one of %s", f->name, s, list);
            }
            memcpy(p, &v, sizeof(v));
            break;
        }
        case MF_STR:
            memset(p, 0, f->size);
            if (r_str_attr(r, g, "/model", f->name, p, f->size)) return -1;
            break;
        }
    }
    return 0;
}

/* The model config is stored for the trainer and for tools; nothing in the file's layout is
 * derived from it. Still refuse what no model could have, family by family. */
static int check_model(ck_reader *r, const vd_model_config *m) {
    if (m->n_layer < 1 || m->n_layer > CK_MAX_LAYERS || m->channels < 1 || m->channels > CK_MAX_DIM ||
        m->n_head < 1 || m->vocab_size < 1 || m->max_seq_len < 1 ||
        (m->arch == VD_ARCH_GPT2 && m->channels % m->n_head != 0))
        return rfail(r, "/model shape is not valid (arch %s, n_layer %d, n_head %d, n_embd %d, vocab_size %d, n_positions %d)",
                     k_arch_names[m->arch], (int)m->n_layer, (int)m->n_head, (int)m->channels, (int)m->vocab_size,
                     (int)m->max_seq_len);
    if (m->arch == VD_ARCH_LLAMA &&
        (m->n_kv_head < 1 || m->n_head % m->n_kv_head != 0 || m->head_dim < 1 || m->intermediate < 1))
        return rfail(r, "/model shape is not valid for arch llama (n_head %d, n_kv_head %d, head_dim %d, intermediate_size %d)",
                     (int)m->n_head, (int)m->n_kv_head, (int)m->head_dim, (int)m->intermediate);
    const int32_t flag[4] = {m->tied, m->qkv_bias, m->o_bias, m->mlp_bias};
    const char *const flag_name[4] = {"tie_word_embeddings", "qkv_bias", "o_bias", "mlp_bias"};
    for (int i = 0; i < 4; i++)
        if (flag[i] != 0 && flag[i] != 1)
            return rfail(r, "attribute %s of /model is %d, expected 0 or 1", flag_name[i], (int)flag[i]);
    return 0;
}

/* Version 1 stored no module table: module i's out is the length of its /adapter lambda_b
 * (the other trees are checked against it when they are read). */
static int r_lambda_b_len(ck_reader *r, hid_t adapter, const char *name, hsize_t *len) {
    char gname[256], full[320];
    join(gname, sizeof(gname), "/adapter", name);
    join(full, sizeof(full), gname, "lambda_b");
    hid_t g = r_group(r, adapter, "/adapter", name);
    if (g < 0) return -1;
    int rc = -1;
    hid_t d = -1, t = -1, sp = -1;
    htri_t ex = H5Lexists(g, "lambda_b", H5P_DEFAULT);
    if (ex < 0) { rfail_h5(r, "cannot look up %s", full); goto done; }
    if (ex == 0) { rfail(r, "dataset %s is missing", full); goto done; }
    if ((d = H5Dopen2(g, "lambda_b", H5P_DEFAULT)) < 0) { rfail_h5(r, "%s is not a readable dataset", full); goto done; }
    t = H5Dget_type(d);
    sp = H5Dget_space(d);
    if (t < 0 || sp < 0) { rfail_h5(r, "cannot read the type of %s", full); goto done; }
    if (H5Tget_class(t) != H5T_FLOAT || H5Tget_size(t) != 4) { rfail(r, "%s is not float32", full); goto done; }
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd != 1) { rfail(r, "%s has %d dimensions, expected 1", full, nd); goto done; }
    if (H5Sget_simple_extent_dims(sp, len, NULL) != 1) { rfail_h5(r, "cannot read the shape of %s", full); goto done; }
    rc = 0;
done:
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    H5Gclose(g);
    return rc;
}

typedef struct {
    const char *name;
    int32_t index;
} name_ref;

static int cmp_name_ref(const void *a, const void *b) {
    const name_ref *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

/* Sorts the n names of `what` (an attribute's list) and fails naming the first one listed twice. */
static int names_unique_or_fail(ck_reader *r, name_ref *sorted, size_t n, const char *what) {
    qsort(sorted, n, sizeof(name_ref), cmp_name_ref);
    for (size_t i = 1; i < n; i++)
        if (strcmp(sorted[i - 1].name, sorted[i].name) == 0)
            return rfail(r, "%s lists '%s' twice (entries %d and %d)", what, sorted[i].name, (int)sorted[i - 1].index,
                         (int)sorted[i].index);
    return 0;
}

/* /adapter's module table into ck->modules, n_modules and n_trainable (version 2: the stored
 * module_out, module_off_b, module_off_d, n_trainable; version 1: the lengths of the lambda_b
 * datasets and the implied back-to-back layout), then checks that it is self-consistent:
 * names non-empty, usable as one HDF5 link name and unique; out in 1..CK_MAX_DIM; in order,
 * each module's lambda_b then lambda_d back to back (off_b = the previous module's off_d + r,
 * off_d = off_b + out); the total equal to n_trainable; max_out of /vera the largest out. */
/* A one-dimensional fixed-length string attribute (what names it in messages) of 1..max_n
 * entries, each at most maxsize bytes: *n entries of *size bytes each, NUL-terminated, in a
 * malloc'd *names (the caller frees it). */
static int r_str_list(ck_reader *r, hid_t obj, const char *objname, const char *attr, const char *what,
                      const char *noun, hsize_t max_n, size_t maxsize, hsize_t *n, size_t *size, char **names) {
    hid_t a = r_attr_open(r, obj, objname, attr);
    if (a < 0) return -1;
    int rc = -1;
    *names = NULL;
    hid_t mt = -1, t = H5Aget_type(a), sp = H5Aget_space(a);
    if (t < 0 || sp < 0) { rfail_h5(r, "cannot read the type of %s", what); goto done; }
    *size = r_str_size(r, t, what, maxsize);
    if (*size == 0) goto done;
    if (H5Sget_simple_extent_type(sp) != H5S_SIMPLE || H5Sget_simple_extent_ndims(sp) != 1 ||
        H5Sget_simple_extent_dims(sp, n, NULL) != 1) {
        rfail(r, "%s is not a one-dimensional list", what);
        goto done;
    }
    if (*n < 1 || *n > max_n) {
        rfail(r, "%s lists %llu %s, expected 1..%llu", what, (unsigned long long)*n, noun, (unsigned long long)max_n);
        goto done;
    }
    *names = calloc((size_t)*n, *size);
    if (!*names) { rfail(r, "out of memory for %llu %s", (unsigned long long)*n, noun); goto done; }
    mt = str_mem_type(t, *size);
    if (mt < 0 || H5Aread(a, mt, *names) < 0) { rfail_h5(r, "cannot read %s", what); goto done; }
    for (hsize_t i = 0; i < *n; i++) (*names)[(size_t)i * *size + *size - 1] = 0;
    rc = 0;
done:
    if (rc) { free(*names); *names = NULL; }
    if (mt >= 0) H5Tclose(mt);
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Aclose(a);
    return rc;
}

static int r_module_table(ck_reader *r, hid_t g, int32_t version, vd_checkpoint *ck) {
    const char *what = "attribute module_order of /adapter";
    int rc = -1;
    char *names = NULL;
    name_ref *sorted = NULL;
    int32_t *outs = NULL;
    uint64_t *off_b = NULL, *off_d = NULL;
    hsize_t n = 0;
    size_t size = 0;
    if (r_str_list(r, g, "/adapter", "module_order", what, "modules", CK_MAX_MODULES, sizeof(ck->modules[0].name), &n,
                   &size, &names))
        return -1;
    ck->modules = calloc((size_t)n, sizeof(vd_ckpt_module));
    sorted = calloc((size_t)n, sizeof(name_ref));
    outs = calloc((size_t)n, sizeof(int32_t));
    off_b = calloc((size_t)n, sizeof(uint64_t));
    off_d = calloc((size_t)n, sizeof(uint64_t));
    if (!ck->modules || !sorted || !outs || !off_b || !off_d) { rfail(r, "out of memory for %llu modules", (unsigned long long)n); goto done; }
    ck->n_modules = (int32_t)n;
    for (int32_t i = 0; i < ck->n_modules; i++) {
        char *s = names + (size_t)i * size;
        s[size - 1] = 0;
        if (s[0] == 0) { rfail(r, "%s[%d] is empty", what, (int)i); goto done; }
        if (strchr(s, '/') || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
            rfail(r, "%s[%d] is '%.96s', not a module path (no '/', not '.' or '..')", what, (int)i, s);
            goto done;
        }
        memcpy(ck->modules[i].name, s, strlen(s) + 1);
        sorted[i] = (name_ref){ck->modules[i].name, i};
    }
    if (names_unique_or_fail(r, sorted, (size_t)n, what)) goto done;

    uint64_t n_trainable = 0;
    if (version >= 2) {
        if (r_array_attr(r, g, "/adapter", "module_out", S_I32, n, outs) ||
            r_array_attr(r, g, "/adapter", "module_off_b", S_U64, n, off_b) ||
            r_array_attr(r, g, "/adapter", "module_off_d", S_U64, n, off_d) ||
            r_scalar(r, g, "/adapter", "n_trainable", S_U64, &n_trainable))
            goto done;
    }
    uint64_t off = 0;
    int32_t max_out = 0;
    for (int32_t i = 0; i < ck->n_modules; i++) {
        vd_ckpt_module *md = &ck->modules[i];
        if (version < 2) {
            hsize_t len = 0;
            if (r_lambda_b_len(r, g, md->name, &len)) goto done;
            outs[i] = len > (hsize_t)CK_MAX_DIM ? CK_MAX_DIM + 1 : (int32_t)len; /* too long: refused below */
            off_b[i] = off;
            off_d[i] = off + (uint64_t)outs[i];
        }
        if (outs[i] < 1 || outs[i] > CK_MAX_DIM) {
            rfail(r, "module %d (%s): lambda_b length (module_out of /adapter) is %lld, expected 1..%d", (int)i,
                  md->name, (long long)outs[i], CK_MAX_DIM);
            goto done;
        }
        /* the flat layout: [lambda_b, lambda_d] of each module, back to back, in order */
        if (off_b[i] != off) {
            rfail(r, "module %d (%s): module_off_b of /adapter is %llu, expected %llu (vectors are stored back to back "
                     "in module order)", (int)i, md->name, (unsigned long long)off_b[i], (unsigned long long)off);
            goto done;
        }
        if (off_d[i] != off + (uint64_t)outs[i]) {
            rfail(r, "module %d (%s): module_off_d of /adapter is %llu, expected %llu (module_off_b + module_out)",
                  (int)i, md->name, (unsigned long long)off_d[i], (unsigned long long)(off + (uint64_t)outs[i]));
            goto done;
        }
        md->out = outs[i];
        md->off_b = (size_t)off_b[i];
        md->off_d = (size_t)off_d[i];
        off += (uint64_t)outs[i] + (uint64_t)ck->r;
        if (outs[i] > max_out) max_out = outs[i];
    }
    if (version < 2) n_trainable = off;
    if (n_trainable != off) {
        rfail(r, "attribute n_trainable of /adapter is %llu; the modules' lambda_b and lambda_d lengths add up to %llu",
              (unsigned long long)n_trainable, (unsigned long long)off);
        goto done;
    }
    ck->n_trainable = (size_t)off;
    if (ck->max_out != max_out) {
        rfail(r, "attribute max_out of /vera is %d; the longest lambda_b (module_out of /adapter) is %d", (int)ck->max_out,
              (int)max_out);
        goto done;
    }
    rc = 0;
done:
    free(names);
    free(sorted);
    free(outs);
    free(off_b);
    free(off_d);
    return rc;
}

/* The group of a tensor path under parent (parent itself for a path without '/'; else opened,
 * the caller closes it) and the dataset's name in it; gname gets the group's full name. */
static hid_t r_tensor_parent(ck_reader *r, hid_t parent, const char *parentname, const char *path, char *gname,
                             size_t cap, const char **name) {
    const char *slash = strchr(path, '/');
    if (!slash) {
        snprintf(gname, cap, "%s", parentname);
        *name = path;
        return parent;
    }
    char group[160];
    snprintf(group, sizeof(group), "%.*s", (int)(slash - path), path);
    join(gname, cap, parentname, group);
    *name = slash + 1;
    return r_group(r, parent, parentname, group);
}

/* The shape of float32 dataset parentname/path (1..VD_ADAPTER_MAX_DIM dimensions, each >= 1). */
static int r_tensor_shape(ck_reader *r, hid_t parent, const char *parentname, vd_ckpt_tensor *t) {
    char gname[256], full[420];
    const char *name;
    hid_t g = r_tensor_parent(r, parent, parentname, t->path, gname, sizeof(gname), &name);
    if (g < 0) return -1;
    join(full, sizeof(full), gname, name);
    int rc = -1;
    hid_t d = -1, ty = -1, sp = -1;
    htri_t ex = H5Lexists(g, name, H5P_DEFAULT);
    if (ex < 0) { rfail_h5(r, "cannot look up %s", full); goto done; }
    if (ex == 0) { rfail(r, "dataset %s is missing", full); goto done; }
    if ((d = H5Dopen2(g, name, H5P_DEFAULT)) < 0) { rfail_h5(r, "%s is not a readable dataset", full); goto done; }
    ty = H5Dget_type(d);
    sp = H5Dget_space(d);
    if (ty < 0 || sp < 0) { rfail_h5(r, "cannot read the type of %s", full); goto done; }
    if (H5Tget_class(ty) != H5T_FLOAT || H5Tget_size(ty) != 4) { rfail(r, "%s is not float32", full); goto done; }
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd < 1 || nd > VD_ADAPTER_MAX_DIM) { rfail(r, "%s has %d dimensions, expected 1..%d", full, nd, VD_ADAPTER_MAX_DIM); goto done; }
    hsize_t dims[VD_ADAPTER_MAX_DIM];
    if (H5Sget_simple_extent_dims(sp, dims, NULL) != nd) { rfail_h5(r, "cannot read the shape of %s", full); goto done; }
    t->ndim = nd;
    t->numel = 1;
    for (int k = 0; k < nd; k++) {
        if (dims[k] < 1 || dims[k] > (hsize_t)CK_MAX_DIM) {
            rfail(r, "%s has dimension %d of %llu, expected 1..%d", full, k, (unsigned long long)dims[k], CK_MAX_DIM);
            goto done;
        }
        t->shape[k] = (int64_t)dims[k];
        t->numel *= (size_t)dims[k];
    }
    rc = 0;
done:
    if (ty >= 0) H5Tclose(ty);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    if (g != parent) H5Gclose(g);
    return rc;
}

/* Version 3: /adapter's adapter_type and tensor table into ck, checked for self-consistency:
 * a known adapter type; paths usable as HDF5 names ("<name>" or "<group>/<name>") and unique;
 * the tensors back to back in order (each one's shape from its dataset), adding up to
 * n_trainable. */
static int r_tensor_table(ck_reader *r, hid_t g, vd_checkpoint *ck) {
    if (r_str_attr(r, g, "/adapter", "adapter_type", ck->adapter_type, sizeof(ck->adapter_type))) return -1;
    if (vd_adapter_type_parse(ck->adapter_type) < 0)
        return rfail(r, "attribute adapter_type of /adapter is '%s', expected vera, vblora or lora", ck->adapter_type);
    const char *what = "attribute tensor_order of /adapter";
    char *names = NULL;
    name_ref *sorted = NULL;
    hsize_t n = 0;
    size_t size = 0;
    uint64_t n_trainable = 0;
    int rc = -1;
    if (r_str_list(r, g, "/adapter", "tensor_order", what, "tensors", CK_MAX_MODULES, sizeof(ck->tensors[0].path), &n,
                   &size, &names) ||
        r_scalar(r, g, "/adapter", "n_trainable", S_U64, &n_trainable))
        goto done;
    ck->tensors = calloc((size_t)n, sizeof(vd_ckpt_tensor));
    sorted = calloc((size_t)n, sizeof(name_ref));
    if (!ck->tensors || !sorted) { rfail(r, "out of memory for %llu tensors", (unsigned long long)n); goto done; }
    ck->n_tensors = (int32_t)n;
    size_t off = 0;
    for (int32_t i = 0; i < ck->n_tensors; i++) {
        vd_ckpt_tensor *t = &ck->tensors[i];
        const char *p = names + (size_t)i * size;
        if (!ck_path_ok(p, size)) {
            rfail(r, "%s[%d] is '%.96s', not a tensor path ('<name>' or '<group>/<name>', not '.' or '..')", what, (int)i, p);
            goto done;
        }
        memcpy(t->path, p, strlen(p) + 1);
        sorted[i] = (name_ref){t->path, i};
        if (r_tensor_shape(r, g, "/adapter", t)) goto done;
        t->offset = off;
        off += t->numel;
    }
    if (names_unique_or_fail(r, sorted, (size_t)n, what)) goto done;
    if (n_trainable != off) {
        rfail(r, "attribute n_trainable of /adapter is %llu; the tensors of tensor_order add up to %llu",
              (unsigned long long)n_trainable, (unsigned long long)off);
        goto done;
    }
    ck->n_trainable = off;
    rc = 0;
done:
    free(names);
    free(sorted);
    return rc;
}

/* The inverse of w_tensors: parent/<path> of every tensor into flat at its offset, each with the
 * shape the table says (read from /adapter). */
static int r_tensor_values(ck_reader *r, hid_t parent, const char *parentname, const vd_checkpoint *ck, float *flat) {
    for (int32_t i = 0; i < ck->n_tensors; i++) {
        const vd_ckpt_tensor *t = &ck->tensors[i];
        char gname[256];
        const char *name;
        hid_t g = r_tensor_parent(r, parent, parentname, t->path, gname, sizeof(gname), &name);
        if (g < 0) return -1;
        hsize_t dims[VD_ADAPTER_MAX_DIM];
        for (int32_t d = 0; d < t->ndim; d++) dims[d] = (hsize_t)t->shape[d];
        int rc = r_f32_dset(r, g, gname, name, t->ndim, dims, flat + t->offset);
        if (g != parent) H5Gclose(g);
        if (rc) return -1;
    }
    return 0;
}

/* The adapter's values (or one moment) under parent, in the form of the file's version. */
static int r_adapter_values(ck_reader *r, hid_t parent, const char *parentname, int32_t version, const vd_checkpoint *ck,
                            float *flat) {
    return version >= VD_CKPT_VERSION_TENSORS ? r_tensor_values(r, parent, parentname, ck, flat)
                                               : r_vectors(r, parent, parentname, ck, flat);
}

/* /config: a scalar fixed-length string dataset with a uint64 attribute "hash". */
static int r_config(ck_reader *r, hid_t f, vd_checkpoint *ck) {
    htri_t ex = H5Lexists(f, "config", H5P_DEFAULT);
    if (ex < 0) return rfail_h5(r, "cannot look up %s", "/config");
    if (ex == 0) return rfail(r, "dataset /config is missing");
    hid_t d = H5Dopen2(f, "config", H5P_DEFAULT);
    if (d < 0) return rfail_h5(r, "%s is not a readable dataset", "/config");
    int rc = -1;
    hid_t mt = -1, t = H5Dget_type(d), sp = H5Dget_space(d);
    if (t < 0 || sp < 0) { rfail_h5(r, "cannot read the type of %s", "/config"); goto done; }
    size_t size = r_str_size(r, t, "dataset /config", CK_MAX_CONFIG_BYTES);
    if (size == 0) goto done;
    if (H5Sget_simple_extent_type(sp) != H5S_SCALAR) { rfail(r, "dataset /config is not a scalar"); goto done; }
    ck->config_text = malloc(size + 1);
    mt = str_mem_type(t, size);
    if (!ck->config_text || mt < 0 || H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, ck->config_text) < 0) {
        rfail_h5(r, "cannot read %s", "/config");
        goto done;
    }
    ck->config_text[size - 1] = 0;
    if (r_scalar(r, d, "/config", "hash", S_U64, &ck->config_hash)) goto done;
    uint64_t h = vd_hash64(ck->config_text, strlen(ck->config_text), 0);
    if (h != ck->config_hash) {
        rfail(r, "/config text does not match its hash attribute (%016llx stored, %016llx computed): the file is corrupt",
              (unsigned long long)ck->config_hash, (unsigned long long)h);
        goto done;
    }
    rc = 0;
done:
    if (mt >= 0) H5Tclose(mt);
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

/* Everything after opening the file; returns 0 or -1 with r->err set. */
static int ck_tensors_from_modules(vd_checkpoint *ck);

static int read_all(ck_reader *r, hid_t f, off_t file_size, vd_checkpoint *ck) {
    /* identity of the format first, so a foreign HDF5 file gets the right message */
    char format[64];
    if (r_str_attr(r, f, "/", "format", format, sizeof(format))) return -1;
    if (strcmp(format, VD_CKPT_FORMAT) != 0)
        return rfail(r, "attribute format is '%s', expected '%s' (not a vera-dist checkpoint)", format, VD_CKPT_FORMAT);
    int32_t version = 0;
    if (r_scalar(r, f, "/", "format_version", S_I32, &version)) return -1;
    if (version < VD_CKPT_MIN_VERSION || version > VD_CKPT_MAX_VERSION)
        return rfail(r, "format_version %d is not supported (this build reads versions %d to %d)", (int)version,
                     VD_CKPT_MIN_VERSION, VD_CKPT_MAX_VERSION);
    ck->format_version = version;

    uint64_t data_checksum = 0;
    char created[64];
    if (r_scalar(r, f, "/", "step", S_I64, &ck->step) ||
        r_scalar(r, f, "/", "tokens_seen", S_U64, &ck->tokens_seen) ||
        r_scalar(r, f, "/", "next_sequence", S_U64, &ck->next_sequence) ||
        r_scalar(r, f, "/", "global_batch_seqs", S_U64, &ck->global_batch_seqs) ||
        r_scalar(r, f, "/", "dropout_seed", S_U64, &ck->dropout_seed) ||
        r_scalar(r, f, "/", "world_size", S_I32, &ck->world_size) ||
        r_scalar(r, f, "/", "adam_t", S_I32, &ck->adam_t) ||
        r_scalar(r, f, "/", "last_loss", S_F32, &ck->last_loss) ||
        r_scalar(r, f, "/", "data_checksum", S_U64, &data_checksum) ||
        r_str_attr(r, f, "/", "created", created, sizeof(created)))  /* informational, but present */
        return -1;
    if (ck->step < 0) return rfail(r, "attribute step is %lld, expected >= 0", (long long)ck->step);

    if (r_config(r, f, ck)) return -1;

    hid_t g = r_group(r, f, "/", "model");
    if (g < 0) return -1;
    int rc = r_model(r, g, version, &ck->model) ||
             r_scalar(r, g, "/model", "fingerprint", S_U64, &ck->model_fingerprint);
    H5Gclose(g);
    if (rc || check_model(r, &ck->model)) return -1;

    int32_t save_projection = -1;
    g = r_group(r, f, "/", "vera");
    if (g < 0) return -1;
    rc = r_scalar(r, g, "/vera", "r", S_I32, &ck->r) ||
         r_scalar(r, g, "/vera", "max_in", S_I32, &ck->max_in) ||
         r_scalar(r, g, "/vera", "max_out", S_I32, &ck->max_out) ||
         r_scalar(r, g, "/vera", "projection_prng_key", S_U64, &ck->projection_prng_key) ||
         r_str_attr(r, g, "/vera", "target_modules", ck->target_modules, sizeof(ck->target_modules)) ||
         r_scalar(r, g, "/vera", "projection_checksum", S_U64, &ck->projection_checksum) ||
         r_scalar(r, g, "/vera", "save_projection", S_I32, &save_projection);
    H5Gclose(g);
    if (rc) return -1;
    if (ck->r < 1 || ck->r > CK_MAX_R) return rfail(r, "attribute r of /vera is %d, expected 1..%d", (int)ck->r, CK_MAX_R);
    if (ck->max_in < 1 || ck->max_in > CK_MAX_DIM || ck->max_out < 1 || ck->max_out > CK_MAX_DIM)
        return rfail(r, "attributes max_in, max_out of /vera are %d, %d, expected 1..%d", (int)ck->max_in,
                     (int)ck->max_out, CK_MAX_DIM);
    if (save_projection != 0 && save_projection != 1)
        return rfail(r, "attribute save_projection of /vera is %d, expected 0 or 1", (int)save_projection);
    /* what the names mean is the trainer's business (its own parser, its own model) */
    if (ck->target_modules[0] == 0) return rfail(r, "attribute target_modules of /vera is empty");

    g = r_group(r, f, "/", "adapter");
    if (g < 0) return -1;
    if (version >= VD_CKPT_VERSION_TENSORS) {
        rc = r_tensor_table(r, g, ck);
    } else {
        rc = r_module_table(r, g, version, ck);
        if (rc == 0 && ck_tensors_from_modules(ck) != 0) rc = rfail(r, "out of memory for the tensor table");
    }

    /* Every value the attributes describe must fit in the file (datasets are stored
     * uncompressed): refuses absurd sizes before allocating anything from them. */
    uint64_t need = 3ull * sizeof(float) * ck->n_trainable;
    if (save_projection) need += sizeof(float) * ((uint64_t)ck->r * (uint64_t)ck->max_in + (uint64_t)ck->max_out * (uint64_t)ck->r);
    if (rc == 0 && need > (uint64_t)file_size)
        rc = rfail(r, "file is %lld bytes, too small for the %llu bytes of vectors and projections its attributes describe (truncated?)",
                   (long long)file_size, (unsigned long long)need);
    if (rc == 0) {
        size_t nb = sizeof(float) * ck->n_trainable;
        ck->params = malloc(nb);
        ck->exp_avg = malloc(nb);
        ck->exp_avg_sq = malloc(nb);
        if (!ck->params || !ck->exp_avg || !ck->exp_avg_sq) rc = rfail(r, "out of memory for %zu trainable values", ck->n_trainable);
    }
    if (rc == 0) rc = r_adapter_values(r, g, "/adapter", version, ck, ck->params);
    H5Gclose(g);
    if (rc) return -1;

    g = r_group(r, f, "/", "optimizer");
    if (g < 0) return -1;
    const char *const moment_name[2] = {"exp_avg", "exp_avg_sq"};
    float *const moment[2] = {ck->exp_avg, ck->exp_avg_sq};
    for (int k = 0; k < 2 && rc == 0; k++) {
        char gname[64];
        snprintf(gname, sizeof(gname), "/optimizer/%s", moment_name[k]);
        hid_t gm = r_group(r, g, "/optimizer", moment_name[k]);
        if (gm < 0) { rc = -1; break; }
        rc = r_adapter_values(r, gm, gname, version, ck, moment[k]);
        H5Gclose(gm);
    }
    H5Gclose(g);
    if (rc) return -1;

    /* /projection exists exactly when save_projection says so */
    htri_t has_proj = H5Lexists(f, "projection", H5P_DEFAULT);
    if (has_proj < 0) return rfail_h5(r, "cannot look up %s", "/projection");
    if (!save_projection && has_proj) return rfail(r, "/projection is present but /vera save_projection is 0");
    if (save_projection) {
        g = r_group(r, f, "/", "projection");
        if (g < 0) return -1;
        size_t na = (size_t)ck->r * (size_t)ck->max_in, nbm = (size_t)ck->max_out * (size_t)ck->r;
        ck->A = malloc(sizeof(float) * na);
        ck->B = malloc(sizeof(float) * nbm);
        hsize_t da[2] = {(hsize_t)ck->r, (hsize_t)ck->max_in}, db[2] = {(hsize_t)ck->max_out, (hsize_t)ck->r};
        if (!ck->A || !ck->B) rc = rfail(r, "out of memory for the projections");
        if (rc == 0) rc = r_f32_dset(r, g, "/projection", "A", 2, da, ck->A);
        if (rc == 0) rc = r_f32_dset(r, g, "/projection", "B", 2, db, ck->B);
        H5Gclose(g);
        if (rc) return -1;
        uint64_t h = projection_checksum(ck->A, ck->B, ck->r, ck->max_in, ck->max_out);
        if (h != ck->projection_checksum)
            return rfail(r, "/projection/A and /projection/B do not match /vera projection_checksum "
                            "(%016llx stored, %016llx computed): the file is corrupt",
                         (unsigned long long)ck->projection_checksum, (unsigned long long)h);
    }

    uint64_t h = data_checksum_v(ck, version); /* as the file's version defines it */
    if (h != data_checksum)
        return rfail(r, "data_checksum mismatch (%016llx stored, %016llx computed over the vectors, moments and "
                        "attributes): the file is corrupt", (unsigned long long)data_checksum, (unsigned long long)h);
    return 0;
}

int vd_checkpoint_read(const char *path, vd_checkpoint *ck, char *err, size_t errcap) {
    memset(ck, 0, sizeof(*ck));
    if (err && errcap) err[0] = 0;
    ck_reader rd = {.path = path, .err = err, .errcap = errcap};
    ck_reader *r = &rd;

    /* HDF5 opens the path itself: refuse a FIFO or device before it can block on one */
    char why[256];
    if (vd_regular_file_problem(path, why, sizeof(why)) != 0) return rfail(r, "%s", why);
    struct stat st;
    if (stat(path, &st) != 0) return rfail(r, "cannot open (%s)", strerror(errno));

    h5_quiet(); /* our one-line reason replaces HDF5's stack dump */

    hid_t f = -1, fapl = -1;
    htri_t is_h5 = H5Fis_hdf5(path);
    if (is_h5 < 0) rfail_h5(r, "cannot check for an HDF5 signature");
    else if (is_h5 == 0) rfail(r, "not an HDF5 file (no HDF5 signature; empty or not a checkpoint)");
    else if ((fapl = make_fapl()) < 0) rfail_h5(r, "cannot set up HDF5 file access");
    else if ((f = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0) rfail_h5(r, "cannot open as HDF5 (corrupt or truncated?)");
    else read_all(r, f, st.st_size, ck);

    if (f >= 0 && H5Fclose(f) < 0) rfail_h5(r, "closing the file failed");
    if (fapl >= 0) H5Pclose(fapl);
    if (r->failed) {
        vd_checkpoint_free(ck);
        return -1;
    }
    return 0;
}

void vd_checkpoint_free(vd_checkpoint *ck) {
    free(ck->config_text);
    free(ck->modules);
    free(ck->tensors);
    free(ck->params);
    free(ck->exp_avg);
    free(ck->exp_avg_sq);
    free(ck->A);
    free(ck->B);
    memset(ck, 0, sizeof(*ck));
}

/* ----------------------------------------------------------------------------------------- */
/* listing and pruning */

/* "step_" + 8 to 18 digits + suffix, exactly; the step value in *step. */
static int parse_step_name(const char *name, const char *suffix, int64_t *step) {
    if (strncmp(name, "step_", 5) != 0) return 0;
    const char *p = name + 5;
    size_t nd = 0;
    int64_t v = 0;
    while (p[nd] >= '0' && p[nd] <= '9') {
        if (nd >= 18) return 0; /* keeps v inside int64 */
        v = v * 10 + (p[nd] - '0');
        nd++;
    }
    if (nd < 8) return 0;
    p += nd;
    size_t ls = strlen(suffix);
    if (strncmp(p, suffix, ls) != 0) return 0;
    *step = v;
    return (int)(nd + 5 + ls); /* length consumed */
}

static int is_ckpt_name(const char *name, int64_t *step) {
    int n = parse_step_name(name, ".h5", step);
    return n > 0 && name[n] == 0;
}

/* A writer's temporary: step_XXXXXXXX.h5.tmp.<pid> */
static int is_tmp_name(const char *name) {
    int64_t step;
    int n = parse_step_name(name, ".h5.tmp.", &step);
    if (n <= 0 || name[n] == 0) return 0;
    for (const char *p = name + n; *p; p++) if (*p < '0' || *p > '9') return 0;
    return 1;
}

typedef struct {
    int64_t step;
    char *path;
} ck_entry;

static int cmp_entry_desc(const void *a, const void *b) {
    const ck_entry *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? 1 : -1;
    return -strcmp(x->path, y->path); /* step_0000001.h5 vs step_00000001.h5: any fixed order */
}

int32_t vd_checkpoint_list(const char *out_dir, char ***paths) {
    *paths = NULL;
    char dir[VD_PATH_MAX];
    if (snprintf(dir, sizeof(dir), "%s/checkpoints", out_dir) >= (int)sizeof(dir)) vd_die("%s: path too long", out_dir);
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        vd_die("%s: cannot list checkpoints (%s)", dir, strerror(errno));
    }
    ck_entry *e = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        int64_t step;
        if (!is_ckpt_name(de->d_name, &step)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            ck_entry *grown = realloc(e, cap * sizeof(*e));
            if (!grown) vd_die("out of memory listing %s", dir);
            e = grown;
        }
        size_t len = strlen(dir) + 1 + strlen(de->d_name) + 1;
        e[n].path = mallocCheck(len);
        snprintf(e[n].path, len, "%s/%s", dir, de->d_name);
        e[n].step = step;
        n++;
    }
    closedir(d);
    if (n > INT32_MAX) vd_die("%s: too many checkpoints", dir);
    if (n) qsort(e, n, sizeof(*e), cmp_entry_desc);
    char **out = mallocCheck(sizeof(char *) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) out[i] = e[i].path;
    free(e);
    *paths = out;
    return (int32_t)n;
}

void vd_checkpoint_list_free(char **paths, int32_t n) {
    if (!paths) return;
    for (int32_t i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

static int mtime_before(const struct stat *a, const struct stat *b) {
    if (a->st_mtim.tv_sec != b->st_mtim.tv_sec) return a->st_mtim.tv_sec < b->st_mtim.tv_sec;
    return a->st_mtim.tv_nsec < b->st_mtim.tv_nsec;
}

/* Temporary files are removed when they are older (mtime) than the newest complete
 * checkpoint, not by asking whether their pid is alive: out_dir usually sits on a shared
 * filesystem, a requeued job runs on another node where that pid means nothing (or belongs to
 * someone else), and pids are reused. A writer still at work keeps touching its file, and a
 * finished writer renames it, so anything older than the newest checkpoint is abandoned. With
 * no complete checkpoint at all, temporaries are left alone. */
void vd_checkpoint_prune(const char *out_dir, int32_t keep_last) {
    if (keep_last < 1) keep_last = 1; /* never delete the newest */
    char **paths = NULL;
    int32_t n = vd_checkpoint_list(out_dir, &paths);
    struct stat newest;
    int have_newest = n > 0 && stat(paths[0], &newest) == 0;
    for (int32_t i = keep_last; i < n; i++)
        if (unlink(paths[i]) != 0 && errno != ENOENT) vd_warn("%s: cannot remove old checkpoint (%s)", paths[i], strerror(errno));
    vd_checkpoint_list_free(paths, n);
    if (!have_newest) return;

    char dir[VD_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s/checkpoints", out_dir);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!is_tmp_name(de->d_name)) continue;
        char p[VD_PATH_MAX + 256];
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode) && mtime_before(&st, &newest))
            if (unlink(p) != 0 && errno != ENOENT) vd_warn("%s: cannot remove stale temporary file (%s)", p, strerror(errno));
    }
    closedir(d);
}

/* refused/ is a subdirectory: neither vd_checkpoint_list nor vd_checkpoint_prune looks into it,
 * so what is moved there stays until a person deletes it. link + unlink never replaces a file
 * (link fails with EEXIST); where the filesystem has no hard links, rename after checking. */
int vd_checkpoint_move_refused(const char *out_dir, const char *path, char *moved, size_t cap) {
    char dir[VD_PATH_MAX], dst[VD_PATH_MAX + 300];
    if (snprintf(dir, sizeof(dir), "%s/checkpoints/refused", out_dir) >= (int)sizeof(dir)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return -1;
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    for (int k = 0; k < 1000; k++) {
        if (k == 0) snprintf(dst, sizeof(dst), "%s/%s", dir, base);
        else snprintf(dst, sizeof(dst), "%s/%s.%d", dir, base, k);
        if (link(path, dst) == 0) {
            if (unlink(path) != 0) return -1;
        } else if (errno == EEXIST) {
            continue;
        } else if (errno == EPERM || errno == ENOTSUP || errno == EMLINK) {
            struct stat st;
            if (lstat(dst, &st) == 0) continue;
            if (errno != ENOENT || rename(path, dst) != 0) return -1;
        } else {
            return -1;
        }
        fsync_dir_of(dst);
        fsync_dir_of(path);
        if (moved && cap) snprintf(moved, cap, "%s", dst);
        return 0;
    }
    errno = EEXIST;
    return -1;
}

void vd_checkpoint_path(const char *out_dir, int64_t step, char *out, size_t cap) {
    int n = snprintf(out, cap, "%s/checkpoints/step_%08lld.h5", out_dir, (long long)step);
    if (n < 0 || (size_t)n >= cap) vd_die("%s: checkpoint path too long", out_dir);
}

/* ----------------------------------------------------------------------------------------- */
/* the adapter's identity and tensor table */

/* The module table of format versions 1 and 2 describes VeRA's layout: per module lambda_b (out)
 * then lambda_d (r), back to back. The tensor table of such a file, in the generic form. */
static int ck_tensors_from_modules(vd_checkpoint *ck) {
    ck->n_tensors = 2 * ck->n_modules;
    ck->tensors = calloc((size_t)(ck->n_tensors ? ck->n_tensors : 1), sizeof(vd_ckpt_tensor));
    if (!ck->tensors) return -1;
    for (int32_t i = 0; i < ck->n_modules; i++) {
        const vd_ckpt_module *md = &ck->modules[i];
        vd_ckpt_tensor *tb = &ck->tensors[2 * i], *td = &ck->tensors[2 * i + 1];
        snprintf(tb->path, sizeof(tb->path), "%s/lambda_b", md->name);
        tb->offset = md->off_b;
        tb->numel = (size_t)md->out;
        tb->ndim = 1;
        tb->shape[0] = md->out;
        snprintf(td->path, sizeof(td->path), "%s/lambda_d", md->name);
        td->offset = md->off_d;
        td->numel = (size_t)ck->r;
        td->ndim = 1;
        td->shape[0] = ck->r;
    }
    snprintf(ck->adapter_type, sizeof(ck->adapter_type), "%s", vd_adapter_type_name(VD_ADAPTER_VERA));
    return 0;
}

void vd_checkpoint_set_adapter(vd_checkpoint *ck, const vd_adapter *a, const char *targets, int save_saved) {
    snprintf(ck->adapter_type, sizeof(ck->adapter_type), "%s", vd_adapter_type_name(a->type));
    ck->r = a->opt.r;
    ck->max_in = a->max_in;
    ck->max_out = a->max_out;
    ck->projection_prng_key = a->opt.key;
    snprintf(ck->target_modules, sizeof(ck->target_modules), "%s", targets);
    ck->projection_checksum = a->identity_checksum;
    ck->n_trainable = a->n_trainable;
    ck->n_tensors = a->n_tensors;
    ck->tensors = callocCheck((size_t)a->n_tensors, sizeof(vd_ckpt_tensor));
    for (int32_t i = 0; i < a->n_tensors; i++) {
        const vd_adapter_tensor *t = &a->tensors[i];
        vd_ckpt_tensor *c = &ck->tensors[i];
        snprintf(c->path, sizeof(c->path), "%s", t->ckpt_path);
        c->offset = t->offset;
        c->numel = t->numel;
        c->ndim = t->ndim;
        memcpy(c->shape, t->shape, sizeof(c->shape));
    }
    if (a->type == VD_ADAPTER_VERA) {
        /* versions 1 and 2 are VeRA's files: its module table, from the tensor table's pairs */
        ck->n_modules = a->n_modules;
        ck->modules = callocCheck((size_t)a->n_modules, sizeof(vd_ckpt_module));
        for (int32_t i = 0; i < a->n_modules; i++) {
            snprintf(ck->modules[i].name, sizeof(ck->modules[i].name), "%s", a->modules[i].name);
            ck->modules[i].out = a->modules[i].out;
            ck->modules[i].off_b = a->tensors[2 * i].offset;
            ck->modules[i].off_d = a->tensors[2 * i + 1].offset;
        }
    }
    /* the saved tensors go to /projection as A and B (VeRA's; no other method saves any) */
    if (save_saved && a->n_saved) {
        vd_require(a->n_saved == 2);
        ck->A = mallocCheck(sizeof(float) * a->saved[0].numel);
        ck->B = mallocCheck(sizeof(float) * a->saved[1].numel);
        a->be->to_host(ck->A, a->saved[0].data, sizeof(float) * a->saved[0].numel);
        a->be->to_host(ck->B, a->saved[1].data, sizeof(float) * a->saved[1].numel);
    }
}

int vd_checkpoint_adapter_difference(const vd_checkpoint *ck, const vd_adapter *a, char *out, size_t cap) {
    const char *here = vd_adapter_type_name(a->type);
    if (strcmp(ck->adapter_type, here) != 0) {
        snprintf(out, cap, "adapter_type %s in the checkpoint, %s here", ck->adapter_type, here);
        return 1;
    }
    if (ck->r != a->opt.r || ck->max_in != a->max_in || ck->max_out != a->max_out) {
        snprintf(out, cap, "r %d, max_in %d, max_out %d in the checkpoint; %d, %d, %d here", (int)ck->r, (int)ck->max_in,
                 (int)ck->max_out, (int)a->opt.r, (int)a->max_in, (int)a->max_out);
        return 1;
    }
    if (ck->projection_checksum != a->identity_checksum) {
        snprintf(out, cap, "projection checksum %016llx in the checkpoint; the projections regenerated from "
                 "projection_prng_key %llu give %016llx", (unsigned long long)ck->projection_checksum,
                 (unsigned long long)a->opt.key, (unsigned long long)a->identity_checksum);
        return 1;
    }
    if (ck->n_trainable != a->n_trainable || ck->n_tensors != a->n_tensors) {
        snprintf(out, cap, "%zu trainable values in %d tensors in the checkpoint; %zu in %d here", ck->n_trainable,
                 (int)ck->n_tensors, a->n_trainable, (int)a->n_tensors);
        return 1;
    }
    for (int32_t i = 0; i < ck->n_tensors; i++) {
        const vd_ckpt_tensor *c = &ck->tensors[i];
        const vd_adapter_tensor *t = &a->tensors[i];
        int same = !strcmp(c->path, t->ckpt_path) && c->offset == t->offset && c->numel == t->numel;
        if (!same) {
            snprintf(out, cap, "tensor %d is %s (%zu values at %zu) in the checkpoint, %s (%zu at %zu) here", (int)i, c->path,
                     c->numel, c->offset, t->ckpt_path, t->numel, t->offset);
            return 1;
        }
    }
    return 0;
}
