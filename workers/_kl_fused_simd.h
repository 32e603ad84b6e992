/* The body of the fused reduction, written once over vector macros and included by
 * _kl_fused.c for each instruction set (AVX2 + FMA: 8 lanes; AVX-512: 16 lanes). The including
 * file defines TARGET, FN(name), W (lanes), the types V (float vector), VD (double vector),
 * VI (int32 vector), M (comparison mask) and the macros and helpers used below. */

/* exp(x), lane by lane (Cephes' expf: range reduction by ln 2, degree-6 polynomial; within 2
 * ulp). x is clamped to [-87, 88]: below -87 the result is exp(-87) = 1.6e-38, which no sum
 * here (of terms up to 1) can tell from 0. */
TARGET static inline V FN(exp)(V x) {
    x = V_MIN(V_MAX(x, V_SET1(-87.0f)), V_SET1(88.0f));
    const VI ni = V_CVT_I(V_MUL(x, V_SET1(1.44269504088896341f)));  /* rounds to nearest */
    const V n = VI_CVT_F(ni);
    V r = V_FNMADD(n, V_SET1(0.693359375f), x);
    r = V_FNMADD(n, V_SET1(-2.12194440e-4f), r);
    V p = V_SET1(1.9875691500e-4f);
    p = V_FMADD(p, r, V_SET1(1.3981999507e-3f));
    p = V_FMADD(p, r, V_SET1(8.3334519073e-3f));
    p = V_FMADD(p, r, V_SET1(4.1665795894e-2f));
    p = V_FMADD(p, r, V_SET1(1.6666665459e-1f));
    p = V_FMADD(p, r, V_SET1(5.0000001201e-1f));
    p = V_FMADD(p, V_MUL(r, r), V_ADD(r, V_SET1(1.0f)));
    const VI e = VI_SLLI(VI_ADD(ni, VI_SET1(127)), 23);
    return V_MUL(p, VI_AS_F(e));
}

/* g(x) = expm1(x) - x from its series x^2/2! + ... + x^11/11!, Horner's rule (below 1.1e-10
 * relative truncation for |x| < 0.5). */
TARGET static inline V FN(series)(V x) {
    V s = V_SET1(1.0f / 39916800.0f);
    s = V_FMADD(s, x, V_SET1(1.0f / 3628800.0f));
    s = V_FMADD(s, x, V_SET1(1.0f / 362880.0f));
    s = V_FMADD(s, x, V_SET1(1.0f / 40320.0f));
    s = V_FMADD(s, x, V_SET1(1.0f / 5040.0f));
    s = V_FMADD(s, x, V_SET1(1.0f / 720.0f));
    s = V_FMADD(s, x, V_SET1(1.0f / 120.0f));
    s = V_FMADD(s, x, V_SET1(1.0f / 24.0f));
    s = V_FMADD(s, x, V_SET1(1.0f / 6.0f));
    s = V_FMADD(s, x, V_SET1(0.5f));
    return V_MUL(s, V_MUL(x, x));
}

/* the n < W entries left at the end of a row, the other lanes set to pad */
TARGET static inline V FN(load_tail)(const float *x, int64_t n, float pad) {
    float buf[W];
    for (int i = 0; i < W; i++) buf[i] = i < n ? x[i] : pad;
    return V_LOAD(buf);
}

TARGET static float FN(row_max)(const float *x, int64_t n) {
    V m = V_SET1(-INFINITY);
    int64_t i = 0;
    for (; i + W <= n; i += W) m = V_MAX(m, V_LOAD(x + i));
    float out = HMAX(m);
    for (; i < n; i++) out = x[i] > out ? x[i] : out;
    return out;
}

/* the first i with x[i] == v (numpy's argmax takes the first of equal maxima) */
TARGET static int64_t FN(first_index_of)(const float *x, int64_t n, float v) {
    const V vv = V_SET1(v);
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        const unsigned bits = EQ_BITS(V_LOAD(x + i), vv);
        if (bits) return i + __builtin_ctz(bits);
    }
    for (; i < n; i++)
        if (x[i] == v) return i;
    return 0;
}

/* Baseline facts per row: max, sum(exp(b - max)), logsumexp, argmax, nll of next. */
TARGET static void FN(base_rows)(const float *base, int64_t n_rows, int64_t n_vocab, const int64_t *next,
                                 float *max_out, double *sumexp_out, double *lse_out,
                                 int64_t *argmax_out, double *nll_out) {
    for (int64_t r = 0; r < n_rows; r++) {
        const float *b = base + r * n_vocab;
        const float m = FN(row_max)(b, n_vocab);
        const V vm = V_SET1(m);
        VD s0 = VD_ZERO, s1 = VD_ZERO;
        int64_t i = 0;
        while (i + W <= n_vocab) {
            V f = V_ZERO;
            for (int k = 0; k < SUB && i + W <= n_vocab; k++, i += W) f = V_ADD(f, FN(exp)(V_SUB(V_LOAD(b + i), vm)));
            ADD_PD(&s0, &s1, f);
        }
        if (i < n_vocab) ADD_PD(&s0, &s1, FN(exp)(V_SUB(FN(load_tail)(b + i, n_vocab - i, -INFINITY), vm)));
        const double s = HSUM_PD(s0, s1);
        max_out[r] = m;
        sumexp_out[r] = s;
        lse_out[r] = (double)m + log(s);
        argmax_out[r] = FN(first_index_of)(b, n_vocab, m);
        nll_out[r] = lse_out[r] - (double)b[next[r]];
    }
}

/* One compared cache's rows against the baseline's. Pass 1: the row max of q (a cheap pass),
 * then sum(exp(q - max)) exactly as base_rows sums a row (so identical rows give identical
 * figures), with p = exp(b - max_b) / sumexp_b (kept in pbuf), sum(p) and sum(p * d).
 * Pass 2: sum(p * g(d - c)). Lanes past the row's end are padded so that they add nothing. */
TARGET static void FN(compare)(const float *base, const float *q, int64_t n_rows, int64_t n_vocab,
                               const int64_t *next, const float *b_max, const double *b_sumexp,
                               const int64_t *b_argmax, const double *b_nll, double *nll_out,
                               double *kld_out, double *dp_out, uint8_t *same_out, float *pbuf) {
    for (int64_t r = 0; r < n_rows; r++) {
        const float *b = base + r * n_vocab, *x = q + r * n_vocab;
        const V vmb = V_SET1(b_max[r]);
        const V vinv = V_SET1(1.0f / (float)b_sumexp[r]);  /* p = e * (1/sb): a multiply, not a divide */
        const float mq = FN(row_max)(x, n_vocab);
        const V vmq = V_SET1(mq);
        VD s0 = VD_ZERO, s1 = VD_ZERO, ps0 = VD_ZERO, ps1 = VD_ZERO, pd0 = VD_ZERO, pd1 = VD_ZERO;
        int64_t i = 0;
        while (i + W <= n_vocab) {
            V fs = V_ZERO, fp = V_ZERO, fd = V_ZERO;
            for (int k = 0; k < SUB && i + W <= n_vocab; k++, i += W) {
                const V vq = V_LOAD(x + i), vb = V_LOAD(b + i);
                fs = V_ADD(fs, FN(exp)(V_SUB(vq, vmq)));
                const V p = V_MUL(FN(exp)(V_SUB(vb, vmb)), vinv);
                V_STORE(pbuf + i, p);
                fp = V_ADD(fp, p);
                fd = V_FMADD(p, V_SUB(vq, vb), fd);
            }
            ADD_PD(&s0, &s1, fs);
            ADD_PD(&ps0, &ps1, fp);
            ADD_PD(&pd0, &pd1, fd);
        }
        const int64_t tail = n_vocab - i;  /* fewer than W left */
        float pt[W];
        if (tail) {
            ADD_PD(&s0, &s1, FN(exp)(V_SUB(FN(load_tail)(x + i, tail, -INFINITY), vmq)));
            const V p = V_MUL(FN(exp)(V_SUB(FN(load_tail)(b + i, tail, -INFINITY), vmb)), vinv);
            V_STORE(pt, p);
            ADD_PD(&ps0, &ps1, p);
            ADD_PD(&pd0, &pd1, V_MUL(p, V_SUB(FN(load_tail)(x + i, tail, 0.0f), FN(load_tail)(b + i, tail, 0.0f))));
        }
        const double sq = HSUM_PD(s0, s1), psum = HSUM_PD(ps0, ps1), pd = HSUM_PD(pd0, pd1);
        const double lse_q = (double)mq + log(sq);
        nll_out[r] = lse_q - (double)x[next[r]];
        same_out[r] = FN(first_index_of)(x, n_vocab, mq) == b_argmax[r];
        const float c = (float)(pd / psum);
        const V vc = V_SET1(c), limit = V_SET1(0.5f), one = V_SET1(1.0f);
        VD in0 = VD_ZERO, in1 = VD_ZERO;
        const int64_t body = n_vocab - tail;
        i = 0;
        while (i + W <= body) {
            V fi = V_ZERO;
            for (int k = 0; k < SUB && i + W <= body; k++, i += W) {
                const V d = V_SUB(V_SUB(V_LOAD(x + i), V_LOAD(b + i)), vc);
                V g = FN(series)(d);
                const M far = ABS_GE(d, limit);
                if (MASK_ANY(far))  /* close caches: rarely taken */
                    g = BLEND(far, g, V_SUB(V_SUB(FN(exp)(d), one), d));
                fi = V_FMADD(V_LOAD(pbuf + i), g, fi);
            }
            ADD_PD(&in0, &in1, fi);
        }
        double inner = HSUM_PD(in0, in1);
        for (int64_t j = 0; j < tail; j++) {  /* the last few, in double */
            const float d = (x[body + j] - b[body + j]) - c;
            inner += (double)pt[j] * (expm1((double)d) - (double)d);
        }
        kld_out[r] = log1p(inner / psum);
        dp_out[r] = exp(-nll_out[r]) - exp(-b_nll[r]);
    }
}
