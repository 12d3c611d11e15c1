/* Adapter file -> a Hugging Face PEFT directory: adapter_model.safetensors
 * (the adapter's tensors under their PEFT names, float32) and
 * adapter_config.json (peft_type LORA or IA3). Serial. */
#include "peft_internal.h"

#include <jansson.h>
#include <string.h>

#include "mergelens/interop.h"
#include "mergelens/interop.h"

/* JSON array of the adapted module names (q_proj, ...) present in a; with
 * feedforward != 0 only those scaled on their input (IA3's feedforward_modules). */
static json_t *ml_peft_module_list(const ml_adapter *a, int feedforward) {
    json_t *arr = json_array();
    for (int i = 0; arr && i < a->n_targets; i++) {
        const char *leaf = strrchr(a->tg[i].module, '.') + 1;
        if (feedforward && !a->tg[i].scale_input) continue;
        int seen = 0;
        for (size_t k = 0; k < json_array_size(arr); k++) seen |= !strcmp(json_string_value(json_array_get(arr, k)), leaf);
        if (!seen) json_array_append_new(arr, json_string(leaf));
    }
    return arr;
}

static int ml_peft_config_json(const ml_adapter *a, const char *base, const char *path) {
    json_t *c = json_object();
    if (!c) return ML_FAIL(ML_ERR_NOMEM, "out of memory building %s", path);
    json_object_set_new(c, "peft_type", json_string(a->method == ML_PEFT_LORA ? "LORA" : "IA3"));
    json_object_set_new(c, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(c, "base_model_name_or_path", json_string(base));
    json_object_set_new(c, "target_modules", ml_peft_module_list(a, 0));
    if (a->method == ML_PEFT_LORA) {
        json_object_set_new(c, "r", json_integer(a->r));
        json_object_set_new(c, "lora_alpha", json_real(a->alpha));
        json_object_set_new(c, "lora_dropout", json_real(0.0));
        json_object_set_new(c, "bias", json_string("none"));
        json_object_set_new(c, "fan_in_fan_out", json_false());
        json_object_set_new(c, "use_rslora", json_false());
        json_object_set_new(c, "init_lora_weights", json_true());
    } else {
        json_object_set_new(c, "feedforward_modules", ml_peft_module_list(a, 1));
        json_object_set_new(c, "fan_in_fan_out", json_false());
        json_object_set_new(c, "init_ia3_weights", json_true());
    }
    json_object_set_new(c, "modules_to_save", json_null());
    json_object_set_new(c, "inference_mode", json_true());
    int rc = ml_atomic_write_json(path, c);
    json_decref(c);
    return rc ? ml_error_trace(rc, __FILE__, __LINE__, __func__) : ML_OK;
}

int ml_adapter_export_peft(const char *adapter_path, const char *dir) {
    ml_adapter *a = NULL;
    ml_h5 *h = NULL;
    char *base = NULL;
    ml_st_tensor *st = NULL;
    int rc = ML_OK;
    char path[4096];
    ML_CHECK(ml_adapter_load(MPI_COMM_SELF, adapter_path, &a));
    ML_CHECK_GOTO(ml_h5_open(MPI_COMM_SELF, adapter_path, ML_ADAPTER_FORMAT, 1, 1, &h), done);
    ML_CHECK_GOTO(ml_h5_get_attr_str(h, "/", "base_model", &base), done);
    ML_CHECK_GOTO(ml_mkdirs(dir), done);
    st = ml_calloc((size_t)a->view.n_tensors, sizeof *st);
    if (!st) ML_FAIL_GOTO(done, ML_ERR_NOMEM, "out of memory");
    for (int i = 0; i < a->view.n_tensors; i++) {
        const ml_tensor *t = &a->view.tensors[i];
        st[i] = (ml_st_tensor){.name = t->name, .dtype = ML_ST_F32, .ndim = 2, .shape = {t->shape[0], t->shape[1]},
                               .data = a->view.params + t->offset, .from_f32 = 1};
    }
    const char *meta[] = {"format", "pt"};
    ML_CHECK_GOTO(ml_path_join(path, sizeof path, dir, "adapter_model.safetensors"), done);
    ML_CHECK_GOTO(ml_safetensors_write(path, a->view.n_tensors, st, 1, meta), done);
    ML_CHECK_GOTO(ml_path_join(path, sizeof path, dir, "adapter_config.json"), done);
    ML_CHECK_GOTO(ml_peft_config_json(a, base, path), done);
done:
    ml_free(st);
    ml_free(base);
    if (h) ml_h5_close(&h);
    ml_adapter_destroy(&a);
    return rc;
}
