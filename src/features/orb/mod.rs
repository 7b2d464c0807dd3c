//! ORB (Rublee et al. 2011) as OpenCV 4.x implements it
//! (`modules/features2d/src/orb.cpp`).
//!
//! 1. **Scale pyramid** ([`pyramid`]). Level $l$ has scale $s_l = f^{\,l - l_0}$ (`scale_factor`
//!    $f$, `first_level` $l_0$) and size `round(W / s_l) x round(H / s_l)`. The
//!    first level is the image; each further level is the previous one resized
//!    by OpenCV's bit-exact bilinear `resize(..., INTER_LINEAR_EXACT)` (8-bit
//!    fixed-point weights). Every level carries a `BORDER_REFLECT_101` border
//!    of `max(edge_threshold, ceil(patch_size / 2 * sqrt 2), 4) + 1` pixels.
//! 2. **Budget.** Level $l$ may keep $n_l$ keypoints, a geometric series of
//!    ratio $1/f$ summing to `n_features` (the last level gets the remainder).
//! 3. **Detection** ([`score`]). FAST-9 with non-maximum suppression ([`super::fast`]),
//!    keypoints closer than `edge_threshold` to the level's border dropped,
//!    the best $2 n_l$ by FAST score kept, then the Harris response
//!    $\det M - 0.04 \operatorname{tr}^2 M$ over a 7x7 block of Sobel
//!    gradients ranks them and the best $n_l$ are kept (OpenCV's
//!    `KeyPointsFilter::retainBest`: every keypoint whose response equals the
//!    $n$-th best is kept as well).
//! 4. **Orientation** ([`score`]). The intensity centroid over the circular patch of
//!    radius `patch_size / 2`: $\theta = \operatorname{atan2}(m_{01}, m_{10})$,
//!    computed with OpenCV's polynomial `fastAtan2` (degrees, $[0, 360)$).
//! 5. **Descriptor** ([`blur`], [`brief`]). Each level is smoothed by a 7x7
//!    Gaussian of $\sigma = 2$ (the float separable filter OpenCV runs on a
//!    pyramid sub-matrix); the
//!    256 test pairs of the learned pattern ([`pattern`]; a random
//!    pattern from OpenCV's `RNG(0x34985739)` when `patch_size != 31`) are
//!    rotated by $\theta$, rounded to the nearest pixel and compared: bit
//!    $= [I(p_0) < I(p_1)]$ (`wta_k = 2`), or 2-bit argmax codes of 3 or 4
//!    points (`wta_k = 3, 4`).
//!
//! Keypoints are reported in level-0 pixel coordinates (`x * s_l`), with
//! `octave` = level, `size` = `patch_size * s_l` and `response` = the Harris
//! (or FAST) score. All work on one image is single-threaded and
//! deterministic.
//!
//! One file per step, as in [`super::sift`]; the OpenCV numerics shared with
//! SIFT (`cvRound`, `fastAtan2`, reflect-101, the Gaussian kernel) are in
//! [`super::cv`].

mod blur;
mod brief;
pub mod pattern;
mod pyramid;
mod score;

use crate::error::{BovwError, Result};
use crate::features::cv::cv_round;
use crate::features::fast::fast9_window;
use crate::features::{
    DescriptorDtype, DescriptorInfo, DescriptorKind, Descriptors, Extractor, FeatureExtractor, Features, KeyPoint,
};
use crate::image::{ColorNeeds, DecodedImage, GrayView};

use brief::make_pattern;
use pyramid::{recycle, Level};
pub use score::retain_best;
use score::{angle_masks, circular_umax, harris_response, ic_angle};

/// Descriptor length in bytes.
pub const DESCRIPTOR_BYTES: usize = 32;

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
    fn per_level_budget_is_opencv_series() {
        // cv2 ORB defaults: 500 features over 8 levels with factor 1/1.2
        let v = features_per_level(500, 1.2f32 as f64, 8);
        assert_eq!(v.iter().sum::<usize>(), 500);
        // 500 (1 - 1/1.2) / (1 - 1.2^-8) = 108.6, then x 1/1.2 each level
        assert_eq!(v[..3], [109, 90, 75]);
    }

    pub(super) fn checker(w: usize, h: usize) -> Vec<u8> {
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
