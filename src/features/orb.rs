//! ORB (Rublee et al. 2011) as OpenCV 4.x implements it
//! (`modules/features2d/src/orb.cpp`).
//!
//! 1. **Scale pyramid.** Level $l$ has scale $s_l = f^{\,l - l_0}$ (`scale_factor`
//!    $f$, `first_level` $l_0$) and size `round(W / s_l) x round(H / s_l)`. The
//!    first level is the image; each further level is the previous one resized
//!    by OpenCV's bit-exact bilinear `resize(..., INTER_LINEAR_EXACT)` (8-bit
//!    fixed-point weights). Every level carries a `BORDER_REFLECT_101` border
//!    of `max(edge_threshold, ceil(patch_size / 2 * sqrt 2), 4) + 1` pixels.
//! 2. **Budget.** Level $l$ may keep $n_l$ keypoints, a geometric series of
//!    ratio $1/f$ summing to `n_features` (the last level gets the remainder).
//! 3. **Detection.** FAST-9 with non-maximum suppression ([`super::fast`]),
//!    keypoints closer than `edge_threshold` to the level's border dropped,
//!    the best $2 n_l$ by FAST score kept, then the Harris response
//!    $\det M - 0.04 \operatorname{tr}^2 M$ over a 7x7 block of Sobel
//!    gradients ranks them and the best $n_l$ are kept (OpenCV's
//!    `KeyPointsFilter::retainBest`: every keypoint whose response equals the
//!    $n$-th best is kept as well).
//! 4. **Orientation.** The intensity centroid over the circular patch of
//!    radius `patch_size / 2`: $\theta = \operatorname{atan2}(m_{01}, m_{10})$,
//!    computed with OpenCV's polynomial `fastAtan2` (degrees, $[0, 360)$).
//! 5. **Descriptor.** Each level is smoothed by a 7x7 Gaussian of $\sigma = 2$
//!    (the integer separable filter OpenCV runs on a pyramid sub-matrix); the
//!    256 test pairs of the learned pattern ([`super::orb_pattern`]; a random
//!    pattern from OpenCV's `RNG(0x34985739)` when `patch_size != 31`) are
//!    rotated by $\theta$, rounded to the nearest pixel and compared: bit
//!    $= [I(p_0) < I(p_1)]$ (`wta_k = 2`), or 2-bit argmax codes of 3 or 4
//!    points (`wta_k = 3, 4`).
//!
//! Keypoints are reported in level-0 pixel coordinates (`x * s_l`), with
//! `octave` = level, `size` = `patch_size * s_l` and `response` = the Harris
//! (or FAST) score. All work on one image is single-threaded and
//! deterministic.

use crate::error::{BovwError, Result};
use crate::features::fast::fast9_window;
use crate::features::orb_pattern::BIT_PATTERN_31;
use crate::features::{
    DescriptorDtype, DescriptorInfo, DescriptorKind, Descriptors, Extractor, FeatureExtractor, Features, KeyPoint,
};
use crate::image::{ColorNeeds, DecodedImage, GrayView};

/// Descriptor length in bytes.
pub const DESCRIPTOR_BYTES: usize = 32;
const HARRIS_K: f32 = 0.04;
const HARRIS_BLOCK: usize = 7;

/// How ORB ranks FAST corners (OpenCV `ORB::ScoreType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreType {
    Harris,
    Fast,
}

impl ScoreType {
    /// Parse `"harris"` or `"fast"` (case-insensitive; OpenCV's `HARRIS_SCORE`/`FAST_SCORE` too).
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] for any other name.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "harris" | "harris_score" => Ok(ScoreType::Harris),
            "fast" | "fast_score" => Ok(ScoreType::Fast),
            _ => Err(BovwError::param("score_type", format!("must be 'harris' or 'fast', got {name:?}"))),
        }
    }
}

/// ORB parameters, with OpenCV's defaults (`cv2.ORB_create()`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrbParams {
    pub n_features: usize,
    pub scale_factor: f64,
    pub n_levels: usize,
    pub edge_threshold: usize,
    pub first_level: usize,
    pub wta_k: usize,
    pub score_type: ScoreType,
    pub patch_size: usize,
    pub fast_threshold: u8,
}

impl Default for OrbParams {
    fn default() -> Self {
        OrbParams {
            n_features: 500,
            scale_factor: 1.2,
            n_levels: 8,
            edge_threshold: 31,
            first_level: 0,
            wta_k: 2,
            score_type: ScoreType::Harris,
            patch_size: 31,
            fast_threshold: 20,
        }
    }
}

/// The ORB detector and descriptor.
#[derive(Debug, Clone)]
pub struct Orb {
    pub params: OrbParams,
    /// Test points, `wta_k` per descriptor element (512 points for `wta_k = 2`).
    pattern: Vec<(i32, i32)>,
    /// End of each row of the circular orientation patch.
    umax: Vec<i32>,
    /// Lane masks of that patch for the vector orientation path.
    angle_masks: Vec<[u8; 32]>,
}

// ---------------------------------------------------------------------------
// OpenCV numerics

/// `cvRound` on a float: round half to even.
#[inline]
fn cv_round(x: f32) -> i32 {
    if x.abs() < 4_194_304.0 {
        // adding and removing 1.5 * 2^23 rounds to an integer, ties to even,
        // in the default rounding mode (no SSE4.1 `roundss` needed)
        ((x + 12_582_912.0) - 12_582_912.0) as i32
    } else {
        x.round_ties_even() as i32
    }
}

/// OpenCV's `cv::RNG` (multiply-with-carry), for its fixed-seed patterns.
struct CvRng(u64);

impl CvRng {
    fn new(seed: u64) -> Self {
        CvRng(if seed == 0 { 0xffff_ffff } else { seed })
    }
    fn next(&mut self) -> u32 {
        self.0 = (self.0 as u32 as u64).wrapping_mul(4_164_903_690u64).wrapping_add(self.0 >> 32);
        self.0 as u32
    }
    /// Integer uniform in `[a, b)`.
    fn uniform(&mut self, a: i32, b: i32) -> i32 {
        if a == b {
            a
        } else {
            (self.next() % (b - a) as u32) as i32 + a
        }
    }
}

/// OpenCV's `fastAtan2`: degrees in [0, 360), about 0.01 degree accurate.
// OpenCV's polynomial coefficients, written as in its source
#[allow(clippy::excessive_precision)]
pub fn fast_atan2(y: f32, x: f32) -> f32 {
    const R2D: f32 = (180.0 / std::f64::consts::PI) as f32;
    let p1 = 0.999_787_841_279_480_7_f32 * R2D;
    let p3 = -0.325_808_397_464_097_5_f32 * R2D;
    let p5 = 0.155_578_651_846_328_1_f32 * R2D;
    let p7 = -0.044_326_555_547_921_28_f32 * R2D;
    let (ax, ay) = (x.abs(), y.abs());
    let eps = f64::EPSILON as f32;
    let mut a = if ax >= ay {
        let c = ay / (ax + eps);
        let c2 = c * c;
        (((p7 * c2 + p5) * c2 + p3) * c2 + p1) * c
    } else {
        let c = ax / (ay + eps);
        let c2 = c * c;
        90.0 - (((p7 * c2 + p5) * c2 + p3) * c2 + p1) * c
    };
    if x < 0.0 {
        a = 180.0 - a;
    }
    if y < 0.0 {
        a = 360.0 - a;
    }
    a
}

/// `cv::borderInterpolate` for `BORDER_REFLECT_101`.
#[inline]
fn reflect101(mut p: isize, len: usize) -> usize {
    let n = len as isize;
    if n == 1 {
        return 0;
    }
    while p < 0 || p >= n {
        if p < 0 {
            p = -p;
        } else {
            p = 2 * n - 2 - p;
        }
    }
    p as usize
}

// ---------------------------------------------------------------------------
// Pyramid

/// One pyramid level: a `w x h` image inside a buffer with a `border`-pixel
/// reflect-101 frame.
#[derive(Debug, Clone)]
struct Level {
    data: Vec<u8>,
    stride: usize,
    border: usize,
    w: usize,
    h: usize,
}

impl Level {
    /// Index of level pixel (x, y) (may be inside the border).
    #[inline]
    fn idx(&self, x: isize, y: isize) -> usize {
        ((y + self.border as isize) * self.stride as isize + x + self.border as isize) as usize
    }

    /// A level of `w x h` pixels with a `border`-pixel frame, whose buffer
    /// comes from this thread's pool when one is free. Its contents are
    /// unspecified: the caller writes the interior, then [`Level::fill_border`].
    fn uninit(w: usize, h: usize, border: usize) -> Level {
        let stride = w + 2 * border;
        let len = stride * (h + 2 * border);
        let mut data = LEVEL_POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
        if data.len() >= len {
            data.truncate(len);
        } else {
            data.resize(len, 0);
        }
        Level { data, stride, border, w, h }
    }

    /// Fill the frame around the interior by reflect-101 (OpenCV
    /// `copyMakeBorder(..., BORDER_REFLECT_101)`).
    fn fill_border(&mut self) {
        let (stride, b, w, h) = (self.stride, self.border, self.w, self.h);
        if b < w {
            // one reflection: the frame mirrors the pixels next to the edge
            // (left: x <- 2b - x; right: x <- 2(b + w - 1) - x)
            for y in b..b + h {
                let row = &mut self.data[y * stride..(y + 1) * stride];
                let (left, rest) = row.split_at_mut(b);
                for (d, s) in left.iter_mut().zip(rest[1..=b].iter().rev()) {
                    *d = *s;
                }
                let (body, right) = row.split_at_mut(b + w);
                for (d, s) in right.iter_mut().zip(body[b + w - 1 - b..b + w - 1].iter().rev()) {
                    *d = *s;
                }
            }
        } else {
            let cols: Vec<usize> = (0..b).map(|x| reflect101(x as isize - b as isize, w)).collect();
            let cols_r: Vec<usize> = (b + w..stride).map(|x| reflect101(x as isize - b as isize, w)).collect();
            for y in b..b + h {
                let row = &mut self.data[y * stride..(y + 1) * stride];
                for x in 0..b {
                    row[x] = row[b + cols[x]];
                }
                for (x, &c) in (b + w..stride).zip(&cols_r) {
                    row[x] = row[b + c];
                }
            }
        }
        for yy in (0..b).chain(b + h..h + 2 * b) {
            let sy = b + reflect101(yy as isize - b as isize, h);
            self.data.copy_within(sy * stride..(sy + 1) * stride, yy * stride);
        }
    }
}

thread_local! {
    /// Level buffers of finished images, reused by the next image on this
    /// thread (no allocation, page faults or zeroing per level).
    static LEVEL_POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Give the buffers of a pyramid back to this thread's pool (at most 16
/// buffers of at most 4 MiB are kept; the largest is first in line for the
/// next pyramid's largest level).
fn recycle(levels: Vec<Option<Level>>) {
    LEVEL_POOL.with(|p| {
        let mut p = p.borrow_mut();
        // levels go from large to small; pushing them in reverse makes the
        // next pyramid pop the largest buffer for its first level
        for l in levels.into_iter().rev().flatten() {
            if p.len() < 16 && l.data.capacity() <= 4 << 20 {
                p.push(l.data);
            }
        }
    });
}

/// Coefficients of OpenCV's bit-exact linear interpolation along one axis:
/// per destination index an offset and 8-bit fixed-point weights, plus the
/// ranges that copy the first / last source sample.
struct LinearAxis {
    ofs: Vec<usize>,
    w0: Vec<u32>,
    w1: Vec<u32>,
    min: usize,
    max: usize,
}

fn linear_axis(src: usize, dst: usize) -> LinearAxis {
    let inv_scale = dst as f64 / src as f64;
    let scale = 1.0 / inv_scale;
    let mut ofs = vec![0usize; dst];
    let mut w0 = vec![256u32; dst];
    let mut w1 = vec![0u32; dst];
    let (mut min, mut max) = (0usize, dst);
    for d in 0..dst {
        let f = scale * (d as f64 + 0.5) - 0.5;
        let i = f.floor();
        let ii = i as i64;
        if ii >= 0 && src > 1 {
            if ii < src as i64 - 1 {
                ofs[d] = ii as usize;
                let c1 = ((f - i) * 256.0).round_ties_even() as u32;
                w1[d] = c1;
                w0[d] = 256 - c1;
            } else {
                ofs[d] = src - 1;
                max = max.min(d);
            }
        } else {
            min = min.max(d + 1);
        }
    }
    LinearAxis { ofs, w0, w1, min, max }
}

/// Horizontal interpolation of 8 destination pixels per step with a byte
/// shuffle: block `j` covers destinations `start + 8 j ..`, loads 16 source
/// bytes at `base[j]` and gathers each destination's two samples with
/// `shuf[j]`, then `madd` by the weight pairs `wts[j]`.
#[derive(Default)]
struct ShufflePlan {
    base: Vec<usize>,
    shuf: Vec<[u8; 16]>,
    wts: Vec<[i16; 16]>,
    /// First destination not covered by the blocks.
    end: usize,
    /// Largest `base`.
    last_load: usize,
}

/// Blocks of 8 interior destinations (`xmin..xmax`) whose samples fit in 16
/// bytes (any downscale by at most 2); stops at the first that does not.
fn shuffle_plan(ax: &LinearAxis, xmin: usize, xmax: usize) -> ShufflePlan {
    let mut plan = ShufflePlan { end: xmin, ..Default::default() };
    let mut d = xmin;
    while d + 8 <= xmax {
        let base = ax.ofs[d];
        if (0..8).any(|j| ax.ofs[d + j] < base || ax.ofs[d + j] + 1 - base > 15) {
            break;
        }
        let mut shuf = [0u8; 16];
        let mut wts = [0i16; 16];
        for j in 0..8 {
            shuf[2 * j] = (ax.ofs[d + j] - base) as u8;
            shuf[2 * j + 1] = (ax.ofs[d + j] + 1 - base) as u8;
            wts[2 * j] = ax.w0[d + j] as i16;
            wts[2 * j + 1] = ax.w1[d + j] as i16;
        }
        plan.base.push(base);
        plan.shuf.push(shuf);
        plan.wts.push(wts);
        plan.last_load = plan.last_load.max(base);
        d += 8;
        plan.end = d;
    }
    plan
}

/// Run a [`ShufflePlan`] on one source row (`s` starts at the row's first
/// pixel); `out` holds the plan's destinations.
///
/// # Safety
/// AVX2 must be available; `plan.last_load + 16 <= s.len()` and
/// `out.len() == 8 * plan.base.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hline_shuffle_avx2(s: &[u8], plan: &ShufflePlan, out: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(plan.last_load + 16 <= s.len() && out.len() == 8 * plan.base.len());
    for j in 0..plan.base.len() {
        // SAFETY: base[j] <= last_load, so the 16-byte load ends inside `s`;
        // the 8 results go to out[8 j..8 j + 8], inside `out` (asserted above).
        let v = _mm_loadu_si128(s.as_ptr().add(plan.base[j]) as *const __m128i);
        let pairs = _mm_shuffle_epi8(v, _mm_loadu_si128(plan.shuf[j].as_ptr() as *const __m128i));
        let w = _mm256_loadu_si256(plan.wts[j].as_ptr() as *const __m256i);
        // weights <= 256 and samples <= 255: w0 a + w1 b <= 65280, exact in i32
        let r = _mm256_madd_epi16(_mm256_cvtepu8_epi16(pairs), w);
        _mm256_storeu_si256(out.as_mut_ptr().add(8 * j) as *mut __m256i, r);
    }
}

/// `cv::resize(src, dst, (dw, dh), INTER_LINEAR_EXACT)` for 8-bit images:
/// horizontal pass in 8.8 fixed point, vertical pass in 16.16, rounded.
fn resize_linear_exact(src: &[u8], sstride: usize, sorigin: usize, sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<u8> {
    let mut out = vec![0u8; dw * dh];
    resize_linear_exact_into(src, sstride, sorigin, sw, sh, &mut out, dw, 0, dw, dh);
    out
}

/// [`resize_linear_exact`] writing row `d` of the result to
/// `out[dorigin + d * dstride..][..dw]`.
#[allow(clippy::too_many_arguments)]
fn resize_linear_exact_into(src: &[u8], sstride: usize, sorigin: usize, sw: usize, sh: usize, out: &mut [u8], dstride: usize, dorigin: usize, dw: usize, dh: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::features::use_avx2() {
            // SAFETY: the CPU supports AVX2. Integer arithmetic: same result.
            return unsafe { resize_linear_exact_avx2(src, sstride, sorigin, sw, sh, out, dstride, dorigin, dw, dh) };
        }
    }
    resize_linear_exact_impl(src, sstride, sorigin, sw, sh, out, dstride, dorigin, dw, dh)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn resize_linear_exact_avx2(src: &[u8], sstride: usize, sorigin: usize, sw: usize, sh: usize, out: &mut [u8], dstride: usize, dorigin: usize, dw: usize, dh: usize) {
    resize_linear_exact_impl(src, sstride, sorigin, sw, sh, out, dstride, dorigin, dw, dh)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn resize_linear_exact_impl(src: &[u8], sstride: usize, sorigin: usize, sw: usize, sh: usize, out: &mut [u8], dstride: usize, dorigin: usize, dw: usize, dh: usize) {
    let ax = linear_axis(sw, dw);
    let ay = linear_axis(sh, dh);
    let last_x = ax.ofs[dw - 1];
    let (xmin, xmax) = (ax.min.min(dw), ax.max.max(ax.min.min(dw)));
    #[cfg(target_arch = "x86_64")]
    let plan = if crate::features::use_avx2() { shuffle_plan(&ax, xmin, xmax) } else { ShufflePlan::default() };
    let hline = |row: usize, out: &mut [u32]| {
        let s = &src[sorigin + row * sstride..sorigin + row * sstride + sw];
        let first = (s[0] as u32) << 8;
        let last = (s[last_x] as u32) << 8;
        out[..xmin].iter_mut().for_each(|v| *v = first);
        out[xmax..].iter_mut().for_each(|v| *v = last);
        #[allow(unused_mut)]
        let mut done = xmin;
        #[cfg(target_arch = "x86_64")]
        {
            // the vector blocks load 16 bytes at each block's first offset
            let tail = &src[sorigin + row * sstride..];
            if plan.end > xmin && plan.last_load + 16 <= tail.len() {
                // SAFETY: a plan is only built when AVX2 is available; every
                // load ends by plan.last_load + 16 <= tail.len() and every
                // store is inside out[xmin..plan.end].
                unsafe { hline_shuffle_avx2(tail, &plan, &mut out[xmin..plan.end]) };
                done = plan.end;
            }
        }
        let (ofs, w0, w1) = (&ax.ofs[done..xmax], &ax.w0[done..xmax], &ax.w1[done..xmax]);
        for (d, o) in out[done..xmax].iter_mut().enumerate() {
            let i = ofs[d];
            // interior destinations interpolate between samples i and i + 1 < sw
            debug_assert!(i + 1 < sw);
            // SAFETY: linear_axis sets ofs[d] <= sw - 2 for d in min..max
            let (a, b) = unsafe { (*s.get_unchecked(i) as u32, *s.get_unchecked(i + 1) as u32) };
            *o = w0[d] * a + w1[d] * b;
        }
    };
    let mut h0 = vec![0u32; dw];
    let mut h1 = vec![0u32; dw];
    let mut cached: (usize, usize) = (usize::MAX, usize::MAX);
    let last_y = ay.ofs[dh - 1];
    for d in 0..dh {
        let drow = &mut out[dorigin + d * dstride..dorigin + d * dstride + dw];
        if d < ay.min || d >= ay.max {
            let r = if d < ay.min { 0 } else { last_y };
            hline(r, &mut h0);
            cached = (usize::MAX, usize::MAX);
            for (o, &v) in drow.iter_mut().zip(&h0) {
                *o = ((v + 128) >> 8).min(255) as u8;
            }
            continue;
        }
        let o = ay.ofs[d];
        if cached != (o, o + 1) {
            if cached.1 == o {
                std::mem::swap(&mut h0, &mut h1);
            } else {
                hline(o, &mut h0);
            }
            hline(o + 1, &mut h1);
            cached = (o, o + 1);
        }
        let (m0, m1) = (ay.w0[d], ay.w1[d]);
        for x in 0..dw {
            let v = m0 * h0[x] + m1 * h1[x];
            drow[x] = ((v + (1 << 15)) >> 16).min(255) as u8;
        }
    }
}

/// 7x7 Gaussian (sigma 2) of a level's interior, in place, reading the border
/// (OpenCV's `sepFilter2D` path for a pyramid sub-matrix: float taps, rows
/// then columns in single precision, rounded half to even and saturated).
/// The border itself is left unsmoothed, as in OpenCV.
fn gaussian_blur_7x7(level: &mut Level, k: &[f32; 7], region: (usize, usize, usize, usize)) {
    #[cfg(target_arch = "x86_64")]
    let avx2 = crate::features::use_avx2();
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    let (stride, b) = (level.stride, level.border);
    let (x0, x1, y0, y1) = region;
    let w = x1 - x0;
    let h = y1 - y0;
    // horizontal pass over rows y0-3..y1+3, columns x0..x1, into a ring of
    // 7 rows: output row y needs the filtered rows y-3..y+3; row y+3 is
    // filtered just before row y is written, so the in-place update only
    // ever reads rows not yet overwritten
    let mut tmp = vec![0f32; 7 * w];
    let hrow = |data: &[u8], r: usize, t: &mut [f32]| {
        let base = (b + y0 + r - 3) * stride + b + x0;
        let src = &data[base - 3..base + w + 3];
        #[cfg(target_arch = "x86_64")]
        {
            if avx2 {
                // SAFETY: AVX2 is available (checked above).
                return unsafe { blur_h_row_avx2(src, k, t) };
            }
        }
        blur_h_row(src, k, t)
    };
    for r in 0..6 {
        hrow(&level.data, r, &mut tmp[r * w..(r + 1) * w]);
    }
    for y in 0..h {
        let slot = (y + 6) % 7;
        hrow(&level.data, y + 6, &mut tmp[slot * w..(slot + 1) * w]);
        let start = (b + y0 + y) * stride + b + x0;
        let dst = &mut level.data[start..start + w];
        let r = |i: usize| {
            let s = (y + i) % 7;
            &tmp[s * w..(s + 1) * w]
        };
        let rows = [r(0), r(1), r(2), r(3), r(4), r(5), r(6)];
        #[cfg(target_arch = "x86_64")]
        {
            if avx2 {
                // SAFETY: AVX2 is available (checked above).
                unsafe { blur_v_row_avx2(&rows, k, dst) };
                continue;
            }
        }
        blur_v_row(&rows, k, dst);
    }
}

/// Horizontal 7-tap pass of one row: `t[x]` from `src[x..x + 7]`
/// (`src.len() == t.len() + 6`), in OpenCV's order for symmetric kernels.
#[inline(always)]
fn blur_h_row(src: &[u8], k: &[f32; 7], t: &mut [f32]) {
    let w = t.len();
    let (s0, s1, s2, s3) = (&src[0..w], &src[1..w + 1], &src[2..w + 2], &src[3..w + 3]);
    let (s4, s5, s6) = (&src[4..w + 4], &src[5..w + 5], &src[6..w + 6]);
    for x in 0..w {
        t[x] = k[3] * s3[x] as f32
            + k[2] * (s2[x] as f32 + s4[x] as f32)
            + k[1] * (s1[x] as f32 + s5[x] as f32)
            + k[0] * (s0[x] as f32 + s6[x] as f32);
    }
}

/// Vertical 7-tap pass: `dst[x]` from `rows[0..7][x]`, rounded half to even
/// and saturated to u8.
#[inline(always)]
fn blur_v_row(rows: &[&[f32]; 7], k: &[f32; 7], dst: &mut [u8]) {
    let w = dst.len();
    let (r0, r1, r2, r3) = (&rows[0][..w], &rows[1][..w], &rows[2][..w], &rows[3][..w]);
    let (r4, r5, r6) = (&rows[4][..w], &rows[5][..w], &rows[6][..w]);
    // round half to even through the float mantissa (see `cv_round`), then saturate
    const MAGIC: f32 = 12_582_912.0;
    let magic_bits = MAGIC.to_bits() as i32;
    for x in 0..w {
        let v = k[3] * r3[x] + k[2] * (r2[x] + r4[x]) + k[1] * (r1[x] + r5[x]) + k[0] * (r0[x] + r6[x]);
        let r = (v + MAGIC).to_bits() as i32 - magic_bits;
        dst[x] = r.clamp(0, 255) as u8;
    }
}

/// [`blur_h_row`] 8 pixels at a time: the same IEEE operations in the same
/// order (no FMA), so the same result.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn blur_h_row_avx2(src: &[u8], k: &[f32; 7], t: &mut [f32]) {
    use std::arch::x86_64::*;
    let w = t.len();
    assert!(src.len() >= w + 6);
    let (k0, k1, k2, k3) = (_mm256_set1_ps(k[0]), _mm256_set1_ps(k[1]), _mm256_set1_ps(k[2]), _mm256_set1_ps(k[3]));
    let p = src.as_ptr();
    let mut x = 0;
    // 16 pixels per step: the symmetric pairs are summed as 16-bit integers
    // (exact, and so equal to the float sums of the portable path), then
    // converted and weighted as there
    let widen = |v: __m256i, hi: bool| {
        let h = if hi { _mm256_extracti128_si256(v, 1) } else { _mm256_castsi256_si128(v) };
        _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(h))
    };
    while x + 16 <= w {
        // SAFETY: x + 16 <= w, so the 16 bytes at x + j (j <= 6) end by
        // x + 22 <= w + 6 <= src.len(); the stores end at x + 16 <= t.len().
        let s = |j: usize| _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(x + j) as *const __m128i));
        let (s06, s15, s24, s3) = (_mm256_add_epi16(s(0), s(6)), _mm256_add_epi16(s(1), s(5)), _mm256_add_epi16(s(2), s(4)), s(3));
        for (half, off) in [(false, 0), (true, 8)] {
            let v = _mm256_add_ps(
                _mm256_add_ps(
                    _mm256_add_ps(_mm256_mul_ps(k3, widen(s3, half)), _mm256_mul_ps(k2, widen(s24, half))),
                    _mm256_mul_ps(k1, widen(s15, half)),
                ),
                _mm256_mul_ps(k0, widen(s06, half)),
            );
            _mm256_storeu_ps(t.as_mut_ptr().add(x + off), v);
        }
        x += 16;
    }
    while x + 8 <= w {
        // SAFETY: x + 8 <= w, so the 8 bytes at x + j (j <= 6) end by
        // x + 14 <= w + 6 <= src.len(); the store ends at x + 8 <= t.len().
        let s = |j: usize| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(x + j) as *const __m128i)));
        let v = _mm256_add_ps(
            _mm256_add_ps(
                _mm256_add_ps(_mm256_mul_ps(k3, s(3)), _mm256_mul_ps(k2, _mm256_add_ps(s(2), s(4)))),
                _mm256_mul_ps(k1, _mm256_add_ps(s(1), s(5))),
            ),
            _mm256_mul_ps(k0, _mm256_add_ps(s(0), s(6))),
        );
        _mm256_storeu_ps(t.as_mut_ptr().add(x), v);
        x += 8;
    }
    if x < w {
        blur_h_row(&src[x..w + 6], k, &mut t[x..]);
    }
}

/// [`blur_v_row`] 8 pixels at a time (same operations, same order).
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn blur_v_row_avx2(rows: &[&[f32]; 7], k: &[f32; 7], dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let w = dst.len();
    for r in rows {
        assert!(r.len() >= w);
    }
    let (k0, k1, k2, k3) = (_mm256_set1_ps(k[0]), _mm256_set1_ps(k[1]), _mm256_set1_ps(k[2]), _mm256_set1_ps(k[3]));
    const MAGIC: f32 = 12_582_912.0;
    let magic = _mm256_set1_ps(MAGIC);
    let magic_bits = _mm256_set1_epi32(MAGIC.to_bits() as i32);
    let mut x = 0;
    while x + 8 <= w {
        // SAFETY: x + 8 <= w <= every row's length and dst.len().
        let r = |i: usize| _mm256_loadu_ps(rows[i].as_ptr().add(x));
        let v = _mm256_add_ps(
            _mm256_add_ps(
                _mm256_add_ps(_mm256_mul_ps(k3, r(3)), _mm256_mul_ps(k2, _mm256_add_ps(r(2), r(4)))),
                _mm256_mul_ps(k1, _mm256_add_ps(r(1), r(5))),
            ),
            _mm256_mul_ps(k0, _mm256_add_ps(r(0), r(6))),
        );
        let i = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(v, magic)), magic_bits);
        // saturate to 0..=255 through two unsigned-saturating packs
        let p16 = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        let p8 = _mm_packus_epi16(p16, p16);
        _mm_storel_epi64(dst.as_mut_ptr().add(x) as *mut __m128i, p8);
        x += 8;
    }
    if x < w {
        let tail = [&rows[0][x..w], &rows[1][x..w], &rows[2][x..w], &rows[3][x..w], &rows[4][x..w], &rows[5][x..w], &rows[6][x..w]];
        blur_v_row(&tail, k, &mut dst[x..]);
    }
}

/// The 256 tests of a `wta_k = 2` descriptor around `data[center]` (row
/// stride `step`): the pattern rotated by (cos, sin) = (a, b) with the same
/// float operations as the portable path (no FMA), rounded half to even,
/// sampled, and compared 32 pairs per vector. Returns false, writing
/// nothing, when a rotated point lies farther than `reach` from the centre
/// on either axis.
///
/// # Safety
/// AVX2 must be available, `pat_x.len() == pat_y.len() == 512`,
/// `desc.len() == 32`, and `data` must hold every pixel within `reach` rows
/// and columns of `center`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn brief_wta2_avx2(data: &[u8], center: usize, step: i32, reach: i32, pat_x: &[f32], pat_y: &[f32], a: f32, b: f32, desc: &mut [u8]) -> bool {
    use std::arch::x86_64::*;
    assert!(pat_x.len() == 512 && pat_y.len() == 512 && desc.len() == DESCRIPTOR_BYTES);
    const MAGIC: f32 = 12_582_912.0;
    let magic = _mm256_set1_ps(MAGIC);
    let magic_bits = _mm256_set1_epi32(MAGIC.to_bits() as i32);
    let (va, vb, vstep) = (_mm256_set1_ps(a), _mm256_set1_ps(b), _mm256_set1_epi32(step));
    let mut ofs = [0i32; 512];
    let mut far = _mm256_setzero_si256();
    let lim = _mm256_set1_epi32(reach);
    for i in (0..512).step_by(8) {
        let px = _mm256_loadu_ps(pat_x.as_ptr().add(i));
        let py = _mm256_loadu_ps(pat_y.as_ptr().add(i));
        let x = _mm256_sub_ps(_mm256_mul_ps(px, va), _mm256_mul_ps(py, vb));
        let y = _mm256_add_ps(_mm256_mul_ps(px, vb), _mm256_mul_ps(py, va));
        let rx = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(x, magic)), magic_bits);
        let ry = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(y, magic)), magic_bits);
        far = _mm256_or_si256(far, _mm256_cmpgt_epi32(_mm256_abs_epi32(rx), lim));
        far = _mm256_or_si256(far, _mm256_cmpgt_epi32(_mm256_abs_epi32(ry), lim));
        let o = _mm256_add_epi32(_mm256_mullo_epi32(ry, vstep), rx);
        _mm256_storeu_si256(ofs.as_mut_ptr().add(i) as *mut __m256i, o);
    }
    if _mm256_testz_si256(far, far) == 0 {
        return false;
    }
    let c = data.as_ptr().add(center);
    let mut s0 = [0u8; 256];
    let mut s1 = [0u8; 256];
    for k in 0..256 {
        // SAFETY: |rx|, |ry| <= reach (checked above) and the caller
        // guarantees every pixel within `reach` of the centre is in `data`
        s0[k] = *c.offset(ofs[2 * k] as isize);
        s1[k] = *c.offset(ofs[2 * k + 1] as isize);
    }
    let sign = _mm256_set1_epi8(i8::MIN);
    for q in 0..8 {
        let x0 = _mm256_xor_si256(_mm256_loadu_si256(s0.as_ptr().add(32 * q) as *const __m256i), sign);
        let x1 = _mm256_xor_si256(_mm256_loadu_si256(s1.as_ptr().add(32 * q) as *const __m256i), sign);
        // bit k of the descriptor: sample 2k < sample 2k + 1 (unsigned)
        let bits = _mm256_movemask_epi8(_mm256_cmpgt_epi8(x1, x0)) as u32;
        desc[4 * q..4 * q + 4].copy_from_slice(&bits.to_le_bytes());
    }
    true
}

/// Taps of `getGaussianKernel(7, 2, CV_32F)`.
fn gaussian_kernel_7() -> [f32; 7] {
    let sigma = 2.0f64;
    let mut v = [0f64; 7];
    let mut sum = 0.0;
    for (i, vi) in v.iter_mut().enumerate() {
        let x = i as f64 - 3.0;
        *vi = (-(x * x) / (2.0 * sigma * sigma)).exp();
        sum += *vi;
    }
    let mut k = [0f32; 7];
    for i in 0..7 {
        k[i] = (v[i] / sum) as f32;
    }
    k
}

// ---------------------------------------------------------------------------
// Detection helpers

/// Keep the `n` best keypoints by response, plus every keypoint tied with the
/// `n`-th best (OpenCV `KeyPointsFilter::retainBest`). Order is preserved.
pub fn retain_best(kps: &mut Vec<KeyPoint>, n: usize) {
    if kps.len() <= n {
        return;
    }
    if n == 0 {
        kps.clear();
        return;
    }
    let mut r: Vec<f32> = kps.iter().map(|k| k.response).collect();
    let (_, nth, _) = r.select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a));
    let thr = *nth;
    kps.retain(|k| k.response >= thr);
}

/// Harris response of a 7x7 block centred on (x, y) of a level (OpenCV
/// `HarrisResponses`, float arithmetic in the same order).
fn harris_response(level: &Level, x: i32, y: i32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // the vector path reads columns x - 4 .. x + 5 of rows y - 4 .. y + 4
        let lo = level.idx(x as isize - 4, y as isize - 4) as isize;
        let hi = level.idx(x as isize + 5, y as isize + 4) as isize;
        if lo >= 0 && (hi as usize) < level.data.len() && crate::features::use_avx2() {
            // SAFETY: AVX2 is available and every byte read lies in
            // level.data[lo..=hi] (checked above). Integer sums: same result.
            let (a, b, c) = unsafe { harris_sums_avx2(level, x, y) };
            return harris_from_sums(a, b, c);
        }
    }
    let (a, b, c) = harris_sums(level, x, y);
    harris_from_sums(a, b, c)
}

/// The Harris response from the sums of Ix^2, Iy^2 and Ix Iy.
#[inline]
fn harris_from_sums(a: i32, b: i32, c: i32) -> f32 {
    let scale = 1.0f32 / ((1 << 2) as f32 * HARRIS_BLOCK as f32 * 255.0);
    let scale_sq_sq = scale * scale * scale * scale;
    let (fa, fb, fc) = (a as f32, b as f32, c as f32);
    (fa * fb - fc * fc - HARRIS_K * (fa + fb) * (fa + fb)) * scale_sq_sq
}

/// Sums of Ix^2, Iy^2, Ix Iy (3x3 Sobel) over the 7x7 block at (x, y), one
/// block row per 8-lane vector of i16 (lane 7 masked out).
///
/// # Safety
/// AVX2 must be available and level.data must hold columns x - 4 ..= x + 5
/// of rows y - 4 ..= y + 4.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn harris_sums_avx2(level: &Level, x: i32, y: i32) -> (i32, i32, i32) {
    use std::arch::x86_64::*;
    let ptr = level.data.as_ptr();
    // 8 pixels from column x + dx of row y + dy, widened to i16
    let row = |dy: isize, dx: isize| {
        let p = ptr.add(level.idx(x as isize + dx, y as isize + dy));
        _mm_cvtepu8_epi16(_mm_loadl_epi64(p as *const __m128i))
    };
    // lanes j = 0..7 are block columns x - 3 + j; left / centre / right samples
    let load = |dy: isize| (row(dy, -4), row(dy, -3), row(dy, -2));
    let keep = _mm_setr_epi16(-1, -1, -1, -1, -1, -1, -1, 0);
    let (mut sa, mut sb, mut sc) = (_mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128());
    let mut up = load(-4);
    let mut mid = load(-3);
    for dy in -3..=3isize {
        let down = load(dy + 1);
        let two = |v: __m128i| _mm_add_epi16(v, v);
        let ix = _mm_add_epi16(
            two(_mm_sub_epi16(mid.2, mid.0)),
            _mm_add_epi16(_mm_sub_epi16(up.2, up.0), _mm_sub_epi16(down.2, down.0)),
        );
        let iy = _mm_add_epi16(
            two(_mm_sub_epi16(down.1, up.1)),
            _mm_add_epi16(_mm_sub_epi16(down.0, up.0), _mm_sub_epi16(down.2, up.2)),
        );
        let ix = _mm_and_si128(ix, keep);
        let iy = _mm_and_si128(iy, keep);
        sa = _mm_add_epi32(sa, _mm_madd_epi16(ix, ix));
        sb = _mm_add_epi32(sb, _mm_madd_epi16(iy, iy));
        sc = _mm_add_epi32(sc, _mm_madd_epi16(ix, iy));
        up = mid;
        mid = down;
    }
    let hsum = |v: __m128i| {
        let v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b01_00_11_10));
        let v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b10_11_00_01));
        _mm_cvtsi128_si32(v)
    };
    (hsum(sa), hsum(sb), hsum(sc))
}

/// Portable [`harris_sums_avx2`].
fn harris_sums(level: &Level, x: i32, y: i32) -> (i32, i32, i32) {
    let r = (HARRIS_BLOCK / 2) as isize;
    let step = level.stride as isize;
    let d = &level.data;
    let (mut a, mut b, mut c) = (0i32, 0i32, 0i32);
    for i in 0..HARRIS_BLOCK as isize {
        let row = level.idx(x as isize - r, y as isize - r + i) as isize;
        for j in 0..HARRIS_BLOCK as isize {
            let p = row + j;
            let at = |o: isize| d[(p + o) as usize] as i32;
            let ix = (at(1) - at(-1)) * 2 + (at(-step + 1) - at(-step - 1)) + (at(step + 1) - at(step - 1));
            let iy = (at(step) - at(-step)) * 2 + (at(step - 1) - at(-step - 1)) + (at(step + 1) - at(-step + 1));
            a += ix * ix;
            b += iy * iy;
            c += ix * iy;
        }
    }
    (a, b, c)
}

/// Lane masks of the circular patch for [`ic_angle_avx2`]: for each row
/// offset `v` in `0..=half_k`, byte `j` is 0xFF when `|j - 16| <= umax[v]`
/// (`half_k` for `v = 0`). Empty when `half_k > 15` (no vector path).
fn angle_masks(half_k: i32, umax: &[i32]) -> Vec<[u8; 32]> {
    if !(0..=15).contains(&half_k) {
        return Vec::new();
    }
    (0..=half_k)
        .map(|v| {
            let dd = if v == 0 { half_k } else { umax[v as usize] };
            let mut m = [0u8; 32];
            for (j, b) in m.iter_mut().enumerate() {
                if (j as i32 - 16).abs() <= dd {
                    *b = 0xFF;
                }
            }
            m
        })
        .collect()
}

/// Intensity-centroid angle (degrees) at (x, y) of a level (OpenCV `ICAngles`).
fn ic_angle(level: &Level, x: i32, y: i32, half_k: i32, umax: &[i32], masks: &[[u8; 32]]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if !masks.is_empty() {
            let c = level.idx(x as isize, y as isize) as isize;
            let reach = half_k as isize * level.stride as isize + 16;
            if c >= reach && ((c + reach) as usize) <= level.data.len() && crate::features::use_avx2() {
                // SAFETY: AVX2 is available; the loads cover
                // c - reach .. c + reach, inside level.data (checked above).
                // Integer sums: same result as the portable loop.
                let (m01, m10) = unsafe { ic_moments_avx2(level, c as usize, half_k, masks) };
                return fast_atan2(m01 as f32, m10 as f32);
            }
        }
    }
    ic_angle_portable(level, x, y, half_k, umax)
}

/// Moments (m01, m10) of the circular patch around `level.data[c]`, 32
/// columns (u = -16..15) per row, outside the circle masked to 0.
///
/// # Safety
/// AVX2 must be available and `level.data` must hold
/// `c - half_k * stride - 16 .. c + half_k * stride + 16`; `half_k <= 15`
/// and `masks.len() > half_k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn ic_moments_avx2(level: &Level, c: usize, half_k: i32, masks: &[[u8; 32]]) -> (i32, i32) {
    use std::arch::x86_64::*;
    let ptr = level.data.as_ptr().add(c - 16);
    let step = level.stride as isize;
    let mut u_lo = [0i16; 16];
    let mut u_hi = [0i16; 16];
    for j in 0..16 {
        u_lo[j] = j as i16 - 16;
        u_hi[j] = j as i16;
    }
    let u_lo = _mm256_loadu_si256(u_lo.as_ptr() as *const __m256i);
    let u_hi = _mm256_loadu_si256(u_hi.as_ptr() as *const __m256i);
    // 32 masked pixels of row offset dv, widened to i16 (u < 0, u >= 0)
    let row = |dv: isize, mask: __m256i| {
        let v = _mm256_and_si256(_mm256_loadu_si256(ptr.offset(dv * step) as *const __m256i), mask);
        (_mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(v, 1)))
    };
    let (c_lo, c_hi) = row(0, _mm256_loadu_si256(masks[0].as_ptr() as *const __m256i));
    let mut m10 = _mm256_add_epi32(_mm256_madd_epi16(c_lo, u_lo), _mm256_madd_epi16(c_hi, u_hi));
    let mut m01 = _mm256_setzero_si256();
    for v in 1..=half_k as isize {
        let mask = _mm256_loadu_si256(masks[v as usize].as_ptr() as *const __m256i);
        let (p_lo, p_hi) = row(v, mask);
        let (n_lo, n_hi) = row(-v, mask);
        let s_lo = _mm256_add_epi16(p_lo, n_lo);
        let s_hi = _mm256_add_epi16(p_hi, n_hi);
        m10 = _mm256_add_epi32(m10, _mm256_add_epi32(_mm256_madd_epi16(s_lo, u_lo), _mm256_madd_epi16(s_hi, u_hi)));
        let d = _mm256_add_epi16(_mm256_sub_epi16(p_lo, n_lo), _mm256_sub_epi16(p_hi, n_hi));
        m01 = _mm256_add_epi32(m01, _mm256_madd_epi16(d, _mm256_set1_epi16(v as i16)));
    }
    let hsum = |v: __m256i| {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    };
    (hsum(m01), hsum(m10))
}

/// Portable [`ic_angle`].
fn ic_angle_portable(level: &Level, x: i32, y: i32, half_k: i32, umax: &[i32]) -> f32 {
    let step = level.stride as isize;
    let c = level.idx(x as isize, y as isize) as isize;
    let d = &level.data;
    let (mut m01, mut m10) = (0i32, 0i32);
    for u in -half_k..=half_k {
        m10 += u * d[(c + u as isize) as usize] as i32;
    }
    for v in 1..=half_k {
        let mut v_sum = 0i32;
        let dd = umax[v as usize];
        for u in -dd..=dd {
            let plus = d[(c + u as isize + v as isize * step) as usize] as i32;
            let minus = d[(c + u as isize - v as isize * step) as usize] as i32;
            v_sum += plus - minus;
            m10 += u * (plus + minus);
        }
        m01 += v * v_sum;
    }
    fast_atan2(m01 as f32, m10 as f32)
}

/// Row ends of the circular patch of radius `half` (OpenCV's `umax`).
fn circular_umax(half: i32) -> Vec<i32> {
    let mut umax = vec![0i32; half as usize + 2];
    let vmax = (half as f32 * std::f32::consts::SQRT_2 / 2.0 + 1.0).floor() as i32;
    let vmin = (half as f32 * std::f32::consts::SQRT_2 / 2.0).ceil() as i32;
    for v in 0..=vmax {
        umax[v as usize] = ((half as f64 * half as f64 - (v * v) as f64).sqrt()).round_ties_even() as i32;
    }
    let mut v0 = 0usize;
    let mut v = half;
    while v >= vmin {
        while umax[v0] == umax[v0 + 1] {
            v0 += 1;
        }
        umax[v as usize] = v0 as i32;
        v0 += 1;
        v -= 1;
    }
    umax
}

/// The descriptor test points: OpenCV's learned pattern for `patch_size` 31,
/// otherwise its fixed-seed random pattern; regrouped into tuples for
/// `wta_k` 3 and 4 as `initializeOrbPattern` does.
fn make_pattern(patch_size: usize, wta_k: usize) -> Vec<(i32, i32)> {
    const NPOINTS: usize = 512;
    let mut pool: Vec<(i32, i32)> = Vec::with_capacity(NPOINTS);
    if patch_size == 31 {
        for p in BIT_PATTERN_31.iter() {
            pool.push((p[0] as i32, p[1] as i32));
            pool.push((p[2] as i32, p[3] as i32));
        }
    } else {
        let mut rng = CvRng::new(0x3498_5739);
        let half = patch_size as i32 / 2;
        for _ in 0..NPOINTS {
            let x = rng.uniform(-half, half + 1);
            let y = rng.uniform(-half, half + 1);
            pool.push((x, y));
        }
    }
    if wta_k == 2 {
        return pool;
    }
    let ntuples = DESCRIPTOR_BYTES * 4;
    let mut rng = CvRng::new(0x1234_5678);
    let mut out = vec![(0, 0); ntuples * wta_k];
    for i in 0..ntuples {
        for k in 0..wta_k {
            loop {
                let idx = rng.uniform(0, NPOINTS as i32) as usize;
                let pt = pool[idx];
                if !out[wta_k * i..wta_k * i + k].contains(&pt) {
                    out[wta_k * i + k] = pt;
                    break;
                }
            }
        }
    }
    out
}

/// Number of keypoints each level may keep (OpenCV's geometric series).
fn features_per_level(n_features: usize, scale_factor: f64, n_levels: usize) -> Vec<usize> {
    let factor = (1.0 / scale_factor) as f32;
    let mut desired = n_features as f32 * (1.0 - factor) / (1.0 - (factor as f64).powf(n_levels as f64) as f32);
    let mut out = vec![0usize; n_levels];
    let mut sum = 0i64;
    for o in out.iter_mut().take(n_levels - 1) {
        let n = cv_round(desired).max(0);
        *o = n as usize;
        sum += n as i64;
        desired *= factor;
    }
    out[n_levels - 1] = (n_features as i64 - sum).max(0) as usize;
    out
}

impl Orb {
    /// Validate the parameters.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming the bad parameter.
    pub fn new(params: OrbParams) -> Result<Self> {
        if params.scale_factor.is_nan() || params.scale_factor <= 1.0 || !params.scale_factor.is_finite() {
            return Err(BovwError::param("scale_factor", format!("must be a finite number greater than 1, got {}", params.scale_factor)));
        }
        if params.n_levels == 0 || params.n_levels > 64 {
            return Err(BovwError::param("n_levels", format!("must be in 1..=64, got {}", params.n_levels)));
        }
        if !(2..=4).contains(&params.wta_k) {
            return Err(BovwError::param("wta_k", format!("must be 2, 3 or 4, got {}", params.wta_k)));
        }
        if params.patch_size < 2 || params.patch_size > 255 {
            return Err(BovwError::param("patch_size", format!("must be in 2..=255, got {}", params.patch_size)));
        }
        if params.edge_threshold > 10_000 {
            return Err(BovwError::param("edge_threshold", format!("must be at most 10000, got {}", params.edge_threshold)));
        }
        if params.first_level >= params.n_levels {
            return Err(BovwError::param(
                "first_level",
                format!("must be in 0..n_levels (0..={}), got {}", params.n_levels - 1, params.first_level),
            ));
        }
        let pattern = make_pattern(params.patch_size, params.wta_k);
        let umax = circular_umax(params.patch_size as i32 / 2);
        let angle_masks = angle_masks(params.patch_size as i32 / 2, &umax);
        Ok(Orb { params, pattern, umax, angle_masks })
    }

    /// OpenCV stores `scaleFactor` as a float (`ORB_create(float scaleFactor)`).
    fn scale_factor(&self) -> f64 {
        self.params.scale_factor as f32 as f64
    }

    fn level_scale(&self, level: usize) -> f32 {
        self.scale_factor().powi(level as i32 - self.params.first_level as i32) as f32
    }

    fn border(&self) -> usize {
        let half = self.params.patch_size / 2;
        let desc = (half as f64 * std::f64::consts::SQRT_2).ceil() as usize;
        self.params.edge_threshold.max(desc).max(4) + 1
    }

    /// Build `n` pyramid levels (`None` for empty levels of tiny images),
    /// with the resized masks (255 = keep) when a mask is given.
    fn pyramid(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>, n: usize, detecting: bool) -> (Vec<Option<Level>>, Vec<Option<Vec<u8>>>) {
        let border = self.border();
        // When detecting, levels past the last one large enough to hold a
        // keypoint are not needed (each is only the source of smaller ones).
        let n = if detecting {
            let edge = self.params.edge_threshold;
            let last = (0..n).rev().find(|&l| {
                let inv = 1.0f32 / self.level_scale(l);
                let w = cv_round(image.width as f32 * inv).max(0) as usize;
                let h = cv_round(image.height as f32 * inv).max(0) as usize;
                w > 2 * edge && h > 2 * edge && w >= 7 && h >= 7
            });
            match last {
                Some(l) => l + 1,
                None => 0,
            }
        } else {
            n
        };
        let first = self.params.first_level;
        let mut levels: Vec<Option<Level>> = Vec::with_capacity(n);
        let mut masks: Vec<Option<Vec<u8>>> = Vec::with_capacity(n);
        // the source of the next resize: (level index or None for the image)
        let mut prev: Option<usize> = None;
        let mut prev_mask: Option<Vec<u8>> = mask.map(|m| m.data.to_vec());
        for level in 0..n {
            let inv = 1.0f32 / self.level_scale(level);
            let w = cv_round(image.width as f32 * inv).max(0) as usize;
            let h = cv_round(image.height as f32 * inv).max(0) as usize;
            if w == 0 || h == 0 {
                levels.push(None);
                masks.push(None);
                continue;
            }
            // the resize source: (buffer, stride, origin, width, height)
            let (src, sstride, sorigin, sw, sh): (&[u8], usize, usize, usize, usize) = match prev {
                Some(p) => match &levels[p] {
                    Some(l) => (&l.data, l.stride, l.idx(0, 0), l.w, l.h),
                    None => {
                        levels.push(None);
                        masks.push(None);
                        continue;
                    }
                },
                None => (image.data, image.width, 0, image.width, image.height),
            };
            let mut lvl = Level::uninit(w, h, border);
            let o = lvl.idx(0, 0);
            if level == first {
                for y in 0..h {
                    lvl.data[o + y * lvl.stride..o + y * lvl.stride + w].copy_from_slice(&image.data[y * w..(y + 1) * w]);
                }
            } else {
                resize_linear_exact_into(src, sstride, sorigin, sw, sh, &mut lvl.data, lvl.stride, o, w, h);
            }
            lvl.fill_border();
            let lvl_mask = mask.map(|m| {
                if level == first {
                    m.data.to_vec()
                } else {
                    let pm = prev_mask.as_ref().expect("mask source");
                    let (mw, mh) = match prev {
                        Some(_) => (sw, sh),
                        None => (m.width, m.height),
                    };
                    let mut r = resize_linear_exact(pm, mw, 0, mw, mh, w, h);
                    if level > first {
                        for v in r.iter_mut() {
                            if *v <= 254 {
                                *v = 0;
                            }
                        }
                    }
                    r
                }
            });
            levels.push(Some(lvl));
            if level > first {
                prev = Some(level);
                prev_mask = lvl_mask.clone();
            }
            masks.push(lvl_mask);
        }
        (levels, masks)
    }

    /// Detect keypoints on the (unsmoothed) pyramid; angle and response set,
    /// coordinates in level-0 pixels.
    fn detect_on(&self, levels: &[Option<Level>], masks: &[Option<Vec<u8>>]) -> Vec<KeyPoint> {
        let p = &self.params;
        let per_level = features_per_level(p.n_features, self.scale_factor(), p.n_levels);
        let edge = p.edge_threshold;
        let half_k = (p.patch_size / 2) as i32;
        let mut all = Vec::new();
        for (lv, level) in levels.iter().enumerate() {
            let Some(level) = level else { continue };
            let n = per_level[lv];
            if n == 0 {
                continue;
            }
            // border filter (KeyPointsFilter::runByImageBorder), applied by
            // searching only the window where keypoints may lie
            if edge > 0 && (level.h <= 2 * edge || level.w <= 2 * edge) {
                continue;
            }
            let window = (edge, level.w - edge, edge, level.h - edge);
            let corners = fast9_window(&level.data, level.idx(0, 0), level.stride, level.w, level.h, p.fast_threshold, true, window);
            let sf = self.level_scale(lv);
            let mut kps: Vec<KeyPoint> = corners
                .into_iter()
                .filter(|c| masks[lv].as_ref().map_or(true, |m| m[c.y * level.w + c.x] != 0))
                .map(|c| KeyPoint {
                    x: c.x as f32,
                    y: c.y as f32,
                    size: p.patch_size as f32 * sf,
                    angle: -1.0,
                    response: c.score as f32,
                    octave: lv as i32,
                    class_id: -1,
                })
                .collect();
            if p.score_type == ScoreType::Harris {
                retain_best(&mut kps, 2 * n);
                for k in kps.iter_mut() {
                    k.response = harris_response(level, k.x as i32, k.y as i32);
                }
            }
            retain_best(&mut kps, n);
            for k in kps.iter_mut() {
                k.angle = ic_angle(level, k.x as i32, k.y as i32, half_k, &self.umax, &self.angle_masks);
                k.x *= sf;
                k.y *= sf;
            }
            // deterministic order within the level: best response first
            kps.sort_by(|a, b| b.response.total_cmp(&a.response).then(a.y.total_cmp(&b.y)).then(a.x.total_cmp(&b.x)));
            all.extend(kps);
        }
        all
    }

    /// Descriptors of keypoints (level-0 coordinates, `octave` = level) on the
    /// pyramid; smooths the levels that have keypoints.
    fn describe(&self, levels: &mut [Option<Level>], kps: &[KeyPoint]) -> Vec<u8> {
        let kernel = gaussian_kernel_7();
        // smooth, on each level, only the box the descriptors sample:
        // keypoint centres +- the pattern's reach (the rest is never read)
        let reach = self.pattern.iter().map(|&(x, y)| (((x * x + y * y) as f64).sqrt().ceil() as isize) + 1).max().unwrap_or(0);
        let mut boxes: Vec<Option<(isize, isize, isize, isize)>> = vec![None; levels.len()];
        for k in kps {
            let lv = k.octave as usize;
            let scale = 1.0f32 / self.level_scale(lv);
            let (cx, cy) = (cv_round(k.x * scale) as isize, cv_round(k.y * scale) as isize);
            let b = boxes[lv].get_or_insert((cx, cx, cy, cy));
            *b = (b.0.min(cx), b.1.max(cx), b.2.min(cy), b.3.max(cy));
        }
        for (l, b) in levels.iter_mut().zip(&boxes) {
            if let (Some(l), Some(b)) = (l.as_mut(), b) {
                let x0 = (b.0 - reach).clamp(0, l.w as isize) as usize;
                let x1 = (b.1 + reach + 1).clamp(0, l.w as isize) as usize;
                let y0 = (b.2 - reach).clamp(0, l.h as isize) as usize;
                let y1 = (b.3 + reach + 1).clamp(0, l.h as isize) as usize;
                if x0 < x1 && y0 < y1 {
                    gaussian_blur_7x7(l, &kernel, (x0, x1, y0, y1));
                }
            }
        }
        let mut out = vec![0u8; kps.len() * DESCRIPTOR_BYTES];
        let deg2rad = (std::f64::consts::PI / 180.0) as f32;
        let npts = self.pattern.len();
        let pat_x: Vec<f32> = self.pattern.iter().map(|p| p.0 as f32).collect();
        let pat_y: Vec<f32> = self.pattern.iter().map(|p| p.1 as f32).collect();
        let mut rx = vec![0i32; npts];
        let mut ry = vec![0i32; npts];
        let mut ofs = vec![0usize; npts];
        // adding 1.5 * 2^23 rounds |v| < 2^22 to an integer (ties to even, as
        // cvRound) held in the low mantissa bits: a vectorisable cvRound
        const MAGIC: f32 = 12_582_912.0;
        let magic_bits = MAGIC.to_bits() as i32;
        #[cfg(target_arch = "x86_64")]
        let avx2 = crate::features::use_avx2();
        for (k, desc) in kps.iter().zip(out.chunks_exact_mut(DESCRIPTOR_BYTES)) {
            let Some(level) = levels[k.octave as usize].as_ref() else { continue };
            let scale = 1.0f32 / self.level_scale(k.octave as usize);
            let cx = cv_round(k.x * scale) as isize;
            let cy = cv_round(k.y * scale) as isize;
            let angle = k.angle * deg2rad;
            let (a, b) = (angle.cos(), angle.sin());
            let (pw, ph) = (level.stride as isize, (level.data.len() / level.stride) as isize);
            let bx = cx + level.border as isize;
            let by = cy + level.border as isize;
            #[cfg(target_arch = "x86_64")]
            {
                if self.params.wta_k == 2 && npts == 512 && avx2 && bx >= reach && by >= reach && bx + reach < pw && by + reach < ph {
                    // SAFETY: AVX2 is available; the samples are checked to
                    // lie within `reach` of the centre, which is at least
                    // `reach` from every edge of the buffer.
                    if unsafe { brief_wta2_avx2(&level.data, (by * pw + bx) as usize, pw as i32, reach as i32, &pat_x, &pat_y, a, b, desc) } {
                        continue;
                    }
                }
            }
            for i in 0..npts {
                let x = pat_x[i] * a - pat_y[i] * b;
                let y = pat_x[i] * b + pat_y[i] * a;
                rx[i] = (x + MAGIC).to_bits() as i32 - magic_bits;
                ry[i] = (y + MAGIC).to_bits() as i32 - magic_bits;
            }
            if bx >= reach && by >= reach && bx + reach < pw && by + reach < ph {
                // every sample is inside the buffer (always so for detected keypoints)
                let base = by * pw + bx;
                for i in 0..npts {
                    ofs[i] = (base + ry[i] as isize * pw + rx[i] as isize) as usize;
                }
            } else {
                // user keypoints near the border: clamp to the buffer
                for i in 0..npts {
                    let sx = (bx + rx[i] as isize).clamp(0, pw - 1);
                    let sy = (by + ry[i] as isize).clamp(0, ph - 1);
                    ofs[i] = (sy * pw + sx) as usize;
                }
            }
            let v = |i: usize| level.data[ofs[i]];
            match self.params.wta_k {
                2 => {
                    for (i, byte) in desc.iter_mut().enumerate() {
                        let mut val = 0u8;
                        for bit in 0..8 {
                            let j = i * 16 + bit * 2;
                            val |= ((v(j) < v(j + 1)) as u8) << bit;
                        }
                        *byte = val;
                    }
                }
                3 => {
                    for (i, byte) in desc.iter_mut().enumerate() {
                        let mut val = 0u8;
                        for q in 0..4 {
                            let j = i * 12 + q * 3;
                            let (t0, t1, t2) = (v(j), v(j + 1), v(j + 2));
                            let code = if t2 > t1 { if t2 > t0 { 2 } else { 0 } } else { (t1 > t0) as u8 };
                            val |= code << (2 * q);
                        }
                        *byte = val;
                    }
                }
                _ => {
                    for (i, byte) in desc.iter_mut().enumerate() {
                        let mut val = 0u8;
                        for q in 0..4 {
                            let j = i * 16 + q * 4;
                            let (mut t0, t1, mut t2, t3) = (v(j), v(j + 1), v(j + 2), v(j + 3));
                            let (mut u, mut w) = (0u8, 2u8);
                            if t1 > t0 {
                                t0 = t1;
                                u = 1;
                            }
                            if t3 > t2 {
                                t2 = t3;
                                w = 3;
                            }
                            let code = if t0 > t2 { u } else { w };
                            val |= code << (2 * q);
                        }
                        *byte = val;
                    }
                }
            }
        }
        out
    }

    fn check_inputs(image: GrayView<'_>, mask: Option<GrayView<'_>>) -> Result<()> {
        if image.data.len() != image.width * image.height {
            return Err(BovwError::Shape {
                what: "image".into(),
                expected: format!("{} bytes", image.width * image.height),
                got: format!("{} bytes", image.data.len()),
            });
        }
        if let Some(m) = mask {
            if (m.width, m.height) != (image.width, image.height) {
                return Err(BovwError::Shape {
                    what: "mask".into(),
                    expected: format!("({}, {}) like the image", image.height, image.width),
                    got: format!("({}, {})", m.height, m.width),
                });
            }
        }
        Ok(())
    }

    /// Detect keypoints (with orientation and response), in OpenCV's order of
    /// levels; within a level, by decreasing response.
    ///
    /// An image too small for any level to have keypoints gives none.
    ///
    /// # Errors
    /// [`BovwError::Shape`] when the mask does not match the image.
    pub fn detect(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>) -> Result<Vec<KeyPoint>> {
        Self::check_inputs(image, mask)?;
        if image.width == 0 || image.height == 0 {
            return Ok(Vec::new());
        }
        let (levels, masks) = self.pyramid(image, mask, self.params.n_levels, true);
        let kps = self.detect_on(&levels, &masks);
        recycle(levels);
        Ok(kps)
    }

    /// Compute descriptors at the given keypoints (level-0 coordinates;
    /// `octave` = pyramid level, `angle` in degrees), as OpenCV's
    /// `ORB::compute`: keypoints closer than `edge_threshold` to the image
    /// border are dropped, the rest are grouped by level.
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when a keypoint has a negative octave or a
    /// non-finite coordinate or angle.
    pub fn compute(&self, image: GrayView<'_>, keypoints: &[KeyPoint]) -> Result<(Vec<KeyPoint>, Descriptors)> {
        Self::check_inputs(image, None)?;
        let empty = Descriptors::U8 { data: Vec::new(), width: DESCRIPTOR_BYTES };
        for (i, k) in keypoints.iter().enumerate() {
            if k.octave < 0 || k.octave > 64 {
                return Err(BovwError::input(format!("keypoints: row {i} has octave {} (ORB levels are 0..=64)", k.octave)));
            }
            if !(k.x.is_finite() && k.y.is_finite() && k.angle.is_finite()) {
                return Err(BovwError::input(format!("keypoints: row {i} has a non-finite x, y or angle")));
            }
        }
        if keypoints.is_empty() || image.width == 0 || image.height == 0 {
            return Ok((Vec::new(), empty));
        }
        let edge = self.params.edge_threshold as f32;
        let (w, h) = (image.width as f32, image.height as f32);
        let kept: Vec<KeyPoint> = if edge > 0.0 && (h <= 2.0 * edge || w <= 2.0 * edge) {
            Vec::new()
        } else {
            keypoints.iter().copied().filter(|k| k.x >= edge && k.x < w - edge && k.y >= edge && k.y < h - edge).collect()
        };
        let n_levels = keypoints.iter().map(|k| k.octave as usize).max().unwrap_or(0) + 1;
        let (mut levels, _) = self.pyramid(image, None, n_levels, false);
        // group by level (stable), as OpenCV does
        let mut sorted: Vec<KeyPoint> = Vec::with_capacity(kept.len());
        for (l, level) in levels.iter().enumerate() {
            sorted.extend(kept.iter().filter(|k| k.octave as usize == l && level.is_some()));
        }
        if sorted.is_empty() {
            recycle(levels);
            return Ok((Vec::new(), empty));
        }
        let data = self.describe(&mut levels, &sorted);
        recycle(levels);
        Ok((sorted, Descriptors::U8 { data, width: DESCRIPTOR_BYTES }))
    }
}

impl Extractor for Orb {
    fn info(&self) -> DescriptorInfo {
        DescriptorInfo { width: DESCRIPTOR_BYTES, dtype: DescriptorDtype::Uint8, kind: DescriptorKind::Local, needs: ColorNeeds::GRAY }
    }
    fn extract(&self, image: &DecodedImage) -> Result<Features> {
        self.detect_and_compute(image.require_gray()?, None)
    }
    /// Per pyramid level (`round(w / s^(l - first_level))` square pixels):
    /// the level, its smoothed copy, score and mask buffers, at most 6 bytes
    /// a pixel; per kept keypoint (at most `n_features`, at most one per
    /// level pixel) 96 bytes. Measured peak at the defaults: 5-10 bytes per
    /// input pixel (the estimate: 19); 16 MiB added for small images.
    fn memory_bytes(&self, width: usize, height: usize) -> Option<u128> {
        let p = &self.params;
        let mut level_px = 0u128;
        for l in 0..p.n_levels {
            let inv = 1.0 / self.level_scale(l) as f64;
            let (w, h) = ((width as f64 * inv).round(), (height as f64 * inv).round());
            level_px = level_px.saturating_add((w * h).min(u128::MAX as f64 / 1e3) as u128);
        }
        let kept = (p.n_features as u128).min(level_px);
        Some(level_px.saturating_mul(6).saturating_add(kept * 96).saturating_add(16 << 20))
    }
}

impl FeatureExtractor for Orb {
    fn detect(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>) -> Result<Vec<KeyPoint>> {
        Orb::detect(self, image, mask)
    }
    fn compute(&self, image: GrayView<'_>, keypoints: &[KeyPoint]) -> Result<Features> {
        Orb::compute(self, image, keypoints)
    }
    fn detect_and_compute(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>) -> Result<Features> {
        Self::check_inputs(image, mask)?;
        let empty = Descriptors::U8 { data: Vec::new(), width: DESCRIPTOR_BYTES };
        if image.width == 0 || image.height == 0 {
            return Ok((Vec::new(), empty));
        }
        let (mut levels, masks) = self.pyramid(image, mask, self.params.n_levels, true);
        let kps = self.detect_on(&levels, &masks);
        if kps.is_empty() {
            recycle(levels);
            return Ok((kps, empty));
        }
        let data = self.describe(&mut levels, &kps);
        recycle(levels);
        Ok((kps, Descriptors::U8 { data, width: DESCRIPTOR_BYTES }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_atan2_quadrants() {
        for &(y, x, want) in &[(0.0f32, 1.0f32, 0.0f32), (1.0, 1.0, 45.0), (1.0, 0.0, 90.0), (1.0, -1.0, 135.0), (-1.0, -1.0, 225.0), (-1.0, 1.0, 315.0)] {
            let a = fast_atan2(y, x);
            assert!((a - want).abs() < 0.02, "atan2({y}, {x}) = {a}");
        }
        for i in 0..360 {
            let t = (i as f64 + 0.3).to_radians();
            let a = fast_atan2(t.sin() as f32 * 7.0, t.cos() as f32 * 7.0) as f64;
            assert!((a - (i as f64 + 0.3)).abs() < 0.02);
        }
    }

    #[test]
    fn cv_rng_matches_opencv_sequence() {
        // cv::RNG(0x34985739).uniform(-15, 16) twice... first values of
        // OpenCV's makeRandomPattern for patchSize 31 (checked with cv2 behaviour:
        // state' = (u32)state * 4164903690 + (state >> 32))
        let mut r = CvRng::new(1);
        assert_eq!(r.next(), 4_164_903_690u32);
        let r = CvRng::new(0);
        assert_eq!(r.0, 0xffff_ffff);
    }

    #[test]
    fn cv_round_is_half_to_even() {
        let got: Vec<i32> = [-2.5f32, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999, -3.7, 1e9].iter().map(|&x| cv_round(x)).collect();
        assert_eq!(got, vec![-2, -2, 0, 0, 2, 2, 2, -4, 1_000_000_000]);
    }

    #[test]
    fn reflect101_known_answers() {
        // OpenCV borderInterpolate(p, 5, BORDER_REFLECT_101)
        let got: Vec<usize> = (-6..11).map(|p| reflect101(p, 5)).collect();
        assert_eq!(got, vec![2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2]);
        assert_eq!(reflect101(-3, 1), 0);
    }

    #[test]
    fn per_level_budget_is_opencv_series() {
        // cv2 ORB defaults: 500 features over 8 levels with factor 1/1.2
        let v = features_per_level(500, 1.2f32 as f64, 8);
        assert_eq!(v.iter().sum::<usize>(), 500);
        // 500 (1 - 1/1.2) / (1 - 1.2^-8) = 108.6, then x 1/1.2 each level
        assert_eq!(v[..3], [109, 90, 75]);
    }

    #[test]
    fn umax_for_patch_31() {
        assert_eq!(circular_umax(15), vec![15, 15, 15, 15, 14, 14, 14, 13, 13, 12, 11, 10, 9, 8, 6, 3, 0]);
    }

    #[test]
    fn resize_identity_and_constant() {
        let img: Vec<u8> = (0..100).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(resize_linear_exact(&img, 10, 0, 10, 10, 10, 10), img);
        let flat = vec![93u8; 120 * 90];
        assert!(resize_linear_exact(&flat, 120, 0, 120, 90, 100, 75).iter().all(|&v| v == 93));
        // halving: each output is the mean of a 2x2 block
        let src = vec![0u8, 100, 50, 150, 200, 100, 250, 150];
        let out = resize_linear_exact(&src, 4, 0, 4, 2, 2, 1);
        assert_eq!(out, vec![100, 150]);
    }

    #[test]
    fn gaussian_kernel_taps() {
        // cv2.getGaussianKernel(7, 2, cv2.CV_32F)
        let k = gaussian_kernel_7();
        let want = [0.07015932f32, 0.13107488, 0.19071282, 0.21610594];
        for i in 0..4 {
            assert!((k[i] - want[i]).abs() < 1e-7 && k[i] == k[6 - i]);
        }
    }

    #[test]
    fn retain_best_keeps_ties() {
        let mk = |r: f32| KeyPoint { response: r, ..Default::default() };
        let mut v = vec![mk(1.0), mk(5.0), mk(3.0), mk(3.0), mk(2.0)];
        retain_best(&mut v, 2);
        let r: Vec<f32> = v.iter().map(|k| k.response).collect();
        assert_eq!(r, vec![5.0, 3.0, 3.0]);
        retain_best(&mut v, 0);
        assert!(v.is_empty());
    }

    fn checker(w: usize, h: usize) -> Vec<u8> {
        let mut img = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w {
                let v = ((x / 9 + y / 13) % 2) as u8 * 180 + ((x * 31 + y * 17) % 23) as u8;
                img[y * w + x] = v;
            }
        }
        img
    }

    #[test]
    fn detect_and_compute_is_consistent_and_deterministic() {
        let (w, h) = (160, 120);
        let img = checker(w, h);
        let orb = Orb::new(OrbParams::default()).unwrap();
        let view = GrayView::new(&img, w, h);
        let (kps, desc) = orb.detect_and_compute(view, None).unwrap();
        assert!(!kps.is_empty());
        assert!(kps.len() <= 500 + 50);
        assert_eq!(desc.len(), kps.len());
        let again = orb.detect_and_compute(view, None).unwrap();
        assert_eq!(again.0, kps);
        assert_eq!(again.1, desc);
        // detect gives the same keypoints; compute on them the same descriptors
        assert_eq!(orb.detect(view, None).unwrap(), kps);
        let (k2, d2) = orb.compute(view, &kps).unwrap();
        assert_eq!(k2.len(), kps.len());
        assert_eq!(d2, desc);
        for k in &kps {
            assert!((0.0..360.0).contains(&k.angle));
            assert!(k.x >= 31.0 && k.y >= 31.0 && k.x < (w - 31) as f32 && k.y < (h - 31) as f32);
        }
    }

    #[test]
    fn tiny_and_flat_images_give_nothing() {
        let orb = Orb::new(OrbParams::default()).unwrap();
        for (w, h) in [(1usize, 1usize), (3, 50), (40, 40), (62, 200)] {
            let img = checker(w, h);
            let (k, d) = orb.detect_and_compute(GrayView::new(&img, w, h), None).unwrap();
            assert!(k.is_empty() && d.is_empty(), "{w}x{h}");
        }
        let flat = vec![128u8; 200 * 200];
        assert!(orb.detect(GrayView::new(&flat, 200, 200), None).unwrap().is_empty());
    }

    #[test]
    fn wta_k_and_small_patches_work() {
        let (w, h) = (160, 120);
        let img = checker(w, h);
        for wta_k in [2, 3, 4] {
            for patch in [31, 15] {
                let p = OrbParams { wta_k, patch_size: patch, edge_threshold: patch, ..Default::default() };
                let orb = Orb::new(p).unwrap();
                let (k, d) = orb.detect_and_compute(GrayView::new(&img, w, h), None).unwrap();
                assert_eq!(k.len(), d.len());
                assert!(!k.is_empty());
            }
        }
    }

    /// Noise, blocks and gradients: many corners of every strength.
    fn textured(w: usize, h: usize, seed: u32) -> Vec<u8> {
        let mut state = seed;
        (0..w * h)
            .map(|i| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let (x, y) = (i % w, i / w);
                let block = if (x / 7 + y / 11) % 3 == 0 { 140 } else { 20 };
                (block + (x + 2 * y) % 60 + ((state >> 16) % 50) as usize).min(255) as u8
            })
            .collect()
    }

    #[test]
    fn vector_and_portable_paths_agree() {
        // every AVX2 kernel (FAST, Harris, orientation, resize, blur, rBRIEF)
        // against the portable code, on sizes that leave vector tails
        if !crate::features::use_avx2() {
            return;
        }
        let cases = [(160usize, 120usize), (97, 83), (333, 251), (64, 64)];
        let params = [
            OrbParams::default(),
            OrbParams { n_features: 100, edge_threshold: 15, patch_size: 15, ..Default::default() },
            OrbParams { wta_k: 3, ..Default::default() },
            OrbParams { fast_threshold: 0, n_features: 2000, ..Default::default() },
            OrbParams { fast_threshold: 60, score_type: ScoreType::Fast, ..Default::default() },
            OrbParams { patch_size: 45, edge_threshold: 10, n_levels: 3, ..Default::default() },
        ];
        let mut compared = 0;
        for (ci, &(w, h)) in cases.iter().enumerate() {
            for img in [textured(w, h, ci as u32 + 1), checker(w, h)] {
                let view = GrayView::new(&img, w, h);
                for p in params {
                    let orb = Orb::new(p).unwrap();
                    let fast = orb.detect_and_compute(view, None).unwrap();
                    let slow = crate::features::portable_only(|| orb.detect_and_compute(view, None).unwrap());
                    assert_eq!(fast, slow, "{w}x{h} {p:?}");
                    compared += fast.0.len();
                }
            }
        }
        assert!(compared > 5000, "{compared}");
    }

    #[test]
    fn bad_parameters_are_named() {
        for (p, name) in [
            (OrbParams { scale_factor: 1.0, ..Default::default() }, "scale_factor"),
            (OrbParams { n_levels: 0, ..Default::default() }, "n_levels"),
            (OrbParams { wta_k: 5, ..Default::default() }, "wta_k"),
            (OrbParams { patch_size: 1, ..Default::default() }, "patch_size"),
        ] {
            let e = Orb::new(p).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
