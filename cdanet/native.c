/* Row kernels of the sparse embedding path on CPU (see cdanet/native.py, which compiles and loads this).
 *
 * Plain C on raw float32 / int64 buffers, no torch headers: it builds in well under a second with the
 * system C compiler, and ctypes calls it with the tensors' data pointers. Every buffer is contiguous
 * and row-major; the Python side checks dtypes, shapes and contiguity before calling.
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define CDANET_MXCSR 1
#endif

/* Marks the rows that occur in idx[0..nidx) and numbers them in ascending row order.
 * pos[r] becomes the rank of row r among the occurring rows, or -1; uniq[0..n) lists the occurring
 * rows in ascending order. Returns n, or -1 (nothing written to uniq) if an idx is outside [0, rows). */
int64_t cdanet_coalesce_rows(const int64_t *idx, int64_t nidx, int64_t rows, int32_t *pos, int64_t *uniq) {
    for (int64_t i = 0; i < nidx; i++)
        if (idx[i] < 0 || idx[i] >= rows) return -1;
    for (int64_t r = 0; r < rows; r++) pos[r] = -1;
    for (int64_t i = 0; i < nidx; i++) pos[idx[i]] = -2;
    int64_t n = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (pos[r] == -2) {
            pos[r] = (int32_t)n;
            uniq[n++] = r;
        }
    }
    return n;
}

/* 1 if r[0..n) is strictly ascending (distinct rows in order), else 0. */
int cdanet_strictly_ascending(const int64_t *r, int64_t n) {
    for (int64_t i = 1; i < n; i++)
        if (r[i] <= r[i - 1]) return 0;
    return 1;
}

/* compact[pos[idx[b, s]]] += w[b, s] * grad[b, s] over all (b, s), in that order (deterministic).
 * idx and w are B x S; grad row (b, s) starts at grad + b * gsb + s * gss (gss = 0 when every slot of a
 * row shares one gradient row, i.e. pooled lookups); w may be NULL (all ones). compact is n x e, zeroed. */
void cdanet_accumulate_rows(const int64_t *idx, int64_t B, int64_t S, const float *restrict grad, int64_t gsb,
                            int64_t gss, const float *w, const int32_t *pos, float *restrict compact, int64_t e) {
    for (int64_t b = 0; b < B; b++) {
        for (int64_t s = 0; s < S; s++) {
            const float ws = w ? w[b * S + s] : 1.0f;
            float *restrict dst = compact + (int64_t)pos[idx[b * S + s]] * e;
            const float *restrict src = grad + b * gsb + s * gss;
            for (int64_t k = 0; k < e; k++) dst[k] += ws * src[k];
        }
    }
}

/* out[idx[b, s]] += w[b, s] * grad[b, s] over all (b, s), slot by slot (s outer, b inner): the gradient
 * of a table lookup, written into the rows x e table out. That is the order of one torch index_add_ per
 * slot (cdanet.native.index_add_slots_'s torch path), and the product is rounded before the add as the
 * torch path's separate multiply rounds it (no fused multiply-add), so the sums are bitwise the same.
 * idx and w are B x S; grad row (b, s) starts at grad + b * gsb + s * gss (gss = 0 for pooled lookups);
 * w may be NULL (all ones, no multiply). Returns 0, or -1 (nothing written) if an idx is outside [0, rows). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
int64_t cdanet_index_add_slots(float *restrict out, int64_t rows, const int64_t *idx, int64_t B, int64_t S,
                               const float *restrict grad, int64_t gsb, int64_t gss, const float *w, int64_t e) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    for (int64_t i = 0; i < B * S; i++)
        if (idx[i] < 0 || idx[i] >= rows) return -1;
    for (int64_t s = 0; s < S; s++) {
        for (int64_t b = 0; b < B; b++) {
            float *restrict dst = out + idx[b * S + s] * e;
            const float *restrict src = grad + b * gsb + s * gss;
            if (w) {
                const float ws = w[b * S + s];
                for (int64_t k = 0; k < e; k++) {
                    const float t = ws * src[k];
                    dst[k] += t;
                }
            } else {
                for (int64_t k = 0; k < e; k++) dst[k] += src[k];
            }
        }
    }
    return 0;
}

/* One Adam step (the formulas of torch.optim.Adam, L2 weight decay) on one row of e values: p, m
 * (exp_avg) and v (exp_avg_sq) in place, with the gradient row g, or a zero gradient when g is NULL.
 * step_size = lr / (1 - beta1^step), bc2_sqrt = sqrt(1 - beta2^step). */
static inline void adam_row(float *restrict p, float *restrict m, float *restrict v, const float *restrict g,
                            int64_t e, float beta1, float beta2, float eps, float weight_decay,
                            float step_size, float bc2_sqrt) {
    for (int64_t k = 0; k < e; k++) {
        const float gk = (g ? g[k] : 0.0f) + weight_decay * p[k];
        m[k] += (1.0f - beta1) * (gk - m[k]);
        v[k] = beta2 * v[k] + (1.0f - beta2) * gk * gk;
        p[k] -= step_size * m[k] / (sqrtf(v[k]) / bc2_sqrt + eps);
    }
}

/* Adam (adam_row) on the rows uniq[0..n) of the rows x e tables p, m, v, with the n x e gradient rows
 * g. Other rows are not touched. bc1 = 1 - beta1^step. Rows are distinct, so threads never share a row. */
void cdanet_lazy_adam_rows(float *restrict p, float *restrict m, float *restrict v, int64_t e,
                           const int64_t *uniq, int64_t n, const float *restrict g, float lr, float beta1,
                           float beta2, float eps, float weight_decay, float bc1, float bc2_sqrt,
                           int num_threads) {
    const float step_size = lr / bc1;
    (void)num_threads;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = uniq[i];
        adam_row(p + r * e, m + r * e, v + r * e, g + i * e, e, beta1, beta2, eps, weight_decay, step_size,
                 bc2_sqrt);
    }
}

/* Adam (adam_row) on every row of the rows x e tables p, m, v, where only the rows uniq[0..n)
 * (ascending) have a nonzero gradient, given as the n x e rows g: torch.optim.Adam's result for the
 * dense gradient, in one streaming pass that never builds it. Each thread takes a contiguous range
 * of rows. */
void cdanet_dense_adam_rows(float *restrict p, float *restrict m, float *restrict v, int64_t rows, int64_t e,
                            const int64_t *uniq, int64_t n, const float *restrict g, float lr, float beta1,
                            float beta2, float eps, float weight_decay, float bc1, float bc2_sqrt,
                            int num_threads) {
    const float step_size = lr / bc1;
    (void)num_threads;
#pragma omp parallel num_threads(num_threads)
    {
#ifdef _OPENMP
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int64_t t = 0, nt = 1;
#endif
        const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
        int64_t lo = 0, hi = n;  /* j = first index with uniq[j] >= r0 */
        while (lo < hi) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (uniq[mid] < r0) lo = mid + 1; else hi = mid;
        }
        int64_t j = lo;
        for (int64_t r = r0; r < r1; r++) {
            const float *gr = (j < n && uniq[j] == r) ? g + (j++) * e : 0;
            adam_row(p + r * e, m + r * e, v + r * e, gr, e, beta1, beta2, eps, weight_decay, step_size,
                     bc2_sqrt);
        }
    }
}

/* Catch-up (cdanet.native.catch_up_rows_): bring row r from its last update last[r] to step upto as
 * dense Adam moves it without a gradient (momentum and L2 weight decay, in closed form; see the
 * Python docstring for the formulas), then set last[r] = upto. rows_or_null: the n rows (ascending)
 * to bring up to date, or NULL for rows 0..n. Rows are distinct, so threads never share a row. */
/* exp(-x) for x in [0, 30], to about float precision (relative error < 1e-7), in operations that
 * vectorise (libm's expf does not, so the row loop below ran one element at a time). 2^t with
 * t = -x log2(e) split into a whole power n (round to nearest by the 1.5 * 2^23 trick: no -ffast-math,
 * so the sum is not reassociated) and f in [-1/2, 1/2]; e^(f ln 2) by its Taylor series to degree 7. */
static inline float exp_neg(float x) {
    const float t = -x * 1.44269504088896341f;
    const float n = (t + 12582912.0f) - 12582912.0f;
    const float y = (t - n) * 0.693147180559945309f;
    const float e = 1.0f + y * (1.0f + y * (0.5f + y * (1.0f / 6 + y * (1.0f / 24 + y * (1.0f / 120
                    + y * (1.0f / 720 + y * (1.0f / 5040)))))));
    union { int32_t i; float f; } two_n;
    two_n.i = ((int32_t)n + 127) << 23;
    return e * two_n.f;
}

static inline void catch_up_row(float *restrict p, float *restrict m, float *restrict v, int64_t e, int64_t k,
                                int64_t upto, double lr, double beta1, float eps, float wd, double c_up,
                                double log_b1, double log_b2) {
    const double log_q = -0.5 * log_b2, q = exp(log_q), r = beta1 * q;
    const double kk = k > 100000 ? 100000.0 : (double)k;
    const double b1k_d = exp(kk * log_b1), qk = exp(kk * log_q);  /* beta1^k, q^k; r^k = beta1^k q^k */
    const double momentum = r * (1.0 - b1k_d * qk) / (1.0 - r);
    const double decay = q * (qk - 1.0) / (q - 1.0) - momentum;
    double near = (double)upto - kk + fmin(kk, 1.0 / (1.0 - r));
    if (near < 1.0) near = 1.0;
    const double c_near = near > 20000.0 ? lr
        : lr * sqrt(1.0 - exp(near * log_b2)) / (1.0 - exp(near * log_b1));
    const float fm = (float)(momentum * c_near), fd = (float)(wd * decay * c_up), fl = (float)(kk * c_up);
    const float b1k = (float)b1k_d, b2k = (float)(1.0 / (qk * qk));  /* beta2^k = q^-2k */
    if (wd == 0.0f) {
        for (int64_t i = 0; i < e; i++) {
            float pi = p[i] - fm * m[i] / (sqrtf(v[i]) + eps);
            p[i] = fabsf(pi) < 1e-30f ? 0.0f : pi;  /* no subnormal results: they slow every later step */
            m[i] = b1k * m[i];
            const float vi = b2k * v[i];
            v[i] = vi < 1e-30f ? 0.0f : vi;
        }
        return;
    }
    for (int64_t i = 0; i < e; i++) {
        const float den = sqrtf(v[i]) + eps;
        const float p0 = p[i] - fm * m[i] / den;
        /* Decayed past 1e-13 of its size, or by more than lr' per step allows: the floor decides. */
        const float rate = fd / den, a = fabsf(p0);
        const float shrunk = rate < 30.0f ? a * exp_neg(rate) : 0.0f;
        const float floor_ = a - fl > 0.0f ? a - fl : 0.0f;
        float pi = copysignf(shrunk > floor_ ? shrunk : floor_, p0);
        pi = fabsf(pi) < 1e-30f ? 0.0f : pi;
        p[i] = pi;
        const float d = wd * pi;
        m[i] = b1k * m[i] + (1.0f - b1k) * d;
        const float vi = b2k * v[i] + (1.0f - b2k) * d * d;
        v[i] = vi < 1e-30f ? 0.0f : vi;
    }
}

void cdanet_catch_up_rows(float *restrict p, float *restrict m, float *restrict v, int64_t *restrict last,
                          int64_t e, const int64_t *rows_or_null, int64_t n, int64_t upto, float lr, float beta1,
                          float beta2, float eps, float weight_decay, int num_threads) {
    const double c_up = (double)lr * sqrt(1.0 - pow(beta2, (double)upto)) / (1.0 - pow(beta1, (double)upto));
    const double log_b1 = log((double)beta1), log_b2 = log((double)beta2);
    (void)num_threads;
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t i = 0; i < n; i++) {
        const int64_t row = rows_or_null ? rows_or_null[i] : i;
        const int64_t k = upto - last[row];
        if (k <= 0) continue;
        catch_up_row(p + row * e, m + row * e, v + row * e, e, k, upto, lr, beta1, eps, weight_decay, c_up, log_b1,
                     log_b2);
        last[row] = upto;
    }
}

/* Flush-to-zero and denormals-are-zero (cdanet.native.set_flush_denormal): set (on = 1) or cleared on the
 * calling thread and on every thread of an OpenMP team of num_threads. torch's intra-op threads are that
 * team (one libgomp in the process: this library links the libgomp torch loaded), and
 * torch.set_flush_denormal reaches the calling thread only. Returns the number of threads set; 0 where
 * the CPU has no such mode (not x86). */
#define CDANET_FTZ_DAZ 0x8040u  /* MXCSR bit 15 (FTZ) and bit 6 (DAZ) */
int cdanet_set_flush_denormal(int on, int num_threads) {
#ifdef CDANET_MXCSR
    int count = 0;
    (void)num_threads;
#pragma omp parallel num_threads(num_threads) reduction(+ : count)
    {
        _mm_setcsr((_mm_getcsr() & ~CDANET_FTZ_DAZ) | (on ? CDANET_FTZ_DAZ : 0u));
        count += 1;
    }
    _mm_setcsr((_mm_getcsr() & ~CDANET_FTZ_DAZ) | (on ? CDANET_FTZ_DAZ : 0u));
    return count;
#else
    (void)on;
    (void)num_threads;
    return 0;
#endif
}

/* 1 if the calling thread flushes denormals (both bits set), else 0. */
int cdanet_flush_denormal(void) {
#ifdef CDANET_MXCSR
    return (_mm_getcsr() & CDANET_FTZ_DAZ) == CDANET_FTZ_DAZ;
#else
    return 0;
#endif
}
