//! Scale-space extrema (Lowe 2004, sections 3-5; OpenCV `findScaleSpaceExtrema`,
//! `adjustLocalExtrema`, `calcOrientationHist`).
//!
//! A DoG pixel is a candidate when $|D| > \lfloor 0.5\, c / L \cdot 255 \rfloor$
//! ($c$ the contrast threshold, $L$ the layers per octave) and it is $\ge$ (or
//! $\le$) all 26 neighbours in space and scale. The candidate is refined by up
//! to five Newton steps $\hat x = -H^{-1} \nabla D$ (central differences,
//! values scaled by 1/255, $H$ solved by Cramer's rule as OpenCV's `Matx::solve`
//! does), rejected if it leaves the octave, if $|D(\hat x)| L < c$, or if
//! $\mathrm{tr}(H)^2 r \ge (r + 1)^2 \det(H)$ ($r$ the edge threshold).
//! Each survivor gets one keypoint per peak of its 36-bin orientation
//! histogram (Gaussian-weighted gradient magnitudes within
//! $\mathrm{round}(4.5 s)$ pixels, $\sigma = 1.5 s$, smoothed by
//! $[1, 4, 6, 4, 1] / 16$) that is a local maximum and $\ge 0.8$ of the
//! highest, with the peak position refined by a parabola.

use super::blur::Plane;
use super::descriptor::Samples;
use super::mathf;
use crate::features::KeyPoint;

/// Width of the border in which no extremum is searched.
pub const IMG_BORDER: usize = 5;
const MAX_INTERP_STEPS: usize = 5;
/// Bins of the orientation histogram.
pub const ORI_HIST_BINS: usize = 36;
const ORI_SIG_FCTR: f32 = 1.5;
const ORI_RADIUS: f32 = 4.5;
const ORI_PEAK_RATIO: f32 = 0.8;

/// The SIFT parameters as the detector uses them (`f32`, as OpenCV passes them).
#[derive(Debug, Clone, Copy)]
pub struct DetectParams {
    pub n_layers: usize,
    pub contrast_threshold: f32,
    pub edge_threshold: f32,
    pub sigma: f32,
    /// OpenCV's integer pre-threshold on |DoG|, as a float.
    pub threshold: f32,
}

/// A refined extremum, before orientation assignment.
struct Extremum {
    kpt: KeyPoint,
    layer: usize,
    r: i32,
    c: i32,
}

/// True when `v` (at column `c` of `cur`) is >= (v > 0) or <= (v < 0) its 26
/// neighbours; `w` is the row stride.
#[inline(always)]
fn is_extremum(v: f32, prev: &[f32], cur: &[f32], next: &[f32], i: usize, w: usize) -> bool {
    let idx = [i - w - 1, i - w, i - w + 1, i - 1, i + 1, i + w - 1, i + w, i + w + 1];
    if v > 0.0 {
        idx.iter().all(|&k| v >= cur[k])
            && idx.iter().all(|&k| v >= prev[k])
            && idx.iter().all(|&k| v >= next[k])
            && v >= prev[i]
            && v >= next[i]
    } else {
        idx.iter().all(|&k| v <= cur[k])
            && idx.iter().all(|&k| v <= prev[k])
            && idx.iter().all(|&k| v <= next[k])
            && v <= prev[i]
            && v <= next[i]
    }
}

/// Cramer's rule for the 3x3 system `a x = b` (OpenCV's `Matx_FastSolveOp<3, 3, 1>`);
/// zeros when the determinant is 0, as `Matx::solve` returns.
fn solve3(a: [[f32; 3]; 3], b: [f32; 3]) -> [f32; 3] {
    let d = a[0][0] * (a[1][1] * a[2][2] - a[2][1] * a[1][2]) - a[0][1] * (a[1][0] * a[2][2] - a[2][0] * a[1][2])
        + a[0][2] * (a[1][0] * a[2][1] - a[2][0] * a[1][1]);
    if d == 0.0 {
        return [0.0; 3];
    }
    let d = 1.0 / d;
    [
        d * (b[0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (b[1] * a[2][2] - a[1][2] * b[2])
            + a[0][2] * (b[1] * a[2][1] - a[1][1] * b[2])),
        d * (a[0][0] * (b[1] * a[2][2] - a[1][2] * b[2]) - b[0] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * b[2] - b[1] * a[2][0])),
        d * (a[0][0] * (a[1][1] * b[2] - b[1] * a[2][1]) - a[0][1] * (a[1][0] * b[2] - b[1] * a[2][0])
            + b[0] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])),
    ]
}

/// Refine a candidate at (`layer`, `r`, `c`) of octave `octv` (0 = first
/// octave of the pyramid). Returns the keypoint in first-octave pixel
/// coordinates, or `None` when rejected.
fn adjust_local_extremum(dog: &[Plane], octv: usize, layer: usize, r: i32, c: i32, p: &DetectParams) -> Option<Extremum> {
    const IMG_SCALE: f32 = 1.0 / 255.0;
    const DERIV_SCALE: f32 = IMG_SCALE * 0.5;
    const SECOND_DERIV_SCALE: f32 = IMG_SCALE;
    const CROSS_DERIV_SCALE: f32 = IMG_SCALE * 0.25;
    let n_layers = p.n_layers as i32;
    let (mut layer, mut r, mut c) = (layer as i32, r, c);
    let (mut xi, mut xr, mut xc) = (0f32, 0f32, 0f32);
    let border = IMG_BORDER as i32;
    let at = |pl: &Plane, r: i32, c: i32| pl.data[r as usize * pl.w + c as usize];
    let mut step = 0;
    while step < MAX_INTERP_STEPS {
        let img = &dog[layer as usize];
        let prev = &dog[layer as usize - 1];
        let next = &dog[layer as usize + 1];
        let dd = [
            (at(img, r, c + 1) - at(img, r, c - 1)) * DERIV_SCALE,
            (at(img, r + 1, c) - at(img, r - 1, c)) * DERIV_SCALE,
            (at(next, r, c) - at(prev, r, c)) * DERIV_SCALE,
        ];
        let v2 = at(img, r, c) * 2.0;
        let dxx = (at(img, r, c + 1) + at(img, r, c - 1) - v2) * SECOND_DERIV_SCALE;
        let dyy = (at(img, r + 1, c) + at(img, r - 1, c) - v2) * SECOND_DERIV_SCALE;
        let dss = (at(next, r, c) + at(prev, r, c) - v2) * SECOND_DERIV_SCALE;
        let dxy = (at(img, r + 1, c + 1) - at(img, r + 1, c - 1) - at(img, r - 1, c + 1) + at(img, r - 1, c - 1))
            * CROSS_DERIV_SCALE;
        let dxs = (at(next, r, c + 1) - at(next, r, c - 1) - at(prev, r, c + 1) + at(prev, r, c - 1)) * CROSS_DERIV_SCALE;
        let dys = (at(next, r + 1, c) - at(next, r - 1, c) - at(prev, r + 1, c) + at(prev, r - 1, c)) * CROSS_DERIV_SCALE;
        let x = solve3([[dxx, dxy, dxs], [dxy, dyy, dys], [dxs, dys, dss]], dd);
        xi = -x[2];
        xr = -x[1];
        xc = -x[0];
        if xi.abs() < 0.5 && xr.abs() < 0.5 && xc.abs() < 0.5 {
            break;
        }
        let big = (i32::MAX / 3) as f32;
        if xi.abs() > big || xr.abs() > big || xc.abs() > big {
            return None;
        }
        c += xc.round_ties_even() as i32;
        r += xr.round_ties_even() as i32;
        layer += xi.round_ties_even() as i32;
        if layer < 1
            || layer > n_layers
            || c < border
            || c >= img.w as i32 - border
            || r < border
            || r >= img.h as i32 - border
        {
            return None;
        }
        step += 1;
    }
    if step >= MAX_INTERP_STEPS {
        return None;
    }
    let img = &dog[layer as usize];
    let prev = &dog[layer as usize - 1];
    let next = &dog[layer as usize + 1];
    let dd = [
        (at(img, r, c + 1) - at(img, r, c - 1)) * DERIV_SCALE,
        (at(img, r + 1, c) - at(img, r - 1, c)) * DERIV_SCALE,
        (at(next, r, c) - at(prev, r, c)) * DERIV_SCALE,
    ];
    let t = dd[0] * xc + dd[1] * xr + dd[2] * xi;
    let contr = at(img, r, c) * IMG_SCALE + t * 0.5;
    if contr.abs() * (n_layers as f32) < p.contrast_threshold {
        return None;
    }
    let v2 = at(img, r, c) * 2.0;
    let dxx = (at(img, r, c + 1) + at(img, r, c - 1) - v2) * SECOND_DERIV_SCALE;
    let dyy = (at(img, r + 1, c) + at(img, r - 1, c) - v2) * SECOND_DERIV_SCALE;
    let dxy =
        (at(img, r + 1, c + 1) - at(img, r + 1, c - 1) - at(img, r - 1, c + 1) + at(img, r - 1, c - 1)) * CROSS_DERIV_SCALE;
    let tr = dxx + dyy;
    let det = dxx * dyy - dxy * dxy;
    let et = p.edge_threshold;
    if det <= 0.0 || tr * tr * et >= (et + 1.0) * (et + 1.0) * det {
        return None;
    }
    let scale = (1u32 << octv) as f32;
    let kpt = KeyPoint {
        x: (c as f32 + xc) * scale,
        y: (r as f32 + xr) * scale,
        size: p.sigma * 2f32.powf((layer as f32 + xi) / n_layers as f32) * scale * 2.0,
        angle: -1.0,
        response: contr.abs(),
        octave: octv as i32 + (layer << 8) + ((((xi as f64 + 0.5) * 255.0).round_ties_even() as i32) << 16),
        class_id: -1,
    };
    Some(Extremum { kpt, layer: layer as usize, r, c })
}

/// OpenCV's `calcOrientationHist`: the smoothed 36-bin gradient orientation
/// histogram around `(x, y)` of `img`; returns its maximum.
pub fn orientation_hist(img: &Plane, x: i32, y: i32, radius: i32, sigma: f32, s: &mut Samples, hist: &mut [f32; ORI_HIST_BINS]) -> f32 {
    let n = ORI_HIST_BINS;
    let expf_scale = -1.0 / (2.0 * sigma * sigma);
    let side = (2 * radius.max(0) + 1) as usize;
    s.ensure(side * side);
    let (rows, cols) = (img.h as i32, img.w as i32);
    let w = img.w;
    let mut k = 0usize;
    // OpenCV skips samples on the outermost rows and columns.
    let i_lo = (-radius).max(1 - y);
    let i_hi = radius.min(rows - 2 - y);
    let j_lo = (-radius).max(1 - x);
    let j_hi = radius.min(cols - 2 - x);
    for i in i_lo..=i_hi {
        let r = (y + i) as usize;
        let row = &img.data[r * w..(r + 1) * w];
        let up = &img.data[(r - 1) * w..r * w];
        let down = &img.data[(r + 1) * w..(r + 2) * w];
        for j in j_lo..=j_hi {
            let c = (x + j) as usize;
            s.dx[k] = row[c + 1] - row[c - 1];
            s.dy[k] = up[c] - down[c];
            s.w[k] = (i * i + j * j) as f32 * expf_scale;
            k += 1;
        }
    }
    let len = k;
    mathf::polar_and_exp(&s.dx[..len], &s.dy[..len], &mut s.ori[..len], &mut s.mag[..len], &mut s.w[..len]);

    let mut temp = [0f32; ORI_HIST_BINS + 4];
    let bins_per_deg = n as f32 / 360.0;
    for k in 0..len {
        let mut bin = (bins_per_deg * s.ori[k]).round_ties_even() as i32;
        if bin >= n as i32 {
            bin -= n as i32;
        }
        if bin < 0 {
            bin += n as i32;
        }
        temp[bin as usize + 2] += s.w[k] * s.mag[k];
    }
    // Circular smoothing by [1, 4, 6, 4, 1] / 16.
    temp[1] = temp[n + 1];
    temp[0] = temp[n];
    temp[n + 2] = temp[2];
    temp[n + 3] = temp[3];
    for i in 0..n {
        hist[i] = (temp[i] + temp[i + 4]) * (1.0 / 16.0) + (temp[i + 1] + temp[i + 3]) * (4.0 / 16.0) + temp[i + 2] * (6.0 / 16.0);
    }
    hist.iter().copied().fold(hist[0], f32::max)
}

/// Find, refine and orient the keypoints of one octave. `octv` is the index
/// of the octave from the first one of the pyramid; keypoints are pushed in
/// first-octave coordinates with OpenCV's packed `octave` (octave `octv`),
/// each with its layer.
pub fn find_octave_extrema(
    gauss: &[Plane],
    dog: &[Plane],
    octv: usize,
    p: &DetectParams,
    s: &mut Samples,
    out: &mut Vec<(KeyPoint, usize)>,
) {
    let mut hist = [0f32; ORI_HIST_BINS];
    let n = ORI_HIST_BINS;
    for layer in 1..=p.n_layers {
        let (prev, cur, next) = (&dog[layer - 1], &dog[layer], &dog[layer + 1]);
        let (w, h) = (cur.w, cur.h);
        if w <= 2 * IMG_BORDER || h <= 2 * IMG_BORDER {
            return;
        }
        for r in IMG_BORDER..h - IMG_BORDER {
            let row = &cur.data[r * w..(r + 1) * w];
            for c in IMG_BORDER..w - IMG_BORDER {
                let v = row[c];
                if !(v.abs() > p.threshold) {
                    continue;
                }
                if !is_extremum(v, &prev.data, &cur.data, &next.data, r * w + c, w) {
                    continue;
                }
                let Some(ext) = adjust_local_extremum(dog, octv, layer, r as i32, c as i32, p) else {
                    continue;
                };
                let scl_octv = ext.kpt.size * 0.5 / (1u32 << octv) as f32;
                let omax = orientation_hist(
                    &gauss[ext.layer],
                    ext.c,
                    ext.r,
                    (ORI_RADIUS * scl_octv).round_ties_even() as i32,
                    ORI_SIG_FCTR * scl_octv,
                    s,
                    &mut hist,
                );
                let mag_thr = omax * ORI_PEAK_RATIO;
                for j in 0..n {
                    let l = if j > 0 { j - 1 } else { n - 1 };
                    let r2 = if j < n - 1 { j + 1 } else { 0 };
                    if hist[j] > hist[l] && hist[j] > hist[r2] && hist[j] >= mag_thr {
                        let mut bin = j as f32 + 0.5 * (hist[l] - hist[r2]) / (hist[l] - 2.0 * hist[j] + hist[r2]);
                        if bin < 0.0 {
                            bin += n as f32;
                        } else if bin >= n as f32 {
                            bin -= n as f32;
                        }
                        let mut kpt = ext.kpt;
                        kpt.angle = 360.0 - (360.0 / n as f32) * bin;
                        if (kpt.angle - 360.0).abs() < f32::EPSILON {
                            kpt.angle = 0.0;
                        }
                        out.push((kpt, ext.layer));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cramer_solves_and_singular_gives_zero() {
        let a = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.25], [0.5, 0.25, 2.0]];
        let x = [1.0f32, -2.0, 0.5];
        let b = [
            a[0][0] * x[0] + a[0][1] * x[1] + a[0][2] * x[2],
            a[1][0] * x[0] + a[1][1] * x[1] + a[1][2] * x[2],
            a[2][0] * x[0] + a[2][1] * x[1] + a[2][2] * x[2],
        ];
        let got = solve3(a, b);
        for k in 0..3 {
            assert!((got[k] - x[k]).abs() < 1e-5);
        }
        assert_eq!(solve3([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 1.0, 1.0]], [1.0, 1.0, 1.0]), [0.0; 3]);
    }

    #[test]
    fn orientation_of_a_ramp_points_along_the_gradient() {
        // Intensity increasing with x: gradient (dx > 0, dy = 0) -> 0 degrees;
        // increasing downwards (dy = up - down < 0) -> 270 degrees.
        let w = 41;
        let ramp_x = Plane { w, h: w, data: (0..w * w).map(|i| (i % w) as f32 * 2.0).collect() };
        let ramp_y = Plane { w, h: w, data: (0..w * w).map(|i| (i / w) as f32 * 2.0).collect() };
        let mut s = Samples::default();
        let mut hist = [0f32; ORI_HIST_BINS];
        let m = orientation_hist(&ramp_x, 20, 20, 8, 3.0, &mut s, &mut hist);
        assert_eq!(hist[0], m);
        let m = orientation_hist(&ramp_y, 20, 20, 8, 3.0, &mut s, &mut hist);
        assert_eq!(hist[27], m);
    }

    #[test]
    fn extremum_test_uses_ge() {
        let w = 3;
        let flat = vec![1.0f32; 9];
        // A plateau counts as a maximum (OpenCV compares with >=).
        assert!(is_extremum(1.0, &flat, &flat, &flat, 4, w));
        let mut higher = flat.clone();
        higher[0] = 1.5;
        assert!(!is_extremum(1.0, &flat, &flat, &higher, 4, w));
        let neg = vec![-1.0f32; 9];
        assert!(is_extremum(-1.0, &neg, &neg, &neg, 4, w));
    }
}
