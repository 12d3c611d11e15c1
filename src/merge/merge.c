/* Streaming, rank-parallel merge of checkpoints and `mergelens merge`.
 *
 * Every rank opens the inputs with its own serial handle (MPI_COMM_SELF) and
 * reads only the tensors it merges, one tensor at a time. Tensors are dealt
 * to ranks largest first to the least loaded rank (deterministic), so the
 * output does not depend on the number of ranks: each tensor is computed
 * by the same code on one rank. Inputs are read in place from read-only
 * mappings of the checkpoints where io can map them (zero copy from the page
 * cache); the output's datasets are created collectively, then every rank
 * writes its tensors independently, on a writer thread that overlaps the
 * write of tensor j with the merge of tensor j + 1 (raw pwrite, no HDF5 call
 * off the main thread).
 *
 * Legend: N elements of a tensor, M input checkpoints (base included),
 * T tensors, P ranks.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mergelens/io.h"
#include "mergelens/model.h"
#include "mergelens/merge.h"


typedef struct {
    char *name;          /* HF name (relative to /params) */
    char *path;          /* "/params/<name>" */
    int rank;            /* dataset rank */
    hsize_t dims[ML_H5_MAX_RANK];
    size_t n, rows, cols; /* N = rows * cols */
    int owner;
    ml_merge_params params;
} ml_mtensor;

typedef struct {
    int M;
    ml_h5 *in[ML_MERGE_MAX_MODELS + 1];
    const char *const *paths;
    ml_mtensor *t;
    int T;
    char *model_config; /* of models[0] (the base when the method has one) */
    char *tokenizer[2];  /* root attributes `tokenizer`, `tokenizer_json` the output carries (NULL: none) */
    int n_layers;
} ml_mplan;

static void ml_plan_free(ml_mplan *pl) {
    for (int i = 0; i < pl->M; i++) ml_h5_close(&pl->in[i]);
    for (int i = 0; i < pl->T; i++) {
        ml_free(pl->t[i].name);
        ml_free(pl->t[i].path);
    }
    ml_free(pl->t);
    ml_free(pl->model_config);
    ml_free(pl->tokenizer[0]);
    ml_free(pl->tokenizer[1]);
    memset(pl, 0, sizeof *pl);
}

static void ml_shape_str(char *buf, size_t cap, int rank, const hsize_t *dims) {
    buf[0] = '\0';
    for (int i = 0; i < rank; i++)
        snprintf(buf + strlen(buf), cap - strlen(buf), "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
}

/* Compare two model_config JSON texts; name the first differing key. */
static int ml_compare_configs(const char *a, const char *pa, const char *b, const char *pb) {
    json_error_t e;
    json_t *ja = json_loads(a, 0, &e), *jb = NULL;
    int rc = ML_OK;
    if (!ja) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: model_config is not valid JSON: %s", pa, e.text);
    jb = json_loads(b, 0, &e);
    if (!jb) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: model_config is not valid JSON: %s", pb, e.text);
    if (json_equal(ja, jb)) goto done;
    const char *key;
    json_t *va;
    json_object_foreach(ja, key, va) {
        json_t *vb = json_object_get(jb, key);
        if (vb && json_equal(va, vb)) continue;
        char *sa = json_dumps(va, JSON_ENCODE_ANY | JSON_COMPACT), *sb = vb ? json_dumps(vb, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        rc = ML_FAIL(ML_ERR_SHAPE, "model configurations differ: '%s' is %s in %s but %s in %s", key, sa ? sa : "?",
                     pa, sb ? sb : "absent", pb);
        free(sa);
        free(sb);
        goto done;
    }
    json_object_foreach(jb, key, va) {
        if (json_object_get(ja, key)) continue;
        rc = ML_FAIL(ML_ERR_SHAPE, "model configurations differ: '%s' is absent in %s but set in %s", key, pa, pb);
        goto done;
    }
    rc = ML_FAIL(ML_ERR_SHAPE, "model configurations of %s and %s differ", pa, pb);
done:
    json_decref(ja);
    json_decref(jb);
    return rc;
}

static int ml_names_contain(char **names, int n, const char *s) {
    int lo = 0, hi = n - 1; /* ml_h5_list returns names sorted */
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(names[mid], s);
        if (!c) return 1;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    for (int i = 0; i < n; i++) /* fall back if the order differs from strcmp */
        if (!strcmp(names[i], s)) return 1;
    return 0;
}

static const char *const ml_tokenizer_attrs[2] = {"tokenizer", "tokenizer_json"};

/* 1 if both files exist and hold the same bytes. */
static int ml_same_bytes(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    char x[4096], y[4096];
    while (same) {
        size_t na = fread(x, 1, sizeof x, fa), nb = fread(y, 1, sizeof y, fb);
        same = na == nb && !memcmp(x, y, na);
        if (na < sizeof x) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

/* The tokenizer the merged checkpoint carries: the recipe's tokenizer_source,
 * else the one every input records (the same path, or files with the same
 * bytes); inputs that disagree are refused, since export and evaluation would
 * otherwise use a tokenizer the merged weights were not trained with. */
static int ml_plan_tokenizer(const ml_merge_recipe *r, ml_mplan *pl) {
    const char *src = ml_merge_recipe_tokenizer_source(r);
    int rc = ML_OK;
    for (int a = 0; a < 2 && rc == ML_OK; a++) {
        for (int i = 0; i < pl->M && rc == ML_OK; i++) {
            if (src && strcmp(pl->paths[i], src)) continue;
            char *v = NULL;
            ML_CHECK(ml_h5_get_attr_str_optional(pl->in[i], "/", ml_tokenizer_attrs[a], &v));
            if (src || i == 0) {
                pl->tokenizer[a] = v;
                continue;
            }
            int same = (!v && !pl->tokenizer[a]) || (v && pl->tokenizer[a] && !strcmp(v, pl->tokenizer[a]));
            if (!same && v && pl->tokenizer[a]) same = ml_same_bytes(v, pl->tokenizer[a]);
            if (!same)
                rc = ML_FAIL(ML_ERR_CONFIG,
                             "merge: %s and %s were trained with different tokenizers (%s '%s' vs '%s'); set "
                             "tokenizer_source in the recipe to base or to the model whose tokenizer to keep",
                             pl->paths[0], pl->paths[i], ml_tokenizer_attrs[a],
                             pl->tokenizer[a] ? pl->tokenizer[a] : "(none)", v ? v : "(none)");
            ml_free(v);
        }
    }
    return rc;
}

/* Open the inputs (serial handles) and check that they agree; resolve every
 * tensor's parameters. Local to this rank; nothing is written. */
static int ml_plan_build(const ml_merge_recipe *r, ml_mplan *pl) {
    int rc = ML_OK;
    char **names0 = NULL, **names = NULL;
    int n0 = 0, n = 0;
    char *cfg = NULL;
    ML_CHECK(ml_merge_recipe_models(r, &pl->paths, &pl->M));
    for (int i = 0; i < pl->M; i++) {
        ML_CHECK(ml_h5_open(MPI_COMM_SELF, pl->paths[i], ML_CHECKPOINT_FORMAT, 1, 1, &pl->in[i]));
    }
    ML_CHECK_GOTO(ml_h5_get_attr_str(pl->in[0], "/", "model_config", &pl->model_config), done);
    for (int i = 1; i < pl->M; i++) {
        ML_CHECK_GOTO(ml_h5_get_attr_str(pl->in[i], "/", "model_config", &cfg), done);
        ML_CHECK_GOTO(ml_compare_configs(pl->model_config, pl->paths[0], cfg, pl->paths[i]), done);
        ml_free(cfg);
        cfg = NULL;
    }
    ML_CHECK_GOTO(ml_plan_tokenizer(r, pl), done);
    ML_CHECK_GOTO(ml_h5_list(pl->in[0], "/params", 1, &names0, &n0), done);
    if (n0 == 0) ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: /params holds no tensors", pl->paths[0]);
    for (int i = 1; i < pl->M; i++) {
        ML_CHECK_GOTO(ml_h5_list(pl->in[i], "/params", 1, &names, &n), done);
        for (int k = 0; k < n0; k++)
            if (!ml_names_contain(names, n, names0[k]))
                ML_FAIL_GOTO(done, ML_ERR_SHAPE, "tensor '%s' of %s is missing in %s", names0[k], pl->paths[0],
                             pl->paths[i]);
        for (int k = 0; k < n; k++)
            if (!ml_names_contain(names0, n0, names[k]))
                ML_FAIL_GOTO(done, ML_ERR_SHAPE, "tensor '%s' of %s is missing in %s", names[k], pl->paths[i],
                             pl->paths[0]);
        ml_h5_free_names(names, n);
        names = NULL;
    }
    /* layer count for gradients: model_config, else the tensor names */
    pl->n_layers = 0;
    {
        json_error_t e;
        json_t *j = json_loads(pl->model_config, 0, &e);
        json_t *nl = j ? json_object_get(j, "num_hidden_layers") : NULL;
        if (json_is_integer(nl)) pl->n_layers = (int)json_integer_value(nl);
        json_decref(j);
    }
    for (int k = 0; k < n0 && pl->n_layers == 0; k++) { /* no config value: the highest layer index */
        const char *lp = strstr(names0[k], "layers.");
        if (lp && atoi(lp + 7) + 1 > pl->n_layers) pl->n_layers = atoi(lp + 7) + 1;
    }
    pl->t = ml_calloc((size_t)n0, sizeof *pl->t);
    if (!pl->t) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    pl->T = n0;
    for (int k = 0; k < n0; k++) {
        ml_mtensor *t = &pl->t[k];
        t->name = ml_strdup(names0[k]);
        size_t plen = strlen(names0[k]) + 9;
        t->path = ml_malloc(plen);
        if (!t->name || !t->path) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
        snprintf(t->path, plen, "/params/%s", names0[k]);
        ml_dtype ty;
        ML_CHECK_GOTO(ml_h5_shape(pl->in[0], t->path, &t->rank, t->dims, &ty), done);
        if (ty != ML_F32)
            ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: tensor '%s' is %s; checkpoints hold float32", pl->paths[0], t->name,
                         ml_dtype_name(ty));
        for (int i = 1; i < pl->M; i++) {
            int rk;
            hsize_t d[ML_H5_MAX_RANK];
            ML_CHECK_GOTO(ml_h5_shape(pl->in[i], t->path, &rk, d, &ty), done);
            int same = rk == t->rank;
            for (int q = 0; same && q < rk; q++) same = d[q] == t->dims[q];
            if (!same) {
                char a[128], b[128];
                ml_shape_str(a, sizeof a, t->rank, t->dims);
                ml_shape_str(b, sizeof b, rk, d);
                ML_FAIL_GOTO(done, ML_ERR_SHAPE, "tensor '%s' has shape [%s] in %s but [%s] in %s", t->name, a,
                             pl->paths[0], b, pl->paths[i]);
            }
            if (ty != ML_F32)
                ML_FAIL_GOTO(done, ML_ERR_FORMAT, "%s: tensor '%s' is %s; checkpoints hold float32", pl->paths[i],
                             t->name, ml_dtype_name(ty));
        }
        t->rows = t->rank > 1 ? t->dims[0] : 1;
        t->n = 1;
        for (int q = 0; q < t->rank; q++) t->n *= t->dims[q];
        t->cols = t->rows ? t->n / t->rows : 0;
        double lt = ml_merge_layer_t(t->name, pl->n_layers);
        ML_CHECK_GOTO(ml_merge_recipe_resolve(r, t->name, lt, &t->params), done);
        ML_CHECK_GOTO(ml_merge_params_check(&t->params, t->name, t->n), done);
    }
done:
    ml_free(cfg);
    ml_h5_free_names(names0, n0);
    ml_h5_free_names(names, n);
    return rc;
}

/* Largest tensor first to the least loaded rank; ties by name order. */
static int ml_plan_assign(ml_mplan *pl, int P) {
    int *order = ml_malloc(sizeof(int) * (size_t)pl->T);
    double *load = ml_calloc((size_t)P, sizeof(double));
    if (!order || !load) {
        ml_free(order);
        ml_free(load);
        return ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    for (int i = 0; i < pl->T; i++) order[i] = i;
    for (int i = 1; i < pl->T; i++) { /* insertion sort, stable, by size desc */
        int v = order[i], j = i - 1;
        while (j >= 0 && pl->t[order[j]].n < pl->t[v].n) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = v;
    }
    for (int i = 0; i < pl->T; i++) {
        int best = 0;
        for (int q = 1; q < P; q++)
            if (load[q] < load[best]) best = q;
        pl->t[order[i]].owner = best;
        load[best] += (double)pl->t[order[i]].n;
    }
    ml_free(order);
    ml_free(load);
    return ML_OK;
}

/* Large tensor buffers: ask for transparent huge pages (first touch of a
 * 64 MB buffer costs about 3x less than with 4 KB pages). A hint only. */
static float *ml_tensor_buffer(size_t n) {
    size_t bytes = n * sizeof(float);
    float *p = ml_malloc(bytes);
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)2 << 20;
    if (p && bytes >= 2 * huge) {
        uintptr_t s = ((uintptr_t)p + huge - 1) & ~(huge - 1), e = ((uintptr_t)p + bytes) & ~(huge - 1);
        if (e > s) (void)madvise((void *)s, e - s, MADV_HUGEPAGE);
    }
#endif
    return p;
}

static void ml_round_to(const char *dtype, float *x, size_t n) {
    if (!strcmp(dtype, "bfloat16")) ml_round_bf16(x, n);
    else if (!strcmp(dtype, "float16")) ml_round_f16(x, n);
}

/* Index of the first NaN / Inf in x (N), or N. The common all-finite case is
 * one branch-free (vectorised) pass over the exponent bits. */
static size_t ml_first_nonfinite(const float *x, size_t N) {
    uint32_t bad = 0;
    for (size_t i = 0; i < N; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    if (!bad) return N;
    for (size_t i = 0; i < N; i++)
        if (!isfinite(x[i])) return i;
    return N;
}

/* Rows of the tensor's first dimension per chunk of about `chunk` elements. */
static hsize_t ml_chunk_rows(const ml_mtensor *t, size_t chunk) {
    hsize_t h5rows = t->dims[0];
    size_t row_elems = t->n / (h5rows ? h5rows : 1);
    if (t->rank == 1) return h5rows ? h5rows : 1;
    return (hsize_t)(chunk / row_elems > 0 ? chunk / row_elems : 1);
}

/* The first pass over this rank's tensor t: fills in (the inputs) and st.
 * Inputs are used in place from a read-only mapping of each checkpoint (zero
 * copy from the page cache) when io can map them, else read into bufs
 * (M x N). Either way the tensor is walked in chunks of `chunk` elements:
 * the finiteness check and the statistics pass run on each chunk while it is
 * in cache. */
static int ml_merge_inputs_pass(const ml_merge_recipe *r, ml_mplan *pl, ml_mtensor *t, float **bufs,
                                ml_merge_stats *st, size_t chunk, ml_merge_inputs *inputs) {
    ml_merge_inputs in = {.name = t->name, .rows = t->rows, .cols = t->cols};
    const float *mapped[ML_MERGE_MAX_MODELS + 1] = {0}; /* M x (N) in the page cache, or NULL */
    const float *src[ML_MERGE_MAX_MODELS + 1];          /* M x (N): what the merge reads */
    const char *dtype = ml_merge_recipe_dtype(r);
    const int rounding = strcmp(dtype, "bfloat16") == 0 || strcmp(dtype, "float16") == 0;
    for (int i = 0; i < pl->M; i++) {
        const void *p = NULL;
        int64_t bytes = 0;
        int mrc = ml_h5_map_dataset(pl->in[i], t->path, ML_F32, &p, &bytes);
        if (mrc != ML_OK && mrc != ML_ERR_UNSUPPORTED) return ml_error_trace(mrc, __FILE__, __LINE__, __func__);
        mapped[i] = mrc == ML_OK ? p : NULL;
        src[i] = mapped[i] && !rounding ? mapped[i] : bufs[i];
    }
    int first = t->params.has_base ? 1 : 0;
    in.base = first ? src[0] : NULL;
    for (int i = 0; i < t->params.K; i++) in.x[i] = src[first + i];
    ML_CHECK(ml_merge_stats_begin(&t->params, &in, st));
    hsize_t h5rows = t->dims[0];
    size_t row_elems = t->n / (h5rows ? h5rows : 1);
    hsize_t step = ml_chunk_rows(t, chunk);
    for (hsize_t r0 = 0; r0 < h5rows; r0 += step) {
        hsize_t nr = h5rows - r0 < step ? h5rows - r0 : step;
        const size_t e0 = (size_t)r0 * row_elems, ne = (size_t)nr * row_elems;
        ml_prof_begin("merge.read");
        for (int i = 0; i < pl->M; i++) {
            if (src[i] == bufs[i]) { /* bring the chunk into the buffer: copy from the mapping, or read */
                int rc = ML_OK;
                if (mapped[i]) memcpy(bufs[i] + e0, mapped[i] + e0, ne * sizeof(float));
                else rc = ml_h5_read_rows(pl->in[i], t->path, ML_F32, r0, nr, bufs[i] + e0);
                if (rc) {
                    ml_prof_end("merge.read", 0, 0);
                    return ml_error_trace(rc, __FILE__, __LINE__, __func__);
                }
            }
            size_t bad = ml_first_nonfinite(src[i] + e0, ne);
            if (bad < ne) {
                ml_prof_end("merge.read", 0, 0);
                return ML_FAIL(ML_ERR_NUMERIC, "%s: tensor %s holds a non-finite value (%g at flat index %zu)",
                               ml_h5_path(pl->in[i]), t->path, (double)src[i][e0 + bad], e0 + bad);
            }
            if (src[i] == bufs[i]) ml_round_to(dtype, bufs[i] + e0, ne);
        }
        ml_prof_end("merge.read", 0, (double)pl->M * ne * sizeof(float));
        ml_prof_begin("merge.stats");
        int rc = t->rank == 1 ? ml_merge_stats_rows(&t->params, &in, 0, in.rows, st)
                              : ml_merge_stats_rows(&t->params, &in, r0, nr, st);
        ml_prof_end("merge.stats", 0, 0);
        if (rc) return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    ml_merge_stats_end(st);
    *inputs = in;
    return ML_OK;
}

/* ---- the writer thread ----------------------------------------------------------------
 * Writing a merged tensor (a copy into the page cache, then the disk) runs on
 * a second thread while the next tensor is merged: one job at a time, the
 * main thread alternates two output buffers. The thread makes no HDF5 call
 * (ml_h5_raw_pwrite only); targets are resolved on the main thread. */
typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int running, stop, busy;
    ml_h5_raw_target target; /* the job: write data to target */
    const float *data;
    int tensor;
    int err, err_tensor; /* errno of the first failed write and its tensor */
} ml_writer;

static void *ml_writer_main(void *arg) {
    ml_writer *wr = arg;
    pthread_mutex_lock(&wr->mu);
    for (;;) {
        while (!wr->busy && !wr->stop) pthread_cond_wait(&wr->cv, &wr->mu);
        if (!wr->busy) break; /* stop and no job left */
        ml_h5_raw_target target = wr->target;
        const float *data = wr->data;
        int k = wr->tensor, skip = wr->err != 0;
        pthread_mutex_unlock(&wr->mu);
        int e = skip ? 0 : ml_h5_raw_pwrite(&target, data, 1);
        pthread_mutex_lock(&wr->mu);
        if (e && !wr->err) {
            wr->err = e;
            wr->err_tensor = k;
        }
        wr->busy = 0;
        pthread_cond_broadcast(&wr->cv);
    }
    pthread_mutex_unlock(&wr->mu);
    return NULL;
}

static int ml_writer_start(ml_writer *wr) {
    memset(wr, 0, sizeof *wr);
    if (pthread_mutex_init(&wr->mu, NULL) != 0) return ML_FAIL(ML_ERR_INTERNAL, "merge: pthread_mutex_init failed");
    if (pthread_cond_init(&wr->cv, NULL) != 0) {
        pthread_mutex_destroy(&wr->mu);
        return ML_FAIL(ML_ERR_INTERNAL, "merge: pthread_cond_init failed");
    }
    if (pthread_create(&wr->thread, NULL, ml_writer_main, wr) != 0) {
        pthread_cond_destroy(&wr->cv);
        pthread_mutex_destroy(&wr->mu);
        return ML_FAIL(ML_ERR_INTERNAL, "merge: cannot start the writer thread");
    }
    wr->running = 1;
    return ML_OK;
}

static void ml_writer_wait_idle(ml_writer *wr) {
    pthread_mutex_lock(&wr->mu);
    while (wr->busy) pthread_cond_wait(&wr->cv, &wr->mu);
    pthread_mutex_unlock(&wr->mu);
}

/* Hand data (target->bytes) to the thread once its previous job is written. */
static void ml_writer_submit(ml_writer *wr, const ml_h5_raw_target *target, const float *data, int tensor) {
    pthread_mutex_lock(&wr->mu);
    while (wr->busy) pthread_cond_wait(&wr->cv, &wr->mu);
    wr->target = *target;
    wr->data = data;
    wr->tensor = tensor;
    wr->busy = 1;
    pthread_cond_broadcast(&wr->cv);
    pthread_mutex_unlock(&wr->mu);
}

/* Finish the queued job and end the thread; tolerates a writer never started. */
static void ml_writer_stop(ml_writer *wr) {
    if (!wr->running) return;
    pthread_mutex_lock(&wr->mu);
    wr->stop = 1;
    pthread_cond_broadcast(&wr->cv);
    pthread_mutex_unlock(&wr->mu);
    pthread_join(wr->thread, NULL);
    pthread_cond_destroy(&wr->cv);
    pthread_mutex_destroy(&wr->mu);
    wr->running = 0;
}

/* The output side of a rank: the file, the writer thread and two pools of
 * two buffers each (whole tensors for methods that need them, chunks for
 * the others). A buffer may be refilled once it is not the one the writer
 * holds: the writer has at most one job, the last one submitted. */
typedef struct {
    ml_h5 *h;
    ml_writer wr;
    float *whole[2]; /* 2 x (max N of the tensors merged whole) */
    float *part[2];  /* 2 x (chunk) */
    const float *in_flight;
} ml_moutput;

static float *ml_free_buffer(ml_moutput *o, float **pool) {
    return pool[0] != o->in_flight ? pool[0] : pool[1];
}

/* Write rows [r0, r0 + nr) of tensor k from data: raw through the writer
 * thread when io allows, else an independent HDF5 write on this thread
 * (once the writer is idle). */
static int ml_emit_rows(ml_moutput *o, ml_mplan *pl, int k, hsize_t r0, hsize_t nr, const float *data) {
    ml_mtensor *t = &pl->t[k];
    ml_h5_raw_target target;
    int rc = ml_h5_raw_target_get(o->h, t->path, ML_F32, &target);
    if (rc == ML_OK && o->wr.running) {
        int64_t row_bytes = t->dims[0] ? target.bytes / (int64_t)t->dims[0] : 0;
        target.offset += (int64_t)r0 * row_bytes;
        target.bytes = (int64_t)nr * row_bytes;
        ml_writer_submit(&o->wr, &target, data, k);
        o->in_flight = data;
        return ML_OK;
    }
    if (rc != ML_OK && rc != ML_ERR_UNSUPPORTED) return ml_error_trace(rc, __FILE__, __LINE__, __func__);
    if (o->wr.running) ml_writer_wait_idle(&o->wr);
    o->in_flight = NULL;
    ML_CHECK(ml_h5_write_rows_independent(o->h, t->path, ML_F32, r0, nr, data));
    ml_h5_start_writeback(o->h);
    return ML_OK;
}

/* ml_emit_rows, profiled: merge.write is the time the merge waits for the writer. */
static int ml_emit(ml_moutput *o, ml_mplan *pl, int k, hsize_t r0, hsize_t nr, const float *data) {
    ml_prof_begin("merge.write");
    int rc = ml_emit_rows(o, pl, k, r0, nr, data);
    ml_prof_end("merge.write", 0, (double)nr * (pl->t[k].n / (pl->t[k].dims[0] ? pl->t[k].dims[0] : 1)) * sizeof(float));
    return rc;
}

/* Methods whose result is one linear combination of the inputs with
 * coefficients from whole-tensor statistics: they can be applied chunk by
 * chunk (same bits), so the output streams through small buffers. */
static int ml_applies_by_chunk(const ml_merge_params *p) {
    switch (p->method) {
    case ML_MERGE_LINEAR:
    case ML_MERGE_SOUP:
    case ML_MERGE_SLERP:
    case ML_MERGE_TASK_ARITHMETIC:
    case ML_MERGE_MULTISLERP:
    case ML_MERGE_KARCHER: return 1;
    case ML_MERGE_MODEL_STOCK: return !p->filter_wise;
    default: return 0;
    }
}

/* The second pass: apply the merge to tensor k and hand it to the output. */
static int ml_merge_apply_pass(const ml_merge_recipe *r, ml_mplan *pl, int k, const ml_merge_inputs *in,
                               const ml_merge_stats *st, ml_merge_work *w, ml_moutput *o, size_t chunk) {
    ml_mtensor *t = &pl->t[k];
    const char *out_dtype = ml_merge_recipe_out_dtype(r);
    int rc = ML_OK;
    if (!ml_applies_by_chunk(&t->params)) {
        float *dst = ml_free_buffer(o, o->whole);
        ml_prof_begin("merge.compute");
        rc = ml_merge_apply(&t->params, in, st, w, dst);
        if (rc == ML_OK) ml_round_to(out_dtype, dst, t->n);
        ml_prof_end("merge.compute", 0, (double)(pl->M + 1) * t->n * sizeof(float));
        if (rc == ML_OK) rc = ml_emit(o, pl, k, 0, t->dims[0], dst);
        return rc == ML_OK ? ML_OK : ml_error_trace(rc, __FILE__, __LINE__, __func__);
    }
    hsize_t h5rows = t->dims[0], step = ml_chunk_rows(t, chunk);
    size_t row_elems = t->n / (h5rows ? h5rows : 1);
    for (hsize_t r0 = 0; rc == ML_OK && r0 < h5rows; r0 += step) {
        hsize_t nr = h5rows - r0 < step ? h5rows - r0 : step;
        const size_t e0 = (size_t)r0 * row_elems, ne = (size_t)nr * row_elems;
        ml_merge_inputs sub = *in; /* rows [r0, r0 + nr) as one flat row */
        sub.rows = 1;
        sub.cols = ne;
        if (sub.base) sub.base += e0;
        for (int i = 0; i < t->params.K; i++) sub.x[i] += e0;
        float *dst = ml_free_buffer(o, o->part);
        ml_prof_begin("merge.compute");
        rc = ml_merge_apply(&t->params, &sub, st, w, dst);
        if (rc == ML_OK) ml_round_to(out_dtype, dst, ne);
        ml_prof_end("merge.compute", 0, (double)(pl->M + 1) * ne * sizeof(float));
        if (rc == ML_OK) rc = ml_emit(o, pl, k, r0, nr, dst);
    }
    return rc == ML_OK ? ML_OK : ml_error_trace(rc, __FILE__, __LINE__, __func__);
}

int ml_merge_checkpoints(MPI_Comm comm, const ml_merge_recipe *r, const char *out_path, const char *config_json,
                         size_t read_chunk) {
    int rank, P, rc = ML_OK;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    ml_mplan pl = {0};
    ml_h5 *out = NULL;
    float *bufs[ML_MERGE_MAX_MODELS + 1] = {0}; /* M x (max N), touched only for inputs io cannot map */
    ml_merge_work *w = NULL;
    ml_merge_stats st = {0};
    ml_moutput o = {0};
    const size_t chunk = read_chunk ? read_chunk : (size_t)1 << 20;
    int *mine = NULL, nmine = 0;
    char *recipe_json = NULL;
    double t0 = ml_wtime();

    /* 1. validate everything before anything is written */
    ml_prof_begin("merge.validate");
    rc = ml_plan_build(r, &pl);
    ml_prof_end("merge.validate", 0, 0);
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    if (!out_path) { /* check only */
        ml_info("merge: the recipe and its %d checkpoints are consistent (%d tensors)", pl.M, pl.T);
        goto cleanup;
    }
    ML_CHECK_GOTO(ml_plan_assign(&pl, P), fail);
    size_t max_n = 1, max_rows = 1, max_whole = 0, max_part = 1;
    mine = ml_malloc(sizeof(int) * (size_t)pl.T);
    if (!mine) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int k = 0; rc == ML_OK && k < pl.T; k++) { /* this rank's tensors, largest first */
        if (pl.t[k].owner != rank) continue;
        mine[nmine++] = k;
        if (pl.t[k].n > max_n) max_n = pl.t[k].n;
        if (pl.t[k].rows > max_rows) max_rows = pl.t[k].rows;
        size_t part = (size_t)ml_chunk_rows(&pl.t[k], chunk) * (pl.t[k].n / (pl.t[k].dims[0] ? pl.t[k].dims[0] : 1));
        if (!ml_applies_by_chunk(&pl.t[k].params) && pl.t[k].n > max_whole) max_whole = pl.t[k].n;
        else if (part > max_part) max_part = part;
    }
    for (int a = 1; rc == ML_OK && a < nmine; a++) {
        int v = mine[a], b = a - 1;
        while (b >= 0 && pl.t[mine[b]].n < pl.t[v].n) {
            mine[b + 1] = mine[b];
            b--;
        }
        mine[b + 1] = v;
    }
    /* input buffers are touched only for inputs io cannot map (or rounding to a dtype) */
    for (int i = 0; rc == ML_OK && i < pl.M; i++)
        if (!(bufs[i] = ml_tensor_buffer(max_n))) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    for (int j = 0; rc == ML_OK && j < 2; j++) {
        if (!(o.part[j] = ml_tensor_buffer(max_part))) rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
        if (rc == ML_OK && max_whole && !(o.whole[j] = ml_tensor_buffer(max_whole)))
            rc = ml_error_trace(ML_ERR_NOMEM, __FILE__, __LINE__, __func__);
    }
    if (rc == ML_OK) rc = ml_merge_work_create(pl.t[0].params.K, max_rows, &w);
    if (rc == ML_OK) rc = ml_merge_recipe_to_json(r, &recipe_json);
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);

    /* 2. the output: attributes and every dataset, collectively */
    ml_prof_begin("merge.create");
    rc = ml_h5_create(comm, out_path, ML_CHECKPOINT_FORMAT, 1, &out);
    o.h = out;
    ml_prof_end("merge.create", 0, 0);
    ML_CHECK_GOTO(rc, fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(out, "/", "model_config", pl.model_config), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(out, "/", "parent", pl.paths[0]), fail);
    ML_CHECK_GOTO(ml_h5_set_attr_str(out, "/", "merge_recipe", recipe_json), fail);
    for (int a = 0; a < 2; a++)
        if (pl.tokenizer[a]) ML_CHECK_GOTO(ml_h5_set_attr_str(out, "/", ml_tokenizer_attrs[a], pl.tokenizer[a]), fail);
    if (config_json) ML_CHECK_GOTO(ml_h5_set_attr_str(out, "/", "config", config_json), fail);
    ML_CHECK_GOTO(ml_h5_mkgroup(out, "/params"), fail);
    ml_prof_begin("merge.datasets");
    for (int k = 0; k < pl.T && rc == ML_OK; k++)
        rc = ml_h5_create_dataset(out, pl.t[k].path, ML_F32, pl.t[k].rank, pl.t[k].dims, NULL);
    ml_prof_end("merge.datasets", 0, 0);
    ML_CHECK_GOTO(rc, fail);

    /* 3. every rank merges its tensors and writes each one independently (the
     * datasets are allocated): no rank waits for another until the end */
    ML_CHECK_GOTO(ml_agree(comm, ml_writer_start(&o.wr)), fail);
    ml_progress prog;
    double total_bytes = 0;
    for (int k = 0; k < pl.T; k++) total_bytes += (double)pl.t[k].n * sizeof(float) * (pl.M + 1);
    ml_progress_begin(&prog, "merge", (double)nmine);
    for (int j = 0; rc == ML_OK && j < nmine; j++) {
        ml_merge_inputs in;
        rc = ml_merge_inputs_pass(r, &pl, &pl.t[mine[j]], bufs, &st, chunk, &in);
        if (rc == ML_OK) rc = ml_merge_apply_pass(r, &pl, mine[j], &in, &st, w, &o, chunk);
        ml_progress_update(&prog, j + 1, NULL);
    }
    ml_prof_begin("merge.write");
    ml_writer_stop(&o.wr); /* waits for the last write */
    ml_prof_end("merge.write", 0, 0);
    if (rc == ML_OK && o.wr.err)
        rc = ML_FAIL(ML_ERR_IO, "%s: cannot write tensor %s: %s", out_path, pl.t[o.wr.err_tensor].name,
                     strerror(o.wr.err));
    ML_CHECK_GOTO(ml_agree(comm, rc), fail);
    double secs = ml_wtime() - t0;
    char extra[96];
    snprintf(extra, sizeof extra, "%.2f GB in %.2f s (%.2f GB/s)", total_bytes / 1e9, secs, total_bytes / 1e9 / secs);
    ml_progress_end(&prog, extra);
    ML_CHECK_GOTO(ml_h5_write_profile(out, "/profile"), fail);
    ml_prof_begin("merge.close"); /* flush to disk, rename */
    rc = ml_h5_close(&out);
    ml_prof_end("merge.close", 0, 0);
    secs = ml_wtime() - t0;
    if (rc == ML_OK)
        ml_info("merge: %s %d models, %d tensors -> %s (%.2f GB read+written in %.2f s, %.2f GB/s)",
                ml_merge_method_name(ml_merge_recipe_method(r)), pl.M, pl.T, out_path, total_bytes / 1e9, secs,
                total_bytes / 1e9 / secs);
    goto cleanup;
fail:
    ml_writer_stop(&o.wr);
    ml_h5_discard(&out);
cleanup:
    for (int i = 0; i < ML_MERGE_MAX_MODELS + 1; i++) ml_free(bufs[i]);
    for (int j = 0; j < 2; j++) {
        ml_free(o.part[j]);
        ml_free(o.whole[j]);
    }
    ml_free(mine);
    ml_free(recipe_json);
    ml_merge_work_destroy(&w);
    ml_merge_stats_release(&st);
    ml_plan_free(&pl);
    return rc;
}

/* ---- `mergelens merge` ------------------------------------------------------------ */
static const ml_option_spec ml_merge_options[] = {
    {"out", ML_OPT_STRING, "", 0, -1, NULL, "output checkpoint (.h5); required unless --check"},
    {"seed", ML_OPT_INT, "0", 0, 9e18, NULL, "seed of DARE's random drops (overrides the recipe's `seed`)"},
    {"check", ML_OPT_BOOL, "false", 0, -1, NULL, "validate the recipe and the checkpoints, write nothing"},
    {"read_chunk", ML_OPT_INT, "1048576", 1, 1e12, NULL, "elements per read of each input (tuning; same result)"},
    ML_OPT_END};

int ml_cmd_merge(MPI_Comm comm, int argc, char **argv) {
    int rc = ML_OK, help = 0, npos = 0, check = 0;
    ml_options *o = NULL;
    char **pos = NULL, *cfg_json = NULL;
    ml_merge_recipe *r = NULL;
    ML_CHECK_GOTO(ml_options_parse_command(
                      comm, "merge",
                      "usage: mergelens merge CONFIG.yaml --out OUT.h5 [options]\n\n"
                      "Merge checkpoints as a mergekit-style recipe says (methods: linear, slerp, task_arithmetic,\n"
                      "ties, dare_linear, dare_ties, model_stock, soup, multislerp, karcher). Tensors are spread\n"
                      "over the MPI ranks; the output does not depend on their number.",
                      ml_merge_options, argc, argv, &o, &npos, &pos, &help),
                  done);
    if (help) goto done;
    if (npos != 1) ML_FAIL_GOTO(done, ML_ERR_ARG, "merge: expected one recipe file (CONFIG.yaml), got %d arguments", npos);
    check = ml_opt_bool(o, "check");
    const char *outp = ml_opt_str(o, "out");
    if (!check && (!outp || !*outp)) ML_FAIL_GOTO(done, ML_ERR_ARG, "merge: --out OUT.h5 is required");
    ML_CHECK_GOTO(ml_merge_recipe_load(pos[0], &r), done);
    if (ml_opt_is_set(o, "seed")) ml_merge_recipe_set_seed(r, (uint64_t)ml_opt_int(o, "seed"));
    ML_CHECK_GOTO(ml_options_to_json(o, &cfg_json), done);
done:
    rc = ml_agree(comm, rc);
    if (rc == ML_OK && !help)
        rc = ml_merge_checkpoints(comm, r, check ? NULL : ml_opt_str(o, "out"), cfg_json,
                                  (size_t)ml_opt_int(o, "read_chunk"));
    ml_merge_recipe_destroy(&r);
    ml_free(cfg_json);
    ml_free(pos);
    ml_options_destroy(&o);
    return rc;
}
