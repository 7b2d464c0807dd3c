/* The fp32 multiply-add peak of one core: 12 independent chains of 8-wide
 * AVX2 FMAs, all in registers (12 chains cover the FMA latency on two
 * pipes). Prints multiply-adds per second; run two copies at once to see
 * whether two threads share a core.
 *
 *   cc -O3 -mavx2 -mfma benches/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 *   (/tmp/fma_peak & /tmp/fma_peak; wait)
 *
 * Used by benches/py/floor_cnn.py's docstring and BENCHMARKS.md (the CNN's
 * floor); not part of the package. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 12

int main(void) {
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
    __m256 v[CHAINS];
    for (int k = 0; k < CHAINS; k++) v[k] = _mm256_set1_ps((float)(k + 1));
    const long iters = 300000000L;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < iters; i++) {
        /* unrolled by the compiler at -O3; the chains stay in ymm registers */
        for (int k = 0; k < CHAINS; k++) v[k] = _mm256_fmadd_ps(v[k], m, c);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    __m256 acc = v[0];
    for (int k = 1; k < CHAINS; k++) acc = _mm256_add_ps(acc, v[k]);
    float out[8];
    _mm256_storeu_ps(out, acc);
    printf("fp32 FMA peak, one thread: %.1f G multiply-adds/s (%.2f FMA instructions/ns; checksum %g)\n",
           (double)iters * CHAINS * 8 / s / 1e9, (double)iters * CHAINS / s / 1e9, (double)out[0]);
    return 0;
}
