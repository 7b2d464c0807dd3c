//! SIFT (Lowe 2004) as OpenCV 4.x implements it (`cv2.SIFT_create()`,
//! `modules/features2d/src/sift.dispatch.cpp` and `sift.simd.hpp`).
//!
//! The pipeline, with OpenCV's defaults ($L = 3$ layers, $\sigma = 1.6$):
//!
//! 1. The 8-bit image is converted to float (0..255), doubled by bilinear
//!    interpolation (`resize(..., INTER_LINEAR)`, OpenCV's default
//!    `enable_precise_upscale=false`) and blurred by
//!    $\sqrt{\max(\sigma^2 - 4 \cdot 0.5^2, 0.01)}$.
//! 2. $\mathrm{round}(\log_2 \min(2w, 2h) - 2) + 1$ octaves of $L + 3$ Gaussian
//!    layers, each blurred incrementally from the previous one by
//!    $\sigma_i = \sigma k^{i-1}\sqrt{k^2 - 1}$, $k = 2^{1/L}$ (separable kernel,
//!    `BORDER_REFLECT_101`); each octave starts from layer $L$ of the previous
//!    one, halved by nearest-neighbour sampling. Adjacent layers are
//!    subtracted into $L + 2$ difference-of-Gaussian layers.
//! 3. Extrema, refinement, contrast and edge tests, orientations: see
//!    [`detect`](self::detect).
//! 4. Keypoints are sorted and deduplicated as `KeyPointsFilter::removeDuplicatedSorted`
//!    does (by x, y, then size descending, angle, response descending,
//!    octave descending), the `n_features` strongest kept
//!    (`KeyPointsFilter::retainBest`, keeping ties at the cut), scaled back to
//!    the input image (octave field `octave | layer << 8 | round((xi + 0.5) 255) << 16`,
//!    with octave -1 for the doubled image), and filtered by the mask.
//! 5. Descriptors: see [`descriptor`](self::descriptor).
//!
//! Each image is processed on one thread, octave by octave, in scratch
//! buffers kept per thread (freed after an image whose pyramid exceeds
//! 256 MB), so results do not depend on the thread count. The hot loops (blur,
//! extremum scan, gradient sampling) have AVX2 versions chosen at run time;
//! they perform the same `f32` operations in the same order as the portable
//! versions (no fused multiply-add), so results are also the same on every
//! CPU. They are not bit-identical to OpenCV's: OpenCV's blur may run through IPP
//! or fused multiply-adds, its `exp` differs in the last bits, and its sums
//! run in SIMD order; a last-bit difference can move a sample across a
//! histogram bin or a candidate across a threshold. `tests/test_sift.py`
//! measures the agreement.

mod blur;
mod descriptor;
mod detect;
mod mathf;

use std::cell::RefCell;
use std::cmp::Ordering;

use crate::error::{BovwError, Result};
use crate::features::cv::gaussian_blur_kernel;
use crate::features::{
    DescriptorDtype, DescriptorInfo, DescriptorKind, Descriptors, Extractor, FeatureExtractor, Features, KeyPoint,
};
use crate::image::{ColorNeeds, DecodedImage, GrayView};

use blur::{BlurScratch, Plane};
pub use descriptor::DESCR_LEN;
use descriptor::{Gradients, OrientPlanes, QuadWindow, Samples};
use detect::{DetectParams, IMG_BORDER};

/// Assumed blur of the input image (OpenCV `SIFT_INIT_SIGMA`).
const INIT_SIGMA: f32 = 0.5;
/// Smallest image side: the doubled image must have a pixel 5 pixels inside
/// its border on each side for an extremum to be searched.
pub const MIN_IMAGE_SIDE: usize = IMG_BORDER + 1;

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

/// Per-thread work buffers, reused across images.
#[derive(Default)]
struct Scratch {
    /// Planes of each octave, kept so that images of one size reuse them
    /// without reallocating or clearing.
    octaves: Vec<OctavePlanes>,
    tmp: Plane,
    up: Vec<f32>,
    blur: BlurScratch,
    samples: Samples,
    raw: Vec<(KeyPoint, usize)>,
    /// Gradients of one layer and their orientation split, for `compute`
    /// on many keypoints.
    grads: Gradients,
    orient: OrientPlanes,
}

#[derive(Default)]
struct OctavePlanes {
    gauss: Vec<Plane>,
    dog: Vec<Plane>,
}

impl Scratch {
    /// Bytes held by the buffers.
    fn bytes(&self) -> usize {
        let planes: usize = self
            .octaves
            .iter()
            .flat_map(|o| o.gauss.iter().chain(&o.dog))
            .map(|p| p.data.capacity())
            .sum();
        4 * (planes + self.tmp.data.capacity() + self.up.capacity() + self.grads.ori.capacity() + self.grads.mag.capacity())
            + self.blur.bytes()
    }

}

/// Planes of octave `o`, with its layer 0 taken from layer `layer` of octave
/// `o - 1` (halved) when `o > 0`.
fn octave_planes(octaves: &mut Vec<OctavePlanes>, o: usize, layer: usize) -> &mut OctavePlanes {
    while octaves.len() <= o {
        octaves.push(OctavePlanes::default());
    }
    if octaves[o].gauss.is_empty() {
        octaves[o].gauss.push(Plane::default());
    }
    if o > 0 {
        let (done, rest) = octaves.split_at_mut(o);
        blur::halve_nearest(&done[o - 1].gauss[layer], &mut rest[0].gauss[0]);
    }
    &mut octaves[o]
}

/// Scratch buffers above this size are freed after the image, so that a
/// thread keeps at most this much between images. The pyramid of a 100 x 100
/// image takes about 2.5 MB, of a 640 x 480 image about 75 MB, of an
/// 800 x 800 image about 160 MB; larger images allocate their pyramid afresh
/// (and pay for the page faults of touching fresh memory, as OpenCV does on
/// every call).
const SCRATCH_KEEP_BYTES: usize = 256 << 20;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let out = f(&mut s);
            if s.bytes() > SCRATCH_KEEP_BYTES {
                *s = Scratch::default();
            }
            out
        }
        Err(_) => f(&mut Scratch::default()),
    })
}

/// OpenCV's `unpackOctave`: (octave, layer, scale from image to octave pixels).
fn unpack_octave(kpt: &KeyPoint) -> (i32, i32, f32) {
    let mut octave = kpt.octave & 255;
    let layer = (kpt.octave >> 8) & 255;
    if octave >= 128 {
        octave |= -128;
    }
    let scale = if octave >= 0 { 1.0 / (1u32 << octave) as f32 } else { (1u32 << -octave) as f32 };
    (octave, layer, scale)
}

/// `KeyPoint12_LessThan` of OpenCV's `removeDuplicatedSorted`.
fn keypoint_order(a: &KeyPoint, b: &KeyPoint) -> Ordering {
    let f = |x: f32, y: f32| x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    f(a.x, b.x)
        .then_with(|| f(a.y, b.y))
        .then_with(|| f(b.size, a.size))
        .then_with(|| f(a.angle, b.angle))
        .then_with(|| f(b.response, a.response))
        .then_with(|| b.octave.cmp(&a.octave))
        .then_with(|| b.class_id.cmp(&a.class_id))
}

impl Sift {
    /// Largest `n_octave_layers`: time and memory grow linearly with it
    /// (2 L + 5 planes per octave); OpenCV's default is 3.
    pub const MAX_OCTAVE_LAYERS: usize = 32;
    /// Largest `sigma`: the blur kernels grow with it (about 8 sigma taps),
    /// and beyond a few pixels the base image is blurred away; OpenCV's
    /// default is 1.6. (`sigma = 1e4` took over 100 s on a 64 x 64 image.)
    pub const MAX_SIGMA: f64 = 16.0;

    /// Validate the parameters.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming the bad parameter: `n_octave_layers`
    /// outside 1..=[`Sift::MAX_OCTAVE_LAYERS`], `sigma` outside
    /// (0, [`Sift::MAX_SIGMA`]], a negative or non-finite
    /// `contrast_threshold`, a non-positive or non-finite `edge_threshold`.
    pub fn new(params: SiftParams) -> Result<Self> {
        if params.n_octave_layers < 1 || params.n_octave_layers > Self::MAX_OCTAVE_LAYERS {
            return Err(BovwError::param(
                "n_octave_layers",
                format!("must be between 1 and {}, got {}", Self::MAX_OCTAVE_LAYERS, params.n_octave_layers),
            ));
        }
        if !(params.sigma > 0.0 && params.sigma <= Self::MAX_SIGMA) {
            return Err(BovwError::param(
                "sigma",
                format!("must be a finite number in (0, {}], got {}", Self::MAX_SIGMA, params.sigma),
            ));
        }
        if !(params.contrast_threshold >= 0.0 && params.contrast_threshold.is_finite()) {
            return Err(BovwError::param(
                "contrast_threshold",
                format!("must be a finite number >= 0, got {}", params.contrast_threshold),
            ));
        }
        if !(params.edge_threshold > 0.0 && params.edge_threshold.is_finite()) {
            return Err(BovwError::param(
                "edge_threshold",
                format!("must be a finite number > 0, got {}", params.edge_threshold),
            ));
        }
        Ok(Sift { params })
    }

    fn check_image(image: &GrayView<'_>) -> Result<()> {
        if image.data.len() != image.width * image.height {
            return Err(BovwError::input(format!(
                "image: buffer of {} bytes for a {}x{} image",
                image.data.len(),
                image.width,
                image.height
            )));
        }
        if image.width < MIN_IMAGE_SIDE || image.height < MIN_IMAGE_SIDE {
            return Err(BovwError::input(format!(
                "image: too small for SIFT, shape ({}, {}); both sides must be at least {MIN_IMAGE_SIDE} pixels \
                 (the doubled image needs pixels {IMG_BORDER} pixels inside its border)",
                image.height, image.width
            )));
        }
        Ok(())
    }

    fn check_mask(image: &GrayView<'_>, mask: Option<&GrayView<'_>>) -> Result<()> {
        if let Some(m) = mask {
            if (m.width, m.height) != (image.width, image.height) || m.data.len() != m.width * m.height {
                return Err(BovwError::Shape {
                    what: "mask".into(),
                    expected: format!("({}, {}) like the image", image.height, image.width),
                    got: format!("({}, {})", m.height, m.width),
                });
            }
        }
        Ok(())
    }

    /// Sigmas of the incremental blurs of layers 1..L+2 (index 0: `sigma`).
    fn layer_sigmas(&self) -> Vec<f64> {
        let l = self.params.n_octave_layers;
        let sigma = self.params.sigma;
        let k = 2f64.powf(1.0 / l as f64);
        let mut sig = vec![sigma; l + 3];
        for (i, s) in sig.iter_mut().enumerate().skip(1) {
            let prev = k.powf((i - 1) as f64) * sigma;
            let total = prev * k;
            *s = (total * total - prev * prev).sqrt();
        }
        sig
    }

    fn detect_params(&self) -> DetectParams {
        let p = &self.params;
        DetectParams {
            n_layers: p.n_octave_layers,
            contrast_threshold: p.contrast_threshold as f32,
            edge_threshold: p.edge_threshold as f32,
            sigma: p.sigma as f32,
            threshold: (0.5 * p.contrast_threshold / p.n_octave_layers as f64 * 255.0).floor() as f32,
        }
    }

    /// OpenCV's `createInitialImage`: float image, doubled or not, blurred.
    fn initial_image(&self, image: &GrayView<'_>, double: bool, s: &mut Scratch) {
        let sigma = self.params.sigma as f32;
        let sig_diff = if double {
            blur::upsample2x_linear(image.data, image.width, image.height, &mut s.up, &mut s.tmp);
            (sigma * sigma - INIT_SIGMA * INIT_SIGMA * 4.0).max(0.01).sqrt()
        } else {
            blur::to_plane(image.data, image.width, image.height, &mut s.tmp);
            (sigma * sigma - INIT_SIGMA * INIT_SIGMA).max(0.01).sqrt()
        };
        let kernel = gaussian_blur_kernel(sig_diff as f64);
        let oct = octave_planes(&mut s.octaves, 0, 0);
        blur::gaussian_blur(&s.tmp, &kernel, &mut s.blur, &mut oct.gauss[0]);
    }

    /// Blur layers 1..`n_built` of an octave (at most L+2) from its layer 0,
    /// and optionally the DoG layers.
    fn build_octave(&self, kernels: &[Vec<f32>], with_dog: bool, n_built: usize, oct: &mut OctavePlanes, bs: &mut BlurScratch) {
        let n = self.params.n_octave_layers + 3;
        oct.gauss.resize_with(n, Plane::default);
        if with_dog {
            oct.dog.resize_with(n - 1, Plane::default);
        }
        for i in 1..n_built.min(n) {
            let (done, rest) = oct.gauss.split_at_mut(i);
            let dog = if with_dog { Some(&mut oct.dog[i - 1]) } else { None };
            blur::gaussian_blur_dog(&done[i - 1], &kernels[i], bs, &mut rest[0], dog);
        }
    }

    /// Descriptor of a keypoint in OpenCV's image coordinates, from the
    /// Gaussian layers of its octave.
    fn describe(gauss: &[Plane], kpt: &KeyPoint, samples: &mut Samples, out: &mut [f32]) {
        let (_, layer, scale) = unpack_octave(kpt);
        let size = kpt.size * scale;
        let pt = (kpt.x * scale, kpt.y * scale);
        let mut angle = 360.0 - kpt.angle;
        if (angle - 360.0).abs() < f32::EPSILON {
            angle = 0.0;
        }
        descriptor::compute_descriptor(&gauss[layer as usize], pt, angle, size * 0.5, samples, out);
    }

    /// Descriptors of keypoints `members` of one octave, into rows `i` of
    /// `desc`. Keypoints that share a layer, a size and an angle (a dense
    /// grid) are described from the layer's gradients split by orientation
    /// once and one window table (see `descriptor`) when that saves work.
    fn describe_group(
        &self,
        oct: &OctavePlanes,
        keypoints: &[KeyPoint],
        members: &[usize],
        parts: (&mut Samples, &mut Gradients, &mut OrientPlanes),
        desc: &mut [f32],
    ) {
        let (samples, grads, orient) = parts;
        let key = |i: usize| {
            let k = &keypoints[i];
            let (_, layer, scale) = unpack_octave(k);
            let mut angle = 360.0 - k.angle;
            if (angle - 360.0).abs() < f32::EPSILON {
                angle = 0.0;
            }
            (layer as usize, angle.to_bits(), (k.size * scale * 0.5).to_bits(), i)
        };
        let mut order: Vec<(usize, u32, u32, usize)> = members.iter().map(|&i| key(i)).collect();
        order.sort_unstable();
        let mut grads_layer: Option<usize> = None;
        for run in order.chunk_by(|a, b| (a.0, a.1, a.2) == (b.0, b.1, b.2)) {
            let (layer, angle, scl) = (run[0].0, f32::from_bits(run[0].1), f32::from_bits(run[0].2));
            let plane = &oct.gauss[layer];
            let pixels = (plane.w * plane.h) as f64;
            // A pass over the layer against about (15 scl)^2 samples per keypoint.
            let per_kp = (15.0 * scl as f64).powi(2).min(pixels);
            let mut done = vec![false; run.len()];
            if run.len() >= 4 && run.len() as f64 * per_kp >= pixels && (0.0..405.0).contains(&angle) {
                let win = QuadWindow::new(plane.w, plane.h, angle, scl);
                // gradients and their split only where this run's windows reach
                let pts = run.iter().map(|&(.., i)| {
                    let (_, _, scale) = unpack_octave(&keypoints[i]);
                    (keypoints[i].x * scale, keypoints[i].y * scale)
                });
                let region = win.region(plane.w, plane.h, pts);
                if grads_layer != Some(layer) || !grads.region.contains(&region) {
                    grads.compute_region(plane, region);
                    grads_layer = Some(layer);
                }
                orient.compute(grads, angle);
                for (d, &(.., i)) in done.iter_mut().zip(run) {
                    let (_, _, scale) = unpack_octave(&keypoints[i]);
                    let pt = (keypoints[i].x * scale, keypoints[i].y * scale);
                    descriptor::compute_descriptor_quads(orient, &win, pt, &mut desc[i * DESCR_LEN..(i + 1) * DESCR_LEN]);
                    *d = true;
                }
            }
            for (&d, &(.., i)) in done.iter().zip(run) {
                if !d {
                    Self::describe(&oct.gauss, &keypoints[i], samples, &mut desc[i * DESCR_LEN..(i + 1) * DESCR_LEN]);
                }
            }
        }
    }

    /// Detection (and optionally descriptors, row `i` for keypoint `i`).
    fn run_detect(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>, with_desc: bool) -> Result<(Vec<KeyPoint>, Vec<f32>)> {
        Self::check_image(&image)?;
        Self::check_mask(&image, mask.as_ref())?;
        let n_layers = self.params.n_octave_layers;
        let sigmas = self.layer_sigmas();
        let kernels: Vec<Vec<f32>> = sigmas.iter().map(|&s| gaussian_blur_kernel(s)).collect();
        let dp = self.detect_params();
        let (base_w, base_h) = (2 * image.width, 2 * image.height);
        let n_octaves = ((base_w.min(base_h) as f64).ln() / 2f64.ln() - 2.0).round_ties_even() as i64 + 1;
        let first_octave = -1i32;

        let (mut kps, mut desc) = with_scratch(|s| {
            self.initial_image(&image, true, s);
            let mut kps: Vec<KeyPoint> = Vec::new();
            let mut desc: Vec<f32> = Vec::new();
            for o in 0..n_octaves.max(0) as usize {
                let oct = octave_planes(&mut s.octaves, o, n_layers);
                let (w, h) = (oct.gauss[0].w, oct.gauss[0].h);
                if w <= 2 * IMG_BORDER || h <= 2 * IMG_BORDER {
                    break; // no pixel of this or any smaller octave can be an extremum
                }
                self.build_octave(&kernels, true, n_layers + 3, oct, &mut s.blur);
                s.raw.clear();
                detect::find_octave_extrema(&oct.gauss, &oct.dog, o, &dp, &mut s.samples, &mut s.raw);
                for &(k, _layer) in &s.raw {
                    // Back to input-image coordinates (exact: powers of two).
                    let mut k = k;
                    k.octave = (k.octave & !255) | ((k.octave + first_octave) & 255);
                    k.x *= 0.5;
                    k.y *= 0.5;
                    k.size *= 0.5;
                    if with_desc {
                        let start = desc.len();
                        desc.resize(start + DESCR_LEN, 0.0);
                        Self::describe(&oct.gauss, &k, &mut s.samples, &mut desc[start..]);
                    }
                    kps.push(k);
                }
            }
            (kps, desc)
        });

        // removeDuplicatedSorted, retainBest, mask.
        let mut order: Vec<usize> = (0..kps.len()).collect();
        order.sort_by(|&a, &b| keypoint_order(&kps[a], &kps[b]));
        let mut kept: Vec<usize> = Vec::with_capacity(order.len());
        for &i in &order {
            if let Some(&j) = kept.last() {
                let (a, b): (&KeyPoint, &KeyPoint) = (&kps[j], &kps[i]);
                if a.x == b.x && a.y == b.y && a.size == b.size && a.angle == b.angle {
                    continue;
                }
            }
            kept.push(i);
        }
        let n_features = self.params.n_features;
        if n_features > 0 && kept.len() > n_features {
            let mut responses: Vec<f32> = kept.iter().map(|&i| kps[i].response).collect();
            responses.sort_by(|a, b| b.partial_cmp(a).unwrap_or(Ordering::Equal));
            let cut = responses[n_features - 1];
            kept.retain(|&i| kps[i].response >= cut);
        }
        if let Some(m) = mask {
            kept.retain(|&i| {
                let k = &kps[i];
                let x = ((k.x + 0.5) as usize).min(m.width - 1);
                let y = ((k.y + 0.5) as usize).min(m.height - 1);
                m.data[y * m.width + x] != 0
            });
        }
        if kept.len() == kps.len() && kept.iter().enumerate().all(|(a, &b)| a == b) {
            return Ok((kps, desc));
        }
        let out_kps: Vec<KeyPoint> = kept.iter().map(|&i| kps[i]).collect();
        let mut out_desc = Vec::new();
        if with_desc {
            out_desc.reserve(kept.len() * DESCR_LEN);
            for &i in &kept {
                out_desc.extend_from_slice(&desc[i * DESCR_LEN..(i + 1) * DESCR_LEN]);
            }
        }
        kps.clear();
        desc.clear();
        Ok((out_kps, out_desc))
    }

    /// Detect keypoints.
    ///
    /// Keypoints are in input-image pixels (origin at the centre of the
    /// top-left pixel), sorted by x then y as OpenCV returns them (unless
    /// `n_features` cut them, after which OpenCV's order is unspecified; ours
    /// stays sorted).
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when a side of the image is below
    /// [`MIN_IMAGE_SIDE`]; [`BovwError::Shape`] when the mask's shape differs
    /// from the image's.
    pub fn detect(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>) -> Result<Vec<KeyPoint>> {
        Ok(self.run_detect(image, mask, false)?.0)
    }

    /// Compute descriptors at the given keypoints (OpenCV's
    /// `compute`/`detectAndCompute(..., useProvidedKeypoints=true)`).
    ///
    /// Each keypoint is described in the Gaussian layer its packed `octave`
    /// names (octave -1 = doubled image), at its position, size and angle.
    /// As in OpenCV 4.12, no keypoint is dropped: one outside the image or of
    /// size <= 0 gets a zero descriptor. The pyramid is built only up to the
    /// layers the keypoints name, and keypoints sharing a layer, size and
    /// angle (a dense grid) are described from per-pixel gradients split by
    /// orientation and one sample table, computed once and only over the
    /// part of the layer their windows reach (see `descriptor`): the same
    /// descriptors up to float rounding.
    ///
    /// # Errors
    /// [`BovwError::InvalidInput`] when the image is too small, a keypoint's
    /// octave is below -1 or its layer above `n_octave_layers + 2`, or an
    /// octave the keypoints name would be empty for this image size.
    pub fn compute(&self, image: GrayView<'_>, keypoints: &[KeyPoint]) -> Result<(Vec<KeyPoint>, Descriptors)> {
        Self::check_image(&image)?;
        if keypoints.is_empty() {
            return Ok((Vec::new(), Descriptors::F32 { data: Vec::new(), width: DESCR_LEN }));
        }
        let n_layers = self.params.n_octave_layers as i32;
        let mut first_octave = 0i32;
        let mut max_octave = i32::MIN;
        for (i, k) in keypoints.iter().enumerate() {
            let (octave, layer, _) = unpack_octave(k);
            first_octave = first_octave.min(octave);
            max_octave = max_octave.max(octave);
            if layer > n_layers + 2 {
                return Err(BovwError::input(format!(
                    "keypoints: row {i} has layer {layer} (octave field {}), above n_octave_layers + 2 = {}",
                    k.octave,
                    n_layers + 2
                )));
            }
            if !(k.x.is_finite() && k.y.is_finite() && k.size.is_finite() && k.angle.is_finite()) {
                return Err(BovwError::input(format!("keypoints: row {i} has a non-finite value")));
            }
        }
        if first_octave < -1 {
            return Err(BovwError::input(format!(
                "keypoints: octave {first_octave} is below -1 (the doubled image is the first octave)"
            )));
        }
        let n_octaves = (max_octave - first_octave + 1) as usize;
        let kernels: Vec<Vec<f32>> = self.layer_sigmas().iter().map(|&s| gaussian_blur_kernel(s)).collect();
        let mut by_octave: Vec<Vec<usize>> = vec![Vec::new(); n_octaves];
        for (i, k) in keypoints.iter().enumerate() {
            by_octave[(unpack_octave(k).0 - first_octave) as usize].push(i);
        }
        let mut desc = vec![0f32; keypoints.len() * DESCR_LEN];
        with_scratch(|s| -> Result<()> {
            self.initial_image(&image, first_octave < 0, s);
            for (o, members) in by_octave.iter().enumerate() {
                let oct = octave_planes(&mut s.octaves, o, n_layers as usize);
                if oct.gauss[0].w == 0 || oct.gauss[0].h == 0 {
                    return Err(BovwError::input(format!(
                        "keypoints: octave {} is empty for a {}x{} image",
                        o as i32 + first_octave,
                        image.width,
                        image.height
                    )));
                }
                // Only the layers described here (and layer L, the base of
                // the next octave) are blurred.
                let top = members.iter().map(|&i| unpack_octave(&keypoints[i]).1 as usize).max().unwrap_or(0);
                let top = if o + 1 < n_octaves { top.max(n_layers as usize) } else { top };
                self.build_octave(&kernels, false, top + 1, oct, &mut s.blur);
                self.describe_group(oct, keypoints, members, (&mut s.samples, &mut s.grads, &mut s.orient), &mut desc);
            }
            Ok(())
        })?;
        Ok((keypoints.to_vec(), Descriptors::F32 { data: desc, width: DESCR_LEN }))
    }
}

impl Extractor for Sift {
    fn info(&self) -> DescriptorInfo {
        DescriptorInfo { width: DESCR_LEN, dtype: DescriptorDtype::Float32, kind: DescriptorKind::Local, needs: ColorNeeds::GRAY }
    }
    fn extract(&self, image: &DecodedImage) -> Result<Features> {
        self.detect_and_compute(image.require_gray()?, None)
    }
    /// The doubled image has 4 N pixels for an N-pixel input; each octave
    /// holds `n_octave_layers + 3` Gaussian and `n_octave_layers + 2` DoG
    /// `f32` planes, and all octaves together less than 4/3 of octave 0:
    /// (64/3)(2L + 5) bytes per input pixel, plus the upsampling and blur
    /// buffers (48) and the keypoints (16 allowed): about 299 bytes per pixel
    /// at L = 3 (measured peak: 275-279 on 0.25-3 megapixel images, gray,
    /// photo or noise), 16 MiB added for small images.
    fn memory_bytes(&self, width: usize, height: usize) -> Option<u128> {
        let n = width as u128 * height as u128;
        let l = self.params.n_octave_layers as u128;
        Some(n * ((64 * (2 * l + 5)).div_ceil(3) + 64) + (16 << 20))
    }
}

impl FeatureExtractor for Sift {
    fn detect(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>) -> Result<Vec<KeyPoint>> {
        Sift::detect(self, image, mask)
    }
    fn compute(&self, image: GrayView<'_>, keypoints: &[KeyPoint]) -> Result<Features> {
        Sift::compute(self, image, keypoints)
    }
    fn detect_and_compute(&self, image: GrayView<'_>, mask: Option<GrayView<'_>>) -> Result<Features> {
        let (kps, data) = self.run_detect(image, mask, true)?;
        Ok((kps, Descriptors::F32 { data, width: DESCR_LEN }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(w: usize, h: usize, cx: f32, cy: f32, s: f32) -> Vec<u8> {
        (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32 - cx, (i / w) as f32 - cy);
                (40.0 + 180.0 * (-(x * x + y * y) / (2.0 * s * s)).exp()).round() as u8
            })
            .collect()
    }

    /// Smoothed uniform noise from an xorshift generator.
    fn noise(w: usize, h: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let raw: Vec<f32> = (0..w * h)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 255.0
            })
            .collect();
        (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                let xs = [x.saturating_sub(1), x, (x + 1).min(w - 1)];
                let ys = [y.saturating_sub(1), y, (y + 1).min(h - 1)];
                let mut s = 0f32;
                for &yy in &ys {
                    for &xx in &xs {
                        s += raw[yy * w + xx];
                    }
                }
                (s / 9.0) as u8
            })
            .collect()
    }

    #[test]
    fn blob_gives_keypoint_at_its_centre_with_expected_size() {
        let (w, h) = (64, 64);
        let img = blob(w, h, 31.5, 31.5, 5.0);
        let sift = Sift::new(SiftParams::default()).unwrap();
        let kps = sift.detect(GrayView::new(&img, w, h), None).unwrap();
        // The strongest response is the blob itself, at its centre. A
        // Gaussian blob of sigma s is a DoG extremum at scale about s, and
        // OpenCV's size is 2 * scale (so about 2 s = 10 px).
        let best = kps.iter().max_by(|a, b| a.response.partial_cmp(&b.response).unwrap()).unwrap();
        assert!((best.x - 31.5).abs() < 0.5 && (best.y - 31.5).abs() < 0.5, "{best:?}");
        assert!(best.size > 7.0 && best.size < 16.0, "{best:?}");
    }

    #[test]
    fn uniform_image_has_no_keypoints() {
        let img = vec![128u8; 50 * 40];
        let sift = Sift::new(SiftParams::default()).unwrap();
        let (kps, desc) = sift.detect_and_compute(GrayView::new(&img, 50, 40), None).unwrap();
        assert!(kps.is_empty());
        assert_eq!(desc.len(), 0);
        assert!(matches!(desc, Descriptors::F32 { width: 128, .. }));
    }

    #[test]
    fn descriptors_are_whole_numbers_and_match_compute() {
        let (w, h) = (80, 60);
        let img = noise(w, h, 7);
        let sift = Sift::new(SiftParams::default()).unwrap();
        let view = GrayView::new(&img, w, h);
        let (kps, desc) = sift.detect_and_compute(view, None).unwrap();
        assert!(!kps.is_empty());
        let Descriptors::F32 { data, width } = &desc else { panic!() };
        assert_eq!(*width, 128);
        assert_eq!(data.len(), kps.len() * 128);
        assert!(data.iter().all(|&v| (0.0..=255.0).contains(&v) && v.fract() == 0.0));
        // Sorted by x, then y, as OpenCV returns them.
        assert!(kps.windows(2).all(|p| p[0].x <= p[1].x));
        // compute() on the detected keypoints rebuilds the same pyramid when
        // one of them is in the doubled octave (as in OpenCV: otherwise
        // compute() starts from the undoubled image).
        assert!(kps.iter().any(|k| k.octave & 255 == 255));
        let (kps2, desc2) = sift.compute(view, &kps).unwrap();
        assert_eq!(kps2, kps);
        assert_eq!(desc2, desc);
        // detect() gives the same keypoints.
        assert_eq!(sift.detect(view, None).unwrap(), kps);
    }

    #[test]
    fn n_features_and_mask_filter() {
        let (w, h) = (80, 60);
        let img = noise(w, h, 3);
        let sift = Sift::new(SiftParams::default()).unwrap();
        let view = GrayView::new(&img, w, h);
        let all = sift.detect(view, None).unwrap();
        assert!(all.len() > 10);
        let top = Sift::new(SiftParams { n_features: 5, ..Default::default() }).unwrap().detect(view, None).unwrap();
        assert!(top.len() >= 5);
        let mut resp: Vec<f32> = all.iter().map(|k| k.response).collect();
        resp.sort_by(|a, b| b.partial_cmp(a).unwrap());
        assert!(top.iter().all(|k| k.response >= resp[4]));
        let mut mask = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w / 2 {
                mask[y * w + x] = 1;
            }
        }
        let left = sift.detect(view, Some(GrayView::new(&mask, w, h))).unwrap();
        assert!(!left.is_empty() && left.len() < all.len());
        assert!(left.iter().all(|k| ((k.x + 0.5) as usize) < w / 2));
        let bad = vec![1u8; 10];
        assert!(matches!(sift.detect(view, Some(GrayView::new(&bad, 5, 2))), Err(BovwError::Shape { .. })));
    }

    #[test]
    fn tiny_images_and_bad_params_are_errors() {
        let sift = Sift::new(SiftParams::default()).unwrap();
        let img = vec![0u8; 25];
        let err = sift.detect(GrayView::new(&img, 5, 5), None).unwrap_err();
        assert!(err.to_string().contains("too small"), "{err}");
        assert!(sift.detect(GrayView::new(&[0u8; 36], 6, 6), None).unwrap().is_empty());
        assert!(Sift::new(SiftParams { sigma: 0.0, ..Default::default() }).is_err());
        assert!(Sift::new(SiftParams { n_octave_layers: 0, ..Default::default() }).is_err());
        assert!(Sift::new(SiftParams { contrast_threshold: f64::NAN, ..Default::default() }).is_err());
    }

    #[test]
    fn octave_packing_round_trips() {
        let k = KeyPoint { octave: 255 | (2 << 8) | (100 << 16), ..Default::default() };
        assert_eq!(unpack_octave(&k), (-1, 2, 2.0));
        let k = KeyPoint { octave: 3 | (1 << 8), ..Default::default() };
        assert_eq!(unpack_octave(&k), (3, 1, 0.125));
    }
}
