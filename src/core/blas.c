/* OpenBLAS kernel check: OpenBLAS 0.3.21 falls back to Prescott (SSE3)
 * kernels on CPUs it does not know, running sgemm about 5x slower. */
#include "mergelens/core.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

extern char *openblas_get_corename(void);
extern int openblas_get_num_threads(void);

static int ml_cpu_has(const char *flag) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return 0;
    char line[8192];
    int found = 0;
    size_t n = strlen(flag);
    while (!found && fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0) continue;
        for (char *p = strstr(line, flag); p && !found; p = strstr(p + 1, flag))
            found = (p == line || p[-1] == ' ' || p[-1] == '\t') && (p[n] == ' ' || p[n] == '\n' || p[n] == 0);
        break;
    }
    fclose(f);
    return found;
}

const char *ml_blas_corename(void) { return openblas_get_corename(); }
int ml_blas_threads(void) { return openblas_get_num_threads(); }

int ml_blas_check(char *advice, size_t n) {
    const char *core = openblas_get_corename();
    if (!core) core = "unknown";
    static const char *avx512_cores[] = {"skylakex", "cooperlake", "sapphirerapids", "zen"};
    static const char *avx2_cores[] = {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"};
    char lc[64];
    snprintf(lc, sizeof lc, "%s", core);
    for (char *c = lc; *c; c++) *c = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
    const char *want = NULL;
    int ok = 1;
    if (ml_cpu_has("avx512f")) {
        ok = 0;
        for (size_t i = 0; i < sizeof avx512_cores / sizeof *avx512_cores; i++)
            if (strstr(lc, avx512_cores[i])) ok = 1;
        want = "SkylakeX";
    } else if (ml_cpu_has("avx2")) {
        ok = 0;
        for (size_t i = 0; i < sizeof avx2_cores / sizeof *avx2_cores; i++)
            if (strstr(lc, avx2_cores[i])) ok = 1;
        want = "Haswell";
    }
    if (ok) {
        if (advice && n) advice[0] = '\0';
        return 0;
    }
    if (advice && n)
        snprintf(advice, n,
                 "OpenBLAS chose the '%s' kernels but this CPU supports %s: matrix products run several times "
                 "slower. Set OPENBLAS_CORETYPE=%s in the environment before starting mergelens (scripts/mlrun "
                 "does this).",
                 core, want, want);
    return 1;
}
