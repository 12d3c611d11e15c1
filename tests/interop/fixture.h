/* Test fixtures for the interop tests: tiny checkpoints and SAE files written
 * through io.h following docs/FORMAT.md (parameter names spelled out here,
 * independently of src/interop). */
#ifndef ML_INTEROP_FIXTURE_H
#define ML_INTEROP_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

/* V=48 D=16 F=40 L=2 H=4 KV=2 hd=4 */
extern const char fx_config[];
#define FX_NPARAMS 21 /* 9 L + 3 */

typedef struct {
    char name[96];
    int ndim;
    uint64_t dims[2];
} fx_param;
/* The parameters of fx_config in FORMAT.md order. */
const fx_param *fx_params(void);
size_t fx_numel(const fx_param *p);

/* Write a checkpoint with N(0, 0.1^2) parameters from seed. tokenizer_json
 * (may be NULL) becomes the root attribute of that name. extra (may be NULL)
 * adds a dataset /params/<extra> [3]. */
int fx_write_checkpoint(const char *path, const char *config_json, uint64_t seed, const char *tokenizer_json,
                        const char *extra);
/* Write an SAE file (format mergelens.sae v1). k <= 0: no k attribute;
 * config may be NULL; model may be NULL. */
int fx_write_sae(const char *path, const char *arch, int d_in, int d_sae, int k, uint64_t seed, const char *model,
                 const char *config);
/* Deterministic values of parameter i. */
void fx_values(uint64_t seed, int i, float *out, size_t n);

#endif
