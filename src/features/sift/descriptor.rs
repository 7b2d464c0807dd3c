//! The SIFT descriptor (Lowe 2004, section 6; OpenCV `calcSIFTDescriptor`).
//!
//! Around a keypoint at $(x, y)$ with scale $s$ (half its size in the octave)
//! and orientation $\theta$, the gradients of the Gaussian layer within
//! radius $\mathrm{round}(3 s \sqrt{2} (d + 1) / 2)$ are rotated by
//! $-\theta$, expressed in histogram-cell units ($3 s$ pixels per cell), weighted
//! by $\exp(-(u^2 + v^2) / (d^2 / 2))$ and spread by trilinear interpolation
//! over $d \times d = 4 \times 4$ cells of $n = 8$ orientation bins. The
//! 128-vector is L2-normalised, clamped at 0.2 of its norm, renormalised,
//! scaled by 512 and saturated to 0..255 (rounded half to even).

use super::blur::Plane;
use super::mathf;

/// Descriptor width: 4 x 4 cells.
pub const DESCR_WIDTH: usize = 4;
/// Orientation bins per cell.
pub const DESCR_BINS: usize = 8;
/// Descriptor length.
pub const DESCR_LEN: usize = DESCR_WIDTH * DESCR_WIDTH * DESCR_BINS;
const DESCR_SCL_FCTR: f32 = 3.0;
const DESCR_MAG_THR: f32 = 0.2;
const INT_DESCR_FCTR: f32 = 512.0;
const HIST_LEN: usize = (DESCR_WIDTH + 2) * (DESCR_WIDTH + 2) * (DESCR_BINS + 2);

/// Per-sample work arrays, reused across keypoints and images.
#[derive(Debug, Default)]
pub struct Samples {
    pub dx: Vec<f32>,
    pub dy: Vec<f32>,
    pub w: Vec<f32>,
    pub ori: Vec<f32>,
    pub mag: Vec<f32>,
    pub rbin: Vec<f32>,
    pub cbin: Vec<f32>,
}

impl Samples {
    /// Make every array at least `n` long (keeps the allocation).
    pub fn ensure(&mut self, n: usize) {
        for v in [&mut self.dx, &mut self.dy, &mut self.w, &mut self.ori, &mut self.mag, &mut self.rbin, &mut self.cbin] {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        }
    }
}

/// Compute one descriptor into `out` (length [`DESCR_LEN`]).
///
/// `pt` is the keypoint in the pixel coordinates of `img`, `ori_deg` the
/// rotation in degrees (OpenCV passes `360 - keypoint.angle`), `scl` half the
/// keypoint size in `img` pixels.
pub fn compute_descriptor(img: &Plane, pt: (f32, f32), ori_deg: f32, scl: f32, s: &mut Samples, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(img: &Plane, pt: (f32, f32), ori_deg: f32, scl: f32, s: &mut Samples, out: &mut [f32]) {
        compute_descriptor_impl(img, pt, ori_deg, scl, s, out)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { avx2(img, pt, ori_deg, scl, s, out) };
            return;
        }
    }
    compute_descriptor_impl(img, pt, ori_deg, scl, s, out)
}

/// The columns `j` of sample row `i` that can fall inside the descriptor
/// window: `|j a + b| < 2.5` for both rotated coordinates, widened so that
/// float rounding cannot exclude a sample the exact test accepts (the test is
/// still made per sample).
#[inline(always)]
fn window_columns(i: i32, cos_t: f32, sin_t: f32, lo: i32, hi: i32) -> (i32, i32) {
    const HALF: f64 = DESCR_WIDTH as f64 / 2.0 + 0.5 + 1e-3;
    let (mut a_lo, mut a_hi) = (lo as f64, hi as f64);
    // r_rot = j sin_t + i cos_t, c_rot = j cos_t - i sin_t.
    for (a, b) in [(sin_t as f64, i as f64 * cos_t as f64), (cos_t as f64, -(i as f64) * sin_t as f64)] {
        if a == 0.0 {
            if b.abs() >= HALF {
                return (0, -1);
            }
            continue;
        }
        let (x, y) = ((-HALF - b) / a, (HALF - b) / a);
        a_lo = a_lo.max(x.min(y).floor() - 1.0);
        a_hi = a_hi.min(x.max(y).ceil() + 1.0);
    }
    if a_lo > a_hi {
        return (0, -1);
    }
    (a_lo as i32, a_hi as i32)
}

#[inline(always)]
fn compute_descriptor_impl(img: &Plane, pt: (f32, f32), ori_deg: f32, scl: f32, s: &mut Samples, out: &mut [f32]) {
    let d = DESCR_WIDTH as i32;
    let n = DESCR_BINS as i32;
    let (px, py) = (pt.0.round_ties_even() as i32, pt.1.round_ties_even() as i32);
    let ang = ori_deg * (std::f64::consts::PI / 180.0) as f32;
    let (mut cos_t, mut sin_t) = (ang.cos(), ang.sin());
    let bins_per_deg = n as f32 / 360.0;
    let exp_scale = -1.0 / (d as f32 * d as f32 * 0.5);
    let hist_width = DESCR_SCL_FCTR * scl;
    let rows = img.h as i32;
    let cols = img.w as i32;
    let mut radius = (hist_width * std::f32::consts::SQRT_2 * (d + 1) as f32 * 0.5).round_ties_even() as i64;
    let diag = ((img.w as f64) * (img.w as f64) + (img.h as f64) * (img.h as f64)).sqrt() as i64;
    radius = radius.min(diag).max(0);
    let radius = radius as i32;
    cos_t /= hist_width;
    sin_t /= hist_width;

    let side = (2 * radius + 1) as usize;
    s.ensure(side * side);
    let half_d = (d / 2) as f32;
    let df = d as f32;
    // Rows and columns outside (0, rows - 1) x (0, cols - 1) are skipped by
    // OpenCV's per-sample test; restricting the loops gives the same samples.
    let i_lo = (-radius).max(1 - py);
    let i_hi = radius.min(rows - 2 - py);
    let j_lo = (-radius).max(1 - px);
    let j_hi = radius.min(cols - 2 - px);
    let mut k = 0usize;
    {
        let (sdx, sdy, sw, srb, scb) = (&mut s.dx, &mut s.dy, &mut s.w, &mut s.rbin, &mut s.cbin);
        let w = img.w;
        for i in i_lo..=i_hi {
            let r = (py + i) as usize;
            let row = &img.data[r * w..(r + 1) * w];
            let up = &img.data[(r - 1) * w..r * w];
            let down = &img.data[(r + 1) * w..(r + 2) * w];
            let fi = i as f32;
            let (a, b) = window_columns(i, cos_t, sin_t, j_lo, j_hi);
            // Along a row the rotated coordinates are monotonic in j (float
            // products and sums by constants are monotonic), so the accepted
            // samples form an interval: trim [a, b] to it, then fill the
            // arrays without a per-sample branch.
            let inside = |j: i32| {
                let fj = j as f32;
                let c_rot = fj * cos_t - fi * sin_t;
                let r_rot = fj * sin_t + fi * cos_t;
                let rbin = r_rot + half_d - 0.5;
                let cbin = c_rot + half_d - 0.5;
                rbin > -1.0 && rbin < df && cbin > -1.0 && cbin < df
            };
            let (mut a, mut b) = (a, b);
            while a <= b && !inside(a) {
                a += 1;
            }
            while b >= a && !inside(b) {
                b -= 1;
            }
            if a > b {
                continue;
            }
            let n = (b - a + 1) as usize;
            let c0 = (px + a) as usize;
            let fi_sin = fi * sin_t;
            let fi_cos = fi * cos_t;
            let (dx, dy) = (&mut sdx[k..k + n], &mut sdy[k..k + n]);
            let (rb, cb, ww) = (&mut srb[k..k + n], &mut scb[k..k + n], &mut sw[k..k + n]);
            let (left, right) = (&row[c0 - 1..c0 - 1 + n], &row[c0 + 1..c0 + 1 + n]);
            let (u, dn) = (&up[c0..c0 + n], &down[c0..c0 + n]);
            for t in 0..n {
                let fj = (a + t as i32) as f32;
                let c_rot = fj * cos_t - fi_sin;
                let r_rot = fj * sin_t + fi_cos;
                rb[t] = r_rot + half_d - 0.5;
                cb[t] = c_rot + half_d - 0.5;
                ww[t] = (c_rot * c_rot + r_rot * r_rot) * exp_scale;
                dx[t] = right[t] - left[t];
                dy[t] = u[t] - dn[t];
            }
            k += n;
        }
    }
    let len = k;
    mathf::polar_and_exp(&s.dx[..len], &s.dy[..len], &mut s.ori[..len], &mut s.mag[..len], &mut s.w[..len]);

    let mut hist = [0f32; HIST_LEN];
    let nn = (n + 2) as usize;
    let dd = (d + 2) as usize;
    for k in 0..len {
        let mut rbin = s.rbin[k];
        let mut cbin = s.cbin[k];
        let mut obin = (s.ori[k] - ori_deg) * bins_per_deg;
        let mag = s.mag[k] * s.w[k];
        let r0 = rbin.floor();
        let c0 = cbin.floor();
        let o0f = obin.floor();
        rbin -= r0;
        cbin -= c0;
        obin -= o0f;
        let mut o0 = o0f as i32;
        if o0 < 0 {
            o0 += n;
        }
        if o0 >= n {
            o0 -= n;
        }
        let v_r1 = mag * rbin;
        let v_r0 = mag - v_r1;
        let v_rc11 = v_r1 * cbin;
        let v_rc10 = v_r1 - v_rc11;
        let v_rc01 = v_r0 * cbin;
        let v_rc00 = v_r0 - v_rc01;
        let v_rco111 = v_rc11 * obin;
        let v_rco110 = v_rc11 - v_rco111;
        let v_rco101 = v_rc10 * obin;
        let v_rco100 = v_rc10 - v_rco101;
        let v_rco011 = v_rc01 * obin;
        let v_rco010 = v_rc01 - v_rco011;
        let v_rco001 = v_rc00 * obin;
        let v_rco000 = v_rc00 - v_rco001;
        let idx = (((r0 as i32 + 1) as usize * dd + (c0 as i32 + 1) as usize) * nn) + o0 as usize;
        // r0, c0 in [-1, d - 1] and o0 in [0, n - 1] (rbin, cbin in (-1, d)),
        // so idx + (d + 3)(n + 2) + 1 < (d + 2)^2 (n + 2) = HIST_LEN.
        assert!(idx + (dd + 1) * nn + 1 < HIST_LEN);
        // SAFETY: bounds asserted just above.
        unsafe {
            *hist.get_unchecked_mut(idx) += v_rco000;
            *hist.get_unchecked_mut(idx + 1) += v_rco001;
            *hist.get_unchecked_mut(idx + nn) += v_rco010;
            *hist.get_unchecked_mut(idx + nn + 1) += v_rco011;
            *hist.get_unchecked_mut(idx + dd * nn) += v_rco100;
            *hist.get_unchecked_mut(idx + dd * nn + 1) += v_rco101;
            *hist.get_unchecked_mut(idx + (dd + 1) * nn) += v_rco110;
            *hist.get_unchecked_mut(idx + (dd + 1) * nn + 1) += v_rco111;
        }
    }

    // The orientation histograms are circular: fold bins n and n + 1.
    let out = &mut out[..DESCR_LEN];
    let nb = DESCR_BINS;
    for i in 0..DESCR_WIDTH {
        for j in 0..DESCR_WIDTH {
            let idx = ((i + 1) * dd + (j + 1)) * nn;
            hist[idx] += hist[idx + nb];
            hist[idx + 1] += hist[idx + nb + 1];
            out[(i * DESCR_WIDTH + j) * nb..(i * DESCR_WIDTH + j + 1) * nb].copy_from_slice(&hist[idx..idx + nb]);
        }
    }
    let mut nrm2 = 0f32;
    for &v in out.iter() {
        nrm2 += v * v;
    }
    let thr = nrm2.sqrt() * DESCR_MAG_THR;
    nrm2 = 0.0;
    for v in out.iter_mut() {
        let c = v.min(thr);
        *v = c;
        nrm2 += c * c;
    }
    let scale = INT_DESCR_FCTR / nrm2.sqrt().max(f32::EPSILON);
    for v in out.iter_mut() {
        *v = (*v * scale).round_ties_even().clamp(0.0, 255.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp_plane(w: usize, h: usize) -> Plane {
        let data = (0..w * h).map(|i| ((i % w) as f32 * 0.8 + (i / w) as f32 * 0.3).sin() * 40.0 + 100.0).collect();
        Plane { w, h, data }
    }

    #[test]
    fn values_are_whole_numbers_up_to_255_with_unit_shape() {
        let img = ramp_plane(64, 64);
        let mut s = Samples::default();
        let mut out = vec![0f32; DESCR_LEN];
        compute_descriptor(&img, (31.3, 30.7), 20.0, 3.2, &mut s, &mut out);
        assert!(out.iter().all(|&v| (0.0..=255.0).contains(&v) && v.fract() == 0.0));
        // After the 0.2 clamp and renormalisation the norm is about 512.
        let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 512.0).abs() < 8.0, "{norm}");
        assert!(out.iter().any(|&v| v > 0.0));
    }

    #[test]
    fn window_columns_keep_every_accepted_sample() {
        for t in 0..720 {
            for &hw in &[1.7f32, 4.8, 9.6, 23.0] {
                let ang = (t as f32 * 0.5 + 0.013) * (std::f64::consts::PI / 180.0) as f32;
                let (cos_t, sin_t) = (ang.cos() / hw, ang.sin() / hw);
                let radius = (hw * std::f32::consts::SQRT_2 * 2.5).round() as i32;
                for i in -radius..=radius {
                    let (a, b) = window_columns(i, cos_t, sin_t, -radius, radius);
                    for j in -radius..=radius {
                        let c_rot = j as f32 * cos_t - i as f32 * sin_t;
                        let r_rot = j as f32 * sin_t + i as f32 * cos_t;
                        let (rbin, cbin) = (r_rot + 2.0 - 0.5, c_rot + 2.0 - 0.5);
                        if rbin > -1.0 && rbin < 4.0 && cbin > -1.0 && cbin < 4.0 {
                            assert!(a <= j && j <= b, "t={t} hw={hw} i={i} j={j} ({a}, {b})");
                        }
                    }
                }
            }
        }
        // Exactly axis-aligned: whole rows in or out.
        assert_eq!(window_columns(0, 0.25, 0.0, -30, 30), (-12, 12));
        assert_eq!(window_columns(20, 0.25, 0.0, -30, 30), (0, -1));
    }

    #[test]
    fn outside_the_image_gives_zeros() {
        let img = ramp_plane(16, 16);
        let mut s = Samples::default();
        let mut out = vec![1f32; DESCR_LEN];
        compute_descriptor(&img, (500.0, 500.0), 0.0, 2.0, &mut s, &mut out);
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn rotating_the_image_by_90_degrees_permutes_cells() {
        // A pattern and its 90-degree rotation, described at the matching
        // orientation, give the same descriptor (the sample grid maps onto
        // itself exactly under a 90-degree turn).
        let n = 65;
        let f = |x: f32, y: f32| ((x * 0.37).sin() + (y * 0.21 + x * 0.05).cos()) * 50.0;
        let a = Plane { w: n, h: n, data: (0..n * n).map(|i| f((i % n) as f32, (i / n) as f32)).collect() };
        // b(x, y) = a(y, n - 1 - x): a rotated by 90 degrees.
        let b = Plane { w: n, h: n, data: (0..n * n).map(|i| f((i / n) as f32, (n - 1 - i % n) as f32)).collect() };
        let mut s = Samples::default();
        let (mut da, mut db) = (vec![0f32; DESCR_LEN], vec![0f32; DESCR_LEN]);
        let c = (n / 2) as f32;
        compute_descriptor(&a, (c, c), 0.0, 4.0, &mut s, &mut da);
        // b's gradients are a's turned by -90 degrees in OpenCV's y-up angle
        // convention, so b is described at rotation 270 (keypoint angle 90).
        compute_descriptor(&b, (c, c), 270.0, 4.0, &mut s, &mut db);
        let dist = da.iter().zip(&db).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
        assert!(dist < 0.05 * 512.0, "{dist}");
    }
}
