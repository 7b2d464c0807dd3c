//! ORB (Rublee et al. 2011) as OpenCV 4.x implements it. (Being written: issue 6.)

use crate::error::{BovwError, Result};
use crate::features::{Descriptors, FeatureExtractor, Features, KeyPoint};
use crate::image::GrayView;

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
}

impl Orb {
    /// Validate the parameters.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming the bad parameter.
    pub fn new(params: OrbParams) -> Result<Self> {
        if !(params.scale_factor > 1.0) {
            return Err(BovwError::param("scale_factor", "must be greater than 1"));
        }
        Ok(Orb { params })
    }

    /// Detect keypoints.
    pub fn detect(&self, _image: GrayView<'_>, _mask: Option<GrayView<'_>>) -> Result<Vec<KeyPoint>> {
        Err(BovwError::input("not built yet"))
    }

    /// Compute descriptors at the given keypoints.
    pub fn compute(&self, _image: GrayView<'_>, _keypoints: &[KeyPoint]) -> Result<(Vec<KeyPoint>, Descriptors)> {
        Err(BovwError::input("not built yet"))
    }
}

impl FeatureExtractor for Orb {
    fn descriptor_width(&self) -> usize {
        32
    }
    fn is_binary(&self) -> bool {
        true
    }
    fn detect_and_compute(&self, _image: GrayView<'_>, _mask: Option<GrayView<'_>>) -> Result<Features> {
        Err(BovwError::input("ORB is not built yet"))
    }
}
