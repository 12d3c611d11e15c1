/* Shared by the libFuzzer harnesses: the input as a temporary file (the
 * readers under test take paths), and a corpus-replay main() for builds
 * without libFuzzer (gcc), so the seed corpora run as regression tests. */
#ifndef ML_FUZZ_UTIL_H
#define ML_FUZZ_UTIL_H
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Write data to a per-process file named <tag>.<pid><suffix> under
 * /dev/shm (or $TMPDIR) and return its path (static buffer); NULL on failure. */
const char *ml_fuzz_file(const char *tag, const char *suffix, const uint8_t *data, size_t size);

/* The input as a NUL-terminated ml_malloc'd copy. */
char *ml_fuzz_cstr(const uint8_t *data, size_t size);

/* Abort (a finding) unless no tracked allocation is live: every path through
 * the code under test must free what it took. */
void ml_fuzz_check_no_leak(long live_before, const char *what);
#endif
