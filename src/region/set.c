/* The model set of a region command: parsing "label=path" lists, opening and
 * validating the checkpoints (serial handles on every rank), the streaming
 * pass (task-vector Gram matrices per tensor and the element-wise mean) and
 * the centroid checkpoint.
 *
 * Legend: M models, T tensors, N elements of a tensor, P ranks. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "mergelens/merge.h"
#include "mergelens/train.h"
#include "region_internal.h"

int ml_region_set_parse(ml_region_set *s, const char *models, const char *exclude) {
    char **items = NULL, **ex = NULL;
    int n = 0, nex = 0, rc = ML_OK;
    ML_CHECK(ml_list_split(models, "models", &items, &n));
    if (exclude && *exclude) ML_CHECK_GOTO(ml_list_split(exclude, "exclude", &ex, &nex), done);
    s->paths = ml_calloc((size_t)n, sizeof *s->paths);
    s->label_of = ml_calloc((size_t)n, sizeof *s->label_of);
    s->labels = ml_calloc((size_t)n, sizeof *s->labels);
    s->label = ml_calloc((size_t)n, sizeof *s->label);
    if (!s->paths || !s->label_of || !s->labels || !s->label)
        ML_FAIL_GOTO(done, ML_ERR_NOMEM, "region: out of memory (%d models)", n);
    for (int i = 0; i < n; i++) {
        char lab[256];
        const char *eq = strchr(items[i], '='), *path = eq ? eq + 1 : items[i];
        if (eq) {
            size_t l = (size_t)(eq - items[i]);
            if (l == 0 || l >= sizeof lab || !*path)
                ML_FAIL_GOTO(done, ML_ERR_ARG, "region: --models item '%s' is not label=path", items[i]);
            memcpy(lab, items[i], l);
            lab[l] = '\0';
        } else { /* a bare path is its own label */
            snprintf(lab, sizeof lab, "%s", path);
        }
        int skip = 0;
        for (int e = 0; e < nex; e++) skip |= !strcmp(ex[e], lab);
        if (skip) continue;
        int k = s->M;
        s->paths[k] = ml_strdup(path);
        s->label_of[k] = ml_strdup(lab);
        if (!s->paths[k] || !s->label_of[k]) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "region: out of memory");
        s->M++;
        int found = -1;
        for (int l = 0; l < s->L; l++)
            if (!strcmp(s->labels[l], lab)) found = l;
        if (found < 0) {
            s->labels[s->L] = ml_strdup(lab);
            if (!s->labels[s->L]) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "region: out of memory");
            found = s->L++;
        }
        s->label[k] = found;
    }
    for (int e = 0; e < nex; e++) {
        int used = 0;
        for (int i = 0; i < n; i++) {
            const char *eq = strchr(items[i], '=');
            char lab[256];
            if (eq) snprintf(lab, sizeof lab, "%.*s", (int)(eq - items[i]), items[i]);
            else snprintf(lab, sizeof lab, "%s", items[i]);
            used |= !strcmp(lab, ex[e]);
        }
        if (!used) ML_FAIL_GOTO(done, ML_ERR_ARG, "region: --exclude '%s' is not the label of any model in --models", ex[e]);
    }
    if (s->M == 0) ML_FAIL_GOTO(done, ML_ERR_ARG, "region: no models left (--models '%s', --exclude '%s')", models,
                                exclude ? exclude : "");
done:
    ml_h5_free_names(items, n);
    ml_h5_free_names(ex, nex);
    return rc;
}

void ml_region_set_close(ml_region_set *s) {
    ml_h5_close(&s->hbase);
    for (int i = 0; s->h && i < s->M; i++) ml_h5_close(&s->h[i]);
    ml_free(s->h);
    ml_h5_free_names(s->paths, s->M);
    ml_h5_free_names(s->label_of, s->M);
    ml_h5_free_names(s->labels, s->L);
    ml_free(s->label);
    ml_free(s->t);
    ml_free(s->owner);
    ml_model_destroy(&s->table);
    memset(s, 0, sizeof *s);
}

static int ml_region_tensor_shape(ml_h5 *h, const char *path, const char *name, int *rank, hsize_t *dims) {
    char ds[160];
    ml_dtype ty;
    snprintf(ds, sizeof ds, "/params/%s", name);
    ML_CHECK(ml_h5_shape(h, ds, rank, dims, &ty));
    if (ty != ML_F32)
        return ML_FAIL(ML_ERR_FORMAT, "%s: tensor '%s' is %s; checkpoints hold float32", path, name, ml_dtype_name(ty));
    return ML_OK;
}

static void ml_dims_str(char *buf, size_t cap, int rank, const hsize_t *d) {
    buf[0] = '\0';
    for (int i = 0; i < rank; i++) snprintf(buf + strlen(buf), cap - strlen(buf), "%s%llu", i ? ", " : "", (unsigned long long)d[i]);
}

/* Local: open everything and check it against the reference. */
static int ml_region_open_local(ml_region_set *s) {
    int rc = ML_OK, nref = 0, n = 0;
    char **ref = NULL, **names = NULL, *cref = NULL, *c = NULL;
    s->h = ml_calloc((size_t)s->M, sizeof *s->h);
    if (!s->h) return ML_FAIL(ML_ERR_NOMEM, "region: out of memory");
    if (s->base) ML_CHECK(ml_h5_open(MPI_COMM_SELF, s->base, ML_CHECKPOINT_FORMAT, 1, 1, &s->hbase));
    for (int i = 0; i < s->M; i++) ML_CHECK(ml_h5_open(MPI_COMM_SELF, s->paths[i], ML_CHECKPOINT_FORMAT, 1, 1, &s->h[i]));
    ml_h5 *h0 = s->hbase ? s->hbase : s->h[0];
    const char *p0 = s->hbase ? s->base : s->paths[0];
    ML_CHECK_GOTO(ml_h5_list(h0, "/params", 1, &ref, &nref), done);
    if (nref == 0) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: /params holds no tensors", p0);
    /* tensors and shapes first: the message names the file and the tensor */
    for (int i = 0; i < s->M; i++) {
        if (s->h[i] == h0) continue;
        ML_CHECK_GOTO(ml_h5_list(s->h[i], "/params", 1, &names, &n), done);
        for (int a = 0, b = 0; a < nref || b < n;) {
            int cmp = a == nref ? 1 : b == n ? -1 : strcmp(ref[a], names[b]);
            if (cmp < 0) ML_FAIL_GOTO(done, ML_ERR_SHAPE, "%s: tensor '%s' of %s is missing", s->paths[i], ref[a], p0);
            if (cmp > 0) ML_FAIL_GOTO(done, ML_ERR_SHAPE, "%s: tensor '%s' is not in %s", s->paths[i], names[b], p0);
            int ra, rb;
            hsize_t da[ML_H5_MAX_RANK], db[ML_H5_MAX_RANK];
            ML_CHECK_GOTO(ml_region_tensor_shape(h0, p0, ref[a], &ra, da), done);
            ML_CHECK_GOTO(ml_region_tensor_shape(s->h[i], s->paths[i], names[b], &rb, db), done);
            int same = ra == rb;
            for (int q = 0; same && q < ra; q++) same = da[q] == db[q];
            if (!same) {
                char sa[96], sb[96];
                ml_dims_str(sa, sizeof sa, ra, da);
                ml_dims_str(sb, sizeof sb, rb, db);
                ML_FAIL_GOTO(done, ML_ERR_SHAPE, "%s: tensor '%s' has shape [%s], expected [%s] as in %s", s->paths[i],
                             names[b], sb, sa, p0);
            }
            a++, b++;
        }
        ml_h5_free_names(names, n);
        names = NULL, n = 0;
    }
    ML_CHECK_GOTO(ml_h5_get_attr_str(h0, "/", "model_config", &cref), done);
    for (int i = 0; i < s->M; i++) {
        if (s->h[i] == h0) continue;
        ML_CHECK_GOTO(ml_h5_get_attr_str(s->h[i], "/", "model_config", &c), done);
        json_t *ja = json_loads(cref, 0, NULL), *jb = json_loads(c, 0, NULL);
        int eq = ja && jb && json_equal(ja, jb);
        json_decref(ja);
        json_decref(jb);
        if (!eq) ML_FAIL_GOTO(done, ML_ERR_SHAPE, "%s: model_config differs from %s's", s->paths[i], p0);
        ml_free(c);
        c = NULL;
    }
    ML_CHECK_GOTO(ml_model_config_load(h0, &s->mc), done);
    ML_CHECK_GOTO(ml_model_create(&s->mc, &s->table), done);
    if (nref != s->table->n_tensors)
        ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: /params holds %d tensors, its model_config implies %d", p0, nref,
                     s->table->n_tensors);
    s->T = nref;
    s->t = ml_calloc((size_t)nref, sizeof *s->t);
    s->owner = ml_calloc((size_t)nref, sizeof *s->owner);
    if (!s->t || !s->owner) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "region: out of memory");
    for (int k = 0; k < nref; k++) {
        int r;
        hsize_t d[ML_H5_MAX_RANK];
        ML_CHECK_GOTO(ml_model_lookup(s->table, ref[k], &s->t[k]), done);
        ML_CHECK_GOTO(ml_region_tensor_shape(h0, p0, ref[k], &r, d), done);
        size_t numel = 1;
        for (int q = 0; q < r; q++) numel *= d[q];
        if (numel != s->t[k]->numel)
            ML_FAIL_GOTO(done, ML_ERR_SHAPE, "%s: tensor '%s' has %zu elements, its model_config implies %zu", p0,
                         ref[k], numel, s->t[k]->numel);
        if (numel > s->max_numel) s->max_numel = numel;
    }
    s->context = ml_checkpoint_train_context(s->h[0]); /* for evaluation windows */
done:
    ml_free(c);
    ml_free(cref);
    ml_h5_free_names(ref, nref);
    ml_h5_free_names(names, n);
    return rc;
}

int ml_region_set_open(MPI_Comm comm, ml_region_set *s, const char *base) {
    int P;
    MPI_Comm_size(comm, &P);
    s->base = base && *base ? base : NULL;
    ML_CHECK(ml_agree(comm, ml_region_open_local(s)));
    /* deal: largest first (ties: table order) to the least loaded rank */
    size_t *load = ml_calloc((size_t)P, sizeof *load);
    int *done = ml_calloc((size_t)s->T, sizeof *done);
    int rc = load && done ? ML_OK : ML_FAIL(ML_ERR_NOMEM, "region: out of memory");
    for (int step = 0; rc == ML_OK && step < s->T; step++) {
        int pick = -1;
        for (int k = 0; k < s->T; k++)
            if (!done[k] && (pick < 0 || s->t[k]->numel > s->t[pick]->numel)) pick = k;
        int r = 0;
        for (int q = 1; q < P; q++)
            if (load[q] < load[r]) r = q;
        done[pick] = 1;
        s->owner[pick] = r;
        load[r] += s->t[pick]->numel;
    }
    ml_free(load);
    ml_free(done);
    return ml_agree(comm, rc);
}

int ml_region_read(ml_region_set *s, int i, int t, float *buf) {
    char ds[160];
    hsize_t d[ML_H5_MAX_RANK];
    const ml_tensor *tt = s->t[t];
    for (int q = 0; q < tt->ndim; q++) d[q] = (hsize_t)tt->shape[q];
    snprintf(ds, sizeof ds, "/params/%s", tt->name);
    ML_CHECK(ml_h5_read_tensor(i < 0 ? s->hbase : s->h[i], ds, ML_F32, tt->ndim, d, buf));
    return ML_OK;
}

int ml_region_stream(MPI_Comm comm, ml_region_set *s, double *tgram) {
    int rank, rc = ML_OK, M = s->M;
    MPI_Comm_rank(comm, &rank);
    float *buf = ml_malloc(sizeof *buf * s->max_numel * (size_t)(M + 1)); /* (M+1, N) one tensor of each */
    double *c = ml_malloc(sizeof *c * (size_t)M);
    const float **x = ml_malloc(sizeof *x * (size_t)M);
    if (!buf || !c || !x) rc = ML_FAIL(ML_ERR_NOMEM, "region: out of memory for one tensor of %d models", M + 1);
    memset(s->table->params, 0, sizeof(float) * s->table->n_params);
    if (tgram) memset(tgram, 0, sizeof *tgram * (size_t)s->T * M * M);
    for (int i = 0; rc == ML_OK && i < M; i++) c[i] = 1.0 / M, x[i] = buf + (size_t)(i + 1) * s->max_numel;
    ml_prof_begin("region.stream");
    double bytes = 0;
    for (int t = 0; rc == ML_OK && t < s->T; t++) {
        if (s->owner[t] != rank) continue;
        size_t N = s->t[t]->numel;
        for (int i = 0; rc == ML_OK && i < M; i++) rc = ml_region_read(s, i, t, (float *)x[i]);
        if (rc == ML_OK && tgram && s->hbase) rc = ml_region_read(s, -1, t, buf);
        if (rc != ML_OK) break;
        bytes += (double)N * (M + (tgram && s->hbase)) * sizeof(float);
        ml_merge_lincomb(s->table->params + s->t[t]->offset, x, c, M, N);
        if (tgram) ml_merge_gram(tgram + (size_t)t * M * M, x, s->hbase ? buf : NULL, M, N);
    }
    ml_prof_end("region.stream", 0, bytes);
    ml_free(buf);
    ml_free(c);
    ml_free(x);
    ML_CHECK(ml_agree(comm, rc));
    ML_CHECK(ml_mpi_allreduce(comm, MPI_IN_PLACE, s->table->params, s->table->n_params, MPI_FLOAT, MPI_SUM));
    if (tgram) ML_CHECK(ml_mpi_allreduce(comm, MPI_IN_PLACE, tgram, (size_t)s->T * M * M, MPI_DOUBLE, MPI_SUM));
    return ML_OK;
}

int ml_region_write_centroid(MPI_Comm comm, ml_region_set *s, const char *path, const char *exclude) {
    ml_h5 *h = NULL;
    char *models = NULL, *cfg = NULL;
    int rc = ml_list_to_json((const char *const *)s->paths, s->M, &models);
    if (rc == ML_OK) {
        json_t *j = json_pack("{s:s, s:i, s:s}", "command", "region centroid", "context", s->context, "exclude",
                              exclude ? exclude : "");
        char *d = j ? json_dumps(j, JSON_COMPACT) : NULL;
        cfg = d ? ml_strdup(d) : NULL;
        free(d);
        json_decref(j);
        if (!cfg) rc = ML_FAIL(ML_ERR_NOMEM, "region: out of memory");
    }
    ML_CHECK_GOTO(ml_agree(comm, rc), done);
    ML_CHECK_GOTO(ml_mkdir_parent(comm, path), done);
    ML_CHECK_GOTO(ml_h5_create(comm, path, ML_CHECKPOINT_FORMAT, 1, &h), done);
    ML_CHECK_GOTO(ml_model_config_save(h, &s->mc), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "parent", s->base ? s->base : s->paths[0]), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "centroid_of", models), done);
    ML_CHECK_GOTO(ml_h5_set_attr_str(h, "/", "config", cfg), done);
    ML_CHECK_GOTO(ml_h5_set_attr_int(h, "/", "complete", 1), done);
    ML_CHECK_GOTO(ml_model_save_params(h, s->table), done);
    ML_CHECK_GOTO(ml_h5_close(&h), done);
    ml_info("region: wrote the centroid of %d models to %s", s->M, path);
done:
    ml_h5_discard(&h);
    ml_free(models);
    ml_free(cfg);
    return rc;
}
