/* bench_sweep [DIR] [--count K] [--windows W]: a K-point (default 101) SLERP
 * sweep over two small demo-sized models (1 layer, D 256, F 512, 8/4 heads,
 * V 4096, T 64) with 4-domain evaluation (W windows per domain), timed end to
 * end through ml_cmd_sweep. Run under mpiexec -n 1 and -n 2. */
#include <stdlib.h>
#include <string.h>

#include "mergelens/sweep.h"
#include "train_fixture.h"

static int write_model(const char *path, uint64_t seed, ml_model_config *c) {
    ml_model *m = NULL;
    ml_h5 *h = NULL;
    int rc = ml_model_create(c, &m);
    if (!rc) rc = ml_model_init(m, seed);
    if (!rc) rc = ml_h5_create(MPI_COMM_SELF, path, "mergelens.checkpoint", 1, &h);
    if (!rc) rc = ml_model_config_save(h, c);
    if (!rc) rc = ml_model_save_params(h, m);
    if (!rc) rc = ml_h5_close(&h);
    ml_model_destroy(&m);
    return rc;
}

int main(int argc, char **argv) {
    int provided, rank, P;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    ml_log_init(rank, P);
    const char *dir = "/tmp/mlbench_sweep";
    int count = 101, windows = 32;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--count") && i + 1 < argc) count = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--windows") && i + 1 < argc) windows = atoi(argv[++i]);
        else dir = argv[i];
    }
    ml_model_config c;
    ml_model_config_default(&c);
    c.d_model = 256, c.d_mlp = 512, c.n_heads = 8, c.n_kv_heads = 4, c.head_dim = 32, c.vocab_size = 4096;
    c.max_context = 64;
    char a[1024], b[1024], rec[1024], st[4][1024], out[1024];
    snprintf(a, sizeof a, "%s/a.h5", dir);
    snprintf(b, sizeof b, "%s/b.h5", dir);
    snprintf(rec, sizeof rec, "%s/slerp.yaml", dir);
    snprintf(out, sizeof out, "%s/sweep_np%d.h5", dir, P);
    const char *names[4] = {"stories", "lua", "python", "prose"};
    int rc = ML_OK;
    if (rank == 0) {
        ml_mkdirs(dir);
        for (int d = 0; d < 4 && !rc; d++) {
            snprintf(st[d], sizeof st[d], "%s/%s.h5", dir, names[d]);
            rc = tf_write_store(st[d], names[d], c.vocab_size, 1000, (int64_t)windows * 65 + 10, (uint64_t)d + 1);
        }
        if (!rc) rc = write_model(a, 1, &c);
        if (!rc) rc = write_model(b, 2, &c);
        FILE *f = fopen(rec, "w");
        if (f) {
            fprintf(f, "models:\n  - model: %s\n  - model: %s\nmerge_method: slerp\nbase_model: %s\nparameters:\n  t: 0.5\n", a, b, a);
            fclose(f);
        }
    } else {
        for (int d = 0; d < 4; d++) snprintf(st[d], sizeof st[d], "%s/%s.h5", dir, names[d]);
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (rc) {
        ml_error_print(stderr, 1);
        MPI_Finalize();
        return 1;
    }
    char line[8192];
    snprintf(line, sizeof line,
             "sweep %s --param t --from 0 --to 1 --count %d --domains %s,%s,%s,%s --context 64 --batch 16 "
             "--eval-windows %d --out %s",
             rec, count, st[0], st[1], st[2], st[3], windows, out);
    char *av[64];
    int ac = 0;
    for (char *t = strtok(line, " "); t && ac < 63; t = strtok(NULL, " ")) av[ac++] = t;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = ml_wtime();
    rc = ml_cmd_sweep(MPI_COMM_WORLD, ac, av);
    double secs = ml_wtime() - t0;
    if (rc) ml_error_print(stderr, 1);
    else if (rank == 0)
        printf("bench_sweep: %d points x 4 domains x %d windows of 64 tokens, %zu params per model, %d ranks: "
               "%.2f s, %.2f points/s\n",
               count, windows, ml_model_n_params(&c), P, secs, count / secs);
    MPI_Finalize();
    return rc ? 1 : 0;
}
