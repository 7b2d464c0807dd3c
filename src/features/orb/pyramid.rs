//! The scale pyramid of ORB (OpenCV `ORB_Impl::detectAndCompute`,
//! `modules/features2d/src/orb.cpp`): level $l$ is the previous level
//! resized to `round(W / s_l) x round(H / s_l)` by OpenCV's bit-exact
//! bilinear `resize(..., INTER_LINEAR_EXACT)` (`modules/imgproc/src/resize.cpp`,
//! 8-bit fixed-point weights: 8.8 horizontally, 16.16 after the vertical
//! pass), inside a `BORDER_REFLECT_101` frame (`copyMakeBorder`). A mask is
//! resized with the image and thresholded at 255 below the first level.
//! Level buffers are pooled per thread.

use super::Orb;
use crate::features::cv::{cv_round, reflect101};
use crate::image::GrayView;

/// One pyramid level: a `w x h` image inside a buffer with a `border`-pixel
/// reflect-101 frame.
#[derive(Debug, Clone)]
pub(super) struct Level {
    pub(super) data: Vec<u8>,
    pub(super) stride: usize,
    pub(super) border: usize,
    pub(super) w: usize,
    pub(super) h: usize,
}

impl Level {
    /// Index of level pixel (x, y) (may be inside the border).
    #[inline]
    pub(super) fn idx(&self, x: isize, y: isize) -> usize {
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
pub(super) fn recycle(levels: Vec<Option<Level>>) {
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

impl Orb {
    /// Build `n` pyramid levels (`None` for empty levels of tiny images),
    /// with the resized masks (255 = keep) when a mask is given.
    pub(super) fn pyramid(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>, n: usize, detecting: bool) -> (Vec<Option<Level>>, Vec<Option<Vec<u8>>>) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
