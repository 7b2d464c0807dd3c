//! Local feature detection and description.
//!
//! [`sift`] (Lowe 2004, as OpenCV implements it) gives 128-float descriptors;
//! [`orb`] (Rublee et al. 2011, as OpenCV implements it) gives 32-byte binary
//! descriptors. Every extractor implements [`Extractor`] (one decoded image
//! in, keypoints and descriptors out, with its [`DescriptorInfo`]);
//! [`extract_batch`] decodes a batch of encoded images in the layouts the
//! extractor needs and runs it over them in parallel with rayon. The gray
//! keypoint detectors also implement [`FeatureExtractor`] (OpenCV's
//! `detectAndCompute` with a mask).

pub mod color;
pub mod dsift;
pub mod fast;
pub mod orb;
pub mod orb_pattern;
pub mod phow;
pub mod sift;

use rayon::prelude::*;

use crate::error::{BovwError, ImageError, Result};
use crate::image::{decode_image, ColorNeeds, DecodedImage, GrayView};

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

/// What a feature extractor produces for one image: the keypoints (or
/// frames) and one descriptor row per keypoint.
pub type Features = (Vec<KeyPoint>, Descriptors);

/// The element type of an extractor's descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorDtype {
    /// `f32` rows (SIFT, dense SIFT, colour histograms, CNN embeddings).
    Float32,
    /// Byte rows (ORB's 256-bit binary descriptors).
    Uint8,
}

impl DescriptorDtype {
    /// NumPy's name for the dtype.
    pub fn as_str(self) -> &'static str {
        match self {
            DescriptorDtype::Float32 => "float32",
            DescriptorDtype::Uint8 => "uint8",
        }
    }
}

/// Whether an extractor describes many points of an image or the whole image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorKind {
    /// Many descriptors per image, each at a keypoint (encoded later into one
    /// vector by a vocabulary: bag of words, VLAD, Fisher vectors).
    Local,
    /// Exactly one descriptor per image (a colour histogram, a CNN
    /// embedding): already the image's feature vector.
    Global,
}

impl DescriptorKind {
    /// `"local"` or `"global"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DescriptorKind::Local => "local",
            DescriptorKind::Global => "global",
        }
    }
}

/// The facts every extractor states about its output, so that no caller
/// branches on an extractor's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorInfo {
    /// Values per descriptor row (SIFT 128, ORB 32 bytes, ...).
    pub width: usize,
    /// Element type of a row.
    pub dtype: DescriptorDtype,
    /// Local or global.
    pub kind: DescriptorKind,
    /// The pixel layouts the extractor reads (gray, RGB or both).
    pub needs: ColorNeeds,
}

impl DescriptorInfo {
    /// An empty descriptor block of this width and dtype.
    pub fn empty_descriptors(&self) -> Descriptors {
        match self.dtype {
            DescriptorDtype::Float32 => Descriptors::F32 { data: Vec::new(), width: self.width },
            DescriptorDtype::Uint8 => Descriptors::U8 { data: Vec::new(), width: self.width },
        }
    }
}

/// Anything that turns one decoded image into descriptors. Every extractor
/// (SIFT, ORB, dense SIFT, PHOW, colour histograms, CNN embeddings)
/// implements it, and [`extract_batch`] runs any of them over a batch of
/// encoded images.
pub trait Extractor: Sync {
    /// Width, dtype, kind and the pixel layouts read.
    fn info(&self) -> DescriptorInfo;
    /// Keypoints (frames) and descriptors of one image. `image` holds the
    /// layouts [`DescriptorInfo::needs`] names.
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when the image cannot be described (too
    /// small for a detector...).
    fn extract(&self, image: &DecodedImage) -> Result<Features>;
}

/// A keypoint detector + descriptor on gray images, with OpenCV's
/// `Feature2D::detectAndCompute` semantics (SIFT, ORB).
pub trait FeatureExtractor: Extractor {
    /// Detect keypoints and compute their descriptors on one image.
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when the image is too small for the
    /// detector, [`BovwError::Shape`] when the mask does not match the image.
    fn detect_and_compute(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>) -> Result<Features>;
    /// Detect keypoints only (OpenCV's `detect`).
    ///
    /// # Errors
    /// As [`FeatureExtractor::detect_and_compute`].
    fn detect(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>) -> Result<Vec<KeyPoint>>;
    /// Describe given keypoints (OpenCV's `compute`); returns the keypoints
    /// kept (those the extractor can describe) and their descriptors.
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when the image is too small or a keypoint
    /// is invalid for this extractor.
    fn compute(&self, image: GrayView<'_>, keypoints: &[KeyPoint]) -> Result<Features>;
}

/// The features of one image of a batch, with the image's size in pixels
/// (what spatial pyramids need to place the keypoints in cells).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFeatures {
    pub width: usize,
    pub height: usize,
    pub keypoints: Vec<KeyPoint>,
    pub descriptors: Descriptors,
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
/// Returns one entry per input row, in input order: the features, or an
/// [`ImageError`] naming the stage that failed (`decode` for unreadable
/// bytes, `descriptors` when the extractor refused the image). Work is
/// spread over images with rayon; the result does not depend on the number
/// of threads.
pub fn extract_batch<E: Extractor + ?Sized>(
    contents: &[Option<&[u8]>],
    extractor: &E,
) -> Vec<std::result::Result<ImageFeatures, ImageError>> {
    let needs = extractor.info().needs;
    contents
        .par_iter()
        .with_max_len(1)
        .map(|content| {
            let bytes = content.ok_or_else(|| ImageError::decode("null content (the file could not be read)"))?;
            let image = decode_image(bytes, needs)?;
            let (keypoints, descriptors) =
                extractor.extract(&image).map_err(|e: BovwError| ImageError::descriptors(e.to_string()))?;
            Ok(ImageFeatures { width: image.width, height: image.height, keypoints, descriptors })
        })
        .collect()
}
