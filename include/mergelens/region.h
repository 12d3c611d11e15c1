/* mergelens region: weight-space regions of fine-tuned models (Gueta et al.,
 * "Knowledge is a Region in Weight Space for Fine-tuned Language Models",
 * arXiv 2302.04863).
 *
 * `mergelens region --base B.h5 --models lua=a.h5,lua=b.h5,stories=c.h5,...
 *  --domains data/lua.h5,data/stories.h5 --out region/regions.h5`
 *
 *  1. task vectors tau_i = x_i - base, streamed tensor by tensor: every rank
 *     reads only the tensors it owns (largest first to the least loaded rank,
 *     so each tensor is always computed by the same code), one tensor of the
 *     M models at a time, and accumulates that tensor's Gram matrix
 *     G_t[i][j] = tau_i . tau_j in double (ml_merge_gram). The per-tensor
 *     matrices are reduced (one contributor each, exact) and the whole-model
 *     Gram is their sum in tensor order, so the results are bitwise identical
 *     for every rank count. Cosine = G_ij / sqrt(G_ii G_jj), Euclidean
 *     distance between the fine-tuned models = sqrt(G_ii + G_jj - 2 G_ij).
 *  2. spectral clustering of the models into k clusters (Ng-Jordan-Weiss):
 *     affinity A = max(cosine, 0) (diagonal 1), L = D^-1/2 A D^-1/2, the k
 *     leading eigenvectors (cyclic Jacobi in double: M is small), rows
 *     normalised, k-means with seeded k-means++ (best of n_init); accuracy
 *     against the domain labels under the best cluster-to-label matching.
 *  3. evaluation points: every model and the base; linear interpolations and
 *     extrapolations (1 - a) x_i + a x_j of model pairs for a on a grid
 *     (e.g. -0.5..1.5); random convex combinations with seeded Dirichlet
 *     weights within each domain and over all models. A point's model is
 *     built tensor by tensor from the files (only models with a non-zero
 *     weight are read); ranks split the points (point j to rank j mod P),
 *     each evaluated alone (ml_evaluator on MPI_COMM_SELF), then gathered.
 *  4. the centroid (element-wise mean of the models), an ordinary
 *     checkpoint (--centroid_out, or `mergelens region centroid`).
 *
 * `mergelens region centroid --models l=a.h5,... [--exclude lua] --out C.h5`
 * `mergelens region centroid-table --domains lua,stories
 *     --centroid_evals E1.h5,E2.h5 --base_evals F1.h5,F2.h5 --out region/centroid.h5`
 *
 * Legend: M models (not counting the base), L labels (domains of the
 * models), k clusters, T tensors, N elements of a tensor, Q evaluation
 * points, D evaluation domains.
 */
#ifndef MERGELENS_REGION_H
#define MERGELENS_REGION_H

#include <stddef.h>
#include <stdint.h>

#include "mergelens/core.h"

#define ML_REGION_FORMAT "mergelens.region"
#define ML_REGION_CENTROID_FORMAT "mergelens.region_centroid"

/* ---- kernels (local, deterministic) ------------------------------------------ */
/* cosine (M,M) and distance (M,M) from a Gram matrix gram (M,M) of task
 * vectors. A zero vector has cosine 0 with every other one (1 with itself). */
void ml_region_cos_dist(const double *gram, int M, double *cosine, double *distance);
/* Symmetric eigen-decomposition by cyclic Jacobi: a (n,n) is overwritten;
 * evals (n) in DESCENDING order, evecs (n,n) with eigenvector j in column j.
 * Fails with ML_ERR_NUMERIC if it does not converge in 100 sweeps. */
int ml_region_eigh(double *a, int n, double *evals, double *evecs);
/* k-means on x (n,d) with k-means++ seeding from seed, best inertia of n_init
 * restarts; assign (n) cluster ids 0..k-1 numbered by first appearance. */
int ml_region_kmeans(const double *x, int n, int d, int k, uint64_t seed, int n_init, int *assign,
                     double *inertia);
/* Spectral clustering of a cosine matrix (n,n) into k clusters; evals (n)
 * (may be NULL) gets the eigenvalues of the normalised affinity. */
int ml_region_spectral(const double *cosine, int n, int k, uint64_t seed, int n_init, int *assign, double *evals);
/* Fraction of items whose cluster maps to their label under the best
 * one-to-one cluster-to-label matching (clusters k, labels L). */
int ml_region_cluster_accuracy(const int *assign, const int *labels, int n, int k, int L, double *accuracy);
/* Dirichlet(alpha, ..., alpha) sample w (n), sum 1 (Marsaglia-Tsang gammas). */
void ml_region_dirichlet(ml_rng *r, double alpha, int n, double *w);

/* ---- commands ---------------------------------------------------------------- */
/* `mergelens region [centroid|centroid-table] ...` */
int ml_cmd_region(MPI_Comm comm, int argc, char **argv);

#endif
