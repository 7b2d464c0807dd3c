//! Local feature detection and description.
//!
//! [`sift`] (Lowe 2004, as OpenCV implements it) gives 128-float descriptors;
//! [`orb`] (Rublee et al. 2011, as OpenCV implements it) gives 32-byte binary
//! descriptors. Every extractor implements [`Extractor`] (one decoded image
//! in, keypoints and descriptors out, with its [`DescriptorInfo`]);
//! [`extract_batch`] decodes a batch of encoded images in the layouts the
//! extractor needs and runs it over them in parallel with rayon. The gray
//! keypoint detectors also implement [`FeatureExtractor`] (OpenCV's
//! `detectAndCompute` with a mask). [`cv`] holds the OpenCV numerics they
//! share (border reflection, `fastAtan2`, `cvRound`, Gaussian kernels), and
//! [`fast`] the FAST-9 corner detector.

pub mod color;
pub mod cv;
pub mod dsift;
pub mod fast;
pub mod orb;
pub mod phow;
pub mod sift;

use rayon::prelude::*;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{human_bytes, probe_allocation, BovwError, ImageError, Result};
use crate::image::{decode_image_checked, ColorNeeds, DecodeLimits, DecodedImage, GrayView};

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
    /// An upper bound of the bytes [`Extractor::extract`] allocates at its
    /// peak for one `width` x `height` image (beyond the decoded image
    /// itself), or `None` when the extractor cannot tell. [`extract_batch_limited`]
    /// holds it against the per-image [`MemoryPolicy`] before decoding, and
    /// the single-image bindings check that it can be allocated (so that an
    /// image too large gives `MemoryError`, not an abort). Extractors whose
    /// memory grows with the image should implement it (SIFT about 300
    /// bytes per pixel, ORB about 20, dense SIFT about 780 at step 1, PHOW
    /// about 400): `None` leaves the image unbounded (colour histograms, CNN
    /// embeddings: the decode limits bound them).
    fn memory_bytes(&self, width: usize, height: usize) -> Option<u128> {
        let _ = (width, height);
        None
    }
    /// How many images [`Extractor::extract_group`] is best given at once:
    /// 1 (the default) for one at a time. [`extract_batch`] and
    /// [`extract_batch_many`] then hand each thread groups of up to this
    /// many images (fewer when the batch is small, so that every thread
    /// gets some). The CNN embedding groups images so that its late layers
    /// read each weight once per group.
    fn group_size(&self) -> usize {
        1
    }
    /// [`Extractor::extract`] of several images, one result per image in
    /// order: the same results (values, errors) as one at a time, which
    /// the default does. Images for which [`Extractor::memory_bytes`] gives
    /// an estimate, or larger than [`GROUP_MAX_IMAGE_PIXELS`], are never
    /// grouped.
    fn extract_group(&self, images: &[&DecodedImage]) -> Vec<Result<Features>> {
        images.iter().map(|image| self.extract(image)).collect()
    }
}

/// Largest image (pixels) held decoded while its group waits for
/// [`Extractor::extract_group`]: larger ones are described alone, so a
/// group never holds more than a few megabytes of pixels per image.
pub const GROUP_MAX_IMAGE_PIXELS: usize = 1 << 22;

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
    /// The factor the image was resized by before description: 1 at full
    /// size, < 1 when [`Oversize::Downscale`] shrank it to fit the memory
    /// budget (keypoints are still in the file's pixels).
    pub scale: f64,
}

/// The widest kernel family a thread may run: tests cap it to compare the
/// AVX-512, AVX2 and portable paths on one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Simd {
    Portable,
    Avx2,
    Avx512,
}

thread_local! {
    /// This thread's cap on the kernel family (tests lower it).
    static SIMD_CAP: std::cell::Cell<Simd> = const { std::cell::Cell::new(Simd::Avx512) };
}

/// Whether the AVX2 kernels may run: the CPU has AVX2 (checked at run time)
/// and this thread is not restricted to the portable paths (tests).
#[inline]
pub(crate) fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        SIMD_CAP.with(|c| c.get()) >= Simd::Avx2 && std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 kernels may run (the CNN's GEMM and depthwise
/// convolutions have them): the CPU has AVX-512F (checked at run time), the
/// AVX2 kernels may run ([`use_avx2`]) and this thread is not restricted to
/// AVX2 (tests). Every AVX-512 kernel gives the bits of its AVX2 and
/// portable counterparts.
#[inline]
pub(crate) fn use_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use_avx2() && SIMD_CAP.with(|c| c.get()) >= Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Run `f` with this thread's kernels capped at `cap` (the previous cap
/// comes back afterwards).
#[cfg(test)]
fn with_simd_cap<R>(cap: Simd, f: impl FnOnce() -> R) -> R {
    let before = SIMD_CAP.with(|c| c.replace(cap));
    let r = f();
    SIMD_CAP.with(|c| c.set(before));
    r
}

/// Run `f` with the AVX2 (and AVX-512) kernels off on this thread (tests
/// compare the paths).
#[cfg(test)]
pub(crate) fn portable_only<R>(f: impl FnOnce() -> R) -> R {
    with_simd_cap(Simd::Portable, f)
}

/// Run `f` with the AVX-512 kernels off on this thread (the AVX2 ones run
/// instead; tests compare the paths).
#[cfg(test)]
pub(crate) fn avx2_only<R>(f: impl FnOnce() -> R) -> R {
    with_simd_cap(Simd::Avx2, f)
}

/// The largest `n_threads` a kernel accepts. Fixed rather than a multiple
/// of the core count, so that a setting valid on a driver is valid on every
/// executor; far above any core count bovw runs on.
pub const MAX_THREADS: usize = 256;

/// Validate an `n_threads` argument: `None` or 0 mean "all cores" (rayon's
/// global pool, sized by `RAYON_NUM_THREADS` or the core count), else
/// 1..=[`MAX_THREADS`].
///
/// # Errors
/// [`BovwError::InvalidParameter`] naming `n_threads` and the range.
pub fn check_threads(n_threads: Option<i64>) -> Result<Option<usize>> {
    match n_threads {
        None | Some(0) => Ok(None),
        Some(n) if (1..=MAX_THREADS as i64).contains(&n) => Ok(Some(n as usize)),
        Some(n) => Err(BovwError::param(
            "n_threads",
            format!("must be None (all cores) or between 1 and {MAX_THREADS}, got {n}"),
        )),
    }
}

/// Pools kept for reuse, by size: building a rayon pool starts its threads,
/// so a pool per call costs a thread start per thread per call.
fn pools() -> &'static Mutex<(HashMap<usize, Arc<rayon::ThreadPool>>, Vec<usize>)> {
    static POOLS: OnceLock<Mutex<(HashMap<usize, Arc<rayon::ThreadPool>>, Vec<usize>)>> = OnceLock::new();
    POOLS.get_or_init(|| Mutex::new((HashMap::new(), Vec::new())))
}

/// Pools of at most this many distinct sizes are kept (least recently used
/// dropped first: its threads end once no call is using it).
const KEPT_POOLS: usize = 4;

/// The shared pool of `n` threads, built on first use.
fn pool(n: usize) -> Option<Arc<rayon::ThreadPool>> {
    let mut guard = pools().lock().unwrap_or_else(|e| e.into_inner());
    let (map, order) = &mut *guard;
    if let Some(p) = map.get(&n) {
        let p = Arc::clone(p);
        order.retain(|&k| k != n);
        order.push(n);
        return Some(p);
    }
    let p = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(n).build().ok()?);
    map.insert(n, Arc::clone(&p));
    order.push(n);
    while order.len() > KEPT_POOLS {
        let old = order.remove(0);
        map.remove(&old);
    }
    Some(p)
}

/// Run `f` on a rayon pool of `n_threads` threads (`None` or 0: rayon's global
/// pool, sized by `RAYON_NUM_THREADS` or the core count). Pools are cached
/// by size (the last [`KEPT_POOLS`] sizes used), so repeated calls with the
/// same count reuse their threads. Counts above [`MAX_THREADS`] are clamped
/// (the bindings refuse them earlier with [`check_threads`]).
pub fn with_threads<R: Send>(n_threads: Option<usize>, f: impl FnOnce() -> R + Send) -> R {
    match n_threads {
        Some(n) if n > 0 => match pool(n.min(MAX_THREADS)) {
            Some(p) => p.install(f),
            None => f(),
        },
        _ => f(),
    }
}

/// What to do with an image whose description would need more memory than
/// [`MemoryPolicy::max_image_memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// An error row (stage `decode`) giving the estimate and the limit.
    Refuse,
    /// Area-average the image down until the estimate fits, describe that,
    /// and map the keypoints back to the file's pixels (the row's
    /// `image_scale` records the factor).
    Downscale,
}

impl Oversize {
    /// `"refuse"` or `"downscale"`.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `oversize`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "refuse" => Ok(Oversize::Refuse),
            "downscale" => Ok(Oversize::Downscale),
            other => Err(BovwError::param("oversize", format!("expected 'refuse' or 'downscale', got {other:?}"))),
        }
    }
    /// The name [`Oversize::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Oversize::Refuse => "refuse",
            Oversize::Downscale => "downscale",
        }
    }
}

/// The per-image memory budget of description ([`Extractor::memory_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPolicy {
    /// Largest estimated peak, in bytes, of describing one image.
    pub max_image_memory: u64,
    /// What happens above it.
    pub oversize: Oversize,
}

impl MemoryPolicy {
    /// Default budget: 1 GiB per image (SIFT at OpenCV's defaults: about
    /// 3.5 megapixels, e.g. 2160 x 1620; ORB: about 170 megapixels, so the
    /// decode limit applies first). Each thread describes one image at a time.
    pub const DEFAULT_MAX_IMAGE_MEMORY: u64 = 1 << 30;
    /// Smallest budget accepted: 1 MiB.
    pub const MIN_MAX_IMAGE_MEMORY: u64 = 1 << 20;

    /// A validated policy.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `max_image_memory` (below
    /// 1 MiB) or `oversize`.
    pub fn new(max_image_memory: i64, oversize: &str) -> Result<Self> {
        if max_image_memory < Self::MIN_MAX_IMAGE_MEMORY as i64 {
            return Err(BovwError::param(
                "max_image_memory",
                format!("must be at least {} bytes (1 MiB), got {max_image_memory}", Self::MIN_MAX_IMAGE_MEMORY),
            ));
        }
        Ok(MemoryPolicy { max_image_memory: max_image_memory as u64, oversize: Oversize::parse(oversize)? })
    }
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        MemoryPolicy { max_image_memory: Self::DEFAULT_MAX_IMAGE_MEMORY, oversize: Oversize::Refuse }
    }
}

/// Everything that bounds the work on one image of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceLimits {
    /// Checked from the file's header, before decoding.
    pub decode: DecodeLimits,
    /// Checked from the header too, against the extractor's estimate.
    pub memory: MemoryPolicy,
}

/// The largest size with the aspect ratio of `width` x `height` whose
/// estimate fits `max` bytes (None: not even 1 pixel a side fits).
fn fit_size<E: Extractor + ?Sized>(extractor: &E, width: usize, height: usize, max: u128) -> Option<(usize, usize)> {
    let size_at = |w: usize| -> (usize, usize) {
        let h = ((height as f64 * w as f64 / width as f64).round() as usize).clamp(1, height);
        (w, h)
    };
    let fits = |w: usize| {
        let (w, h) = size_at(w);
        extractor.memory_bytes(w, h).map_or(true, |b| b <= max)
    };
    if !fits(1) {
        return None;
    }
    let (mut lo, mut hi) = (1usize, width); // fits(lo), !fits(hi)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(size_at(lo))
}

/// Decode each encoded image (`None` = null row) and extract its features,
/// within the default [`ResourceLimits`].
///
/// Returns one entry per input row, in input order: the features, or an
/// [`ImageError`] naming the stage that failed (`decode` for unreadable
/// bytes or an image over a limit, `descriptors` when the extractor refused
/// the image). Work is spread over images with rayon; the result does not
/// depend on the number of threads.
pub fn extract_batch<E: Extractor + ?Sized>(
    contents: &[Option<&[u8]>],
    extractor: &E,
) -> Vec<std::result::Result<ImageFeatures, ImageError>> {
    extract_batch_limited(contents, extractor, &ResourceLimits::default())
}

/// [`extract_batch`] within `limits`.
///
/// Before any pixel is decoded, each image's header size is checked against
/// `limits.decode` and the extractor's [`Extractor::memory_bytes`] estimate
/// against `limits.memory`: over the memory budget, the image is refused
/// (an error row at stage `decode` giving the estimate and the limit) or,
/// with [`Oversize::Downscale`], decoded, area-averaged down to the largest
/// size whose estimate fits, and described; its keypoints are then given in
/// the file's pixels (`x' = (x + 0.5) / s - 0.5`, `size' = size / s`) and
/// [`ImageFeatures::scale`] is `s` < 1. The estimate is also reserved and
/// freed before describing, so that memory the system cannot give is an
/// error row at stage `descriptors`, not an abort.
pub fn extract_batch_limited<E: Extractor + ?Sized>(
    contents: &[Option<&[u8]>],
    extractor: &E,
    limits: &ResourceLimits,
) -> Vec<std::result::Result<ImageFeatures, ImageError>> {
    let group = group_len(contents.len(), extractor.group_size());
    if group <= 1 {
        return contents.par_iter().with_max_len(1).map(|content| extract_one(*content, extractor, limits)).collect();
    }
    let groups = [(extractor.info().needs, vec![0])];
    let rows: Vec<Vec<Vec<_>>> =
        contents.par_chunks(group).with_max_len(1).map(|chunk| describe_chunk(chunk, &[extractor], &groups, limits)).collect();
    rows.into_iter().flatten().map(|mut row| row.pop().expect("one extractor")).collect()
}

/// Images per parallel task for extractors grouping up to `group_size`
/// images: at most `group_size`, and few enough that each thread of the
/// current pool gets one.
fn group_len(n_images: usize, group_size: usize) -> usize {
    if group_size <= 1 {
        return 1;
    }
    group_size.min(n_images.div_ceil(rayon::current_num_threads().max(1))).max(1)
}

/// Whether `image` goes into a group of `extractor`'s (see [`Extractor::extract_group`]).
fn groupable<E: Extractor + ?Sized>(extractor: &E, image: &DecodedImage) -> bool {
    extractor.group_size() > 1
        && image.width.saturating_mul(image.height) <= GROUP_MAX_IMAGE_PIXELS
        && extractor.memory_bytes(image.width, image.height).is_none()
}

/// The results of images `chunk` (one row per image: one entry per
/// extractor) for [`extract_batch_many`], `groups` the extractors by the
/// layouts they need. Each image is decoded once per group of layouts and
/// described at once by the extractors that take images one by one; the
/// extractors that group images get all the chunk's images they accept in
/// one [`Extractor::extract_group`] call. Every entry equals what
/// [`extract_batch_limited`] gives that extractor alone.
fn describe_chunk<E: Extractor + ?Sized>(
    chunk: &[Option<&[u8]>],
    extractors: &[&E],
    groups: &[(ColorNeeds, Vec<usize>)],
    limits: &ResourceLimits,
) -> Vec<Vec<std::result::Result<ImageFeatures, ImageError>>> {
    let mut rows: Vec<Vec<Option<std::result::Result<ImageFeatures, ImageError>>>> = vec![vec![None; extractors.len()]; chunk.len()];
    // decoded images waiting for a group, and which (image, kept image) each extractor waits for
    let mut kept: Vec<DecodedImage> = Vec::new();
    let mut waiting: Vec<Vec<(usize, usize)>> = vec![Vec::new(); extractors.len()];
    for (i, content) in chunk.iter().enumerate() {
        for (needs, members) in groups {
            if let [e] = members[..] {
                if extractors[e].group_size() <= 1 {
                    rows[i][e] = Some(extract_one(*content, extractors[e], limits));
                    continue;
                }
            }
            // decoded once, unless every member refuses it at its header
            let mut header = None;
            let decoded = decode_for(*content, *needs, limits, |w, h| {
                header = Some((w, h));
                match members.iter().all(|&e| refusal(extractors[e], limits, w, h).is_some()) {
                    true => Err(ImageError::decode("refused by every extractor")),
                    false => Ok(()),
                }
            });
            let mut keep = false;
            for &e in members {
                // each member's own refusal, at the header's size as on its own
                let refused = header.and_then(|(w, h)| refusal(extractors[e], limits, w, h));
                rows[i][e] = match (refused, &decoded) {
                    (Some(err), _) => Some(Err(err)),
                    (None, Err(err)) => Some(Err(err.clone())),
                    (None, Ok(image)) if groupable(extractors[e], image) => {
                        waiting[e].push((i, kept.len()));
                        keep = true;
                        None
                    }
                    (None, Ok(image)) => Some(describe_decoded(image, extractors[e], limits)),
                };
            }
            if keep {
                kept.push(decoded.expect("only decoded images wait"));
            }
        }
    }
    for (e, list) in waiting.iter().enumerate() {
        if list.is_empty() {
            continue;
        }
        let images: Vec<&DecodedImage> = list.iter().map(|&(_, k)| &kept[k]).collect();
        let results = extractors[e].extract_group(&images);
        assert_eq!(results.len(), images.len(), "extract_group gives one result per image");
        for ((&(i, _), image), r) in list.iter().zip(&images).zip(results) {
            rows[i][e] = Some(match r {
                Ok((keypoints, descriptors)) => {
                    Ok(ImageFeatures { width: image.width, height: image.height, keypoints, descriptors, scale: 1.0 })
                }
                Err(err) => Err(ImageError::descriptors(err.to_string())),
            });
        }
    }
    rows.into_iter().map(|row| row.into_iter().map(|r| r.expect("every extractor described every image")).collect()).collect()
}

/// [`extract_batch_limited`] for several extractors reading the same
/// images: entry `e` of the result is what `extract_batch_limited(contents,
/// extractors[e], limits)` returns, the same values, errors and messages.
/// Extractors that need the same layouts ([`ColorNeeds`]: for example a CNN
/// and a colour histogram, both RGB) share one decode of each image instead
/// of decoding it once each; an image too large for one of them (see
/// `limits.memory`) is refused, or downscaled, for that one only.
pub fn extract_batch_many(
    contents: &[Option<&[u8]>],
    extractors: &[&(dyn Extractor + Sync)],
    limits: &ResourceLimits,
) -> Vec<Vec<std::result::Result<ImageFeatures, ImageError>>> {
    // extractors grouped by the layouts they need, in order of first use
    let mut groups: Vec<(ColorNeeds, Vec<usize>)> = Vec::new();
    for (e, x) in extractors.iter().enumerate() {
        let needs = x.info().needs;
        match groups.iter_mut().find(|(n, _)| *n == needs) {
            Some((_, members)) => members.push(e),
            None => groups.push((needs, vec![e])),
        }
    }
    let group = group_len(contents.len(), extractors.iter().map(|x| x.group_size()).max().unwrap_or(1));
    let chunks: Vec<Vec<Vec<std::result::Result<ImageFeatures, ImageError>>>> =
        contents.par_chunks(group).with_max_len(1).map(|chunk| describe_chunk(chunk, extractors, &groups, limits)).collect();
    let per_image = chunks.into_iter().flatten();
    // transpose: one list per extractor
    let mut out: Vec<Vec<_>> = (0..extractors.len()).map(|_| Vec::with_capacity(contents.len())).collect();
    for row in per_image {
        for (e, r) in row.into_iter().enumerate() {
            out[e].push(r);
        }
    }
    out
}

/// The error row of an image whose `w` x `h` pixels `extractor` would need
/// more than `limits.memory.max_image_memory` for, under
/// [`Oversize::Refuse`]; None when it fits or may be downscaled.
fn refusal<E: Extractor + ?Sized>(extractor: &E, limits: &ResourceLimits, w: usize, h: usize) -> Option<ImageError> {
    let max = limits.memory.max_image_memory as u128;
    match extractor.memory_bytes(w, h) {
        Some(b) if b > max && limits.memory.oversize == Oversize::Refuse => Some(ImageError::decode(format!(
            "image too large to describe: {w}x{h} pixels need about {} ({b} bytes), over max_image_memory={max} \
             ({}); raise max_image_memory or pass oversize='downscale'",
            human_bytes(b),
            human_bytes(max)
        ))),
        _ => None,
    }
}

/// Decode one row's bytes in the layouts `needs` within `limits.decode`;
/// `check` may refuse the image from its header size.
fn decode_for(
    content: Option<&[u8]>,
    needs: ColorNeeds,
    limits: &ResourceLimits,
    check: impl FnMut(usize, usize) -> std::result::Result<(), ImageError>,
) -> std::result::Result<DecodedImage, ImageError> {
    let bytes = content.ok_or_else(|| ImageError::decode("null content (the file could not be read)"))?;
    decode_image_checked(bytes, needs, &limits.decode, check)
}

fn extract_one<E: Extractor + ?Sized>(
    content: Option<&[u8]>,
    extractor: &E,
    limits: &ResourceLimits,
) -> std::result::Result<ImageFeatures, ImageError> {
    let image = decode_for(content, extractor.info().needs, limits, |w, h| {
        refusal(extractor, limits, w, h).map_or(Ok(()), Err)
    })?;
    describe_decoded(&image, extractor, limits)
}

/// Describe a decoded image that `limits` do not refuse: downscaled first
/// when it is over the memory budget (see [`extract_batch_limited`]).
fn describe_decoded<E: Extractor + ?Sized>(
    image: &DecodedImage,
    extractor: &E,
    limits: &ResourceLimits,
) -> std::result::Result<ImageFeatures, ImageError> {
    let max = limits.memory.max_image_memory as u128;
    let (width, height) = (image.width, image.height);
    let descriptors_err = |e: BovwError| ImageError::descriptors(e.to_string());
    let (image, scale) = match extractor.memory_bytes(width, height) {
        Some(b) if b > max => {
            let (w, h) = fit_size(extractor, width, height, max).ok_or_else(|| {
                ImageError::decode(format!(
                    "image too large to describe: even 1 pixel wide it needs more than max_image_memory={max}"
                ))
            })?;
            (std::borrow::Cow::Owned(image.resized(w, h).map_err(descriptors_err)?), (w as f64 / width as f64, h as f64 / height as f64))
        }
        _ => (std::borrow::Cow::Borrowed(image), (1.0, 1.0)),
    };
    if let Some(b) = extractor.memory_bytes(image.width, image.height) {
        probe_allocation(b, &format!("the descriptors' work buffers of a {}x{} image", image.width, image.height))
            .map_err(descriptors_err)?;
    }
    let (mut keypoints, descriptors) = extractor.extract(&image).map_err(descriptors_err)?;
    if scale != (1.0, 1.0) {
        let (sx, sy) = scale;
        let ss = (sx * sy).sqrt();
        for k in &mut keypoints {
            k.x = ((k.x as f64 + 0.5) / sx - 0.5) as f32;
            k.y = ((k.y as f64 + 0.5) / sy - 0.5) as f32;
            k.size = (k.size as f64 / ss) as f32;
        }
    }
    Ok(ImageFeatures { width, height, keypoints, descriptors, scale: (scale.0 * scale.1).sqrt() })
}
