//! OpenCV's small numeric helpers, written once for every extractor that
//! must agree with OpenCV to the bit (SIFT, ORB).
//!
//! | helper | OpenCV source | OpenCV function |
//! |---|---|---|
//! | [`reflect101`] | `modules/core/src/copy.cpp` | `cv::borderInterpolate(p, len, BORDER_REFLECT_101)` |
//! | [`fast_atan2`] | `modules/core/src/mathfuncs_core.simd.hpp` | `cv::fastAtan2` (the `atan2_p1`..`atan2_p7` polynomial of `fastAtan32f`) |
//! | [`cv_round`], [`round_magic`] | `modules/core/include/opencv2/core/fast_math.hpp` | `cvRound(float)` |
//! | [`gaussian_kernel`] | `modules/imgproc/src/smooth.dispatch.cpp` | `cv::getGaussianKernel(n, sigma, CV_32F)` (via `getGaussianKernelBitExact`) |
//! | [`gaussian_kernel_size`], [`gaussian_blur_kernel`] | `modules/imgproc/src/smooth.dispatch.cpp` | the kernel `createGaussianKernels` makes for `GaussianBlur(src, dst, Size(), sigma)` on a float image |
//!
//! All are plain scalar functions, `#[inline]`, so that the loops calling
//! them auto-vectorise (and, in the AVX2 copies of those loops, compile to
//! the same IEEE operations in the same order: the results do not depend on
//! the CPU).

/// `cv::borderInterpolate(p, len, BORDER_REFLECT_101)`: the index inside
/// `0..len` that pixel index `p` reads under the reflect-101 border
/// (`gfedcb|abcdefgh|gfedcba`: the edge pixel is not repeated), reflecting
/// as many times as needed; `len == 1` always reads pixel 0.
///
/// # Panics
/// Never for `len >= 1`; `len == 0` loops (no pixel to read).
#[inline]
pub fn reflect101(mut p: isize, len: usize) -> usize {
    let len = len as isize;
    if len == 1 {
        return 0;
    }
    while p < 0 || p >= len {
        if p < 0 {
            p = -p;
        } else {
            p = 2 * len - 2 - p;
        }
    }
    p as usize
}

#[allow(clippy::excessive_precision)]
const ATAN2_P1: f32 = 0.999_787_841_279_480_7_f32 * (180.0 / std::f64::consts::PI) as f32;
#[allow(clippy::excessive_precision)]
const ATAN2_P3: f32 = -0.325_808_397_464_097_5_f32 * (180.0 / std::f64::consts::PI) as f32;
#[allow(clippy::excessive_precision)]
const ATAN2_P5: f32 = 0.155_578_651_846_328_1_f32 * (180.0 / std::f64::consts::PI) as f32;
#[allow(clippy::excessive_precision)]
const ATAN2_P7: f32 = -0.044_326_555_547_921_28_f32 * (180.0 / std::f64::consts::PI) as f32;

/// `cv::fastAtan2(y, x)`: the angle of the vector `(x, y)` in degrees, in
/// [0, 360), accurate to about 0.01 degree.
///
/// A degree-7 odd polynomial in $c = \min(|x|, |y|) / (\max(|x|, |y|) + \varepsilon)$
/// ($\varepsilon$ = `DBL_EPSILON` rounded to `f32`), reflected into the
/// right octant. SIFT's orientation histograms and ORB's keypoint angles
/// depend on its exact values, so it replaces `f32::atan2` there.
#[inline(always)]
pub fn fast_atan2(y: f32, x: f32) -> f32 {
    let ax = x.abs();
    let ay = y.abs();
    let x_major = ax >= ay;
    let (num, den) = if x_major { (ay, ax) } else { (ax, ay) };
    let c = num / (den + f64::EPSILON as f32);
    let c2 = c * c;
    let p = (((ATAN2_P7 * c2 + ATAN2_P5) * c2 + ATAN2_P3) * c2 + ATAN2_P1) * c;
    let mut a = if x_major { p } else { 90.0 - p };
    if x < 0.0 {
        a = 180.0 - a;
    }
    if y < 0.0 {
        a = 360.0 - a;
    }
    a
}

/// $1.5 \cdot 2^{23}$: adding it to an `f32` of magnitude below $2^{22}$
/// rounds it to an integer (ties to even, in the default rounding mode),
/// held in the low mantissa bits (see [`round_magic`]).
pub const ROUND_MAGIC: f32 = 12_582_912.0;

/// `cvRound(x)` for `|x| < 2^22`: round half to even by adding
/// [`ROUND_MAGIC`] and reading the integer from the mantissa bits. Branch-free,
/// so that loops over it vectorise (the AVX2 kernels do the same with
/// `_mm256_add_ps` and an integer subtraction).
#[inline(always)]
pub fn round_magic(x: f32) -> i32 {
    (x + ROUND_MAGIC).to_bits() as i32 - ROUND_MAGIC.to_bits() as i32
}

/// `cvRound(float)`: the nearest integer, ties to even (what `cvRound`'s
/// SSE `cvtss2si` gives in the default rounding mode), for any finite `x`
/// in the `i32` range.
#[inline]
pub fn cv_round(x: f32) -> i32 {
    if x.abs() < 4_194_304.0 {
        // adding and removing 1.5 * 2^23 rounds to an integer, ties to even,
        // in the default rounding mode (no SSE4.1 `roundss` needed)
        ((x + ROUND_MAGIC) - ROUND_MAGIC) as i32
    } else {
        x.round_ties_even() as i32
    }
}

/// The kernel size `GaussianBlur(src, dst, Size(), sigma)` picks for a float
/// image: `cvRound(8 sigma + 1) | 1` (4 sigma on each side; OpenCV uses 3
/// sigma for 8-bit images).
pub fn gaussian_kernel_size(sigma: f64) -> usize {
    ((sigma * 4.0 * 2.0 + 1.0).round_ties_even() as i64 | 1).max(1) as usize
}

/// `cv::getGaussianKernel(n, sigma, CV_32F)` for `sigma > 0`: the `n` taps
/// $e^{-x^2 / 2\sigma^2}$, $x = i - \lfloor n/2 \rfloor$, normalised to sum 1.
///
/// As OpenCV's `getGaussianKernelBitExact`, the half-kernel values are
/// computed and summed in double precision (the centre counts 1), each tap is
/// the value times the reciprocal of the sum, and the result is rounded to
/// `f32`: the taps equal OpenCV's bit for bit (checked against
/// `cv2.getGaussianKernel` for sizes 5 to 37). OpenCV's fixed
/// small kernels for `sigma <= 0` are not provided.
///
/// # Panics
/// If `n` is even or zero.
pub fn gaussian_kernel(n: usize, sigma: f64) -> Vec<f32> {
    assert!(n % 2 == 1, "Gaussian kernel size must be odd, got {n}");
    let half = n / 2;
    let scale2x = -0.5 / (sigma * sigma);
    let values: Vec<f64> = (0..half)
        .map(|i| {
            let x = i as f64 - half as f64;
            (x * x * scale2x).exp()
        })
        .collect();
    let sum = 2.0 * values.iter().sum::<f64>() + 1.0;
    let mul = 1.0 / sum;
    let mut k = vec![0f32; n];
    for (i, v) in values.iter().enumerate() {
        let t = (v * mul) as f32;
        k[i] = t;
        k[n - 1 - i] = t;
    }
    k[half] = mul as f32;
    k
}

/// The kernel `GaussianBlur(src, dst, Size(), sigma)` applies to a float
/// image (SIFT's pyramid): [`gaussian_kernel`]`(`[`gaussian_kernel_size`]`(sigma), sigma)`.
pub fn gaussian_blur_kernel(sigma: f64) -> Vec<f32> {
    gaussian_kernel(gaussian_kernel_size(sigma), sigma)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect101_matches_opencv() {
        // cv2.borderInterpolate(p, 5, cv2.BORDER_REFLECT_101)
        let got: Vec<usize> = (-6..11).map(|p| reflect101(p, 5)).collect();
        assert_eq!(got, vec![2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2]);
        assert_eq!(reflect101(-1, 8), 1);
        assert_eq!(reflect101(-6, 8), 6);
        assert_eq!(reflect101(8, 8), 6);
        assert_eq!(reflect101(13, 8), 1);
        assert_eq!(reflect101(-3, 3), 1); // reflects twice
        assert_eq!(reflect101(5, 1), 0);
        assert_eq!(reflect101(-3, 1), 0);
    }

    #[test]
    fn fast_atan2_known_values() {
        // cv2.fastAtan2 on these points.
        assert_eq!(fast_atan2(0.0, 1.0), 0.0);
        assert!((fast_atan2(1.0, 1.0) - 45.0).abs() < 0.01);
        assert!((fast_atan2(1.0, 0.0) - 90.0).abs() < 1e-4);
        assert!((fast_atan2(0.0, -1.0) - 180.0).abs() < 1e-4);
        assert!((fast_atan2(-1.0, 0.0) - 270.0).abs() < 1e-4);
        assert_eq!(fast_atan2(0.0, 0.0), 0.0);
        for &(y, x, want) in &[(1.0f32, -1.0f32, 135.0f32), (-1.0, -1.0, 225.0), (-1.0, 1.0, 315.0)] {
            assert!((fast_atan2(y, x) - want).abs() < 0.02, "atan2({y}, {x})");
        }
        for i in 0..3600 {
            let t = (i as f64 / 10.0).to_radians();
            let (y, x) = (t.sin() as f32 * 37.0, t.cos() as f32 * 37.0);
            let a = fast_atan2(y, x) as f64;
            let mut d = (a - i as f64 / 10.0).abs();
            if d > 180.0 {
                d = 360.0 - d;
            }
            assert!(d < 0.012, "{i}: {a}");
            assert!((0.0..360.0).contains(&a));
        }
    }

    #[test]
    fn cv_round_is_half_to_even() {
        let got: Vec<i32> = [-2.5f32, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999, -3.7, 1e9].iter().map(|&x| cv_round(x)).collect();
        assert_eq!(got, vec![-2, -2, 0, 0, 2, 2, 2, -4, 1_000_000_000]);
        for x in [-2.5f32, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999, -3.7, 4_000_000.5, -4_000_000.5] {
            assert_eq!(round_magic(x), cv_round(x), "{x}");
        }
    }

    #[test]
    fn gaussian_kernel_matches_opencv_bits() {
        // cv2.getGaussianKernel(7, 2, cv2.CV_32F) (ORB's descriptor smoothing).
        let k = gaussian_kernel(7, 2.0);
        let want: [u32; 7] = [1032826801, 1040595070, 1044597305, 1046301408, 1044597305, 1040595070, 1032826801];
        assert_eq!(k.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
        // cv2.getGaussianKernel(15, 1.6, cv2.CV_32F) (SIFT's first layer), taps 0..=7.
        let k = gaussian_kernel(15, 1.6);
        let want: [u32; 8] = [932310600, 963056602, 989304184, 1010007418, 1026562012, 1038731921, 1045562879, 1048531668];
        assert_eq!(k[..8].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
        assert!(k[..7].iter().zip(k[8..].iter().rev()).all(|(a, b)| a == b));
    }

    #[test]
    fn kernel_sums_to_one_and_matches_opencv() {
        for &s in &[0.5, 1.0, 1.2489996, 1.2262735, 1.5450850, 1.9465878, 2.4525469, 3.0899693] {
            let k = gaussian_blur_kernel(s);
            let sum: f64 = k.iter().map(|&v| v as f64).sum();
            assert!((sum - 1.0).abs() <= 1e-6);
            assert_eq!(k.len() % 2, 1);
            for i in 0..k.len() / 2 {
                assert_eq!(k[i], k[k.len() - 1 - i]);
                assert!(k[i] < k[i + 1]);
            }
        }
        // cv2.getGaussianKernel(11, 1.2489996, cv2.CV_32F).ravel()[:6]
        let k = gaussian_blur_kernel(1.2489996);
        assert_eq!(k.len(), 11);
        #[allow(clippy::excessive_precision)]
        let cv = [1.0578566e-04f32, 1.8932123e-03, 1.7847523e-02, 8.8626318e-02, 2.3182142e-01, 3.1941149e-01];
        for (a, b) in k.iter().zip(cv.iter()) {
            assert!((a - b).abs() <= 1e-5 * b, "{a} vs {b}");
        }
        // Sizes OpenCV picks: round(8 sigma + 1) | 1.
        assert_eq!(gaussian_kernel_size(1.6), 15);
        assert_eq!(gaussian_kernel_size(3.0899693), 27);
        assert_eq!(gaussian_kernel_size(1.2262735), 11);
    }
}
