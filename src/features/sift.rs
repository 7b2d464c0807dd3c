//! SIFT (Lowe 2004) as OpenCV 4.x implements it. (Being written: issue 3.)

use crate::error::{BovwError, Result};
use crate::features::{Descriptors, FeatureExtractor, Features, KeyPoint};
use crate::image::GrayView;

/// SIFT parameters, with OpenCV's defaults (`cv2.SIFT_create()`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiftParams {
    /// Keep the `n_features` best keypoints by response (0 = all).
    pub n_features: usize,
    /// Layers per octave (OpenCV `nOctaveLayers`).
    pub n_octave_layers: usize,
    /// OpenCV `contrastThreshold`.
    pub contrast_threshold: f64,
    /// OpenCV `edgeThreshold`.
    pub edge_threshold: f64,
    /// Gaussian sigma of the base image (OpenCV `sigma`).
    pub sigma: f64,
}

impl Default for SiftParams {
    fn default() -> Self {
        SiftParams { n_features: 0, n_octave_layers: 3, contrast_threshold: 0.04, edge_threshold: 10.0, sigma: 1.6 }
    }
}

/// The SIFT detector and descriptor.
#[derive(Debug, Clone)]
pub struct Sift {
    pub params: SiftParams,
}

impl Sift {
    /// Validate the parameters.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming the bad parameter.
    pub fn new(params: SiftParams) -> Result<Self> {
        if params.n_octave_layers < 1 {
            return Err(BovwError::param("n_octave_layers", "must be at least 1"));
        }
        if !(params.sigma > 0.0) {
            return Err(BovwError::param("sigma", "must be positive"));
        }
        Ok(Sift { params })
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

impl FeatureExtractor for Sift {
    fn descriptor_width(&self) -> usize {
        128
    }
    fn is_binary(&self) -> bool {
        false
    }
    fn detect_and_compute(&self, _image: GrayView<'_>, _mask: Option<GrayView<'_>>) -> Result<Features> {
        Err(BovwError::input("SIFT is not built yet"))
    }
}
