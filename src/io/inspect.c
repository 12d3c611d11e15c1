/* `mergelens inspect FILE.h5`: the semantic tree of any HDF5 file. */
#include "mergelens/io.h"

#include <string.h>

typedef struct {
    FILE *out;
    int all_attrs;
} ml_inspect_ctx;

/* A string on one line: newlines and tabs escaped, long text cut unless asked. */
static void ml_print_text(FILE *out, const char *s, size_t limit) {
    size_t len = strlen(s), n = len > limit ? limit : len;
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n') fputs("\\n", out);
        else if (s[i] == '\t') fputs("\\t", out);
        else fputc(s[i], out);
    }
    fputc('"', out);
    if (n < len) fprintf(out, "... (%zu chars)", len);
}

static herr_t ml_attr_print(hid_t loc, const char *name, const H5A_info_t *info, void *data) {
    (void)info;
    ml_inspect_ctx *c = data;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) return 0;
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    H5T_class_t cls = H5Tget_class(t);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    fprintf(c->out, "      @%s = ", name);
    if (cls == H5T_STRING && n == 1) {
        char *s = NULL;
        if (H5Tis_variable_str(t) > 0) {
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, H5T_VARIABLE);
            H5Tset_cset(mt, H5Tget_cset(t));
            if (H5Aread(a, mt, &s) >= 0 && s) {
                ml_print_text(c->out, s, c->all_attrs ? (size_t)-1 : 100);
                H5free_memory(s);
            }
            H5Tclose(mt);
        } else {
            size_t sz = H5Tget_size(t);
            char *full = ml_malloc(sz + 1);
            if (full && H5Aread(a, t, full) >= 0) {
                full[sz] = 0;
                ml_print_text(c->out, full, c->all_attrs ? (size_t)-1 : 100);
            }
            ml_free(full);
        }
    } else if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && n >= 1 && n <= 8) {
        double v[8];
        H5Aread(a, H5T_NATIVE_DOUBLE, v);
        for (hssize_t i = 0; i < n; i++) fprintf(c->out, "%s%.10g", i ? ", " : "", v[i]);
    } else {
        fprintf(c->out, "<%lld values>", (long long)n);
    }
    fputc('\n', c->out);
    H5Sclose(sp);
    H5Tclose(t);
    H5Aclose(a);
    return 0;
}

static const char *ml_type_text(hid_t t, char *buf, size_t n) {
    H5T_class_t cls = H5Tget_class(t);
    size_t sz = H5Tget_size(t);
    if (cls == H5T_FLOAT) snprintf(buf, n, "float%zu", 8 * sz);
    else if (cls == H5T_INTEGER) snprintf(buf, n, "%sint%zu", H5Tget_sign(t) == H5T_SGN_2 ? "" : "u", 8 * sz);
    else if (cls == H5T_STRING) snprintf(buf, n, "string");
    else snprintf(buf, n, "other");
    return buf;
}

static herr_t ml_visit(hid_t root, const char *name, const H5O_info_t *info, void *data) {
    ml_inspect_ctx *c = data;
    int depth = 0;
    const char *base = name;
    for (const char *p = name; *p; p++)
        if (*p == '/') depth++, base = p + 1;
    if (!strcmp(name, ".")) {
        fprintf(c->out, "/\n");
        H5Aiterate_by_name(root, ".", H5_INDEX_NAME, H5_ITER_INC, NULL, ml_attr_print, c, H5P_DEFAULT);
        return 0;
    }
    fprintf(c->out, "%*s", 2 * (depth + 1), "");
    if (info->type == H5O_TYPE_GROUP) {
        fprintf(c->out, "%s/\n", base);
    } else if (info->type == H5O_TYPE_DATASET) {
        hid_t ds = H5Dopen2(root, name, H5P_DEFAULT);
        hid_t sp = H5Dget_space(ds), t = H5Dget_type(ds), dcpl = H5Dget_create_plist(ds);
        hsize_t dims[32];
        int r = H5Sget_simple_extent_ndims(sp);
        if (r > 32) r = 32;
        H5Sget_simple_extent_dims(sp, dims, NULL);
        char tb[32];
        fprintf(c->out, "%s  %s [", base, ml_type_text(t, tb, sizeof tb));
        for (int i = 0; i < r; i++) fprintf(c->out, "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
        fprintf(c->out, "]%s", r == 0 ? " scalar" : "");
        if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
            hsize_t ch[32];
            int cr = H5Pget_chunk(dcpl, 32, ch);
            fprintf(c->out, " chunks [");
            for (int i = 0; i < cr; i++) fprintf(c->out, "%s%llu", i ? ", " : "", (unsigned long long)ch[i]);
            fprintf(c->out, "]%s", H5Pget_nfilters(dcpl) > 0 ? " compressed" : "");
        }
        fputc('\n', c->out);
        H5Pclose(dcpl);
        H5Tclose(t);
        H5Sclose(sp);
        H5Dclose(ds);
    } else {
        fprintf(c->out, "%s (other)\n", base);
        return 0;
    }
    H5Aiterate_by_name(root, name, H5_INDEX_NAME, H5_ITER_INC, NULL, ml_attr_print, c, H5P_DEFAULT);
    return 0;
}

int ml_h5_inspect(const char *path, FILE *out, int show_all_attrs) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (!ml_file_exists(path)) return ML_FAIL(ML_ERR_IO, "%s: no such file", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return ML_FAIL(ML_ERR_FORMAT, "%s: not a readable HDF5 file (truncated or corrupt?)", path);
    ml_inspect_ctx c = {out, show_all_attrs};
    fprintf(out, "%s\n", path);
    herr_t e = H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, ml_visit, &c);
    H5Fclose(f);
    if (e < 0) return ML_FAIL(ML_ERR_HDF5, "%s: cannot walk the file", path);
    return ML_OK;
}
