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
    let mut out = Vec::new();
    if width < 7 || height < 7 {
        return out;
    }
    assert!(origin + (height - 1) * stride + width <= img.len());
    let t = threshold as i32;
    let off = circle_offsets(stride);
    let mut scores = vec![0u8; width * height];
    let mut corners: Vec<(usize, usize)> = Vec::new();
    for y in 3..height - 3 {
        let row = origin + y * stride;
        for x in 3..width - 3 {
            let c = row + x;
            let v = img[c] as i32;
            let hi = v + t;
            let lo = v - t;
            let px = |k: usize| img[(c as isize + off[k]) as usize] as i32;
            // quick rejection on opposite pairs: a 9-arc contains one pixel of every pair
            let mut bright_ok = true;
            let mut dark_ok = true;
            for k in [0usize, 4, 2, 6] {
                let (a, b) = (px(k), px(k + 8));
                bright_ok &= a > hi || b > hi;
                dark_ok &= a < lo || b < lo;
                if !bright_ok && !dark_ok {
                    break;
                }
            }
            if !bright_ok && !dark_ok {
                continue;
            }
            let mut bmask = 0u32;
            let mut dmask = 0u32;
            let mut d = [0i16; 16];
            for k in 0..16 {
                let p = px(k);
                d[k] = (v - p) as i16;
                if p > hi {
                    bmask |= 1 << k;
                } else if p < lo {
                    dmask |= 1 << k;
                }
            }
            if (bright_ok && has_arc9(bmask)) || (dark_ok && has_arc9(dmask)) {
                if nonmax {
                    scores[y * width + x] = corner_score(&d, t) as u8;
                }
                corners.push((x, y));
            }
        }
    }
    for (x, y) in corners {
        if !nonmax {
            out.push(FastCorner { x, y, score: 0 });
            continue;
        }
        let s = scores[y * width + x];
        let at = |xx: usize, yy: usize| scores[yy * width + xx];
        if s > at(x - 1, y)
            && s > at(x + 1, y)
            && s > at(x - 1, y - 1)
            && s > at(x, y - 1)
            && s > at(x + 1, y - 1)
            && s > at(x - 1, y + 1)
            && s > at(x, y + 1)
            && s > at(x + 1, y + 1)
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
