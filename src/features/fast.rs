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
    let mut a0 = threshold;
    let mut b0 = -threshold; // mirrored search for brighter arcs
    for k in 0..16 {
        let mut mn = i32::MAX;
        let mut mx = i32::MIN;
        for j in 0..9 {
            let v = d[(k + j) & 15] as i32;
            mn = mn.min(v);
            mx = mx.max(v);
        }
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
    // duplicate the 16 bits so arcs wrapping around are contiguous
    let m = mask | (mask << 16);
    // m & m>>1 & ... & m>>8 has a bit for each start of 9 set bits
    let mut r = m;
    let mut s = m;
    for _ in 0..8 {
        s >>= 1;
        r &= s;
    }
    r & 0xFFFF != 0
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
    let (sx0, sx1, sy0, sy1) = ((wx0 - 1).max(3), (wx1 + 1).min(width - 3), (wy0 - 1).max(3), (wy1 + 1).min(height - 3));
    let n = sx1 - sx0;
    let t = threshold;
    let ti = threshold as i32;
    let off = circle_offsets(stride);
    let sw = n + 2; // score rows with one column of margin each side
    let mut scores = vec![0u8; sw * (sy1 - sy0 + 2)];
    let mut corners: Vec<(usize, usize)> = Vec::new();
    let mut flags = vec![0u8; n];
    for y in sy0..sy1 {
        let row = origin + y * stride;
        // vectorisable pre-test: a 9-arc covers two neighbouring compass
        // points (0, 4, 8, 12) that are both brighter or both darker
        {
            let c = &img[row + sx0..row + sx0 + n];
            let dn = &img[row + 3 * stride + sx0..row + 3 * stride + sx0 + n];
            let up = &img[row - 3 * stride + sx0..row - 3 * stride + sx0 + n];
            let rt = &img[row + sx0 + 3..row + sx0 + 3 + n];
            let lf = &img[row + sx0 - 3..row + sx0 - 3 + n];
            for i in 0..n {
                let v = c[i];
                let hi = v.saturating_add(t);
                let lo = v.saturating_sub(t);
                let (b0, b4, b8, b12) = ((dn[i] > hi) as u8, (rt[i] > hi) as u8, (up[i] > hi) as u8, (lf[i] > hi) as u8);
                let (d0, d4, d8, d12) = ((dn[i] < lo) as u8, (rt[i] < lo) as u8, (up[i] < lo) as u8, (lf[i] < lo) as u8);
                flags[i] = (b0 & b4) | (b4 & b8) | (b8 & b12) | (b12 & b0) | (d0 & d4) | (d4 & d8) | (d8 & d12) | (d12 & d0);
            }
        }
        for (i, &f) in flags.iter().enumerate() {
            if f == 0 {
                continue;
            }
            let x = sx0 + i;
            let c = row + x;
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
                if nonmax {
                    scores[(y - sy0 + 1) * sw + (x - sx0 + 1)] = corner_score(&d, ti) as u8;
                }
                corners.push((x, y));
            }
        }
    }
    for (x, y) in corners {
        if x < wx0 || x >= wx1 || y < wy0 || y >= wy1 {
            continue;
        }
        if !nonmax {
            out.push(FastCorner { x, y, score: 0 });
            continue;
        }
        let (cx, cy) = (x - sx0 + 1, y - sy0 + 1);
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
    fn flat_image_has_no_corner() {
        let img = vec![77u8; 30 * 30];
        assert!(fast9(&img, 0, 30, 30, 30, 0, true).is_empty());
        assert!(fast9(&img, 0, 30, 6, 6, 10, true).is_empty());
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
