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
            for j in j_lo..=j_hi {
                let fj = j as f32;
                let c_rot = fj * cos_t - fi * sin_t;
                let r_rot = fj * sin_t + fi * cos_t;
                let rbin = r_rot + half_d - 0.5;
                let cbin = c_rot + half_d - 0.5;
                if rbin > -1.0 && rbin < df && cbin > -1.0 && cbin < df {
                    let c = (px + j) as usize;
                    sdx[k] = row[c + 1] - row[c - 1];
                    sdy[k] = up[c] - down[c];
                    srb[k] = rbin;
                    scb[k] = cbin;
                    sw[k] = (c_rot * c_rot + r_rot * r_rot) * exp_scale;
                    k += 1;
                }
            }
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
        let h = &mut hist[idx..idx + (dd + 1) * nn + 2];
        h[0] += v_rco000;
        h[1] += v_rco001;
        h[nn] += v_rco010;
        h[nn + 1] += v_rco011;
        h[dd * nn] += v_rco100;
        h[dd * nn + 1] += v_rco101;
        h[(dd + 1) * nn] += v_rco110;
        h[(dd + 1) * nn + 1] += v_rco111;
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
        assert!(out.iter().all(|&v| v >= 0.0 && v <= 255.0 && v.fract() == 0.0));
        // After the 0.2 clamp and renormalisation the norm is about 512.
        let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 512.0).abs() < 8.0, "{norm}");
        assert!(out.iter().any(|&v| v > 0.0));
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
