/* The per-token quality reduction of workers/kl_math.py, fused: two passes over a compared
 * cache's logits row (and the baseline's) instead of about twenty numpy passes.
 *
 * Same definitions and precision as the numpy reduction (kl_math.py's docstring): exponentials
 * in float32, sums in double (each lane first sums 8 terms in float: below 5e-7 relative), and
 * KLD = log1p(E_pbase[g(d - c)]) with d = q - b, c = E_pbase[d] and g(x) = expm1(x) - x taken
 * from its Taylor series where |x| < 0.5 (so tiny divergences keep their relative precision)
 * and from exp(x) - 1 - x elsewhere (no cancellation to fear: g(x) >= 0.1 |x| there).
 *
 * Built at install as an optional extension (setup.py) and called through ctypes, which
 * releases the GIL, so the Reducer's threads split the rows. x86-64 only, with intrinsics
 * (compilers do not vectorize float-to-double reductions well): AVX-512 where the CPU has it,
 * else AVX2 + FMA (every x86 server CPU since 2013). Elsewhere (ARM Macs) kvs_simd() returns 0
 * and kl_math.py keeps the numpy reduction.
 */
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Sums run in float over SUB vectors (8 terms per lane) and are then added in double. */
#define SUB 8

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* -- AVX2 + FMA: 8 lanes ---------------------------------------------------------------- */
#define TARGET __attribute__((target("avx2,fma")))
#define FN(name) name##_avx2
#define W 8
#define V __m256
#define VD __m256d
#define VI __m256i
#define M __m256
#define V_ZERO _mm256_setzero_ps()
#define VD_ZERO _mm256_setzero_pd()
#define V_SET1 _mm256_set1_ps
#define VI_SET1 _mm256_set1_epi32
#define V_LOAD _mm256_loadu_ps
#define V_STORE _mm256_storeu_ps
#define V_MIN _mm256_min_ps
#define V_MAX _mm256_max_ps
#define V_ADD _mm256_add_ps
#define V_SUB _mm256_sub_ps
#define V_MUL _mm256_mul_ps
#define V_FMADD _mm256_fmadd_ps
#define V_FNMADD _mm256_fnmadd_ps
#define V_CVT_I _mm256_cvtps_epi32
#define VI_CVT_F _mm256_cvtepi32_ps
#define VI_ADD _mm256_add_epi32
#define VI_SLLI _mm256_slli_epi32
#define VI_AS_F _mm256_castsi256_ps
#define EQ_BITS(a, b) ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps((a), (b), _CMP_EQ_OQ)))
#define ABS_GE(d, lim) _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), (d)), (lim), _CMP_GE_OQ)
#define MASK_ANY(m) _mm256_movemask_ps(m)
#define BLEND(m, a, b) _mm256_blendv_ps((a), (b), (m))
#define ADD_PD add_pd_avx2
#define HSUM_PD hsum_pd_avx2
#define HMAX hmax_avx2

TARGET static inline void add_pd_avx2(__m256d *lo, __m256d *hi, __m256 v) {
    *lo = _mm256_add_pd(*lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    *hi = _mm256_add_pd(*hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}
TARGET static inline double hsum_pd_avx2(__m256d a, __m256d b) {
    __m256d s = _mm256_add_pd(a, b);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
TARGET static inline float hmax_avx2(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

#include "_kl_fused_simd.h"

#undef TARGET
#undef FN
#undef W
#undef V
#undef VD
#undef VI
#undef M
#undef V_ZERO
#undef VD_ZERO
#undef V_SET1
#undef VI_SET1
#undef V_LOAD
#undef V_STORE
#undef V_MIN
#undef V_MAX
#undef V_ADD
#undef V_SUB
#undef V_MUL
#undef V_FMADD
#undef V_FNMADD
#undef V_CVT_I
#undef VI_CVT_F
#undef VI_ADD
#undef VI_SLLI
#undef VI_AS_F
#undef EQ_BITS
#undef ABS_GE
#undef MASK_ANY
#undef BLEND
#undef ADD_PD
#undef HSUM_PD
#undef HMAX

/* -- AVX-512 (F): 16 lanes --------------------------------------------------------------- */
#define TARGET __attribute__((target("avx512f")))
#define FN(name) name##_avx512
#define W 16
#define V __m512
#define VD __m512d
#define VI __m512i
#define M __mmask16
#define V_ZERO _mm512_setzero_ps()
#define VD_ZERO _mm512_setzero_pd()
#define V_SET1 _mm512_set1_ps
#define VI_SET1 _mm512_set1_epi32
#define V_LOAD _mm512_loadu_ps
#define V_STORE _mm512_storeu_ps
#define V_MIN _mm512_min_ps
#define V_MAX _mm512_max_ps
#define V_ADD _mm512_add_ps
#define V_SUB _mm512_sub_ps
#define V_MUL _mm512_mul_ps
#define V_FMADD _mm512_fmadd_ps
#define V_FNMADD _mm512_fnmadd_ps
#define V_CVT_I _mm512_cvtps_epi32
#define VI_CVT_F _mm512_cvtepi32_ps
#define VI_ADD _mm512_add_epi32
#define VI_SLLI _mm512_slli_epi32
#define VI_AS_F _mm512_castsi512_ps
#define EQ_BITS(a, b) ((unsigned)_mm512_cmp_ps_mask((a), (b), _CMP_EQ_OQ))
#define ABS_GE(d, lim) _mm512_cmp_ps_mask(_mm512_abs_ps(d), (lim), _CMP_GE_OQ)
#define MASK_ANY(m) ((m) != 0)
#define BLEND(m, a, b) _mm512_mask_blend_ps((m), (a), (b))
#define ADD_PD add_pd_avx512
#define HSUM_PD hsum_pd_avx512
#define HMAX _mm512_reduce_max_ps

TARGET static inline void add_pd_avx512(__m512d *lo, __m512d *hi, __m512 v) {
    *lo = _mm512_add_pd(*lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    *hi = _mm512_add_pd(*hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}
TARGET static inline double hsum_pd_avx512(__m512d a, __m512d b) {
    return _mm512_reduce_add_pd(_mm512_add_pd(a, b));
}

#include "_kl_fused_simd.h"

/* -- what kl_math.py calls ------------------------------------------------------------------ */
static int level = -1;

/* 3: AVX-512, 2: AVX2 + FMA, 0: neither (use numpy) */
int kvs_simd(void) {
    if (level < 0) {
        __builtin_cpu_init();
        level = __builtin_cpu_supports("avx512f") ? 3
                : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 2 : 0;
    }
    return level;
}

/* force an instruction set (tests compare them): 2 or 3; returns the level now in use */
int kvs_set_simd(int wanted) {
    int best = (level = -1, kvs_simd());
    level = wanted <= best ? wanted : best;
    return level;
}

void kvs_base_rows(const float *base, int64_t n_rows, int64_t n_vocab, const int64_t *next,
                   float *max_out, double *sumexp_out, double *lse_out, int64_t *argmax_out,
                   double *nll_out) {
    if (kvs_simd() >= 3)
        base_rows_avx512(base, n_rows, n_vocab, next, max_out, sumexp_out, lse_out, argmax_out, nll_out);
    else
        base_rows_avx2(base, n_rows, n_vocab, next, max_out, sumexp_out, lse_out, argmax_out, nll_out);
}

/* returns 0, or -1 when the row buffer could not be allocated */
int kvs_compare(const float *base, const float *q, int64_t n_rows, int64_t n_vocab,
                const int64_t *next, const float *b_max, const double *b_sumexp,
                const int64_t *b_argmax, const double *b_nll, double *nll_out, double *kld_out,
                double *dp_out, uint8_t *same_out) {
    /* the baseline's p of a row, kept from pass 1 for pass 2 (an exp per entry saved) */
    float *pbuf = malloc((size_t)n_vocab * sizeof(float));
    if (pbuf == NULL) return -1;
    if (kvs_simd() >= 3)
        compare_avx512(base, q, n_rows, n_vocab, next, b_max, b_sumexp, b_argmax, b_nll, nll_out,
                       kld_out, dp_out, same_out, pbuf);
    else
        compare_avx2(base, q, n_rows, n_vocab, next, b_max, b_sumexp, b_argmax, b_nll, nll_out,
                     kld_out, dp_out, same_out, pbuf);
    free(pbuf);
    return 0;
}
#else
int kvs_simd(void) { return 0; }
int kvs_set_simd(int wanted) { (void)wanted; return 0; }
void kvs_base_rows(void) {}
int kvs_compare(void) { return -1; }
#endif

/* An importable module, so that setuptools builds and installs it like any extension; its
 * functions are called through ctypes (kl_math.py). */
static struct PyModuleDef kvs_module = {PyModuleDef_HEAD_INIT, "_kl_fused",
                                        "kvsweep's fused KL reduction (called through ctypes)", -1,
                                        NULL};

PyMODINIT_FUNC PyInit__kl_fused(void) { return PyModule_Create(&kvs_module); }
