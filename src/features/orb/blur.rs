//! The smoothing before ORB's binary tests: a 7x7 Gaussian of $\sigma = 2$
//! (`GaussianBlur(workingMat, workingMat, Size(7, 7), 2, 2, BORDER_REFLECT_101)`
//! in `modules/features2d/src/orb.cpp`), which on a pyramid sub-matrix runs
//! OpenCV's float `sepFilter2D` path: float taps ([`gaussian_kernel`]`(7, 2)`),
//! rows then columns in single precision, symmetric taps paired, rounded half
//! to even and saturated. Only the box that the descriptors sample is smoothed.

use super::pyramid::Level;
use super::Orb;
use crate::features::cv::{cv_round, gaussian_kernel, round_magic, ROUND_MAGIC};
use crate::features::KeyPoint;

impl Orb {
    /// Smooth, on each level, only the box the descriptors sample: keypoint
    /// centres (level-0 coordinates, `octave` = level) +- `reach` pixels
    /// (the rest is never read).
    pub(super) fn smooth_for_descriptors(&self, levels: &mut [Option<Level>], kps: &[KeyPoint], reach: isize) {
        let kernel: [f32; 7] = gaussian_kernel(7, 2.0).try_into().expect("7 taps");
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
    // round half to even through the float mantissa, then saturate
    for x in 0..w {
        let v = k[3] * r3[x] + k[2] * (r2[x] + r4[x]) + k[1] * (r1[x] + r5[x]) + k[0] * (r0[x] + r6[x]);
        dst[x] = round_magic(v).clamp(0, 255) as u8;
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
    let magic = _mm256_set1_ps(ROUND_MAGIC);
    let magic_bits = _mm256_set1_epi32(ROUND_MAGIC.to_bits() as i32);
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
