/* Test helper: damage an HDF5 file on purpose (serial HDF5, one process).
 *   h5poke FILE attr-int OBJ NAME VALUE      set an integer attribute
 *   h5poke FILE attr-str OBJ NAME VALUE      set a string attribute
 *   h5poke FILE value DATASET INDEX VALUE    set element INDEX (flat) of a float
 *                                            dataset to VALUE (nan, inf, -inf, 1.5)
 *   h5poke FILE reshape DATASET D0 [D1]      replace a float dataset by zeros of
 *                                            another shape
 * Exit status 0 on success, 1 with a message otherwise. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, const char *name) {
    fprintf(stderr, "h5poke: %s: %s\n", what, name);
    return 1;
}

static int set_attr(hid_t f, const char *obj, const char *name, hid_t type, const void *value) {
    if (H5Aexists_by_name(f, obj, name, H5P_DEFAULT) > 0) H5Adelete_by_name(f, obj, name, H5P_DEFAULT);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate_by_name(f, obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int ok = a >= 0 && H5Awrite(a, type, value) >= 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return ok ? 0 : fail("cannot write attribute", name);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: h5poke FILE attr-int|attr-str|value|reshape ARGS...\n");
        return 2;
    }
    hid_t f = H5Fopen(argv[1], H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return fail("cannot open", argv[1]);
    int rc = 1;
    const char *op = argv[2];
    if (!strcmp(op, "attr-int") && argc == 6) {
        long long v = atoll(argv[5]);
        rc = set_attr(f, argv[3], argv[4], H5T_NATIVE_LLONG, &v);
    } else if (!strcmp(op, "attr-str") && argc == 6) {
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, H5T_VARIABLE);
        H5Tset_cset(t, H5T_CSET_UTF8);
        const char *v = argv[5];
        rc = set_attr(f, argv[3], argv[4], t, &v);
        H5Tclose(t);
    } else if (!strcmp(op, "value") && argc == 6) {
        hid_t d = H5Dopen(f, argv[3], H5P_DEFAULT);
        if (d < 0) return fail("no dataset", argv[3]);
        hid_t sp = H5Dget_space(d);
        hsize_t n = (hsize_t)H5Sget_simple_extent_npoints(sp);
        float *buf = malloc(n * sizeof *buf);
        hsize_t i = (hsize_t)atoll(argv[4]);
        if (buf && i < n && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0) {
            buf[i] = (float)strtod(argv[5], NULL); /* strtod parses nan, inf */
            rc = H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0 ? 0 : fail("cannot write", argv[3]);
        } else {
            rc = fail("cannot read or index out of range", argv[3]);
        }
        free(buf);
        H5Sclose(sp);
        H5Dclose(d);
    } else if (!strcmp(op, "reshape") && argc >= 5) {
        int rank = argc - 4;
        hsize_t dims[2] = {0, 0};
        for (int r = 0; r < rank && r < 2; r++) dims[r] = (hsize_t)atoll(argv[4 + r]);
        if (H5Ldelete(f, argv[3], H5P_DEFAULT) < 0) return fail("no dataset", argv[3]);
        hid_t sp = H5Screate_simple(rank, dims, NULL);
        hid_t d = H5Dcreate(f, argv[3], H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        hsize_t n = dims[0] * (rank > 1 ? dims[1] : 1);
        float *buf = calloc(n ? n : 1, sizeof *buf);
        rc = d >= 0 && H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0 ? 0 : fail("cannot create", argv[3]);
        free(buf);
        if (d >= 0) H5Dclose(d);
        H5Sclose(sp);
    } else {
        fprintf(stderr, "h5poke: bad arguments\n");
        rc = 2;
    }
    if (H5Fclose(f) < 0) rc = fail("cannot close", argv[1]);
    return rc;
}
