//! The float functions SIFT applies to every gradient sample, written so that
//! the loops auto-vectorize.
//!
//! - [`fast_atan2`]: OpenCV's `cv::fastAtan2` (shared with ORB in
//!   [`crate::features::cv`]); SIFT's orientation bins depend on it, so it
//!   replaces `atan2`.
//! - [`exp`]: a Cephes-style `expf` (range reduction by $\ln 2$ and a degree-6
//!   polynomial), within 2 ulp of the exact value on [-87, 88]; OpenCV's
//!   `cv::hal::exp32f` is also within about 1 ulp, so the two differ in the
//!   last bits only.
//!
//! Callers dispatch at run time to AVX2 copies of the code that inlines these
//! functions. Rust never fuses multiplies and adds, so both copies give
//! identical results.

pub use crate::features::cv::fast_atan2;

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

/// `ori[k] = fast_atan2(dy[k], dx[k])` (degrees), `mag[k] = sqrt(dx^2 + dy^2)`,
/// `w[k] = exp(w[k])`, over the common length.
///
/// Inlined into its callers, which are compiled for AVX2 when the CPU has it.
#[inline(always)]
pub fn polar_and_exp(dx: &[f32], dy: &[f32], ori: &mut [f32], mag: &mut [f32], w: &mut [f32]) {
    let n = dx.len();
    let (dy, ori, mag, w) = (&dy[..n], &mut ori[..n], &mut mag[..n], &mut w[..n]);
    for k in 0..n {
        let (x, y) = (dx[k], dy[k]);
        ori[k] = fast_atan2(y, x);
        mag[k] = (x * x + y * y).sqrt();
        w[k] = exp(w[k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
