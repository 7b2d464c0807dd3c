//! Encodings: from an image's local descriptors to one vector per image.
//!
//! - [`assign`]: hard (nearest word) and soft (kernel codebook, k nearest
//!   words) assignment of descriptors to visual words;
//! - [`pyramid`]: spatial pyramid cells from keypoint positions, and
//!   bag-of-words histograms over them (hard or soft);
//! - [`vlad`]: VLAD (vectors of locally aggregated descriptors);
//! - [`fisher`]: Fisher vectors of a diagonal Gaussian mixture
//!   ([`crate::cluster::gmm`]);
//! - [`maps`]: feature maps for linear classifiers: the additive χ² kernel
//!   map, power (signed square root) normalisation, L1/L2 rows.
//!
//! Every encoder takes a batch in the same form: descriptors `N x d`
//! row-major `f32` with image offsets (`offsets[0] = 0`, non-decreasing,
//! `offsets[n_images] = N`), and, for spatial pyramids, the keypoint
//! positions and image sizes ([`Frames`]). An image with no descriptors gets
//! an all-zero encoding and keeps its row. Images are encoded in parallel
//! with rayon; each image is accumulated in order in `f64`, so the results do
//! not depend on the number of threads.

pub mod assign;
pub mod fisher;
pub mod maps;
pub mod pyramid;
pub mod vlad;

use crate::error::{BovwError, Result};
use crate::histogram::check_offsets;

/// Keypoint positions and image sizes of a batch, for spatial pyramids.
#[derive(Clone, Copy, Debug)]
pub struct Frames<'a> {
    /// Keypoint frames, `N x stride` row-major: `x`, `y` first (pixels,
    /// origin at the centre of the top-left pixel), as the `keypoints` column
    /// (`stride = 4`: x, y, size, angle) or an `(N, 2)` array.
    pub xy: &'a [f32],
    /// Values per keypoint (>= 2).
    pub stride: usize,
    /// Image sizes, `n_images x 2`: width, height in pixels.
    pub sizes: &'a [i64],
}

impl Frames<'_> {
    /// Check the frames against a batch of `offsets`.
    ///
    /// # Errors
    /// [`BovwError::Shape`] naming `keypoints` or `image_sizes` when their
    /// lengths do not match the batch; [`BovwError::InvalidInput`] naming the
    /// first image with descriptors whose width or height is not positive, or
    /// the first keypoint whose position is not finite.
    pub fn check(&self, offsets: &[usize]) -> Result<()> {
        let n_images = offsets.len() - 1;
        let n = offsets[n_images];
        if self.stride < 2 || self.xy.len() != n * self.stride {
            return Err(BovwError::Shape {
                what: "keypoints".into(),
                expected: format!("({n}, >= 2): one frame per descriptor"),
                got: format!("{} values with stride {}", self.xy.len(), self.stride),
            });
        }
        if self.sizes.len() != 2 * n_images {
            return Err(BovwError::Shape {
                what: "image_sizes".into(),
                expected: format!("({n_images}, 2)"),
                got: format!("{} values", self.sizes.len()),
            });
        }
        for i in 0..n_images {
            if offsets[i + 1] > offsets[i] && (self.sizes[2 * i] <= 0 || self.sizes[2 * i + 1] <= 0) {
                return Err(BovwError::input(format!(
                    "image_sizes: image {i} has descriptors but size {} x {} (width and height must be positive)",
                    self.sizes[2 * i],
                    self.sizes[2 * i + 1]
                )));
            }
        }
        if let Some(r) = (0..n).find(|&r| !(self.xy[r * self.stride].is_finite() && self.xy[r * self.stride + 1].is_finite())) {
            return Err(BovwError::input(format!("keypoints: the position of descriptor {r} is not finite")));
        }
        Ok(())
    }

    /// Position of descriptor row `r`.
    #[inline]
    pub fn xy(&self, r: usize) -> (f32, f32) {
        (self.xy[r * self.stride], self.xy[r * self.stride + 1])
    }

    /// Width and height of image `i`.
    #[inline]
    pub fn size(&self, i: usize) -> (f64, f64) {
        (self.sizes[2 * i] as f64, self.sizes[2 * i + 1] as f64)
    }
}

/// Check a batch: `values` is `offsets[n_images] x d`, the vocabulary (or
/// mixture) has width `d`, everything finite. Returns the number of images.
///
/// # Errors
/// [`BovwError::Shape`] naming `descriptors` when the widths differ (with
/// both widths); [`BovwError::InvalidParameter`] for bad offsets;
/// [`BovwError::InvalidInput`] naming the first descriptor row with NaN or
/// infinity.
pub fn check_batch(values: &[f32], offsets: &[usize], d: usize, what_vocab: &str) -> Result<usize> {
    use rayon::prelude::*;
    if d == 0 {
        return Err(BovwError::param(what_vocab, "has zero features"));
    }
    if values.len() % d != 0 {
        return Err(BovwError::Shape {
            what: "descriptors".into(),
            expected: format!("(n, {d}): the width of the {what_vocab}"),
            got: format!("{} values, not a multiple of {d}", values.len()),
        });
    }
    check_offsets(offsets, values.len() / d)?;
    // By blocks of rows, each tested by a fold that vectorises; only a
    // failing block is searched for its first bad row.
    let rows_per_block = (1usize << 14).div_ceil(d);
    let bad_row = |row: &[f32]| !row.iter().fold(true, |a, v| a & (v.abs() < f32::INFINITY));
    if let Some(r) = values.par_chunks(rows_per_block * d).enumerate().find_map_first(|(b, block)| {
        if block.iter().fold(true, |a, v| a & (v.abs() < f32::INFINITY)) {
            None
        } else {
            block.chunks(d).position(bad_row).map(|p| b * rows_per_block + p)
        }
    }) {
        return Err(BovwError::input(format!("descriptors: row {r} contains NaN or infinity")));
    }
    Ok(offsets.len() - 1)
}

/// Error for descriptors of width `got` and a vocabulary of width `expected`.
pub fn width_error(what_vocab: &str, expected: usize, got: usize) -> BovwError {
    BovwError::Shape {
        what: "descriptors".into(),
        expected: format!("width {expected} like the {what_vocab}"),
        got: format!("width {got}"),
    }
}

/// Signed square root in place: `sign(z) sqrt(|z|)`.
#[inline]
pub fn signed_sqrt(v: &mut [f64]) {
    for z in v.iter_mut() {
        *z = if *z >= 0.0 { z.sqrt() } else { -(-*z).sqrt() };
    }
}

/// Divide by `max(||v||_2, 1e-12)` (VLFeat's guard: zero vectors stay zero).
#[inline]
pub fn l2_normalize(v: &mut [f64]) {
    let n = v.iter().map(|z| z * z).sum::<f64>().sqrt().max(1e-12);
    v.iter_mut().for_each(|z| *z /= n);
}

/// An uninitialised `len`-value output buffer, to be written in full and
/// then turned into a `Vec<T>` by [`assume_init`]. Neither zeroed nor
/// written twice; on Linux its pages are marked for transparent huge pages
/// (see [`advise_huge_pages`]); PCA's projections use it too.
pub(crate) fn output_buffer<T>(len: usize) -> Vec<std::mem::MaybeUninit<T>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialisation; the capacity is `len`.
    unsafe { v.set_len(len) };
    advise_huge_pages(&v);
    v
}

/// A zero-filled `len`-value output buffer for a mostly-zero result (a
/// sparse encoding or map), of which only the non-zero values are then
/// written. `vec![0.0; len]` is `calloc`: a large block is a fresh mapping
/// whose pages the kernel zeroes on first touch, so the zeros are never
/// written by us, and with [`advise_huge_pages`] the first touch costs one
/// page fault per 2 MiB. Writing the zeros ourselves into uninitialised
/// memory instead writes each byte twice (the kernel's zeroing, then ours);
/// adding into calloc'd 4 KiB pages faults each page twice (read: the
/// shared zero page, then copy on write).
pub(crate) fn zeroed_output<T: Copy>(len: usize, zero: T) -> Vec<T> {
    let v = vec![zero; len];
    advise_huge_pages(&v);
    v
}

/// On Linux, mark the whole 2 MiB pages of a buffer of at least 4 MiB for
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`), so that the first
/// writes to a large fresh mapping cost one page fault per 2 MiB instead of
/// one per 4 KiB. Advice only: contents never change, and where the kernel
/// has huge pages off it does nothing.
pub(crate) fn advise_huge_pages<T>(v: &[T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = std::mem::size_of_val(v);
        if bytes >= 2 * HUGE {
            let start = v.as_ptr() as usize;
            let lo = start.div_ceil(HUGE) * HUGE;
            let hi = (start + bytes) / HUGE * HUGE;
            if hi > lo {
                // SAFETY: advice on whole pages inside the allocation; it
                // changes how they are backed, never their contents.
                unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

/// The buffer of [`output_buffer`] as values.
///
/// # Safety
/// Every element must have been written.
pub(crate) unsafe fn assume_init<T>(v: Vec<std::mem::MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: MaybeUninit<T> has T's layout; the caller guarantees every
    // element is initialised; pointer, length and capacity come from `v`,
    // which is not dropped.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity()) }
}

/// Whole images of about `rows` descriptors each, as `(first, end)` image
/// ranges.
pub(crate) fn image_chunks(offsets: &[usize], rows: usize) -> Vec<(usize, usize)> {
    let n_images = offsets.len() - 1;
    let mut out = Vec::new();
    let mut img = 0;
    while img < n_images {
        let start = img;
        let mut end = img + 1;
        while end < n_images && offsets[end + 1] - offsets[start] <= rows {
            end += 1;
        }
        out.push((start, end));
        img = end;
    }
    out
}
