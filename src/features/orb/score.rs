//! Ranking and orienting ORB's FAST corners (`modules/features2d/src/orb.cpp`):
//! the Harris response over a 7x7 block of 3x3 Sobel gradients
//! (`HarrisResponses`: $\det M - 0.04 \operatorname{tr}^2 M$, scaled as
//! OpenCV scales it), OpenCV's `KeyPointsFilter::retainBest`, and the
//! intensity-centroid angle over the circular patch (`ICAngles`, with the row
//! ends `umax`), in degrees by [`fast_atan2`].

use super::pyramid::Level;
use crate::features::cv::fast_atan2;
use crate::features::KeyPoint;

const HARRIS_K: f32 = 0.04;
const HARRIS_BLOCK: usize = 7;

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
pub(super) fn harris_response(level: &Level, x: i32, y: i32) -> f32 {
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
pub(super) fn angle_masks(half_k: i32, umax: &[i32]) -> Vec<[u8; 32]> {
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
pub(super) fn ic_angle(level: &Level, x: i32, y: i32, half_k: i32, umax: &[i32], masks: &[[u8; 32]]) -> f32 {
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
pub(super) fn circular_umax(half: i32) -> Vec<i32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umax_for_patch_31() {
        assert_eq!(circular_umax(15), vec![15, 15, 15, 15, 14, 14, 14, 13, 13, 12, 11, 10, 9, 8, 6, 3, 0]);
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
}
