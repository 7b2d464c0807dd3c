//! PHOW: dense SIFT at several bin sizes on a pre-smoothed image, in gray or
//! colour (VLFeat's `toolbox/sift/vl_phow.m`; Bosch, Zisserman and Muñoz,
//! "Image classification using random forests and ferns", ICCV 2007).
//!
//! # Definition
//!
//! The image is scaled to $[0, 1]$ and converted to the channels of `color`
//! (as `vl_phow.m` does):
//!
//! - `gray`: one channel, bovw's gray image (OpenCV's BT.601 weights);
//! - `rgb`: $R, G, B$;
//! - `hsv`: $H, S, V$ in $[0, 1]$ (MATLAB's `rgb2hsv`, as cyvlfeat's
//!   matplotlib-derived `rgb_to_hsv` computes it);
//! - `opponent`: $\mu = 0.3R + 0.59G + 0.11B$,
//!   $(R - G)/\sqrt 2 + 0.01\mu$, $(R + G - 2B)/\sqrt 6 + 0.01\mu$.
//!
//! For each bin size $s$ (default 4, 6, 8, 10), each channel is smoothed by a
//! Gaussian of standard deviation $s / m$ (`magnification` $m$, default 6)
//! and described by dense SIFT ([`crate::features::dsift`]) with bin size $s$,
//! the given `step`, window and `window_size`, and bounds
//! $[o, o, W - 1, H - 1]$ with $o = \lfloor 1 + \frac32 (\max s - s) \rfloor$,
//! so that the frames of every size share their centres. A frame's contrast
//! is the norm of channel 1 (`gray`, `opponent`), the mean of the three
//! norms (`rgb`) or the norm of $V$ (`hsv`); the descriptors (every channel)
//! of frames whose contrast is below `contrast_threshold` are set to zero.
//! A frame is $(x, y, \text{norm of channel 1}, s)$ and its descriptor the
//! channels' 128-vectors concatenated ($128 \times$ channels values).
//!
//! # Differences from the references, on purpose
//!
//! - Smoothing follows cyvlfeat (`scipy.ndimage.gaussian_filter`: kernel
//!   radius $\lfloor 4\sigma + 0.5 \rfloor$, mirrored border `d c b a | a b c d`),
//!   per channel. cyvlfeat 0.7.1 passes the whole $H \times W \times 3$ array
//!   to `gaussian_filter`, which also smooths *across the three channels*;
//!   `vl_phow.m` smooths each channel alone (`vl_imsmooth`), and so does bovw.
//! - The bounds are cyvlfeat's, 0-based $o$; `vl_phow.m`'s 1-based `[o o +inf +inf]`
//!   starts one pixel further.
//! - `opponent` follows `vl_phow.m`; cyvlfeat 0.7.1 computes its third
//!   channel as $R + G - 2B/\sqrt 6$ (operator precedence) with weights
//!   0.299, 0.587, 0.114.

use crate::error::{BovwError, Result};
use std::cell::RefCell;

use crate::features::dsift::{check_bin_size, check_common, dense_memory_bytes, describe_plane, DescBuf, Frame, Geometry, DSIFT_LEN};
use crate::features::{DescriptorDtype, DescriptorInfo, DescriptorKind, Extractor, Features, KeyPoint};
use crate::image::{ColorNeeds, DecodedImage};

/// The channels PHOW describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhowColor {
    Gray,
    Rgb,
    Hsv,
    Opponent,
}

impl PhowColor {
    /// Parse `"gray"`, `"rgb"`, `"hsv"` or `"opponent"` (case-insensitive).
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] (`color`) for another name.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "gray" | "grey" => Ok(PhowColor::Gray),
            "rgb" => Ok(PhowColor::Rgb),
            "hsv" => Ok(PhowColor::Hsv),
            "opponent" => Ok(PhowColor::Opponent),
            _ => Err(BovwError::param("color", format!("expected 'gray', 'rgb', 'hsv' or 'opponent', got {name:?}"))),
        }
    }
    /// Number of channels (1 or 3).
    pub fn channels(self) -> usize {
        if self == PhowColor::Gray {
            1
        } else {
            3
        }
    }
}

/// PHOW parameters, with `vl_phow`'s defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct PhowParams {
    /// Bin sizes in pixels (`Sizes`).
    pub sizes: Vec<usize>,
    /// Grid step in pixels (`Step`).
    pub step: usize,
    pub color: PhowColor,
    /// Flat window (`Fast`).
    pub fast: bool,
    /// Smoothing sigma = size / magnification (`Magnif`).
    pub magnification: f64,
    /// Gaussian window, in bins (`WindowSize`).
    pub window_size: f64,
    /// Frames with a lower contrast get zero descriptors (`ContrastThreshold`).
    pub contrast_threshold: f64,
    /// Float descriptors instead of `u8` (`FloatDescriptors`).
    pub float_descriptors: bool,
}

impl Default for PhowParams {
    fn default() -> Self {
        PhowParams {
            sizes: vec![4, 6, 8, 10],
            step: 2,
            color: PhowColor::Gray,
            fast: true,
            magnification: 6.0,
            window_size: 1.5,
            contrast_threshold: 0.005,
            float_descriptors: false,
        }
    }
}

/// The PHOW extractor.
#[derive(Debug, Clone)]
pub struct Phow {
    pub params: PhowParams,
}

impl Phow {
    /// Validate the parameters.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `sizes` (empty, or a size of 0
    /// or above 4096), `step` (0), `magnification` or `window_size` (not
    /// positive and finite), `contrast_threshold` (not finite).
    pub fn new(params: PhowParams) -> Result<Self> {
        if params.sizes.is_empty() {
            return Err(BovwError::param("sizes", "must list at least one bin size"));
        }
        for &s in &params.sizes {
            check_bin_size("sizes", s)?;
        }
        check_common(params.step, params.window_size)?;
        if !(params.magnification > 0.0 && params.magnification.is_finite()) {
            return Err(BovwError::param("magnification", format!("must be positive and finite, got {}", params.magnification)));
        }
        if !params.contrast_threshold.is_finite() {
            return Err(BovwError::param("contrast_threshold", format!("must be finite, got {}", params.contrast_threshold)));
        }
        Ok(Phow { params })
    }

    /// Descriptor length: 128 per channel.
    pub fn width(&self) -> usize {
        DSIFT_LEN * self.params.color.channels()
    }

    /// PHOW of channel planes (each `w * h` floats in [0, 1], the channels
    /// of `color`), as the module docs define it. Keypoints: `x`, `y` the
    /// frame centre, `size` the bin size, `response` the norm of channel 1.
    ///
    /// # Panics
    /// If the number of planes is not the colour's channel count or a plane
    /// has not `w * h` values.
    pub fn compute_planes(&self, planes: &[Vec<f32>], w: usize, h: usize) -> Features {
        let p = &self.params;
        let nc = p.color.channels();
        assert_eq!(planes.len(), nc);
        let max_size = *p.sizes.iter().max().expect("sizes is not empty");
        let geometry = |s: usize| {
            let off = (1.0 + 1.5 * (max_size - s) as f64).floor() as i64;
            Geometry::new(w, h, p.step, s, Some([off, off, w as i64 - 1, h as i64 - 1]), p.fast, p.window_size)
        };
        let total: usize = p.sizes.iter().map(|&s| geometry(s).len()).sum();
        let mut kps: Vec<KeyPoint> = Vec::with_capacity(total);
        let mut out = DescBuf::new(p.float_descriptors, total * self.width());
        with_phow_scratch(|sc| {
            sc.frames.resize_with(nc, Vec::new);
            sc.descs.resize_with(nc, Vec::new);
            sc.smoothed.resize(w * h, 0.0);
            for &s in &p.sizes {
                let g = geometry(s);
                let n = g.len();
                if n == 0 {
                    continue;
                }
                let sigma = s as f64 / p.magnification;
                for c in 0..nc {
                    sc.frames[c].clear();
                    gaussian_filter(&planes[c], w, h, sigma, &mut sc.tmp, &mut sc.smoothed);
                    describe_plane(&sc.smoothed, w, h, &g, &mut sc.frames[c], &mut sc.descs[c]);
                }
                let (frames, descs) = (&sc.frames, &sc.descs);
                for k in 0..n {
                    let contrast = match p.color {
                        PhowColor::Gray | PhowColor::Opponent => frames[0][k].norm,
                        PhowColor::Rgb => (frames[0][k].norm + frames[1][k].norm + frames[2][k].norm) / 3.0,
                        PhowColor::Hsv => frames[2][k].norm,
                    };
                    let f = frames[0][k];
                    kps.push(KeyPoint { x: f.x, y: f.y, size: s as f32, angle: 0.0, response: f.norm, octave: 0, class_id: -1 });
                    if (contrast as f64) < p.contrast_threshold {
                        out.push_zeros(DSIFT_LEN * nc);
                    } else {
                        for d in descs.iter() {
                            out.push_scaled(&d[k * DSIFT_LEN..(k + 1) * DSIFT_LEN]);
                        }
                    }
                }
            }
        });
        (kps, out.into_descriptors(self.width()))
    }
}

/// Work buffers of one PHOW call, reused across images on a thread.
#[derive(Default)]
struct PhowScratch {
    frames: Vec<Vec<Frame>>,
    descs: Vec<Vec<f32>>,
    smoothed: Vec<f32>,
    tmp: Vec<f32>,
}

thread_local! {
    static PHOW_SCRATCH: RefCell<PhowScratch> = RefCell::new(PhowScratch::default());
}

fn with_phow_scratch<R>(f: impl FnOnce(&mut PhowScratch) -> R) -> R {
    PHOW_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let out = f(&mut s);
            let bytes: usize = 4 * (s.descs.iter().map(|d| d.capacity()).sum::<usize>() + s.smoothed.capacity() + s.tmp.capacity());
            if bytes > 64 << 20 {
                *s = PhowScratch::default();
            }
            out
        }
        Err(_) => f(&mut PhowScratch::default()),
    })
}

/// The channels of `color` of a decoded image, scaled to [0, 1].
///
/// # Errors
/// [`BovwError::InvalidInput`] when the image lacks the layout asked for.
pub fn color_planes(image: &DecodedImage, color: PhowColor) -> Result<Vec<Vec<f32>>> {
    const S: f32 = 1.0 / 255.0;
    if color == PhowColor::Gray {
        return Ok(vec![image.require_gray()?.data.iter().map(|&v| v as f32 * S).collect()]);
    }
    let rgb = image.require_rgb()?;
    let n = rgb.width * rgb.height;
    let mut planes = vec![vec![0f32; n]; 3];
    let (a, rest) = planes.split_at_mut(1);
    let (b, c) = rest.split_at_mut(1);
    let (p0, p1, p2) = (&mut a[0], &mut b[0], &mut c[0]);
    for (i, px) in rgb.data.chunks_exact(3).enumerate() {
        let (r, g, bl) = (px[0] as f32 * S, px[1] as f32 * S, px[2] as f32 * S);
        let v = match color {
            PhowColor::Rgb => [r, g, bl],
            PhowColor::Hsv => hsv_float(r, g, bl),
            _ => {
                let mu = 0.3 * r + 0.59 * g + 0.11 * bl;
                let alpha = 0.01;
                [mu, (r - g) / std::f32::consts::SQRT_2 + alpha * mu, (r + g - 2.0 * bl) / 6f32.sqrt() + alpha * mu]
            }
        };
        p0[i] = v[0];
        p1[i] = v[1];
        p2[i] = v[2];
    }
    Ok(planes)
}

/// MATLAB's `rgb2hsv` on [0, 1] floats, computed as cyvlfeat's
/// (matplotlib's) `rgb_to_hsv` does in `f32`: H, S, V in [0, 1].
#[inline]
pub fn hsv_float(r: f32, g: f32, b: f32) -> [f32; 3] {
    let max = r.max(g).max(b);
    let delta = max - r.min(g).min(b);
    let s = if max > 0.0 { delta / max } else { 0.0 };
    let mut h = 0f32;
    if delta > 0.0 {
        // matplotlib assigns red, then green, then blue: the last max wins.
        if b == max {
            h = 4.0 + (r - g) / delta;
        } else if g == max {
            h = 2.0 + (b - r) / delta;
        } else {
            h = (g - b) / delta;
        }
    }
    let mut h = (h / 6.0) % 1.0;
    if h < 0.0 {
        h += 1.0;
    }
    [h, s, max]
}

/// `scipy.ndimage.gaussian_filter(plane, sigma)` (truncate 4, mode
/// "reflect"): columns first, then rows, into `out`.
pub fn gaussian_filter(plane: &[f32], w: usize, h: usize, sigma: f64, tmp: &mut Vec<f32>, out: &mut [f32]) {
    let radius = (4.0 * sigma + 0.5) as usize;
    let mut k: Vec<f64> = (0..=2 * radius).map(|i| {
        let x = i as f64 - radius as f64;
        (-0.5 / (sigma * sigma) * x * x).exp()
    }).collect();
    let sum: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    let k: Vec<f32> = k.iter().map(|&v| v as f32).collect();
    tmp.resize(w * h, 0.0); // every value is written
    #[cfg(target_arch = "x86_64")]
    {
        if crate::features::use_avx2() {
            #[target_feature(enable = "avx2")]
            unsafe fn avx2(plane: &[f32], w: usize, h: usize, k: &[f32], tmp: &mut [f32], out: &mut [f32]) {
                smooth_impl(plane, w, h, k, tmp, out)
            }
            // SAFETY: the CPU supports AVX2 (checked by use_avx2).
            unsafe { avx2(plane, w, h, &k, tmp, out) };
            return;
        }
    }
    smooth_impl(plane, w, h, &k, tmp, out)
}

/// Mirror index `i` into [0, n) (`d c b a | a b c d | d c b a`, repeated).
#[inline(always)]
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    let m = i.rem_euclid(2 * n);
    (if m >= n { 2 * n - 1 - m } else { m }) as usize
}

#[inline(always)]
fn smooth_impl(plane: &[f32], w: usize, h: usize, k: &[f32], tmp: &mut [f32], out: &mut [f32]) {
    let r = (k.len() / 2) as i64;
    // Columns: tmp row y = sum_i k[i] plane row reflect(y + i - r).
    for y in 0..h {
        let dst = &mut tmp[y * w..(y + 1) * w];
        let s0 = reflect(y as i64 - r, h);
        for (d, s) in dst.iter_mut().zip(&plane[s0 * w..(s0 + 1) * w]) {
            *d = k[0] * s;
        }
        for (i, &kv) in k.iter().enumerate().skip(1) {
            let sy = reflect(y as i64 + i as i64 - r, h);
            let src = &plane[sy * w..(sy + 1) * w];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += kv * s;
            }
        }
    }
    // Rows, through a mirrored copy of each row.
    let mut padded = vec![0f32; w + 2 * r as usize];
    for y in 0..h {
        let src = &tmp[y * w..(y + 1) * w];
        for (j, p) in padded.iter_mut().enumerate() {
            *p = src[reflect(j as i64 - r, w)];
        }
        let dst = &mut out[y * w..(y + 1) * w];
        for (d, s) in dst.iter_mut().zip(&padded[..w]) {
            *d = k[0] * s;
        }
        for (i, &kv) in k.iter().enumerate().skip(1) {
            for (d, s) in dst.iter_mut().zip(&padded[i..i + w]) {
                *d += kv * s;
            }
        }
    }
}

impl Extractor for Phow {
    fn info(&self) -> DescriptorInfo {
        let dtype = if self.params.float_descriptors { DescriptorDtype::Float32 } else { DescriptorDtype::Uint8 };
        let needs = if self.params.color == PhowColor::Gray { ColorNeeds::GRAY } else { ColorNeeds::RGB };
        DescriptorInfo { width: self.width(), dtype, kind: DescriptorKind::Local, needs }
    }
    fn extract(&self, image: &DecodedImage) -> Result<Features> {
        let planes = color_planes(image, self.params.color)?;
        Ok(self.compute_planes(&planes, image.width, image.height))
    }
    /// [`dense_memory_bytes`] over the bin sizes: about 400 bytes per pixel
    /// at the defaults (gray, step 2, four sizes; measured peak 280), about
    /// 3 times that in colour.
    fn memory_bytes(&self, width: usize, height: usize) -> Option<u128> {
        let p = &self.params;
        let max_size = *p.sizes.iter().max()?;
        let frames = |s: usize| {
            let off = (1.0 + 1.5 * (max_size - s) as f64).floor() as i64;
            let b = Some([off, off, width as i64 - 1, height as i64 - 1]);
            Geometry::new(width, height, p.step, s, b, p.fast, p.window_size).len() as u128
        };
        let pass = p.sizes.iter().map(|&s| frames(s)).max().unwrap_or(0);
        let total = p.sizes.iter().map(|&s| frames(s)).sum();
        let nc = p.color.channels() as u128;
        Some(dense_memory_bytes(width as u128 * height as u128, nc, 1, pass, total, p.float_descriptors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_mirrors_like_scipy() {
        let idx: Vec<usize> = (-5..9).map(|i| reflect(i, 4)).collect();
        assert_eq!(idx, vec![3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0]);
        assert_eq!(reflect(-1, 1), 0);
    }

    #[test]
    fn smoothing_keeps_constants_and_mass() {
        let (w, h) = (9, 5);
        let plane = vec![0.25f32; w * h];
        let mut out = vec![0f32; w * h];
        gaussian_filter(&plane, w, h, 1.7, &mut Vec::new(), &mut out);
        assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        // an impulse spreads with the normalised kernel
        let mut plane = vec![0f32; 21 * 21];
        plane[10 * 21 + 10] = 1.0;
        let mut out = vec![0f32; 21 * 21];
        gaussian_filter(&plane, 21, 21, 1.0, &mut Vec::new(), &mut out);
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let g1 = (-0.5f64).exp() / (1.0 + 2.0 * ((-0.5f64).exp() + (-2.0f64).exp() + (-4.5f64).exp() + (-8.0f64).exp()));
        let g0 = 1.0 / (1.0 + 2.0 * ((-0.5f64).exp() + (-2.0f64).exp() + (-4.5f64).exp() + (-8.0f64).exp()));
        assert!((out[10 * 21 + 11] as f64 - g0 * g1).abs() < 1e-6);
    }

    #[test]
    fn hsv_float_matches_matlab() {
        assert_eq!(hsv_float(1.0, 0.0, 0.0), [0.0, 1.0, 1.0]);
        let [h, s, v] = hsv_float(0.0, 1.0, 0.0);
        assert!((h - 1.0 / 3.0).abs() < 1e-7 && s == 1.0 && v == 1.0);
        let [h, ..] = hsv_float(1.0, 0.0, 0.5);
        assert!((h - (1.0 - 0.5 / 6.0)).abs() < 1e-6);
        assert_eq!(hsv_float(0.0, 0.0, 0.0), [0.0, 0.0, 0.0]);
    }

    #[test]
    fn frames_share_centres_and_tiny_images_give_none() {
        let phow = Phow::new(PhowParams { step: 3, ..Default::default() }).unwrap();
        let (w, h) = (40, 36);
        let plane: Vec<f32> = (0..w * h).map(|i| ((i % w) as f32 * 0.4).sin() * 0.5 + 0.5).collect();
        let (kps, desc) = phow.compute_planes(&[plane], w, h);
        assert_eq!(desc.len(), kps.len());
        // The first frame of every size is centred at 1 + 1.5 * 10 = 16.
        for s in [4.0, 6.0, 8.0, 10.0] {
            let first = kps.iter().find(|k| k.size == s).unwrap();
            assert_eq!((first.x, first.y), (16.0, 16.0));
        }
        let (kps, desc) = phow.compute_planes(&[vec![0.5; 7 * 300]], 7, 300);
        assert!(kps.is_empty() && desc.is_empty());
        let (kps, _) = phow.compute_planes(&[vec![0.5; 1]], 1, 1);
        assert!(kps.is_empty());
    }

    #[test]
    fn bad_parameters() {
        let bad = |p: PhowParams| Phow::new(p).unwrap_err().to_string();
        assert!(bad(PhowParams { sizes: vec![], ..Default::default() }).starts_with("sizes"));
        assert!(bad(PhowParams { sizes: vec![4, 0], ..Default::default() }).starts_with("sizes"));
        assert!(bad(PhowParams { step: 0, ..Default::default() }).starts_with("step"));
        assert!(bad(PhowParams { magnification: 0.0, ..Default::default() }).starts_with("magnification"));
        assert!(bad(PhowParams { contrast_threshold: f64::NAN, ..Default::default() }).starts_with("contrast_threshold"));
        assert!(PhowColor::parse("lab").unwrap_err().to_string().starts_with("color"));
    }
}
