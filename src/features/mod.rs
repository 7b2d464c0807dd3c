//! Local feature detection and description.
//!
//! [`sift`] (Lowe 2004, as OpenCV implements it) gives 128-float descriptors;
//! [`orb`] (Rublee et al. 2011, as OpenCV implements it) gives 32-byte binary
//! descriptors. Both implement [`FeatureExtractor`], which [`extract_batch`]
//! runs over a batch of encoded images in parallel with rayon.

pub mod fast;
pub mod orb;
pub mod orb_pattern;
pub mod sift;

use rayon::prelude::*;

use crate::error::{BovwError, Result};
use crate::image::{decode_gray, GrayView};

/// A detected keypoint, in OpenCV's conventions: `(x, y)` in pixels of the
/// input image with the origin at the centre of the top-left pixel, `size` the
/// diameter of the meaningful neighbourhood in pixels, `angle` in degrees in
/// [0, 360) (counter-clockwise... as OpenCV reports it), `response` the detector
/// strength, `octave` the pyramid level (OpenCV's packed encoding for SIFT:
/// `octave | layer << 8 | round(xi * 255) << 16`; the plain level for ORB).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KeyPoint {
    pub x: f32,
    pub y: f32,
    pub size: f32,
    pub angle: f32,
    pub response: f32,
    pub octave: i32,
    pub class_id: i32,
}

/// Descriptors of one image, one row per keypoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Descriptors {
    /// Row-major float rows of `width` values (SIFT: 128).
    F32 { data: Vec<f32>, width: usize },
    /// Row-major byte rows of `width` bytes (ORB: 32).
    U8 { data: Vec<u8>, width: usize },
}

impl Descriptors {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Descriptors::F32 { data, width } => if *width == 0 { 0 } else { data.len() / width },
            Descriptors::U8 { data, width } => if *width == 0 { 0 } else { data.len() / width },
        }
    }
    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a feature extractor produces for one image.
pub type Features = (Vec<KeyPoint>, Descriptors);

/// A detector + descriptor that can run on many images at once.
pub trait FeatureExtractor: Sync {
    /// Descriptor width (128 for SIFT, 32 bytes for ORB).
    fn descriptor_width(&self) -> usize;
    /// True for binary (byte) descriptors.
    fn is_binary(&self) -> bool;
    /// Detect keypoints and compute their descriptors on one image.
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when the image is too small for the
    /// detector, [`BovwError::Shape`] when the mask does not match the image.
    fn detect_and_compute(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>) -> Result<Features>;
    /// An empty descriptor block of the right kind.
    fn empty_descriptors(&self) -> Descriptors {
        if self.is_binary() {
            Descriptors::U8 { data: Vec::new(), width: self.descriptor_width() }
        } else {
            Descriptors::F32 { data: Vec::new(), width: self.descriptor_width() }
        }
    }
}

thread_local! {
    /// Set by tests to run the portable code paths on an AVX2 machine.
    static PORTABLE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the AVX2 kernels may run: the CPU has AVX2 (checked at run time)
/// and this thread is not restricted to the portable paths (tests).
#[inline]
pub(crate) fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !PORTABLE_ONLY.with(|c| c.get()) && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Run `f` with the AVX2 kernels off on this thread (tests compare both paths).
#[cfg(test)]
pub(crate) fn portable_only<R>(f: impl FnOnce() -> R) -> R {
    PORTABLE_ONLY.with(|c| c.set(true));
    let r = f();
    PORTABLE_ONLY.with(|c| c.set(false));
    r
}

/// Run `f` on a rayon pool of `n_threads` threads (`None` or 0: rayon's global
/// pool, sized by `RAYON_NUM_THREADS` or the core count).
pub fn with_threads<R: Send>(n_threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    match n_threads {
        Some(n) if n > 0 => match rayon::ThreadPoolBuilder::new().num_threads(n).build() {
            Ok(pool) => pool.install(f),
            Err(_) => f(),
        },
        _ => f(),
    }
}

/// Decode each encoded image (`None` = null row) and extract its features.
///
/// Returns one entry per input row, in input order: the features, or the
/// reason the row could not be used (decode failure, image too small...).
/// Work is spread over images with rayon; the result does not depend on the
/// number of threads.
pub fn extract_batch<E: FeatureExtractor>(
    contents: &[Option<&[u8]>],
    extractor: &E,
) -> Vec<std::result::Result<Features, String>> {
    contents
        .par_iter()
        .with_max_len(1)
        .map(|content| {
            let bytes = content.ok_or_else(|| "null content".to_string())?;
            let gray = decode_gray(bytes)?;
            extractor
                .detect_and_compute(gray.view(), None)
                .map_err(|e: BovwError| e.to_string())
        })
        .collect()
}
