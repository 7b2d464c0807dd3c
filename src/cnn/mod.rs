//! CNN embeddings: an image in, a pretrained network's pooled feature vector
//! out (and its logits), in Rust, without a deep-learning framework.
//!
//! - [`weights`]: named tensors, BatchNorm folding;
//! - [`layers`]: the kernels (packed GEMM, depthwise convolution, pooling);
//! - [`graph`]: the network as a list of nodes, evaluated per image;
//! - [`efficientnet`]: EfficientNet-Lite built from a PyTorch state_dict;
//! - this module: preprocessing ([`Preprocess`]), the model
//!   ([`CnnModel`]: preprocessing + graph) and the [`Extractor`]
//!   ([`CnnEmbedding`]: one global descriptor per image).
//!
//! # Preprocessing
//! The RGB image is resized with bilinear interpolation so that its shorter
//! side is `round(input_size / crop_fraction)` pixels (the longer side
//! keeps the aspect ratio), and the centre `input_size x input_size` square
//! is cropped (offset `(resized - input_size) / 2`, rounded down): with the
//! defaults, shorter side to 256 and a 224 crop, the usual ImageNet
//! evaluation transform. Only the cropped pixels are computed. The
//! interpolation is OpenCV's `INTER_LINEAR` (`cv2.resize`; also
//! `tf.image.resize(..., "bilinear")` without antialiasing): source
//! coordinate $(d + 0.5) s - 0.5$ for destination pixel $d$ and scale
//! $s$ = source / destination size, clamped to the image, weights in f64.
//! Images smaller than the input are upsampled the same way. Each value
//! becomes $(v - \mathrm{mean}_c) / \mathrm{std}_c$ (EfficientNet-Lite:
//! 127.5 and 127.5, so the input is in [-1, 1]). Gray images arrive with
//! their level replicated in R, G and B ([`crate::image::decode_image`]).
//!
//! The preprocessing computes, per output row, the vertical interpolation
//! of the whole source row, then the horizontal taps (weights precomputed
//! per column) straight into the output. An image run alone on several
//! threads has its rows split between them ([`Preprocess::apply_with`]).
//!
//! # Parallelism and determinism
//! A batch is spread over groups of images with rayon: each thread runs a
//! group of up to [`GROUP_SIZE`] images ([`CnnModel::forward_batch`] and
//! [`CnnModel::forward_many`]; the extractor's [`Extractor::group_size`]
//! makes [`crate::features::extract_batch`] and
//! [`crate::features::extract_batch_many`] hand each thread such groups,
//! fewer images per group when the batch is small so that every thread
//! gets one). In a group each image runs alone through the first layers;
//! from the first layer whose input map has at most
//! [`graph::GROUP_MAX_PIXELS`] pixels (6 x 6 and 3 x 3 at 96 px, 7 x 7 at
//! 224 px) the group's images are stacked and each 1 x 1 convolution and
//! fully connected layer is one GEMM over all their rows
//! ([`Graph::run_many`]): those layers' weights (most of the network's 13
//! MB) are then read from memory once per group instead of once per image,
//! which is what limits them at 9 or 36 rows per image. Images left over
//! by whole rounds of one image per thread (a batch of one, the last
//! images of a batch) run one at a time on all the threads: each
//! inverted-residual block is split over the threads by output rows (one
//! fork-join per block) or, on small images where the rows at the seams
//! would be expanded twice, by middle channels then by projection rows
//! (two fork-joins); the other convolutions split their rows (see
//! [`graph`]). Such an image forks and joins some 40 times in a few
//! milliseconds, so while it runs the pool's other threads wait for its
//! parts by spinning ([`graph::with_spinning_workers`]) instead of
//! parking between parts: waking a parked thread costs tens of
//! microseconds, far more on a virtual machine whose idle CPU went back
//! to the host (at 224 px, batch 1, 2 threads, 8 images after a pause on
//! a shared 2-core virtual machine: 1.24x onnxruntime's time without the
//! spinning, 1.08x with it, medians of 6 runs). After such a call all but
//! one of the pool's threads stay awake for 2 ms
//! ([`graph::linger_workers`]), so that the next image of a stream starts
//! without waking them; at 100 px the spinning helps only with it (8
//! images after a pause: 0.64-0.67x onnxruntime's images/s with neither,
//! 0.90-1.01x with both).
//! Every value is computed with the kernels' fixed order of
//! operations (see [`layers`]) whatever the split or the group (a GEMM's
//! rows never mix), so an image's features are the same bits whatever the
//! thread count, the batch or group it came in, or (on x86-64) whether the
//! CPU has AVX2.

pub mod efficientnet;
pub mod graph;
pub mod layers;
pub mod weights;

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{BovwError, Result};
use crate::features::{DescriptorDtype, DescriptorInfo, DescriptorKind, Descriptors, Extractor, Features, KeyPoint};
use crate::image::{ColorNeeds, DecodedImage, RgbView};

pub use graph::{Graph, Tensor};

/// Images a thread runs together ([`CnnModel::forward_many`], the
/// extractor's [`Extractor::group_size`]): enough that the late layers'
/// GEMMs read each weight once for many rows (9 per image at 96 px), few
/// enough that a batch still spreads over the threads.
pub const GROUP_SIZE: usize = 8;

/// One image's features and, when asked for and present, its logits.
pub type Forward = (Vec<f32>, Option<Vec<f32>>);

/// How an RGB image becomes the network's input (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// Side of the square input, pixels.
    pub input_size: usize,
    /// Fraction of the resized shorter side kept by the centre crop, in (0, 1].
    pub crop_fraction: f64,
    /// Per-channel (R, G, B) value subtracted, in 0..255 units.
    pub mean: [f64; 3],
    /// Per-channel (R, G, B) divisor, in 0..255 units.
    pub std: [f64; 3],
}

impl Preprocess {
    /// EfficientNet-Lite's: 224 px, crop 0.875, (v - 127.5) / 127.5.
    pub const EFFICIENTNET_LITE: Preprocess =
        Preprocess { input_size: 224, crop_fraction: 0.875, mean: [127.5; 3], std: [127.5; 3] };

    /// Check the parameters.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `input_size`, `crop_fraction`
    /// or `std` when out of range.
    pub fn validate(&self) -> Result<()> {
        if !(8..=4096).contains(&self.input_size) {
            return Err(BovwError::param("input_size", format!("must be between 8 and 4096 pixels, got {}", self.input_size)));
        }
        if !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) {
            return Err(BovwError::param("crop_fraction", format!("must be in (0, 1], got {}", self.crop_fraction)));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s != 0.0)) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(BovwError::param("std", "mean and std must be finite and std non-zero"));
        }
        Ok(())
    }

    /// Side of the resized image's shorter side.
    pub fn resize_short_side(&self) -> usize {
        ((self.input_size as f64 / self.crop_fraction).round() as usize).max(self.input_size)
    }

    /// The resized image's size `(width, height)` for a `w x h` image.
    pub fn resized_size(&self, w: usize, h: usize) -> (usize, usize) {
        let s = self.resize_short_side();
        if w <= h {
            (s, ((h as f64 * s as f64 / w as f64).round() as usize).max(s))
        } else {
            (((w as f64 * s as f64 / h as f64).round() as usize).max(s), s)
        }
    }

    /// The network input (`input_size x input_size x 3`) of an RGB image.
    pub fn apply(&self, img: RgbView<'_>) -> Tensor {
        self.apply_with(img, false)
    }

    /// [`Preprocess::apply`]; with `par`, the output rows are split into
    /// about four ranges per thread of the current rayon pool (the first
    /// layer of one image on several threads: the caller starts at once, a
    /// thread still waking up takes the ranges left). Each row is computed
    /// alone, so the values are the same bits.
    pub fn apply_with(&self, img: RgbView<'_>, par: bool) -> Tensor {
        let n = self.input_size;
        let (rw, rh) = self.resized_size(img.width, img.height);
        let (ox, oy) = ((rw - n) / 2, (rh - n) / 2);
        let taps = |dst_off: usize, dst_size: usize, src_size: usize| -> Vec<(usize, usize, f64)> {
            let scale = src_size as f64 / dst_size as f64;
            (0..n)
                .map(|d| {
                    let s = ((d + dst_off) as f64 + 0.5) * scale - 0.5;
                    let s = s.clamp(0.0, (src_size - 1) as f64);
                    let i0 = s.floor() as usize;
                    (i0, (i0 + 1).min(src_size - 1), s - i0 as f64)
                })
                .collect()
        };
        // horizontal taps: offsets of the two source pixels' values and their weights
        let xs: Vec<(usize, usize, f64, f64)> = taps(ox, rw, img.width).into_iter().map(|(x0, x1, fx)| (3 * x0, 3 * x1, 1.0 - fx, fx)).collect();
        let ys = taps(oy, rh, img.height);
        let inv_std = [1.0 / self.std[0], 1.0 / self.std[1], 1.0 / self.std[2]];
        let stride = 3 * img.width;
        // output rows `rows` (3 n values each) at source rows `ys`
        let fill = |rows: &mut [f32], ys: &[(usize, usize, f64)]| {
            let mut row = vec![0f64; 3 * img.width];
            for (orow, &(y0, y1, fy)) in rows.chunks_exact_mut(3 * n).zip(ys) {
                // vertical pass over the whole source row, then horizontal taps
                let (r0, r1) = (&img.data[y0 * stride..(y0 + 1) * stride], &img.data[y1 * stride..(y1 + 1) * stride]);
                let gy = 1.0 - fy;
                for ((o, &a), &b) in row.iter_mut().zip(r0).zip(r1) {
                    *o = a as f64 * gy + b as f64 * fy;
                }
                for (o, &(a, b, gx, fx)) in orow.chunks_exact_mut(3).zip(&xs) {
                    let (pa, pb) = (&row[a..a + 3], &row[b..b + 3]);
                    for c in 0..3 {
                        let v = pa[c] * gx + pb[c] * fx;
                        o[c] = ((v - self.mean[c]) * inv_std[c]) as f32;
                    }
                }
            }
        };
        // from this thread's buffer pool (every value is written below)
        let mut out = crate::cnn::layers::take_buffer(n * n * 3);
        let threads = rayon::current_num_threads();
        if par && threads > 1 && n >= 16 {
            let per = n.div_ceil(4 * threads);
            out.par_chunks_mut(per * 3 * n).zip(ys.par_chunks(per)).for_each(|(o, y)| fill(o, y));
        } else {
            fill(&mut out, &ys);
        }
        Tensor::new(n, n, 3, out)
    }
}

/// A network and its preprocessing: images in, features (and logits) out.
#[derive(Debug)]
pub struct CnnModel {
    graph: Graph,
    preprocess: Preprocess,
    /// Width of each of the graph's outputs (features, logits...).
    widths: Vec<usize>,
}

impl CnnModel {
    /// Wrap a graph whose outputs are `[features]` or `[features, logits]`;
    /// runs it once on a blank input to check it and learn the output widths.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] for bad preprocessing parameters or a
    /// graph without output; the graph's own error when it cannot run on
    /// `input_size` images.
    pub fn new(graph: Graph, preprocess: Preprocess) -> Result<Self> {
        preprocess.validate()?;
        if graph.outputs().is_empty() {
            return Err(BovwError::param("model", "the network has no output"));
        }
        if graph.input_channels() != 3 {
            return Err(BovwError::param("model", format!("the network takes {} input channels, not 3 (RGB)", graph.input_channels())));
        }
        let n = preprocess.input_size;
        let outs = graph
            .run(Tensor::new(n, n, 3, vec![0.0; n * n * 3]), graph.outputs().len(), false)
            .map_err(|e| BovwError::param("input_size", format!("the network cannot run on {n} x {n} images: {e}")))?;
        let widths = outs.iter().map(|t| t.data.len()).collect();
        Ok(CnnModel { graph, preprocess, widths })
    }

    /// The preprocessing.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }
    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    /// Width of the feature vector.
    pub fn n_features(&self) -> usize {
        self.widths[0]
    }
    /// Number of logits (0 when the network has no classifier output).
    pub fn n_logits(&self) -> usize {
        self.widths.get(1).copied().unwrap_or(0)
    }

    /// Features (and logits, when `logits` and the network has them) of one RGB image.
    ///
    /// # Errors
    /// The graph's error if it cannot run (not for images the model was
    /// built for: every image is resized to the input size).
    pub fn forward(&self, img: RgbView<'_>, logits: bool) -> Result<Forward> {
        self.forward_with(img, logits, false)
    }

    /// [`CnnModel::forward`]; with `par`, large layers also split their
    /// rows over the current rayon pool (same values).
    fn forward_with(&self, img: RgbView<'_>, logits: bool, par: bool) -> Result<Forward> {
        if img.width == 0 || img.height == 0 {
            return Err(BovwError::input("image has no pixels"));
        }
        let want = if logits && self.widths.len() > 1 { 2 } else { 1 };
        let x = self.preprocess.apply_with(img, par);
        let run = move || self.graph.run(x, want, par);
        let outs = if par { crate::cnn::graph::with_spinning_workers(run) } else { run() };
        let mut outs = outs?.into_iter().map(|t| t.data.to_vec());
        let f = outs.next().unwrap_or_default();
        Ok((f, outs.next()))
    }

    /// [`CnnModel::forward`] of many images on the current rayon pool;
    /// one result per image, in order. Whole rounds of one image per
    /// thread run in parallel; the images left over (fewer than the
    /// threads: a batch of one, the end of a batch) run one after the
    /// other, each on all the threads (see [`Graph::run`]'s `par`), and
    /// then the pool's threads linger for the next call
    /// ([`graph::linger_workers`]). The values are the same either way.
    pub fn forward_batch(&self, images: &[RgbView<'_>], logits: bool) -> Vec<Result<Forward>> {
        let threads = rayon::current_num_threads();
        let whole = if threads > 1 { images.len() / threads * threads } else { images.len() };
        // groups of up to GROUP_SIZE images, at least one group per thread
        let group = (whole / threads.max(1)).clamp(1, GROUP_SIZE);
        let groups: Vec<Vec<Result<Forward>>> =
            images[..whole].par_chunks(group).with_max_len(1).map(|g| self.forward_many(g, logits)).collect();
        let mut out: Vec<Result<Forward>> = groups.into_iter().flatten().collect();
        out.extend(images[whole..].iter().map(|img| self.forward_with(*img, logits, true)));
        if whole < images.len() {
            graph::linger_workers();
        }
        out
    }

    /// [`CnnModel::forward`] of a group of images on the calling thread,
    /// the late layers run on all the images at once (see
    /// [`Graph::run_many`]); the same values as one at a time.
    pub fn forward_many(&self, images: &[RgbView<'_>], logits: bool) -> Vec<Result<Forward>> {
        let want = if logits && self.widths.len() > 1 { 2 } else { 1 };
        let mut out: Vec<Option<Result<Forward>>> = Vec::with_capacity(images.len());
        let mut inputs = Vec::with_capacity(images.len());
        for img in images {
            if img.width == 0 || img.height == 0 {
                out.push(Some(Err(BovwError::input("image has no pixels"))));
            } else {
                out.push(None);
                inputs.push(self.preprocess.apply(*img));
            }
        }
        let mut results = self.graph.run_many(inputs, want).into_iter();
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    let outs = results.next().expect("one result per input")?;
                    let mut it = outs.into_iter().map(|t| t.data.to_vec());
                    let f = it.next().unwrap_or_default();
                    Ok((f, it.next()))
                })
            })
            .collect()
    }
}

/// The CNN embedding extractor: one global float32 descriptor per image,
/// the network's pooled features.
///
/// Its single "keypoint" stands for the crop: centred on the image, `size`
/// the crop's side in source pixels, angle -1.
#[derive(Debug, Clone)]
pub struct CnnEmbedding {
    model: Arc<CnnModel>,
}

impl CnnEmbedding {
    /// An extractor sharing `model`.
    pub fn new(model: Arc<CnnModel>) -> Self {
        CnnEmbedding { model }
    }
    /// The model.
    pub fn model(&self) -> &Arc<CnnModel> {
        &self.model
    }
}

impl Extractor for CnnEmbedding {
    fn info(&self) -> DescriptorInfo {
        DescriptorInfo {
            width: self.model.n_features(),
            dtype: DescriptorDtype::Float32,
            kind: DescriptorKind::Global,
            needs: ColorNeeds::RGB,
        }
    }

    fn extract(&self, image: &DecodedImage) -> Result<Features> {
        let rgb = image.require_rgb()?;
        let (features, _) = self.model.forward(rgb, false)?;
        Ok(self.features(rgb, features))
    }

    fn group_size(&self) -> usize {
        GROUP_SIZE
    }

    fn extract_group(&self, images: &[&DecodedImage]) -> Vec<Result<Features>> {
        let mut out: Vec<Option<Result<Features>>> = Vec::with_capacity(images.len());
        let mut rgbs = Vec::with_capacity(images.len());
        for image in images {
            match image.require_rgb() {
                Ok(rgb) => {
                    rgbs.push(rgb);
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let mut results = self.model.forward_many(&rgbs, false).into_iter().zip(rgbs.iter());
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    let (r, rgb) = results.next().expect("one result per image");
                    r.map(|(features, _)| self.features(*rgb, features))
                })
            })
            .collect()
    }
}

impl CnnEmbedding {
    /// An image's features with its one "keypoint", the crop.
    fn features(&self, rgb: RgbView<'_>, features: Vec<f32>) -> Features {
        let p = self.model.preprocess();
        let side = rgb.width.min(rgb.height) as f32 * (p.input_size as f32 / p.resize_short_side() as f32);
        let kp = KeyPoint {
            x: (rgb.width as f32 - 1.0) / 2.0,
            y: (rgb.height as f32 - 1.0) / 2.0,
            size: side,
            angle: -1.0,
            response: 0.0,
            octave: 0,
            class_id: -1,
        };
        let width = features.len();
        (vec![kp], Descriptors::F32 { data: features, width })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`CnnEmbedding`] with a chosen group size, recording the largest group it got.
    struct Grouping<'a> {
        inner: &'a CnnEmbedding,
        group: usize,
        largest: std::sync::atomic::AtomicUsize,
    }

    impl<'a> Grouping<'a> {
        fn new(inner: &'a CnnEmbedding, group: usize) -> Self {
            Grouping { inner, group, largest: 0.into() }
        }
    }

    impl Extractor for Grouping<'_> {
        fn info(&self) -> DescriptorInfo {
            self.inner.info()
        }
        fn extract(&self, image: &DecodedImage) -> Result<Features> {
            self.inner.extract(image)
        }
        fn group_size(&self) -> usize {
            self.group
        }
        fn extract_group(&self, images: &[&DecodedImage]) -> Vec<Result<Features>> {
            self.largest.fetch_max(images.len(), std::sync::atomic::Ordering::Relaxed);
            self.inner.extract_group(images)
        }
    }

    #[test]
    fn extract_batch_groups_images_and_gives_what_one_by_one_gives() {
        use crate::features::{extract_batch, extract_batch_many, with_threads, ResourceLimits};
        // real photos: the committed Fruits-360 sample
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/bovw/data/fruits-360-sample/Test");
        let mut dirs: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
        dirs.sort();
        let mut files: Vec<Vec<u8>> = Vec::new();
        for d in &dirs {
            let mut fs: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
            fs.sort();
            files.extend(fs.iter().take(3).map(|f| std::fs::read(f).unwrap()));
        }
        assert!(files.len() >= 12, "sample images");
        let mut contents: Vec<Option<&[u8]>> = files.iter().take(21).map(|f| Some(f.as_slice())).collect();
        contents[4] = Some(b"not an image".as_slice());
        contents[9] = None;
        // 100 x 100 images to 28 px: 14 x 14 after the stem, 7 x 7 (stacked) from block 1 on
        let p = Preprocess { input_size: 28, crop_fraction: 0.875, ..Preprocess::EFFICIENTNET_LITE };
        let model = Arc::new(CnnModel::new(graph::tests::small_network(3), p).unwrap());
        let cnn = CnnEmbedding::new(model);
        let alone = Grouping::new(&cnn, 1);
        let want = with_threads(Some(1), || extract_batch(&contents, &alone));
        assert_eq!(alone.largest.load(std::sync::atomic::Ordering::Relaxed), 0, "group size 1: never grouped");
        assert!(want[4].as_ref().unwrap_err().reason.contains("JPEG"));
        assert!(want[9].as_ref().unwrap_err().reason.contains("null"));
        assert!(want[0].as_ref().unwrap().descriptors.len() == 1);
        for threads in [1, 2, 3] {
            let grouped = Grouping::new(&cnn, 4);
            let got = with_threads(Some(threads), || extract_batch(&contents, &grouped));
            assert_eq!(got, want, "{threads} threads");
            assert_eq!(grouped.largest.load(std::sync::atomic::Ordering::Relaxed), 4, "{threads} threads: groups of 4");
            assert_eq!(with_threads(Some(threads), || extract_batch(&contents, &cnn)), want, "the extractor's own groups");
            // several extractors on one decode: grouped and one-by-one members side by side
            let g2 = Grouping::new(&cnn, 3);
            let many = with_threads(Some(threads), || {
                extract_batch_many(&contents, &[&cnn, &alone, &g2], &ResourceLimits::default())
            });
            assert_eq!(many.len(), 3);
            for (e, got) in many.iter().enumerate() {
                assert_eq!(got, &want, "extractor {e} of extract_batch_many, {threads} threads");
            }
            // the chunks follow the largest group size (the CNN's 8): g2 gets all their good images
            let largest = g2.largest.load(std::sync::atomic::Ordering::Relaxed);
            assert!((6..=GROUP_SIZE).contains(&largest), "{threads} threads: largest group {largest}");
        }
        // a batch of 2 on 2 threads: one image per thread, each alone
        let grouped = Grouping::new(&cnn, 4);
        let got = with_threads(Some(2), || extract_batch(&contents[..2], &grouped));
        assert_eq!(got, want[..2]);
        assert_eq!(grouped.largest.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn forward_many_equals_forward_and_passes_empty_images_through() {
        let p = Preprocess { input_size: 24, crop_fraction: 1.0, ..Preprocess::EFFICIENTNET_LITE };
        let model = CnnModel::new(graph::tests::small_network(8), p).unwrap();
        let data: Vec<Vec<u8>> = (0..5).map(|i| (0..30 * 40 * 3).map(|v| ((v * (i + 3)) % 251) as u8).collect()).collect();
        let mut views: Vec<RgbView<'_>> = data.iter().map(|d| RgbView::new(d, 40, 30)).collect();
        views.insert(2, RgbView::new(&[], 0, 0));
        let many = model.forward_many(&views, true);
        assert_eq!(many.len(), 6);
        for (v, m) in views.iter().zip(&many) {
            match model.forward(*v, true) {
                Ok(f) => assert_eq!(m.as_ref().unwrap(), &f),
                Err(e) => assert_eq!(m.as_ref().unwrap_err().to_string(), e.to_string()),
            }
        }
        assert!(many[2].is_err());
        assert_eq!(many[0].as_ref().unwrap().1.as_ref().map(Vec::len), Some(10), "logits");
        // forward_batch: groups per thread, the same values
        for threads in [1, 2, 4] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let batch = pool.install(|| model.forward_batch(&views, false));
            for (b, m) in batch.iter().zip(&many) {
                match (b, m) {
                    (Ok(b), Ok(m)) => assert_eq!(b.0, m.0, "{threads} threads"),
                    (Err(_), Err(_)) => {}
                    _ => panic!("{threads} threads: an image failed one way only"),
                }
            }
        }
    }

    #[test]
    fn preprocess_crops_the_centre_and_normalises() {
        // a 4 x 2 image, input 2, crop 1.0: shorter side 2 (no resize), centre columns 1..3
        let data: Vec<u8> = (0..4 * 2 * 3).map(|v| (v * 10) as u8).collect();
        let p = Preprocess { input_size: 2, crop_fraction: 1.0, mean: [0.0; 3], std: [1.0; 3] };
        let t = p.apply(RgbView::new(&data, 4, 2));
        assert_eq!((t.h, t.w, t.c), (2, 2, 3));
        let want: Vec<f32> = [3, 4, 5, 6, 7, 8, 15, 16, 17, 18, 19, 20].iter().map(|&i| (i * 10) as f32).collect();
        assert_eq!(t.data.to_vec(), want);
        let p = Preprocess { input_size: 2, crop_fraction: 1.0, mean: [127.5; 3], std: [127.5; 3] };
        let white = vec![255u8; 2 * 2 * 3];
        assert!(p.apply(RgbView::new(&white, 2, 2)).data.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn preprocess_split_over_threads_gives_the_same_bits() {
        // odd sizes: rows that do not divide evenly, a crop offset, an upsample
        for &(w, h, size, crop) in &[(101, 77, 50, 0.875), (40, 30, 97, 1.0), (100, 100, 16, 0.9)] {
            let data: Vec<u8> = (0..w * h * 3).map(|v| ((v * 37 + v / 7) % 256) as u8).collect();
            let p = Preprocess { input_size: size, crop_fraction: crop, ..Preprocess::EFFICIENTNET_LITE };
            let want = p.apply(RgbView::new(&data, w, h));
            for threads in [2, 3, 8] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let got = pool.install(|| p.apply_with(RgbView::new(&data, w, h), true));
                assert_eq!(got, want, "{w}x{h} to {size}, {threads} threads");
            }
        }
    }

    #[test]
    fn preprocess_upsamples_small_images() {
        let data = vec![0u8, 0, 0, 255, 255, 255, 0, 0, 0, 255, 255, 255]; // 2 x 2: black, white columns
        let p = Preprocess { input_size: 8, crop_fraction: 1.0, mean: [0.0; 3], std: [1.0; 3] };
        let t = p.apply(RgbView::new(&data, 2, 2));
        assert_eq!((t.h, t.w), (8, 8));
        // half-pixel centres: the first quarter of columns clamps to black, ramps in the middle
        let row: Vec<f32> = (0..8).map(|x| t.data[3 * x]).collect();
        assert_eq!(row[0], 0.0);
        assert_eq!(row[7], 255.0);
        assert!(row.windows(2).all(|w| w[0] <= w[1]));
        assert!(Preprocess { input_size: 4, crop_fraction: 0.0, ..p }.validate().is_err());
    }
}

