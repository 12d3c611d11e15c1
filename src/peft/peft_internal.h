/* Internal to src/peft: shared helpers of the adapter, trainer and command
 * files. Reuses the train module's small helpers (comma lists, JSON string
 * arrays, store attributes; src/train/util.c) and the interop module's atomic
 * file writer (src/interop/files.c) rather than copying them. */
#ifndef ML_PEFT_INTERNAL_H
#define ML_PEFT_INTERNAL_H

#include "mergelens/config.h"
#include "mergelens/data.h"
#include "mergelens/io.h"
#include "mergelens/model.h"
#include "mergelens/train.h"
#include "mergelens/peft.h"

/* The PEFT table's condition names, in index order. */
#define ML_PEFT_N_CONDITIONS 3
extern const char *const ml_peft_condition_names[ML_PEFT_N_CONDITIONS]; /* ported, scratch, sampled */

#endif
