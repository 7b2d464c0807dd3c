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
    radius = radius.min(diag);
    if radius < 0 {
        // OpenCV's sample loops (-radius..=radius) are empty: a zero descriptor.
        out[..DESCR_LEN].fill(0.0);
        return;
    }
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
    for k in 0..len {
        let rbin = s.rbin[k];
        let cbin = s.cbin[k];
        let obin = (s.ori[k] - ori_deg) * bins_per_deg;
        let mag = s.mag[k] * s.w[k];
        let r0 = rbin.floor();
        let c0 = cbin.floor();
        accumulate(&mut hist, hist_index(r0, c0), rbin - r0, cbin - c0, obin, mag);
    }
    finish(&mut hist, out);
}

/// Index in the padded histogram of spatial cell (r0, c0), orientation 0.
#[inline(always)]
fn hist_index(r0: f32, c0: f32) -> usize {
    let nn = DESCR_BINS + 2;
    let dd = DESCR_WIDTH + 2;
    ((r0 as i32 + 1) as usize * dd + (c0 as i32 + 1) as usize) * nn
}

/// OpenCV's orientation bin of a sample: `floor(obin)` wrapped once into
/// `[0, n)` (it stays -1 or n for rotations outside [0, 360]), and the
/// fractional part.
#[inline(always)]
fn orientation_bin(obin: f32) -> (i32, f32) {
    let n = DESCR_BINS as i32;
    let o0f = obin.floor();
    let mut o0 = o0f as i32;
    if o0 < 0 {
        o0 += n;
    }
    if o0 >= n {
        o0 -= n;
    }
    (o0, obin - o0f)
}

/// Trilinear accumulation of one sample (OpenCV's order of operations):
/// `idx` from [`hist_index`], `rbin`, `cbin` the fractional parts of the
/// spatial bin coordinates, `obin` the orientation bin (not reduced).
#[inline(always)]
fn accumulate(hist: &mut [f32; HIST_LEN], idx: usize, rbin: f32, cbin: f32, obin: f32, mag: f32) {
    let n = DESCR_BINS as i32;
    let nn = DESCR_BINS + 2;
    let dd = DESCR_WIDTH + 2;
    let (o0, obin) = orientation_bin(obin);
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
    // o0 is in [0, n - 1] for rotations in [0, 360]; a keypoint angle below
    // 0 (cv2.KeyPoint's default -1: rotation 361) gives o0 = -1 for samples
    // at angles below 1 degree, and OpenCV then adds their first part to
    // the entry before the cell: the previous cell's spare bin n + 1 (folded
    // into its bin 1) or, for the first entry, outside the histogram
    // (dropped here).
    let base = idx as isize + o0 as isize;
    if base < 0 || o0 >= n {
        if base >= 0 && (base as usize) < HIST_LEN {
            hist[base as usize] += v_rco000;
        }
        let rest = [
            (1, v_rco001),
            (nn, v_rco010),
            (nn + 1, v_rco011),
            (dd * nn, v_rco100),
            (dd * nn + 1, v_rco101),
            ((dd + 1) * nn, v_rco110),
            ((dd + 1) * nn + 1, v_rco111),
        ];
        for (off, v) in rest {
            let i = base + off as isize;
            if i >= 0 && (i as usize) < HIST_LEN {
                hist[i as usize] += v;
            }
        }
        return;
    }
    let idx = base as usize;
    // r0, c0 in [-1, d - 1] and o0 in [-1, n - 1] (rbin, cbin in (-1, d)),
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

/// Fold the circular orientation bins, normalise, clamp at 0.2, scale by
/// 512 and saturate (OpenCV's `calcSIFTDescriptor` epilogue).
#[inline(always)]
fn finish(hist: &mut [f32; HIST_LEN], out: &mut [f32]) {
    let nn = DESCR_BINS + 2;
    let dd = DESCR_WIDTH + 2;
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


// ---------------------------------------------------------------------------
// Many keypoints of one size and orientation on one layer (a dense grid).
//
// OpenCV computes the gradient, its angle and the Gaussian weight again for
// every sample of every keypoint, and spreads each sample over 8 histogram
// entries in memory. Here the layer's gradients are computed once per pixel
// ([`Gradients`]) and split once between the two nearest orientation bins
// for the group's rotation ([`OrientPlanes`], one 8-float vector per pixel,
// 8 pixels at a time in AVX2 with the same float operations), both only over
// the [`Region`] the group's windows read ([`QuadWindow::region`]: a grid on
// part of the image leaves the rest untouched);
// the window's samples are listed once ([`QuadWindow`]), grouped by the
// 2 x 2 block of spatial cells they fall between, each with its four
// spatial weights (Gaussian times bilinear). A descriptor is then, per
// block, four 8-float sums of weight times pixel vector held in registers.
// The sums run in another order and the weights are multiplied in another
// order than OpenCV's, so descriptors equal `compute_descriptor`'s up to
// float rounding (a value can move by one after the final rounding).

/// A rectangle of pixels of a layer: columns `x0..x1`, rows `y0..y1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Region {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl Region {
    /// The pixels OpenCV samples on a `w` x `h` layer: rows 1..h-2 and
    /// columns 1..w-2 (empty below 3 x 3).
    pub fn sampled(w: usize, h: usize) -> Region {
        if w < 3 || h < 3 {
            return Region::default();
        }
        Region { x0: 1, y0: 1, x1: w - 1, y1: h - 1 }
    }
    /// Width (0 when empty).
    pub fn width(&self) -> usize {
        self.x1.saturating_sub(self.x0)
    }
    /// Height (0 when empty).
    pub fn height(&self) -> usize {
        self.y1.saturating_sub(self.y0)
    }
    /// Whether `other` lies inside (an empty `other` always does).
    pub fn contains(&self, other: &Region) -> bool {
        other.width() == 0
            || other.height() == 0
            || (self.x0 <= other.x0 && other.x1 <= self.x1 && self.y0 <= other.y0 && other.y1 <= self.y1)
    }
}

/// Orientation (degrees, [`mathf::fast_atan2`]) and magnitude of the gradient
/// (`dx = I(r, c+1) - I(r, c-1)`, `dy = I(r-1, c) - I(r+1, c)`) at every pixel
/// of a region of a plane, stored row-major over the region.
#[derive(Debug, Default)]
pub struct Gradients {
    /// Size of the plane.
    pub w: usize,
    pub h: usize,
    /// The pixels held (inside [`Region::sampled`]).
    pub region: Region,
    pub ori: Vec<f32>,
    pub mag: Vec<f32>,
}

impl Gradients {
    /// Compute the gradients of every pixel of `img` that OpenCV samples.
    #[cfg(test)]
    pub fn compute(&mut self, img: &Plane) {
        self.compute_region(img, Region::sampled(img.w, img.h));
    }

    /// Compute the gradients of the pixels of `region` (clipped to
    /// [`Region::sampled`]); each value is the one [`Self::compute`] gives.
    pub fn compute_region(&mut self, img: &Plane, region: Region) {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(g: &mut Gradients, img: &Plane, region: Region) {
            gradients_impl(g, img, region)
        }
        #[cfg(target_arch = "x86_64")]
        {
            if crate::features::use_avx2() {
                // SAFETY: the CPU supports AVX2 (checked just above).
                unsafe { avx2(self, img, region) };
                return;
            }
        }
        gradients_impl(self, img, region)
    }
}

#[inline(always)]
fn gradients_impl(g: &mut Gradients, img: &Plane, region: Region) {
    let (w, h) = (img.w, img.h);
    let all = Region::sampled(w, h);
    let mut reg = Region {
        x0: region.x0.max(all.x0),
        y0: region.y0.max(all.y0),
        x1: region.x1.min(all.x1),
        y1: region.y1.min(all.y1),
    };
    if reg.width() == 0 || reg.height() == 0 {
        reg = Region::default();
    }
    g.w = w;
    g.h = h;
    g.region = reg;
    let rw = reg.width();
    g.ori.clear();
    g.ori.resize(rw * reg.height(), 0.0);
    g.mag.clear();
    g.mag.resize(rw * reg.height(), 0.0);
    for r in reg.y0..reg.y1 {
        let up = &img.data[(r - 1) * w..r * w];
        let row = &img.data[r * w..(r + 1) * w];
        let down = &img.data[(r + 1) * w..(r + 2) * w];
        let o = (r - reg.y0) * rw;
        let (ori, mag) = (&mut g.ori[o..o + rw], &mut g.mag[o..o + rw]);
        let (left, right) = (&row[reg.x0 - 1..reg.x1 - 1], &row[reg.x0 + 1..reg.x1 + 1]);
        let (u, d) = (&up[reg.x0..reg.x1], &down[reg.x0..reg.x1]);
        for c in 0..rw {
            let (x, y) = (right[c] - left[c], u[c] - d[c]);
            ori[c] = mathf::fast_atan2(y, x);
            mag[c] = (x * x + y * y).sqrt();
        }
    }
}

type Lane = [f32; DESCR_BINS];

/// The gradient magnitude of every pixel of a [`Gradients`] region split
/// between its two nearest orientation bins for one rotation: one 8-float
/// vector per pixel, row-major over the region.
#[derive(Debug, Default)]
pub struct OrientPlanes {
    /// Size of the plane.
    w: usize,
    h: usize,
    region: Region,
    data: Vec<Lane>,
    /// OpenCV's bin -1 (rotations in (360, 405)): the part of a pixel's
    /// magnitude that goes to the entry before its cell (see `accumulate`);
    /// empty when no pixel has one.
    spill: Vec<f32>,
    /// Per region row, `width + 1` running counts of the non-zero `spill`
    /// values, to skip the (usual) runs without one.
    spill_count: Vec<u32>,
}

impl OrientPlanes {
    /// Split `g` for rotation `ori_deg` (degrees, in [0, 405)).
    ///
    /// # Panics
    /// If `ori_deg` is outside [0, 405).
    pub fn compute(&mut self, g: &Gradients, ori_deg: f32) {
        assert!((0.0..405.0).contains(&ori_deg), "rotation {ori_deg} outside [0, 405)");
        orient_impl(self, g, ori_deg)
    }
}

/// The lane of one pixel (orientation `o` in degrees, magnitude `m`) for
/// rotation `ori_deg`, and its part for OpenCV's bin -1 (0 when none).
#[inline(always)]
fn orient_lane(o: f32, m: f32, ori_deg: f32) -> (Lane, f32) {
    let bins_per_deg = DESCR_BINS as f32 / 360.0;
    let (o0, obin) = orientation_bin((o - ori_deg) * bins_per_deg);
    let v1 = m * obin;
    let mut lane = [0f32; DESCR_BINS];
    let mut spill = 0.0;
    if o0 < 0 {
        spill = m - v1;
    } else {
        lane[o0 as usize & (DESCR_BINS - 1)] = m - v1;
    }
    lane[(o0 + 1) as usize % DESCR_BINS] = v1;
    (lane, spill)
}

/// Lanes `i..` of the planes, 8 pixels at a time, in AVX2: the operations
/// of [`orient_lane`] on 8 pixels, the lanes built by comparing each bin
/// with the pixels' two bins and transposed. Returns the number of pixels
/// done (a multiple of 8); `data` must have capacity for `ori.len()`.
///
/// # Safety
/// AVX2 must be available; `data.capacity() >= ori.len() == mag.len()`,
/// `spill` is empty or as long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn orient_lanes_avx2(ori: &[f32], mag: &[f32], ori_deg: f32, data: &mut Vec<Lane>, spill: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let len = ori.len().min(mag.len());
    debug_assert!(data.capacity() >= len && data.is_empty());
    let out = data.as_mut_ptr() as *mut f32;
    let (oriv, bpd) = (_mm256_set1_ps(ori_deg), _mm256_set1_ps(DESCR_BINS as f32 / 360.0));
    let (eight, seven, zero) = (_mm256_set1_epi32(DESCR_BINS as i32), _mm256_set1_epi32(DESCR_BINS as i32 - 1), _mm256_setzero_si256());
    let mut i = 0;
    while i + 8 <= len {
        // SAFETY: i + 8 <= len: 8 values of ori, mag (and spill when not
        // empty) and 8 lanes of data's capacity.
        let o = _mm256_loadu_ps(ori.as_ptr().add(i));
        let m = _mm256_loadu_ps(mag.as_ptr().add(i));
        let obin = _mm256_mul_ps(_mm256_sub_ps(o, oriv), bpd);
        let o0f = _mm256_floor_ps(obin);
        let frac = _mm256_sub_ps(obin, o0f);
        let mut o0 = _mm256_cvttps_epi32(o0f);
        o0 = _mm256_add_epi32(o0, _mm256_and_si256(_mm256_cmpgt_epi32(zero, o0), eight));
        o0 = _mm256_sub_epi32(o0, _mm256_and_si256(_mm256_cmpgt_epi32(o0, seven), eight));
        let v1 = _mm256_mul_ps(m, frac);
        let v0 = _mm256_sub_ps(m, v1);
        let o1 = _mm256_and_si256(_mm256_add_epi32(o0, _mm256_set1_epi32(1)), seven);
        if !spill.is_empty() {
            let neg = _mm256_castsi256_ps(_mm256_cmpgt_epi32(zero, o0));
            _mm256_storeu_ps(spill.as_mut_ptr().add(i), _mm256_and_ps(neg, v0));
        }
        // l[b] = bin b of the 8 pixels
        let mut l = [_mm256_setzero_ps(); DESCR_BINS];
        for (b, lb) in l.iter_mut().enumerate() {
            let bv = _mm256_set1_epi32(b as i32);
            let e0 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(o0, bv));
            let e1 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(o1, bv));
            *lb = _mm256_or_ps(_mm256_and_ps(e0, v0), _mm256_and_ps(e1, v1));
        }
        // transpose: row k = the lane of pixel k
        let t0 = _mm256_unpacklo_ps(l[0], l[1]);
        let t1 = _mm256_unpackhi_ps(l[0], l[1]);
        let t2 = _mm256_unpacklo_ps(l[2], l[3]);
        let t3 = _mm256_unpackhi_ps(l[2], l[3]);
        let t4 = _mm256_unpacklo_ps(l[4], l[5]);
        let t5 = _mm256_unpackhi_ps(l[4], l[5]);
        let t6 = _mm256_unpacklo_ps(l[6], l[7]);
        let t7 = _mm256_unpackhi_ps(l[6], l[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let rows = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (k, r) in rows.iter().enumerate() {
            _mm256_storeu_ps(out.add((i + k) * DESCR_BINS), *r);
        }
        i += 8;
    }
    i
}

fn orient_impl(p: &mut OrientPlanes, g: &Gradients, ori_deg: f32) {
    p.w = g.w;
    p.h = g.h;
    p.region = g.region;
    let len = g.ori.len();
    p.spill.clear();
    p.spill_count.clear();
    if ori_deg > 360.0 {
        p.spill.resize(len, 0.0);
    }
    p.data.clear();
    p.data.reserve(len);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if crate::features::use_avx2() {
            // SAFETY: AVX2 is available (checked just above); data is empty
            // with capacity len, ori and mag have len values, spill is empty
            // or has len.
            unsafe {
                done = orient_lanes_avx2(&g.ori, &g.mag, ori_deg, &mut p.data, &mut p.spill);
                // the first `done` lanes were written
                p.data.set_len(done);
            }
        }
    }
    for i in done..len {
        let (lane, sp) = orient_lane(g.ori[i], g.mag[i], ori_deg);
        if sp != 0.0 {
            p.spill[i] = sp;
        }
        p.data.push(lane);
    }
    if !p.spill.is_empty() {
        let rw = p.region.width();
        p.spill_count.reserve(p.region.height() * (rw + 1));
        for row in p.spill.chunks_exact(rw) {
            let mut n = 0u32;
            p.spill_count.push(0);
            for &v in row {
                n += (v != 0.0) as u32;
                p.spill_count.push(n);
            }
        }
    }
}

/// Samples `start..start + (j1 - j0 + 1)` of a [`Quad`]: row offset `i`,
/// columns `j0..=j1`.
#[derive(Debug, Clone, Copy)]
struct QuadRow {
    i: i32,
    j0: i32,
    j1: i32,
    start: usize,
}

/// The samples between a 2 x 2 block of spatial cells, `(r0, c0)` to
/// `(r0 + 1, c0 + 1)` (-1 and 4 are the padding cells): rows `rows`.
#[derive(Debug, Clone)]
struct Quad {
    r0: i32,
    c0: i32,
    rows: std::ops::Range<usize>,
    /// Which of the four cells are in the descriptor (not padding).
    real: [bool; 4],
}

/// The samples of the descriptor window of one (scale, rotation) on a layer
/// of one size, whatever the keypoint's position: OpenCV's sample offsets
/// whose rotated bin coordinates fall inside the descriptor, grouped by the
/// 2 x 2 block of cells they fall between (a run of columns per row), each
/// with the Gaussian weight times its four bilinear weights.
#[derive(Debug, Default)]
pub struct QuadWindow {
    quads: Vec<Quad>,
    rows: Vec<QuadRow>,
    weights: Vec<[f32; 4]>,
}

impl QuadWindow {
    /// The window of rotation `ori_deg` (degrees) and half-size `scl`
    /// (pixels) on a `img_w` x `img_h` layer (the radius is clipped to its
    /// diagonal, as OpenCV does).
    pub fn new(img_w: usize, img_h: usize, ori_deg: f32, scl: f32) -> QuadWindow {
        let d = DESCR_WIDTH as i32;
        let ang = ori_deg * (std::f64::consts::PI / 180.0) as f32;
        let (mut cos_t, mut sin_t) = (ang.cos(), ang.sin());
        let exp_scale = -1.0 / (d as f32 * d as f32 * 0.5);
        let hist_width = DESCR_SCL_FCTR * scl;
        let mut radius = (hist_width * std::f32::consts::SQRT_2 * (d + 1) as f32 * 0.5).round_ties_even() as i64;
        let diag = ((img_w as f64) * (img_w as f64) + (img_h as f64) * (img_h as f64)).sqrt() as i64;
        radius = radius.min(diag);
        let mut win = QuadWindow::default();
        if radius < 0 {
            return win;
        }
        let radius = radius as i32;
        cos_t /= hist_width;
        sin_t /= hist_width;
        let half_d = (d / 2) as f32;
        let df = d as f32;
        // (r0, c0, i, j, weights), in row-major (i, j) order
        let mut samples: Vec<(i32, i32, i32, i32, [f32; 4])> = Vec::new();
        for i in -radius..=radius {
            let fi = i as f32;
            let (a, b) = window_columns(i, cos_t, sin_t, -radius, radius);
            let fi_sin = fi * sin_t;
            let fi_cos = fi * cos_t;
            for j in a..=b {
                let fj = j as f32;
                let c_rot = fj * cos_t - fi_sin;
                let r_rot = fj * sin_t + fi_cos;
                let rbin = r_rot + half_d - 0.5;
                let cbin = c_rot + half_d - 0.5;
                if !(rbin > -1.0 && rbin < df && cbin > -1.0 && cbin < df) {
                    continue;
                }
                let w = mathf::exp((c_rot * c_rot + r_rot * r_rot) * exp_scale);
                let (r0, c0) = (rbin.floor(), cbin.floor());
                let (rf, cf) = (rbin - r0, cbin - c0);
                let wr1 = w * rf;
                let wr0 = w - wr1;
                let weights = [wr0 - wr0 * cf, wr0 * cf, wr1 - wr1 * cf, wr1 * cf];
                samples.push((r0 as i32, c0 as i32, i, j, weights));
            }
        }
        samples.sort_by_key(|&(r0, c0, i, j, _)| (r0, c0, i, j));
        for block in samples.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let first_row = win.rows.len();
            // along a row the block's columns are one run (the rotated bin
            // coordinates are monotonic in j); split where they are not
            for run in block.chunk_by(|a, b| a.2 == b.2 && b.3 == a.3 + 1) {
                win.rows.push(QuadRow { i: run[0].2, j0: run[0].3, j1: run[run.len() - 1].3, start: win.weights.len() });
                win.weights.extend(run.iter().map(|s| s.4));
            }
            let (r0, c0) = (block[0].0, block[0].1);
            let inside = |r: i32, c: i32| (0..d).contains(&r) && (0..d).contains(&c);
            let real = [inside(r0, c0), inside(r0, c0 + 1), inside(r0 + 1, c0), inside(r0 + 1, c0 + 1)];
            win.quads.push(Quad { r0, c0, rows: first_row..win.rows.len(), real });
        }
        win
    }
}

impl QuadWindow {
    /// The pixels of a `img_w` x `img_h` layer that [`compute_descriptor_quads`]
    /// reads for keypoints at `pts` (pixels of the layer): the bounding box of
    /// the window placed at each rounded position, inside [`Region::sampled`].
    /// [`OrientPlanes`] of gradients computed over it give the same
    /// descriptors as over the whole layer.
    pub fn region(&self, img_w: usize, img_h: usize, pts: impl IntoIterator<Item = (f32, f32)>) -> Region {
        let all = Region::sampled(img_w, img_h);
        if self.rows.is_empty() || all.width() == 0 {
            return Region::default();
        }
        let i_min = self.rows.iter().map(|r| r.i).min().unwrap_or(0) as i64;
        let i_max = self.rows.iter().map(|r| r.i).max().unwrap_or(0) as i64;
        let j_min = self.rows.iter().map(|r| r.j0).min().unwrap_or(0) as i64;
        let j_max = self.rows.iter().map(|r| r.j1).max().unwrap_or(0) as i64;
        let (mut px0, mut px1, mut py0, mut py1) = (i64::MAX, i64::MIN, i64::MAX, i64::MIN);
        for (x, y) in pts {
            // the rounding of quads_impl
            let (px, py) = (x.round_ties_even() as i64, y.round_ties_even() as i64);
            px0 = px0.min(px);
            px1 = px1.max(px);
            py0 = py0.min(py);
            py1 = py1.max(py);
        }
        if px0 > px1 {
            return Region::default();
        }
        let clip = |v: i64, lo: usize, hi: usize| v.clamp(lo as i64, hi as i64) as usize;
        let reg = Region {
            x0: clip(px0.saturating_add(j_min), all.x0, all.x1),
            x1: clip(px1.saturating_add(j_max).saturating_add(1), all.x0, all.x1),
            y0: clip(py0.saturating_add(i_min), all.y0, all.y1),
            y1: clip(py1.saturating_add(i_max).saturating_add(1), all.y0, all.y1),
        };
        if reg.width() == 0 || reg.height() == 0 {
            Region::default()
        } else {
            reg
        }
    }
}

/// The descriptor of the keypoint at `pt` (pixels of the layer) from the
/// layer's [`OrientPlanes`] and a [`QuadWindow`] for its scale and rotation;
/// equal to [`compute_descriptor`]'s up to float rounding.
pub fn compute_descriptor_quads(p: &OrientPlanes, win: &QuadWindow, pt: (f32, f32), out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(p: &OrientPlanes, win: &QuadWindow, pt: (f32, f32), out: &mut [f32]) {
        quads_impl(p, win, pt, out)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if crate::features::use_avx2() {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { avx2(p, win, pt, out) };
            return;
        }
    }
    quads_impl(p, win, pt, out)
}

#[inline(always)]
fn quads_impl(p: &OrientPlanes, win: &QuadWindow, pt: (f32, f32), out: &mut [f32]) {
    let (px, py) = (pt.0.round_ties_even() as i64, pt.1.round_ties_even() as i64);
    let (rows, cols) = (p.h as i64, p.w as i64);
    let rw = p.region.width() as i64;
    let nn = DESCR_BINS + 2;
    let dd = DESCR_WIDTH + 2;
    let mut hist = [0f32; HIST_LEN];
    for q in &win.quads {
        let mut acc = [[0f32; DESCR_BINS]; 4];
        let mut spill = [0f32; 4];
        for row in &win.rows[q.rows.clone()] {
            // OpenCV samples rows 1..rows-2 and columns 1..cols-2 only.
            let r = py + row.i as i64;
            if r < 1 || r > rows - 2 {
                continue;
            }
            let j_lo = (row.j0 as i64).max(1 - px);
            let j_hi = (row.j1 as i64).min(cols - 2 - px);
            if j_lo > j_hi {
                continue;
            }
            let n = (j_hi - j_lo + 1) as usize;
            let k0 = row.start + (j_lo - row.j0 as i64) as usize;
            // the planes hold only their region, which covers every sample
            // read here (Self::region)
            let (rx0, ry0) = (p.region.x0 as i64, p.region.y0 as i64);
            debug_assert!(r >= ry0 && r < p.region.y1 as i64 && px + j_lo >= rx0 && px + j_hi < p.region.x1 as i64);
            let p0 = ((r - ry0) * rw + px + j_lo - rx0) as usize;
            let (vs, ws) = (&p.data[p0..p0 + n], &win.weights[k0..k0 + n]);
            // only the real cells of the block (-1 and 4 are dropped later)
            match q.real {
                [true, true, true, true] => accumulate_run(vs, ws, [0, 1, 2, 3], &mut acc),
                [true, true, false, false] => accumulate_run(vs, ws, [0, 1], &mut acc),
                [false, false, true, true] => accumulate_run(vs, ws, [2, 3], &mut acc),
                [true, false, true, false] => accumulate_run(vs, ws, [0, 2], &mut acc),
                [false, true, false, true] => accumulate_run(vs, ws, [1, 3], &mut acc),
                [true, false, false, false] => accumulate_run(vs, ws, [0], &mut acc),
                [false, true, false, false] => accumulate_run(vs, ws, [1], &mut acc),
                [false, false, true, false] => accumulate_run(vs, ws, [2], &mut acc),
                [false, false, false, true] => accumulate_run(vs, ws, [3], &mut acc),
                _ => {}
            }
            if !p.spill.is_empty() {
                // rare (angles within 1 degree of the rotation): count first
                let cnt = &p.spill_count[(r - ry0) as usize * (rw as usize + 1)..];
                let (a, b) = ((px + j_lo - rx0) as usize, (px + j_hi - rx0) as usize + 1);
                if cnt[b] > cnt[a] {
                    for (v, w) in p.spill[p0..p0 + n].iter().zip(ws) {
                        for c in 0..4 {
                            spill[c] += w[c] * v;
                        }
                    }
                }
            }
        }
        let cells = [(q.r0, q.c0), (q.r0, q.c0 + 1), (q.r0 + 1, q.c0), (q.r0 + 1, q.c0 + 1)];
        for (c, &(r, cc)) in cells.iter().enumerate() {
            let idx = ((r + 1) as usize * dd + (cc + 1) as usize) * nn;
            for o in 0..DESCR_BINS {
                hist[idx + o] += acc[c][o];
            }
            if idx > 0 {
                hist[idx - 1] += spill[c];
            }
        }
    }
    finish(&mut hist, out);
}

/// `acc[c] += sum_t ws[t][c] vs[t]` for the cells `c` in `cells`, over a
/// run of samples; even and odd samples in two partial sums (added to `acc`
/// at the end) to hide the latency of the additions.
#[inline(always)]
fn accumulate_run<const N: usize>(vs: &[Lane], ws: &[[f32; 4]], cells: [usize; N], acc: &mut [Lane; 4]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::features::use_avx2() {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { accumulate_run_avx2(vs, ws, cells, acc) };
            return;
        }
    }
    let mut even = [[0f32; DESCR_BINS]; N];
    let mut odd = [[0f32; DESCR_BINS]; N];
    for (t, (v, w)) in vs.iter().zip(ws).enumerate() {
        let a = if t & 1 == 0 { &mut even } else { &mut odd };
        for (k, &c) in cells.iter().enumerate() {
            for o in 0..DESCR_BINS {
                a[k][o] += w[c] * v[o];
            }
        }
    }
    for (k, &c) in cells.iter().enumerate() {
        for o in 0..DESCR_BINS {
            acc[c][o] += even[k][o] + odd[k][o];
        }
    }
}

/// [`accumulate_run`] in AVX2 registers (the same operations, no FMA).
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn accumulate_run_avx2<const N: usize>(vs: &[Lane], ws: &[[f32; 4]], cells: [usize; N], acc: &mut [Lane; 4]) {
    use std::arch::x86_64::*;
    let n = vs.len().min(ws.len());
    let mut even = [_mm256_setzero_ps(); N];
    let mut odd = [_mm256_setzero_ps(); N];
    let mut t = 0;
    while t + 2 <= n {
        // SAFETY: t + 1 < n: both samples are in bounds; cells are < 4.
        let v = _mm256_loadu_ps(vs.as_ptr().add(t) as *const f32);
        let w = ws.as_ptr().add(t) as *const f32;
        for k in 0..N {
            even[k] = _mm256_add_ps(even[k], _mm256_mul_ps(_mm256_broadcast_ss(&*w.add(cells[k])), v));
        }
        let v = _mm256_loadu_ps(vs.as_ptr().add(t + 1) as *const f32);
        let w = ws.as_ptr().add(t + 1) as *const f32;
        for k in 0..N {
            odd[k] = _mm256_add_ps(odd[k], _mm256_mul_ps(_mm256_broadcast_ss(&*w.add(cells[k])), v));
        }
        t += 2;
    }
    if t < n {
        // SAFETY: t < n.
        let v = _mm256_loadu_ps(vs.as_ptr().add(t) as *const f32);
        let w = ws.as_ptr().add(t) as *const f32;
        for k in 0..N {
            even[k] = _mm256_add_ps(even[k], _mm256_mul_ps(_mm256_broadcast_ss(&*w.add(cells[k])), v));
        }
    }
    for k in 0..N {
        let a = &mut acc[cells[k]];
        let cur = _mm256_loadu_ps(a.as_ptr());
        _mm256_storeu_ps(a.as_mut_ptr(), _mm256_add_ps(cur, _mm256_add_ps(even[k], odd[k])));
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
    fn block_path_matches_the_sample_path() {
        let img = ramp_plane(57, 43);
        let mut g = Gradients::default();
        g.compute(&img);
        let mut s = Samples::default();
        let mut planes = OrientPlanes::default();
        let mut n_checked = 0;
        for &(ori, scl) in &[(0.0f32, 2.4f32), (0.0, 9.0), (37.5, 3.3), (271.0, 1.1), (361.0, 40.0), (361.0, 2.0), (12.0, 0.0), (0.0, -1.5)] {
            planes.compute(&g, ori);
            let win = QuadWindow::new(img.w, img.h, ori, scl);
            for &pt in &[(28.0f32, 21.0f32), (0.4, 0.6), (56.5, 12.2), (3.0, 42.0), (30.2, 1.0), (-40.0, 90.0)] {
                let (mut a, mut b) = (vec![0f32; DESCR_LEN], vec![1f32; DESCR_LEN]);
                compute_descriptor(&img, pt, ori, scl, &mut s, &mut a);
                compute_descriptor_quads(&planes, &win, pt, &mut b);
                // whole numbers 0..255: rounding may move a value by one
                let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(diff <= 1.0, "ori {ori} scl {scl} pt {pt:?}: {diff}\n{a:?}\n{b:?}");
                // the portable and AVX2 sums are the same
                let mut c = vec![2f32; DESCR_LEN];
                crate::features::portable_only(|| compute_descriptor_quads(&planes, &win, pt, &mut c));
                assert_eq!(b, c);
                n_checked += 1;
            }
        }
        assert_eq!(n_checked, 48);
    }

    #[test]
    fn planes_over_the_window_region_give_the_same_bits() {
        let img = ramp_plane(61, 47);
        let mut full = Gradients::default();
        full.compute(&img);
        let (mut pf, mut pr, mut g) = (OrientPlanes::default(), OrientPlanes::default(), Gradients::default());
        let groups: [&[(f32, f32)]; 4] = [
            &[(30.0, 20.0), (34.4, 22.6), (38.0, 25.0)],
            &[(0.4, 0.6), (60.2, 46.7)],
            &[(-40.0, 90.0), (59.5, 3.5)],
            &[(-40.0, -90.0)],
        ];
        for &(ori, scl) in &[(361.0f32, 2.0f32), (0.0, 1.3), (37.5, 3.3), (271.0, 9.0)] {
            let win = QuadWindow::new(img.w, img.h, ori, scl);
            pf.compute(&full, ori);
            for pts in groups {
                let region = win.region(img.w, img.h, pts.iter().copied());
                assert!(Region::sampled(img.w, img.h).contains(&region));
                g.compute_region(&img, region);
                assert_eq!(g.region, region);
                pr.compute(&g, ori);
                for &pt in pts {
                    let (mut a, mut b) = (vec![0f32; DESCR_LEN], vec![1f32; DESCR_LEN]);
                    compute_descriptor_quads(&pf, &win, pt, &mut a);
                    compute_descriptor_quads(&pr, &win, pt, &mut b);
                    assert_eq!(a, b, "ori {ori} scl {scl} pt {pt:?}");
                }
            }
        }
        // a window that misses the image reads nothing
        let win = QuadWindow::new(img.w, img.h, 0.0, 2.0);
        assert_eq!(win.region(img.w, img.h, [(-100.0, 20.0)]), Region::default());
    }

    #[test]
    fn orientation_split_avx2_and_portable_agree() {
        // 59 x 45 = 2655 sampled pixels: the last block of 8 is partial
        let img = ramp_plane(61, 47);
        let mut g = Gradients::default();
        g.compute(&img);
        assert_ne!(g.ori.len() % 8, 0);
        let (mut a, mut b) = (OrientPlanes::default(), OrientPlanes::default());
        for ori in [0.0f32, 0.3, 45.0, 179.9, 359.99, 360.0, 361.0, 390.5, 404.9] {
            a.compute(&g, ori);
            crate::features::portable_only(|| b.compute(&g, ori));
            assert_eq!(a.data, b.data, "ori {ori}");
            assert_eq!(a.spill, b.spill, "ori {ori}");
            assert_eq!(a.spill_count, b.spill_count, "ori {ori}");
            assert_eq!(a.data.len(), g.ori.len());
            // every pixel's two parts sum to its magnitude
            for (i, lane) in a.data.iter().enumerate() {
                let s: f32 = lane.iter().sum::<f32>() + a.spill.get(i).copied().unwrap_or(0.0);
                assert!((s - g.mag[i]).abs() <= 1e-4 * g.mag[i].max(1.0), "ori {ori} pixel {i}");
            }
        }
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
