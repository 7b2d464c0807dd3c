//! FAST-9 corner detection (Rosten & Drummond 2006) as OpenCV 4.x implements
//! it (`modules/features2d/src/fast.cpp`, `fast_score.cpp`, `FAST_t<16>`).
//!
//! A pixel $p$ of intensity $v$ is a corner when, on the Bresenham circle of
//! radius 3 (16 pixels), at least 9 contiguous pixels are all brighter than
//! $v + t$ or all darker than $v - t$ (strict inequalities). Its score, used
//! for non-maximum suppression and ranking, is the largest threshold at which
//! it is still a corner:
//!
//! $s = \max(t,\ \max_{\text{arcs}} \min_k (v - p_k),\ \max_{\text{arcs}} \min_k (p_k - v)) - 1$
//!
//! over the 16 arcs of 9 contiguous circle pixels. With non-maximum
//! suppression a corner is kept when its score is strictly greater than the
//! scores of its 8 neighbours (0 for non-corners). Corners are searched in
//! rows and columns `3 .. size - 3`, as OpenCV does, and are returned row by
//! row, left to right.

/// Circle offsets `(dx, dy)`, in OpenCV's order (`makeOffsets`, pattern 16).
pub const CIRCLE16: [(isize, isize); 16] = [
    (0, 3),
    (1, 3),
    (2, 2),
    (3, 1),
    (3, 0),
    (3, -1),
    (2, -2),
    (1, -3),
    (0, -3),
    (-1, -3),
    (-2, -2),
    (-3, -1),
    (-3, 0),
    (-3, 1),
    (-2, 2),
    (-1, 3),
];

/// A FAST corner: pixel position and score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastCorner {
    pub x: usize,
    pub y: usize,
    pub score: u8,
}

/// Score of a pixel whose circle differences are `d[k] = v - p[k]`
/// (OpenCV `cornerScore<16>`): the largest threshold minus one at which the
/// pixel is a corner, and at least `threshold - 1`.
#[inline]
pub fn corner_score(d: &[i16; 16], threshold: i32) -> i32 {
    // sliding minima / maxima over the circular arcs of 9: pairs, quads, 9s
    let at = |k: usize| d[k & 15] as i32;
    let mut mn2 = [0i32; 16];
    let mut mx2 = [0i32; 16];
    for k in 0..16 {
        mn2[k] = at(k).min(at(k + 1));
        mx2[k] = at(k).max(at(k + 1));
    }
    let mut mn4 = [0i32; 16];
    let mut mx4 = [0i32; 16];
    for k in 0..16 {
        mn4[k] = mn2[k].min(mn2[(k + 2) & 15]);
        mx4[k] = mx2[k].max(mx2[(k + 2) & 15]);
    }
    let mut a0 = threshold;
    let mut b0 = -threshold;
    for k in 0..16 {
        let mn = mn4[k].min(mn4[(k + 4) & 15]).min(at(k + 8));
        let mx = mx4[k].max(mx4[(k + 4) & 15]).max(at(k + 8));
        a0 = a0.max(mn);
        b0 = b0.min(mx);
    }
    a0.max(-b0) - 1
}

/// Circle pixel offsets in a buffer with row stride `stride`.
#[inline]
pub fn circle_offsets(stride: usize) -> [isize; 16] {
    let mut o = [0isize; 16];
    for (k, &(dx, dy)) in CIRCLE16.iter().enumerate() {
        o[k] = dx + dy * stride as isize;
    }
    o
}

/// Whether 9 contiguous flags are set among the 16 bits of `mask` (circularly).
#[inline]
fn has_arc9(mask: u32) -> bool {
    // duplicate the 16 bits so arcs wrapping around are contiguous, then
    // bit i of r = bits i..i+8 all set: runs of 2, 4, 8, then 9
    let m = mask | (mask << 16);
    let r2 = m & (m >> 1);
    let r4 = r2 & (r2 >> 2);
    let r8 = r4 & (r4 >> 4);
    let r9 = r8 & (m >> 8);
    r9 & 0xFFFF != 0
}

/// Detect FAST-9 corners in the `width x height` image whose pixel `(0, 0)`
/// is `img[origin]`, with row stride `stride`. Only pixels inside the image
/// are read.
///
/// # Panics
/// If the image does not fit in `img`.
pub fn fast9(
    img: &[u8],
    origin: usize,
    stride: usize,
    width: usize,
    height: usize,
    threshold: u8,
    nonmax: bool,
) -> Vec<FastCorner> {
    fast9_window(img, origin, stride, width, height, threshold, nonmax, (0, width, 0, height))
}

/// [`fast9`] restricted to the corners with `x0 <= x < x1` and `y0 <= y < y1`
/// (`window = (x0, x1, y0, y1)`): only that window and a one-pixel ring
/// around it (for non-maximum suppression) are searched, so the result is
/// exactly `fast9`'s corners that fall in the window.
#[allow(clippy::too_many_arguments)]
pub fn fast9_window(
    img: &[u8],
    origin: usize,
    stride: usize,
    width: usize,
    height: usize,
    threshold: u8,
    nonmax: bool,
    window: (usize, usize, usize, usize),
) -> Vec<FastCorner> {
    let mut out = Vec::new();
    if width < 7 || height < 7 {
        return out;
    }
    assert!(origin + (height - 1) * stride + width <= img.len());
    let (wx0, wx1, wy0, wy1) = (window.0.max(3), window.1.min(width - 3), window.2.max(3), window.3.min(height - 3));
    if wx0 >= wx1 || wy0 >= wy1 {
        return out;
    }
    // search area: the window plus a ring for non-maximum suppression
    let area = Area {
        x0: (wx0 - 1).max(3),
        x1: (wx1 + 1).min(width - 3),
        y0: (wy0 - 1).max(3),
        y1: (wy1 + 1).min(height - 3),
    };
    // scores with one row / column of margin on each side (0 = no corner)
    let sw = area.x1 - area.x0 + 2;
    // (plus 64 bytes of padding for whole-vector reads in `nms_avx2`)
    let mut scores = vec![0u8; sw * (area.y1 - area.y0 + 2) + 64];
    let mut corners: Vec<(usize, usize)> = Vec::new();
    let mut done = false;
    #[cfg(target_arch = "x86_64")]
    {
        if crate::features::use_avx2() {
            // SAFETY: the CPU supports AVX2; every vector load is bounds-checked
            // against `img` before it is made (see `detect_avx2`).
            unsafe { detect_avx2(img, origin, stride, area, threshold, nonmax, &mut scores, &mut corners) };
            if nonmax {
                // SAFETY: AVX2 is available; `scores` has the padding
                // `nms_avx2` needs (see there).
                unsafe { nms_avx2(&scores, sw, area, (wx0, wx1, wy0, wy1), &mut out) };
                return out;
            }
            done = true;
        }
    }
    if !done {
        detect_portable(img, origin, stride, area, threshold, nonmax, &mut scores, &mut corners);
    }
    for (x, y) in corners {
        if x < wx0 || x >= wx1 || y < wy0 || y >= wy1 {
            continue;
        }
        if !nonmax {
            out.push(FastCorner { x, y, score: 0 });
            continue;
        }
        let (cx, cy) = (x - area.x0 + 1, y - area.y0 + 1);
        let at = |xx: usize, yy: usize| scores[yy * sw + xx];
        let s = at(cx, cy);
        if s > at(cx - 1, cy)
            && s > at(cx + 1, cy)
            && s > at(cx - 1, cy - 1)
            && s > at(cx, cy - 1)
            && s > at(cx + 1, cy - 1)
            && s > at(cx - 1, cy + 1)
            && s > at(cx, cy + 1)
            && s > at(cx + 1, cy + 1)
        {
            out.push(FastCorner { x, y, score: s });
        }
    }
    out
}

/// Non-maximum suppression over the whole score map, 32 pixels per step:
/// a pixel of the window is kept when its score is greater than each of its
/// 8 neighbours' (non-corners score 0, so they are never kept, and neither
/// is a corner of score 0, as in the scalar loop). Same order as the scalar
/// loop: row by row, left to right.
///
/// # Safety
/// AVX2 must be available; `scores` holds `(area.y1 - area.y0 + 2)` rows of
/// `sw` bytes plus at least 64 bytes of padding.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn nms_avx2(scores: &[u8], sw: usize, area: Area, window: (usize, usize, usize, usize), out: &mut Vec<FastCorner>) {
    use std::arch::x86_64::*;
    let (wx0, wx1, wy0, wy1) = window;
    let rows = area.y1 - area.y0 + 2;
    assert!(scores.len() >= rows * sw + 64);
    let zero = _mm256_setzero_si256();
    let p = scores.as_ptr();
    for y in wy0..wy1 {
        // score-map row of y (>= 1: the window lies inside the search area)
        let cy = y - area.y0 + 1;
        let mut x = wx0;
        while x < wx1 {
            let cx = x - area.x0 + 1;
            // SAFETY: cx >= 1 and cy >= 1, so every read starts at or after
            // (cy - 1) * sw + cx - 1 >= 0; it ends before
            // (cy + 1) * sw + cx + 33 <= rows * sw + 64 (cy + 1 < rows,
            // cx <= sw), inside `scores`.
            let at = |dy: isize, dx: isize| _mm256_loadu_si256(p.offset(((cy as isize + dy) * sw as isize) + cx as isize + dx) as *const __m256i);
            let s = at(0, 0);
            let n = _mm256_max_epu8(
                _mm256_max_epu8(_mm256_max_epu8(at(0, -1), at(0, 1)), _mm256_max_epu8(at(-1, -1), at(-1, 0))),
                _mm256_max_epu8(_mm256_max_epu8(at(-1, 1), at(1, -1)), _mm256_max_epu8(at(1, 0), at(1, 1))),
            );
            // s > n  <=>  s -sat n != 0
            let not_max = _mm256_cmpeq_epi8(_mm256_subs_epu8(s, n), zero);
            let lanes = (wx1 - x).min(32);
            let lane_mask = if lanes == 32 { u32::MAX } else { (1u32 << lanes) - 1 };
            let mut m = !(_mm256_movemask_epi8(not_max) as u32) & lane_mask;
            while m != 0 {
                let l = m.trailing_zeros() as usize;
                m &= m - 1;
                let xx = x + l;
                out.push(FastCorner { x: xx, y, score: scores[cy * sw + xx - area.x0 + 1] });
            }
            x += 32;
        }
    }
}

/// The searched pixels: `x0 <= x < x1`, `y0 <= y < y1` (at least 3 pixels
/// from every image edge).
#[derive(Clone, Copy)]
struct Area {
    x0: usize,
    x1: usize,
    y0: usize,
    y1: usize,
}

/// Full segment test of the pixel at `img[c]`: its score (or 0 when
/// `nonmax` is off) when it is a corner.
#[inline(always)]
fn test_pixel(img: &[u8], c: usize, off: &[isize; 16], ti: i32, nonmax: bool) -> Option<u8> {
    let v = img[c] as i32;
    let hi = v + ti;
    let lo = v - ti;
    let mut bmask = 0u32;
    let mut dmask = 0u32;
    let mut d = [0i16; 16];
    for k in 0..16 {
        let p = img[(c as isize + off[k]) as usize] as i32;
        d[k] = (v - p) as i16;
        bmask |= ((p > hi) as u32) << k;
        dmask |= ((p < lo) as u32) << k;
    }
    if has_arc9(bmask) || has_arc9(dmask) {
        Some(if nonmax { corner_score(&d, ti) as u8 } else { 0 })
    } else {
        None
    }
}

/// Portable search: a vectorisable pre-test per row, then the full test on
/// the candidates. Corners go to `corners` (row by row, left to right) and
/// their scores to `scores`.
#[allow(clippy::too_many_arguments)]
fn detect_portable(
    img: &[u8],
    origin: usize,
    stride: usize,
    area: Area,
    threshold: u8,
    nonmax: bool,
    scores: &mut [u8],
    corners: &mut Vec<(usize, usize)>,
) {
    let Area { x0: sx0, x1: sx1, y0: sy0, y1: sy1 } = area;
    let n = sx1 - sx0;
    let t = threshold;
    let ti = threshold as i32;
    let off = circle_offsets(stride);
    let sw = n + 2;
    // the pre-test runs on whole 32-pixel vectors when the buffer extends far
    // enough (flags past n are ignored)
    let n_vec = n.div_ceil(32) * 32;
    let mut flags = vec![0u8; n_vec];
    let mut cand = vec![0u32; n + 1];
    for y in sy0..sy1 {
        let row = origin + y * stride;
        // furthest byte read: circle offset (1, 3) or (3, 1) past the last pixel
        let last_read = row + sx0 + 3 * stride + 3;
        let m = if last_read + n_vec <= img.len() { n_vec } else { n };
        // vectorisable pre-test: for each residue r mod 4, a 9-arc covers two
        // cyclically neighbouring points of {r, r + 4, r + 8, r + 12}; they
        // must all be brighter (or all darker)
        {
            let sl = |k: usize| {
                let (dx, dy) = CIRCLE16[k];
                let start = (row as isize + sx0 as isize + dx + dy * stride as isize) as usize;
                &img[start..start + m]
            };
            let c = &img[row + sx0..row + sx0 + m];
            let flags = &mut flags[..m];
            let (p0, p1, p2, p3, p4, p5, p6, p7) = (sl(0), sl(1), sl(2), sl(3), sl(4), sl(5), sl(6), sl(7));
            let (p8, p9, p10, p11, p12, p13, p14, p15) = (sl(8), sl(9), sl(10), sl(11), sl(12), sl(13), sl(14), sl(15));
            #[inline(always)]
            fn adj(a: u8, b: u8, c: u8, d: u8) -> u8 {
                (a & b) | (b & c) | (c & d) | (d & a)
            }
            for i in 0..m {
                let v = c[i];
                let hi = v.saturating_add(t);
                let lo = v.saturating_sub(t);
                let bt = |p: &[u8]| (p[i] > hi) as u8;
                let dk = |p: &[u8]| (p[i] < lo) as u8;
                let bright = adj(bt(p0), bt(p4), bt(p8), bt(p12))
                    & adj(bt(p2), bt(p6), bt(p10), bt(p14))
                    & adj(bt(p1), bt(p5), bt(p9), bt(p13))
                    & adj(bt(p3), bt(p7), bt(p11), bt(p15));
                let dark = adj(dk(p0), dk(p4), dk(p8), dk(p12))
                    & adj(dk(p2), dk(p6), dk(p10), dk(p14))
                    & adj(dk(p1), dk(p5), dk(p9), dk(p13))
                    & adj(dk(p3), dk(p7), dk(p11), dk(p15));
                flags[i] = bright | dark;
            }
        }
        // compaction of the candidates, 8 flags at a time
        let mut ncand = 0usize;
        let mut i = 0usize;
        while i + 8 <= n {
            let mut m = u64::from_le_bytes(flags[i..i + 8].try_into().unwrap());
            while m != 0 {
                let byte = (m.trailing_zeros() / 8) as usize;
                cand[ncand] = (i + byte) as u32;
                ncand += 1;
                m &= !(0xFFu64 << (byte * 8));
            }
            i += 8;
        }
        while i < n {
            cand[ncand] = i as u32;
            ncand += (flags[i] != 0) as usize;
            i += 1;
        }
        for &i in &cand[..ncand] {
            let x = sx0 + i as usize;
            if let Some(s) = test_pixel(img, row + x, &off, ti, nonmax) {
                scores[(y - sy0 + 1) * sw + (x - sx0 + 1)] = s;
                corners.push((x, y));
            }
        }
    }
}

/// AVX2 search, 32 pixels at a time: a pre-test on circle pixels 0, 4, 8, 12
/// (a 9-arc holds two cyclically neighbouring ones), then the exact
/// segment test and the scores of all 32 pixels at once, from the minima of
/// the saturated differences over the 16 arcs.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn detect_avx2(
    img: &[u8],
    origin: usize,
    stride: usize,
    area: Area,
    threshold: u8,
    nonmax: bool,
    scores: &mut [u8],
    corners: &mut Vec<(usize, usize)>,
) {
    use std::arch::x86_64::*;
    let Area { x0: sx0, x1: sx1, y0: sy0, y1: sy1 } = area;
    let n = sx1 - sx0;
    let ti = threshold as i32;
    let off = circle_offsets(stride);
    let sw = n + 2;
    // reach of the circle before / after the centre (offsets (0, -3), (1, 3))
    let (back, ahead) = (3 * stride, 3 * stride + 1);
    let sign = _mm256_set1_epi8(i8::MIN);
    let tv = _mm256_set1_epi8(threshold as i8);
    let zero = _mm256_setzero_si256();
    let ptr = img.as_ptr();
    for y in sy0..sy1 {
        let row = origin + y * stride;
        // scores index of pixel x: srow + x - sx0
        let srow = (y - sy0 + 1) * sw + 1;
        let mut i = 0usize;
        while i < n {
            let lanes = (n - i).min(32);
            let base = row + sx0 + i;
            // y >= 3 and x >= 3, so base >= back; the last byte read is
            // base + 31 + ahead
            debug_assert!(base >= back);
            if base + 31 + ahead >= img.len() {
                // too close to the end of the buffer for whole vectors
                for l in 0..lanes {
                    let x = sx0 + i + l;
                    if let Some(s) = test_pixel(img, row + x, &off, ti, nonmax) {
                        scores[srow + x - sx0] = s;
                        corners.push((x, y));
                    }
                }
                i += 32;
                continue;
            }
            // SAFETY: base - back >= 0 and base + 31 + ahead < img.len(), so
            // every 32-byte load at base + off[k] (-back <= off[k] <= ahead)
            // stays inside `img`.
            let ld = |k: usize| _mm256_xor_si256(_mm256_loadu_si256(ptr.offset(base as isize + off[k]) as *const __m256i), sign);
            let c = _mm256_loadu_si256(ptr.add(base) as *const __m256i);
            let hi = _mm256_xor_si256(_mm256_adds_epu8(c, tv), sign);
            let lo = _mm256_xor_si256(_mm256_subs_epu8(c, tv), sign);
            let (p0, p4, p8, p12) = (ld(0), ld(4), ld(8), ld(12));
            let adj = |a: __m256i, b: __m256i, c: __m256i, d: __m256i| {
                _mm256_or_si256(
                    _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(b, c)),
                    _mm256_or_si256(_mm256_and_si256(c, d), _mm256_and_si256(d, a)),
                )
            };
            let bright = |p: __m256i| _mm256_cmpgt_epi8(p, hi);
            let dark = |p: __m256i| _mm256_cmpgt_epi8(lo, p);
            let pre = _mm256_or_si256(
                adj(bright(p0), bright(p4), bright(p8), bright(p12)),
                adj(dark(p0), dark(p4), dark(p8), dark(p12)),
            );
            let lane_mask = if lanes == 32 { u32::MAX } else { (1u32 << lanes) - 1 };
            let mut m = _mm256_movemask_epi8(pre) as u32 & lane_mask;
            if m == 0 {
                i += 32;
                continue;
            }
            // the same with circle pixels 2, 6, 10, 14 (same polarity)
            let (p2, p6, p10, p14) = (ld(2), ld(6), ld(10), ld(14));
            let pre2 = _mm256_or_si256(
                _mm256_and_si256(
                    adj(bright(p0), bright(p4), bright(p8), bright(p12)),
                    adj(bright(p2), bright(p6), bright(p10), bright(p14)),
                ),
                _mm256_and_si256(
                    adj(dark(p0), dark(p4), dark(p8), dark(p12)),
                    adj(dark(p2), dark(p6), dark(p10), dark(p14)),
                ),
            );
            m &= _mm256_movemask_epi8(pre2) as u32;
            if m == 0 {
                i += 32;
                continue;
            }
            // exact test and score together (see `corner_score`): with
            // saturating differences dk = (v - p_k)+ and bk = (p_k - v)+, let
            // A (B) be the best over the 16 arcs of 9 of the smallest dk (bk).
            // The pixel is a corner iff max(A, B) > t, and its score is
            // max(t, A, B) - 1 (negative differences saturate to 0 <= t,
            // which changes neither).
            let raw = |k: usize| _mm256_loadu_si256(ptr.offset(base as isize + off[k]) as *const __m256i);
            let arc_best = |x: &[__m256i; 16]| {
                let mut m2 = [zero; 16];
                for k in 0..16 {
                    m2[k] = _mm256_min_epu8(x[k], x[(k + 1) & 15]);
                }
                let mut m4 = [zero; 16];
                for k in 0..16 {
                    m4[k] = _mm256_min_epu8(m2[k], m2[(k + 2) & 15]);
                }
                let mut best = zero;
                for k in 0..16 {
                    let m9 = _mm256_min_epu8(_mm256_min_epu8(m4[k], m4[(k + 4) & 15]), x[(k + 8) & 15]);
                    best = _mm256_max_epu8(best, m9);
                }
                best
            };
            let mut dk = [zero; 16];
            let mut bk = [zero; 16];
            for k in 0..16 {
                let p = raw(k);
                dk[k] = _mm256_subs_epu8(c, p);
                bk[k] = _mm256_subs_epu8(p, c);
            }
            let ab = _mm256_max_epu8(arc_best(&dk), arc_best(&bk));
            // max(A, B) > t  <=>  max(A, B) -sat t != 0
            let not_corner = _mm256_cmpeq_epi8(_mm256_subs_epu8(ab, tv), zero);
            m &= !(_mm256_movemask_epi8(not_corner) as u32);
            if m == 0 {
                i += 32;
                continue;
            }
            let mut lane_scores = [0u8; 32];
            if nonmax {
                let sc = _mm256_sub_epi8(_mm256_max_epu8(ab, tv), _mm256_set1_epi8(1));
                _mm256_storeu_si256(lane_scores.as_mut_ptr() as *mut __m256i, sc);
            }
            while m != 0 {
                let l = m.trailing_zeros() as usize;
                m &= m - 1;
                let x = sx0 + i + l;
                scores[srow + x - sx0] = lane_scores[l];
                if !nonmax {
                    corners.push((x, y));
                }
            }
            i += 32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arc_detection() {
        assert!(has_arc9(0b1_1111_1111));
        assert!(!has_arc9(0b1111_1111));
        // wrapping arc: bits 12..15 and 0..4
        assert!(has_arc9(0b1111_0000_0001_1111));
        assert!(!has_arc9(0b0111_0000_0001_1111));
    }

    #[test]
    fn bright_blob_is_detected_at_its_peak() {
        // 21x21 dark image (10) with a 3x3 blob of 150 whose centre is 200
        let (w, h) = (21, 21);
        let mut img = vec![10u8; w * h];
        for y in 9..12 {
            for x in 9..12 {
                img[y * w + x] = 150;
            }
        }
        img[10 * w + 10] = 200;
        let c = fast9(&img, 0, w, w, h, 20, true);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].x, c[0].y), (10, 10));
        // all 16 circle pixels are 190 darker -> score 190 - 1
        assert_eq!(c[0].score, 189);
        // without suppression the whole blob fires
        assert_eq!(fast9(&img, 0, w, w, h, 20, false).len(), 9);
        // the same image inside a larger buffer (origin + stride)
        let mut big = vec![0u8; 30 * 25];
        for y in 0..h {
            big[(y + 2) * 30 + 3..(y + 2) * 30 + 3 + w].copy_from_slice(&img[y * w..(y + 1) * w]);
        }
        let c2 = fast9(&big, 2 * 30 + 3, 30, w, h, 20, true);
        assert_eq!(c2, c);
    }

    #[test]
    fn window_gives_the_same_corners_as_the_full_search() {
        let (w, h) = (64, 48);
        let img: Vec<u8> = (0..w * h).map(|i| ((i * 7919) % 251) as u8 / 3 + if (i / w / 5 + i % w / 6) % 2 == 0 { 120 } else { 0 }).collect();
        let full = fast9(&img, 0, w, w, h, 15, true);
        assert!(full.len() > 20);
        let win = (10, 50, 8, 30);
        let want: Vec<_> = full.iter().copied().filter(|c| c.x >= 10 && c.x < 50 && c.y >= 8 && c.y < 30).collect();
        assert_eq!(fast9_window(&img, 0, w, w, h, 15, true, win), want);
    }

    #[test]
    fn vector_and_portable_search_agree() {
        if !crate::features::use_avx2() {
            return;
        }
        let mut state = 99u32;
        let mut found = 0;
        for &(w, h, stride, origin) in &[(64usize, 48usize, 64usize, 0usize), (77, 41, 90, 95), (200, 150, 200, 0), (35, 35, 35, 0)] {
            let mut img = vec![0u8; origin + stride * h];
            for (i, v) in img.iter_mut().enumerate() {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let block = if (i % stride / 5 + i / stride / 7) % 2 == 0 { 150 } else { 30 };
                *v = (block + (state >> 16) % 70) as u8;
            }
            for t in [0u8, 1, 20, 90, 254, 255] {
                for nonmax in [true, false] {
                    for win in [(0, w, 0, h), (5, w - 9, 4, h - 6)] {
                        let a = fast9_window(&img, origin, stride, w, h, t, nonmax, win);
                        let b = crate::features::portable_only(|| fast9_window(&img, origin, stride, w, h, t, nonmax, win));
                        assert_eq!(a, b, "{w}x{h} t={t} nonmax={nonmax} {win:?}");
                        found += a.len();
                    }
                }
            }
        }
        assert!(found > 1000, "{found}");
    }

    #[test]
    fn flat_image_has_no_corner() {
        let img = vec![77u8; 30 * 30];
        assert!(fast9(&img, 0, 30, 30, 30, 0, true).is_empty());
        assert!(fast9(&img, 0, 30, 6, 6, 10, true).is_empty());
    }

    fn corner_score_naive(d: &[i16; 16], threshold: i32) -> i32 {
        let mut a0 = threshold;
        let mut b0 = -threshold;
        for k in 0..16 {
            let arc: Vec<i32> = (0..9).map(|j| d[(k + j) & 15] as i32).collect();
            a0 = a0.max(*arc.iter().min().unwrap());
            b0 = b0.min(*arc.iter().max().unwrap());
        }
        a0.max(-b0) - 1
    }

    #[test]
    fn score_matches_the_definition() {
        let mut state = 12345u32;
        for _ in 0..5000 {
            let mut d = [0i16; 16];
            for v in d.iter_mut() {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *v = ((state >> 16) % 511) as i16 - 255;
            }
            assert_eq!(corner_score(&d, 20), corner_score_naive(&d, 20));
        }
    }

    #[test]
    fn score_known_answer() {
        // 9 contiguous pixels 50 darker, the rest equal: score 49
        let mut d = [0i16; 16];
        for k in 3..12 {
            d[k] = 50;
        }
        assert_eq!(corner_score(&d, 20), 49);
        // only 8 darker: not a corner above the threshold, score threshold - 1
        d[11] = 0;
        assert_eq!(corner_score(&d, 20), 19);
    }
}
