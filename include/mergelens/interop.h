/* mergelens interop: exchange files with the Python ecosystem.
 *
 *  - safetensors reader/writer (the Hugging Face tensor container: 8-byte
 *    little-endian header length, a JSON header, then raw little-endian
 *    tensor bytes), with float32 <-> float16 / bfloat16 conversion
 *    (round to nearest, ties to even);
 *  - `mergelens export hf MODEL.h5 DIR` / `mergelens import hf DIR OUT.h5`:
 *    a mergelens checkpoint <-> a Hugging Face MistralForCausalLM directory
 *    (config.json + model.safetensors, or sharded with
 *    model.safetensors.index.json);
 *  - `mergelens export saelens SAE.h5 DIR`: a mergelens SAE -> a SAELens
 *    directory (cfg.json + sae_weights.safetensors).
 *
 * The file layouts are in docs/modules/interop.md.
 */
#ifndef MERGELENS_INTEROP_H
#define MERGELENS_INTEROP_H

#include <stddef.h>
#include <stdint.h>

#include "mergelens/core.h"

/* ---- 16-bit floats --------------------------------------------------------- */
/* IEEE binary16 and bfloat16 bit patterns. float -> 16 bit rounds to nearest,
 * ties to even; overflow gives +-inf; NaN stays a (quiet) NaN with its sign. */
uint16_t ml_f32_to_f16(float x);
float ml_f16_to_f32(uint16_t h);
uint16_t ml_f32_to_bf16(float x);
float ml_bf16_to_f32(uint16_t h);
/* Array forms: out[i] = convert(in[i]) for i < n. */
void ml_f32_to_f16_array(uint16_t *out, const float *in, size_t n);
void ml_f16_to_f32_array(float *out, const uint16_t *in, size_t n);
void ml_f32_to_bf16_array(uint16_t *out, const float *in, size_t n);
void ml_bf16_to_f32_array(float *out, const uint16_t *in, size_t n);

/* ---- safetensors ----------------------------------------------------------- */
typedef enum { ML_ST_F32 = 0, ML_ST_F16, ML_ST_BF16, ML_ST_I32, ML_ST_I64, ML_ST_DTYPE_COUNT_ } ml_st_dtype;
#define ML_ST_MAX_DIMS 8

const char *ml_st_dtype_name(ml_st_dtype t); /* "F32", "F16", "BF16", "I32", "I64" */
size_t ml_st_dtype_size(ml_st_dtype t);      /* bytes per element */
/* Parse a safetensors dtype name ("BF16") or a user spelling ("bf16",
 * "bfloat16", "f32", "float32", "fp16", ...). ML_ERR_ARG if unknown. */
int ml_st_dtype_parse(const char *name, ml_st_dtype *out);
/* The torch dtype name for config.json ("float32", "bfloat16", ...). */
const char *ml_st_dtype_torch_name(ml_st_dtype t);

typedef struct ml_safetensors ml_safetensors;

/* Open and validate a safetensors file (memory-mapped, read-only). Every
 * problem is a one-line ML_ERR_FORMAT error naming the file and the tensor:
 * header length vs file size, JSON syntax, dtype, shape, data_offsets in
 * range, shape x dtype size == byte length, no overlaps, no unused bytes. */
int ml_safetensors_open(const char *path, ml_safetensors **out);
void ml_safetensors_close(ml_safetensors **st);

const char *ml_safetensors_path(const ml_safetensors *st);
/* Tensors are indexed 0..count-1 in name order. */
int ml_safetensors_count(const ml_safetensors *st);
const char *ml_safetensors_name(const ml_safetensors *st, int i);
/* Index of a tensor by name, or -1. */
int ml_safetensors_find(const ml_safetensors *st, const char *name);
ml_st_dtype ml_safetensors_dtype(const ml_safetensors *st, int i);
/* Shape (ndim values, row-major) and element count. */
const int64_t *ml_safetensors_shape(const ml_safetensors *st, int i, int *ndim);
size_t ml_safetensors_numel(const ml_safetensors *st, int i);
/* The tensor's raw little-endian bytes inside the mapping (valid until
 * close) and their count. */
const void *ml_safetensors_data(const ml_safetensors *st, int i, size_t *nbytes);
/* `__metadata__` entries (string -> string). value() is NULL if absent. */
int ml_safetensors_metadata_count(const ml_safetensors *st);
const char *ml_safetensors_metadata_key(const ml_safetensors *st, int i);
const char *ml_safetensors_metadata(const ml_safetensors *st, const char *key);

/* Read a floating tensor (F32, F16 or BF16) as float32. n must equal the
 * tensor's element count. Errors name the file and the tensor. */
int ml_safetensors_read_f32(const ml_safetensors *st, const char *name, float *out, size_t n);
/* Copy a tensor's raw bytes; nbytes must equal its byte length. */
int ml_safetensors_read_raw(const ml_safetensors *st, const char *name, void *out, size_t nbytes);

/* One tensor to write. */
typedef struct {
    const char *name;
    ml_st_dtype dtype; /* dtype stored in the file */
    int ndim;          /* 0 = scalar */
    int64_t shape[ML_ST_MAX_DIMS];
    const void *data; /* numel elements of `dtype` (little-endian) ... */
    int from_f32;     /* ... or, if set, numel float32 values converted to
                         dtype (F32, F16 or BF16) while writing */
} ml_st_tensor;

/* Write a safetensors file atomically (PATH.tmp.<pid>.<n>, then rename).
 * Tensors are laid out like the Hugging Face library does: ordered by element
 * size (largest first), then by name, so every tensor starts at a multiple of
 * its element size; the JSON header is padded with spaces so the data section
 * starts at a multiple of 8. In the usual case of one dtype the order is by
 * name. meta holds nmeta (key, value) string pairs for `__metadata__`
 * (meta[2i], meta[2i+1]); nmeta = 0 writes no `__metadata__`. */
int ml_safetensors_write(const char *path, int n, const ml_st_tensor *tensors, int nmeta, const char *const *meta);

/* ---- Hugging Face and SAELens directories ------------------------------------ */
/* Serial (one process, MPI_COMM_SELF files). */
/* Checkpoint (docs/FORMAT.md) -> DIR/{model.safetensors, config.json,
 * tokenizer.json if the checkpoint's root attribute `tokenizer_json` names an
 * existing file}. dtype: ML_ST_F32, ML_ST_BF16 or ML_ST_F16. */
int ml_hf_export(const char *ckpt_path, const char *dir, ml_st_dtype dtype);
/* DIR (config.json + model.safetensors or model.safetensors.index.json) ->
 * a mergelens checkpoint at out_path. config_json (may be NULL) is stored as
 * the root attribute `config`. */
int ml_hf_import(const char *dir, const char *out_path, const char *config_json);
/* SAE file (format mergelens.sae) -> DIR/{sae_weights.safetensors, cfg.json}.
 * dtype: ML_ST_F32 (SAELens' usual), ML_ST_BF16 or ML_ST_F16. */
int ml_saelens_export(const char *sae_path, const char *dir, ml_st_dtype dtype);

/* ---- CLI ----------------------------------------------------------------------- */
/* `mergelens export hf MODEL.h5 DIR [--dtype f32|bf16|f16]`
 * `mergelens export saelens SAE.h5 DIR [--dtype f32|bf16|f16]` */
int ml_cmd_export(MPI_Comm comm, int argc, char **argv);
/* `mergelens import hf DIR OUT.h5` */
int ml_cmd_import(MPI_Comm comm, int argc, char **argv);

/* ---- whole-file helpers (atomic: temp name, fsync, rename) ---- */
int ml_atomic_write_file(const char *path, const void *data, size_t n);
/* Write a JSON value as indented text (key order kept) plus a newline. */
struct json_t;
int ml_atomic_write_json(const char *path, const struct json_t *value);
/* Read a whole file into an ml_malloc'd buffer (NUL-terminated). */
int ml_read_file(const char *path, char **data, size_t *n);
/* out = dir + "/" + name; ML_ERR_ARG if it does not fit in cap. */
int ml_path_join(char *out, size_t cap, const char *dir, const char *name);

#endif
