/* Fuzz the safetensors reader (interop.h): arbitrary file contents either
 * open (then every tensor's bytes lie inside the file and read back as
 * float32 when floating) or fail with a one-line ML_ERR_FORMAT-style error;
 * no crash, no leak, no UB. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mergelens/interop.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    long live = ml_alloc_live();
    const char *path = ml_fuzz_file("st", ".safetensors", data, size);
    if (!path) return 0;
    ml_safetensors *st = NULL;
    if (ml_safetensors_open(path, &st) == ML_OK) {
        int n = ml_safetensors_count(st);
        for (int i = 0; i < n; i++) {
            const char *name = ml_safetensors_name(st, i);
            if (ml_safetensors_find(st, name) != i) abort();
            int ndim;
            (void)ml_safetensors_shape(st, i, &ndim);
            size_t nbytes = 0, numel = ml_safetensors_numel(st, i);
            const unsigned char *p = ml_safetensors_data(st, i, &nbytes);
            if (nbytes != numel * ml_st_dtype_size(ml_safetensors_dtype(st, i))) abort();
            volatile unsigned char sink = 0;
            for (size_t b = 0; b < nbytes; b++) sink ^= p[b]; /* inside the mapping (ASan) */
            (void)sink;
            ml_st_dtype t = ml_safetensors_dtype(st, i);
            if ((t == ML_ST_F32 || t == ML_ST_F16 || t == ML_ST_BF16) && numel <= (1u << 20)) {
                float *f = ml_malloc(numel * sizeof *f + 1);
                if (!f) abort();
                if (ml_safetensors_read_f32(st, name, f, numel) != ML_OK) abort();
                ml_free(f);
            }
        }
        for (int i = 0; i < ml_safetensors_metadata_count(st); i++)
            (void)ml_safetensors_metadata(st, ml_safetensors_metadata_key(st, i));
        ml_safetensors_close(&st);
    } else if (!ml_error_message()[0]) {
        abort();
    }
    ml_error_clear();
    ml_fuzz_check_no_leak(live, "safetensors open");
    return 0;
}
