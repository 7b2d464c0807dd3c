//! The float functions SIFT applies to every gradient sample, written so that
//! the loops auto-vectorize.
//!
//! - [`fast_atan2`]: OpenCV's `cv::fastAtan2` (`core/src/mathfuncs_core.simd.hpp`),
//!   a degree-7 odd polynomial in $c = \min(|x|,|y|) / \max(|x|,|y|)$, in degrees
//!   in [0, 360), accurate to about 0.01 degrees. SIFT's orientation bins
//!   depend on it, so we use the same polynomial rather than `atan2`.
//! - [`exp`]: a Cephes-style `expf` (range reduction by $\ln 2$ and a degree-6
//!   polynomial), within 2 ulp of the exact value on [-87, 88]; OpenCV's
//!   `cv::hal::exp32f` is also within about 1 ulp, so the two differ in the
//!   last bits only.
//!
//! The slice functions dispatch at run time to an AVX2 copy of the same code
//! on x86-64. Rust never fuses multiplies and adds, so both copies give
//! identical results.

#[allow(clippy::excessive_precision)]
const ATAN2_P1: f32 = 0.999_787_841_279_480_7_f32 * (180.0 / std::f64::consts::PI) as f32;
#[allow(clippy::excessive_precision)]
const ATAN2_P3: f32 = -0.325_808_397_464_097_5_f32 * (180.0 / std::f64::consts::PI) as f32;
#[allow(clippy::excessive_precision)]
const ATAN2_P5: f32 = 0.155_578_651_846_328_1_f32 * (180.0 / std::f64::consts::PI) as f32;
#[allow(clippy::excessive_precision)]
const ATAN2_P7: f32 = -0.044_326_555_547_921_28_f32 * (180.0 / std::f64::consts::PI) as f32;

/// OpenCV's `fastAtan2(y, x)`: the angle of `(x, y)` in degrees, in [0, 360).
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

/// $e^x$ for `f32`, branch-free (see the module docs for the accuracy).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * C1 - n * C2;
    let r2 = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r
        + 0.5)
        * r2
        + r
        + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

macro_rules! dispatch {
    ($generic:ident, $avx2:ident, ($($arg:ident : $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2($($arg: $ty),*) {
            $generic($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                unsafe { $avx2($($arg),*) };
                return;
            }
        }
        $generic($($arg),*)
    };
}

/// `ori[k] = fast_atan2(dy[k], dx[k])` (degrees), `mag[k] = sqrt(dx^2 + dy^2)`,
/// `w[k] = exp(w[k])`, over the common length.
pub fn polar_and_exp(dx: &[f32], dy: &[f32], ori: &mut [f32], mag: &mut [f32], w: &mut [f32]) {
    #[inline(always)]
    fn generic(dx: &[f32], dy: &[f32], ori: &mut [f32], mag: &mut [f32], w: &mut [f32]) {
        let n = dx.len();
        let (dy, ori, mag, w) = (&dy[..n], &mut ori[..n], &mut mag[..n], &mut w[..n]);
        for k in 0..n {
            let (x, y) = (dx[k], dy[k]);
            ori[k] = fast_atan2(y, x);
            mag[k] = (x * x + y * y).sqrt();
            w[k] = exp(w[k]);
        }
    }
    dispatch!(generic, avx2, (dx: &[f32], dy: &[f32], ori: &mut [f32], mag: &mut [f32], w: &mut [f32]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_atan2_known_values() {
        // cv2.fastAtan2 on these points.
        assert_eq!(fast_atan2(0.0, 1.0), 0.0);
        assert!((fast_atan2(1.0, 1.0) - 45.0).abs() < 0.01);
        assert!((fast_atan2(1.0, 0.0) - 90.0).abs() < 1e-4);
        assert!((fast_atan2(0.0, -1.0) - 180.0).abs() < 1e-4);
        assert!((fast_atan2(-1.0, 0.0) - 270.0).abs() < 1e-4);
        assert_eq!(fast_atan2(0.0, 0.0), 0.0);
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
    fn exp_is_accurate() {
        let mut x = -80.0f32;
        while x < 5.0 {
            let e = exp(x) as f64;
            let want = (x as f64).exp();
            assert!(((e - want) / want).abs() < 3e-7, "{x}: {e} vs {want}");
            x += 0.0137;
        }
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn slices_match_scalars() {
        let dx: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin() * 10.0).collect();
        let dy: Vec<f32> = (0..37).map(|i| (i as f32 * 1.3).cos() * 10.0).collect();
        let mut w: Vec<f32> = (0..37).map(|i| -(i as f32) * 0.1).collect();
        let (mut o, mut m) = (vec![0.0; 37], vec![0.0; 37]);
        polar_and_exp(&dx, &dy, &mut o, &mut m, &mut w);
        for k in 0..37 {
            assert_eq!(o[k], fast_atan2(dy[k], dx[k]));
            assert_eq!(m[k], (dx[k] * dx[k] + dy[k] * dy[k]).sqrt());
            assert_eq!(w[k], exp(-(k as f32) * 0.1));
        }
    }
}
