/* Helpers shared by the files of the capture module (not exported API). */
#ifndef ML_CAPTURE_INTERNAL_H
#define ML_CAPTURE_INTERNAL_H

#include "mergelens/capture.h"

/* out (n) = sum over the ranks of comm of in (n). */
int ml_capture_sum(MPI_Comm comm, const double *in, double *out, size_t n);
/* JSON list of strings (caller ml_free()s). */
int ml_capture_json_list(const char *const *items, int n, char **out);

#endif
