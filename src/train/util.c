/* Small helpers of the train module: option lists, JSON string arrays, token
 * store attributes. */
#include "train_internal.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rank 0 reads the attributes of a serial open. */
static int ml_store_info_local(const char *path, ml_store_info *info) {
    ml_h5 *h = NULL;
    char *s = NULL;
    int rc = ML_OK;
    ML_CHECK(ml_h5_open(MPI_COMM_SELF, path, "mergelens.tokens", 1, 1, &h));
    ML_CHECK_GOTO(ml_h5_get_attr_int(h, "/", "vocab_size", &info->vocab_size), done);
    rc = ml_h5_get_attr_str(h, "/", "domain", &s);
    if (rc == ML_OK) {
        snprintf(info->name, sizeof info->name, "%s", s);
    } else if (rc == ML_ERR_NOTFOUND) {
        const char *b = strrchr(path, '/');
        b = b ? b + 1 : path;
        snprintf(info->name, sizeof info->name, "%s", b);
        char *dot = strrchr(info->name, '.');
        if (dot && dot != info->name) *dot = '\0';
        ml_error_clear();
        rc = ML_OK;
    } else {
        goto done;
    }
    ml_free(s);
    s = NULL;
    rc = ml_h5_get_attr_str(h, "/", "tokenizer", &s);
    if (rc == ML_OK) snprintf(info->tokenizer, sizeof info->tokenizer, "%s", s);
    else if (rc == ML_ERR_NOTFOUND) {
        ml_error_clear();
        rc = ML_OK;
    }
done:
    ml_free(s);
    ml_h5_close(&h);
    return rc ? ml_error_trace(rc, __FILE__, __LINE__, __func__) : ML_OK;
}

int ml_store_info_read(MPI_Comm comm, const char *path, ml_store_info *info) {
    int rank;
    MPI_Comm_rank(comm, &rank);
    memset(info, 0, sizeof *info);
    ML_CHECK(ml_agree(comm, rank == 0 ? ml_store_info_local(path, info) : ML_OK));
    ML_CHECK_MPI(MPI_Bcast(info, (int)sizeof *info, MPI_BYTE, 0, comm));
    return ML_OK;
}

int ml_adamw_config_from_options(const ml_options *o, ml_adamw_config *c) {
    ml_adamw_config_default(c);
    double betas[2];
    ML_CHECK(ml_list_parse_numbers(ml_opt_str(o, "betas"), "betas", betas, 2));
    c->beta1 = betas[0];
    c->beta2 = betas[1];
    c->eps = ml_opt_float(o, "eps");
    c->weight_decay = ml_opt_float(o, "weight_decay");
    return ML_OK;
}
