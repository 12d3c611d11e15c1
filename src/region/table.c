/* `mergelens region centroid-table`: the centroid experiment's table. For
 * each held-out domain d, the evaluation (mergelens.eval file) of the model
 * fine-tuned on d from the centroid of the other domains' models and of the
 * model fine-tuned on d from the base with the same budget; the table holds
 * the loss and accuracy of both on d and their differences (centroid - base).
 * Optionally the evaluations of the starting points themselves (the
 * centroid and the base before fine-tuning).
 *
 * Legend: D held-out domains. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "mergelens/config.h"
#include "region_internal.h"

static const ml_option_spec ml_table_opts[] = {
    {"domains", ML_OPT_STRING, NULL, 0, -1, NULL, "comma-separated held-out domain names (as the eval files name them)"},
    {"centroid_evals", ML_OPT_STRING, NULL, 0, -1, NULL, "eval files of the fine-tunes from the centroids, one per domain"},
    {"base_evals", ML_OPT_STRING, NULL, 0, -1, NULL, "eval files of the fine-tunes from the base, one per domain"},
    {"centroid_init_evals", ML_OPT_STRING, "", 0, -1, NULL, "optional: eval files of the centroids before fine-tuning"},
    {"base_init_eval", ML_OPT_STRING, "", 0, -1, NULL, "optional: eval file of the base before fine-tuning"},
    {"out", ML_OPT_STRING, NULL, 0, -1, NULL, "output file region/centroid.h5"},
    ML_OPT_END,
};

/* Loss and accuracy of `domain` in an eval file (serial read). */
static int ml_eval_lookup(const char *path, const char *domain, double *loss, double *acc) {
    ml_h5 *h = NULL;
    char *names = NULL;
    int rc = ML_OK, rk;
    hsize_t d[ML_H5_MAX_RANK];
    ml_dtype ty;
    double *l = NULL, *a = NULL;
    json_t *j = NULL;
    ML_CHECK(ml_h5_open(MPI_COMM_SELF, path, "mergelens.eval", 1, 1, &h));
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "domains", &names), done);
    ML_CHECK_GOTO(ml_h5_shape(h, "loss", &rk, d, &ty), done);
    j = json_loads(names, 0, NULL);
    if (!json_is_array(j) || rk != 1 || json_array_size(j) != d[0])
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: attribute 'domains' does not match /loss", path);
    l = ml_malloc(sizeof *l * d[0]);
    a = ml_malloc(sizeof *a * d[0]);
    if (!l || !a) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "loss", ML_F64, 1, d, l), done);
    ML_CHECK_GOTO(ml_h5_read_tensor(h, "accuracy", ML_F64, 1, d, a), done);
    int found = -1;
    for (size_t i = 0; i < d[0]; i++) {
        const char *s = json_string_value(json_array_get(j, i));
        if (s && !strcmp(s, domain)) found = (int)i;
    }
    if (found < 0) ML_FAIL_GOTO(done, ML_ERR_NOTFOUND, "%s: no domain '%s' (it holds %s)", path, domain, names);
    *loss = l[found];
    *acc = a[found];
done:
    json_decref(j);
    ml_free(names);
    ml_free(l);
    ml_free(a);
    ml_h5_close(&h);
    return rc;
}

int ml_region_centroid_table(MPI_Comm comm, int argc, char **argv);
int ml_region_centroid_table(MPI_Comm comm, int argc, char **argv) {
    int rank, rc = ML_OK, help = 0, D = 0, nc = 0, nb = 0, ni = 0;
    MPI_Comm_rank(comm, &rank);
    ml_options *o = NULL;
    ml_h5 *h = NULL;
    char **dom = NULL, **ce = NULL, **be = NULL, **ci = NULL, *names = NULL, *config = NULL;
    double *v = NULL; /* (10, D): loss c, loss b, diff, acc c, acc b, diff, init loss c, b, init acc c, b */
    rc = ml_options_parse_command(comm, "centroid-table",
                                  "usage: mergelens region centroid-table --domains lua,stories --centroid_evals "
                                  "E1.h5,E2.h5 --base_evals F1.h5,F2.h5 --out region/centroid.h5\n\n"
                                  "Per held-out domain: loss and accuracy of the fine-tune from the centroid of the\n"
                                  "other domains' models and of the fine-tune from the base, and the differences.",
                                  ml_table_opts, argc, argv, &o, NULL, NULL, &help);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    if (help) goto done;
    rc = ml_list_split(ml_opt_str(o, "domains"), "domains", &dom, &D);
    if (rc == ML_OK) rc = ml_list_split(ml_opt_str(o, "centroid_evals"), "centroid_evals", &ce, &nc);
    if (rc == ML_OK) rc = ml_list_split(ml_opt_str(o, "base_evals"), "base_evals", &be, &nb);
    const char *cis = ml_opt_str(o, "centroid_init_evals"), *bi = ml_opt_str(o, "base_init_eval");
    if (rc == ML_OK && *cis) rc = ml_list_split(cis, "centroid_init_evals", &ci, &ni);
    if (rc == ML_OK && (nc != D || nb != D || (ni && ni != D)))
        rc = ML_FAIL(ML_ERR_ARG, "region centroid-table: %d domains but %d centroid_evals, %d base_evals, %d "
                     "centroid_init_evals (one per domain)", D, nc, nb, ni);
    v = ml_malloc(sizeof *v * 10 * (size_t)(D ? D : 1));
    if (rc == ML_OK && !v) rc = ML_FAIL(ML_ERR_NOMEM, "out of memory");
    for (int d = 0; rc == ML_OK && d < D; d++) {
        double *c = v + d;
        rc = ml_eval_lookup(ce[d], dom[d], &c[0], &c[3 * D]);
        if (rc == ML_OK) rc = ml_eval_lookup(be[d], dom[d], &c[D], &c[4 * D]);
        c[2 * D] = c[0] - c[D];
        c[5 * D] = c[3 * D] - c[4 * D];
        c[6 * D] = c[7 * D] = c[8 * D] = c[9 * D] = NAN;
        if (rc == ML_OK && ni) rc = ml_eval_lookup(ci[d], dom[d], &c[6 * D], &c[8 * D]);
        if (rc == ML_OK && *bi) rc = ml_eval_lookup(bi, dom[d], &c[7 * D], &c[9 * D]);
    }
    if (rc == ML_OK) rc = ml_list_to_json((const char *const *)dom, D, &names);
    if (rc == ML_OK) rc = ml_options_to_json(o, &config);
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    if (rank == 0) {
        printf("%-16s %12s %12s %10s %12s %12s %10s\n", "held-out", "loss_centr", "loss_base", "diff", "acc_centr",
               "acc_base", "diff");
        for (int d = 0; d < D; d++)
            printf("%-16s %12.4f %12.4f %+10.4f %12.4f %12.4f %+10.4f\n", dom[d], v[d], v[D + d], v[2 * D + d],
                   v[3 * D + d], v[4 * D + d], v[5 * D + d]);
        fflush(stdout);
    }
    const char *out = ml_opt_str(o, "out");
    static const char *const dsets[10] = {"loss_centroid", "loss_base", "loss_diff", "accuracy_centroid",
                                          "accuracy_base", "accuracy_diff", "init/loss_centroid", "init/loss_base",
                                          "init/accuracy_centroid", "init/accuracy_base"};
    hsize_t dd[1] = {(hsize_t)D};
    ML_CHECK_GOTO(ml_mkdir_parent(comm, out), done);
    ML_CHECK_GOTO(ml_h5_create(comm, out, ML_REGION_CENTROID_FORMAT, 1, &h), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "domains", names), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", config), done);
    ML_CHECK_GOTO(ml_h5_mkgroup(h, "init"), done);
    for (int k = 0; k < 10; k++) ML_CHECK_GOTO(ml_h5_write_tensor(h, dsets[k], ML_F64, 1, dd, v + (size_t)k * D), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "complete", 1), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
    ml_info("region: wrote %s", out);
done:
    ml_h5_discard(&h);
    ml_h5_free_names(dom, D);
    ml_h5_free_names(ce, nc);
    ml_h5_free_names(be, nb);
    ml_h5_free_names(ci, ni);
    ml_free(names);
    ml_free(config);
    ml_free(v);
    ml_options_destroy(&o);
    return rc;
}
