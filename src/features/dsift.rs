//! Dense SIFT with VLFeat's semantics (`vl_dsift`, VLFeat 0.9.21 `vl/dsift.c`;
//! Vedaldi and Fulkerson, "VLFeat: an open and portable library of computer
//! vision algorithms", ACM MM 2010).
//!
//! # Definition
//!
//! On a float image $I$ (bovw feeds gray levels scaled to $[0, 1]$, as
//! VLFeat's `im2single` does), every pixel gets a gradient by central
//! differences, $g_x = (I_{x+1} - I_{x-1})/2$ (one-sided at the image border),
//! its modulus $m$ and its angle $\theta = \mathrm{atan2}(g_y, g_x) \in [0, 2\pi)$
//! (y pointing down, so angles turn clockwise on screen). The modulus is split
//! linearly between the two nearest of $T = 8$ orientation planes:
//! $n_\theta = \theta T / 2\pi$, plane $\lfloor n_\theta \rfloor$ gets
//! $(1 - \{n_\theta\}) m$ and the next one (mod $T$) gets $\{n_\theta\} m$.
//! VLFeat's own approximations are used for the angle (`vl_fast_atan2_f`, a
//! cubic in $(x - |y|)/(x + |y|)$, up to 0.35 degree off) and the modulus
//! (`vl_fast_sqrt_f`, one bit trick and two Newton steps, 0 below $10^{-8}$),
//! so that the orientation split is the same as VLFeat's.
//!
//! A descriptor is a $4 \times 4$ grid of spatial bins of $s$ (`bin_size`)
//! pixels whose centres are at integer pixels: the top-left bin centre
//! $(\bar x, \bar y)$ runs over $x_{\min}, x_{\min} + \Delta, \ldots$ while the
//! whole $(3s + 1)$-pixel footprint stays within the bounds (`step`
//! $\Delta$), rows outer, so the frame centre is $(\bar x + 1.5 s, \bar y + 1.5 s)$.
//! Bin $(b_x, b_y)$ of orientation $t$ is the plane filtered at the bin centre
//! $(\bar x + b_x s, \bar y + b_y s)$ by a separable window, reading pixels
//! beyond the image border as the border pixel (VLFeat's `VL_PAD_BY_CONTINUITY`):
//!
//! - Gaussian window (`fast = false`, exact SIFT binning): along each axis
//!   $k_b(u) = (1 - |u|/s)\, e^{-\frac12 ((u - \delta_b)/\sigma)^2}$ for
//!   $|u| < s$, with $\delta_b = s (b - 1.5)$ and $\sigma = s \cdot$ `window_size`,
//!   the value at $y$ being $\sum_u k_b(u) P(y - u)$ (so the Gaussian is
//!   centred on the frame centre);
//! - flat window (`fast = true`): the triangular kernel $(s - |u|)/s^2$ along
//!   each axis, the bin then multiplied by $w_x w_y$ with $w_b = s\,\overline{e}_b$,
//!   $\overline{e}_b$ the mean of the Gaussian window over the bin's support.
//!
//! Each 128-vector (index $t + 8 b_x + 32 b_y$) gets its *norm*: the sum of
//! its entries divided by $(3s + 1)^2$ (VLFeat's "mass", the `norm` output
//! that PHOW thresholds as contrast); it is then L2-normalised (divided by
//! `vl_fast_sqrt_f`$(\sum v^2) + \epsilon_{f32}$), clamped at 0.2 and
//! normalised again. Output values are $\min(512 v, 255)$, as float or
//! truncated to `u8` (VLFeat's MATLAB and Python wrappers).
//!
//! # How it is computed here
//!
//! VLFeat filters every orientation plane over the whole image (16 times in
//! the Gaussian mode, once per bin pair) and then samples it. bovw stores
//! the 8 planes interleaved (one 8-float vector per pixel, one SIMD
//! register), filters the columns only at the rows where some bin centre
//! lies, then the rows only at the bin-centre columns, directly from the
//! kernel taps; the results equal VLFeat's up to float rounding (VLFeat's
//! flat window goes through running sums). Only the pixels that some window
//! reaches get a gradient. `tests/test_dense.py` compares with cyvlfeat
//! 0.7.1 on VLFeat 0.9.21.

use std::cell::RefCell;

use crate::error::{BovwError, Result};
use crate::features::{DescriptorDtype, DescriptorInfo, DescriptorKind, Descriptors, Extractor, Features, KeyPoint};
use crate::image::{ColorNeeds, DecodedImage, GrayView};

/// Spatial bins along each axis.
pub const NUM_BINS: usize = 4;
/// Orientation bins.
pub const NUM_ORIENT: usize = 8;
/// Descriptor length.
pub const DSIFT_LEN: usize = NUM_BINS * NUM_BINS * NUM_ORIENT;

const EPS_F32: f32 = f32::EPSILON;

/// Dense SIFT parameters, with `vl_dsift`'s defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DsiftParams {
    /// Pixels between neighbouring frames, along both axes (`Step`).
    pub step: usize,
    /// Width in pixels of a spatial bin (`Size`).
    pub bin_size: usize,
    /// `(x_min, y_min, x_max, y_max)`, inclusive, 0-based pixels; clipped to
    /// the image (`Bounds`). `None`: the whole image.
    pub bounds: Option<[i64; 4]>,
    /// Flat (piecewise-bilinear) window instead of the Gaussian one (`Fast`).
    pub fast: bool,
    /// Gaussian window standard deviation, in bins (`WindowSize`).
    pub window_size: f64,
    /// Float descriptors instead of `u8` (`FloatDescriptors`).
    pub float_descriptors: bool,
}

impl Default for DsiftParams {
    fn default() -> Self {
        DsiftParams { step: 1, bin_size: 3, bounds: None, fast: false, window_size: 2.0, float_descriptors: false }
    }
}

/// Check the parameters shared by dense SIFT and PHOW.
pub(crate) fn check_common(step: usize, window_size: f64) -> Result<()> {
    if step == 0 {
        return Err(BovwError::param("step", "must be at least 1 pixel, got 0"));
    }
    if !(window_size > 0.0 && window_size.is_finite()) {
        return Err(BovwError::param("window_size", format!("must be positive and finite, got {window_size}")));
    }
    Ok(())
}

/// Check a bin size.
pub(crate) fn check_bin_size(name: &str, bin_size: usize) -> Result<()> {
    if bin_size == 0 || bin_size > 4096 {
        return Err(BovwError::param(name, format!("must be between 1 and 4096 pixels, got {bin_size}")));
    }
    Ok(())
}

/// The dense SIFT extractor (gray).
#[derive(Debug, Clone)]
pub struct DenseSift {
    pub params: DsiftParams,
}

/// One frame: centre (x, y) in pixels and its norm (contrast).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    pub x: f32,
    pub y: f32,
    pub norm: f32,
}

/// The grid geometry of one dense SIFT pass over a `w` x `h` image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub step: usize,
    pub bin_size: usize,
    pub fast: bool,
    pub window_size: f64,
    /// Top-left bin centres: `x0 + i step` for `i < nx`, same for y.
    x0: usize,
    y0: usize,
    nx: usize,
    ny: usize,
}

impl Geometry {
    /// Frames of a `w` x `h` image with bounds `[x_min, y_min, x_max, y_max]`
    /// (clipped to the image, as `vl_dsift` does).
    pub fn new(w: usize, h: usize, step: usize, bin_size: usize, bounds: Option<[i64; 4]>, fast: bool, window_size: f64) -> Self {
        let [bx0, by0, bx1, by1] = bounds.unwrap_or([0, 0, i64::MAX, i64::MAX]);
        let (x0, y0) = (bx0.max(0), by0.max(0));
        let (x1, y1) = (bx1.min(w as i64 - 1), by1.min(h as i64 - 1));
        let span = 3 * bin_size as i64; // frame footprint minus one
        let count = |lo: i64, hi: i64| if hi - lo - span >= 0 { ((hi - lo - span) / step as i64 + 1) as usize } else { 0 };
        let (nx, ny) = if w == 0 || h == 0 { (0, 0) } else { (count(x0, x1), count(y0, y1)) };
        Geometry { step, bin_size, fast, window_size, x0: x0 as usize, y0: y0 as usize, nx, ny }
    }
    /// Number of frames.
    pub fn len(&self) -> usize {
        self.nx * self.ny
    }
}

impl DenseSift {
    /// Validate the parameters.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `step` (0), `size` (0 or above
    /// 4096), `window_size` (not positive and finite) or `bounds`
    /// (`x_min > x_max` or `y_min > y_max`).
    pub fn new(params: DsiftParams) -> Result<Self> {
        check_common(params.step, params.window_size)?;
        check_bin_size("size", params.bin_size)?;
        if let Some([x0, y0, x1, y1]) = params.bounds {
            if x0 > x1 || y0 > y1 {
                return Err(BovwError::param(
                    "bounds",
                    format!("expected (x_min, y_min, x_max, y_max) with x_min <= x_max and y_min <= y_max, got ({x0}, {y0}, {x1}, {y1})"),
                ));
            }
        }
        Ok(DenseSift { params })
    }

    /// Frames and descriptors of a float image (row-major, `w` x `h`),
    /// as [`Self::compute`] describes.
    pub fn compute_float(&self, plane: &[f32], w: usize, h: usize) -> Features {
        let p = &self.params;
        let g = Geometry::new(w, h, p.step, p.bin_size, p.bounds, p.fast, p.window_size);
        let mut frames = Vec::with_capacity(g.len());
        let mut out = DescBuf::new(p.float_descriptors, g.len() * DSIFT_LEN);
        with_normalized(|desc| {
            describe_plane(plane, w, h, &g, &mut frames, desc);
            out.push_scaled(desc);
        });
        let kps = frames.iter().map(|f| frame_keypoint(f, p.bin_size)).collect();
        (kps, out.into_descriptors(DSIFT_LEN))
    }

    /// Dense SIFT of an 8-bit gray image, its levels scaled to [0, 1].
    ///
    /// Keypoints: `x`, `y` the frame centre (pixels, origin at the centre of
    /// the top-left pixel), `size` the bin size, `response` the norm, `angle`
    /// 0. Descriptors: 128 values `min(512 v, 255)`, `f32` or truncated `u8`.
    /// An image too small for one frame gives no frame.
    pub fn compute(&self, image: GrayView<'_>) -> Features {
        let plane: Vec<f32> = image.data.iter().map(|&v| v as f32 * (1.0 / 255.0)).collect();
        self.compute_float(&plane, image.width, image.height)
    }
}

/// The keypoint of a frame: size = bin size, response = norm.
pub(crate) fn frame_keypoint(f: &Frame, bin_size: usize) -> KeyPoint {
    KeyPoint { x: f.x, y: f.y, size: bin_size as f32, angle: 0.0, response: f.norm, octave: 0, class_id: -1 }
}

/// Descriptors being written in their output type: VLFeat's output scaling
/// `min(512 v, 255)`, as `f32` or truncated to `u8`.
pub(crate) enum DescBuf {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl DescBuf {
    pub fn new(float_descriptors: bool, capacity: usize) -> Self {
        if float_descriptors {
            DescBuf::F32(Vec::with_capacity(capacity))
        } else {
            DescBuf::U8(Vec::with_capacity(capacity))
        }
    }
    /// Append normalised values, scaled.
    pub fn push_scaled(&mut self, v: &[f32]) {
        // `y < 255 ? y : 255` (not f32::min, whose NaN rule blocks SIMD);
        // x >= 0, so the i32 conversion truncates like VLFeat's (vl_uint8) cast.
        #[inline(always)]
        fn scale(x: f32) -> f32 {
            let y = 512.0 * x;
            if y < 255.0 {
                y
            } else {
                255.0
            }
        }
        match self {
            DescBuf::F32(o) => o.extend(v.iter().map(|&x| scale(x))),
            DescBuf::U8(o) => o.extend(v.iter().map(|&x| scale(x) as i32 as u8)),
        }
    }
    /// Append `n` zeros.
    pub fn push_zeros(&mut self, n: usize) {
        match self {
            DescBuf::F32(o) => o.resize(o.len() + n, 0.0),
            DescBuf::U8(o) => o.resize(o.len() + n, 0),
        }
    }
    pub fn into_descriptors(self, width: usize) -> Descriptors {
        match self {
            DescBuf::F32(data) => Descriptors::F32 { data, width },
            DescBuf::U8(data) => Descriptors::U8 { data, width },
        }
    }
}

thread_local! {
    /// Normalised descriptors of one pass, reused across images.
    static NORMALIZED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with a reusable buffer for [`describe_plane`]'s output.
pub(crate) fn with_normalized<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    NORMALIZED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            let out = f(&mut v);
            if v.capacity() * 4 > SCRATCH_KEEP_BYTES {
                *v = Vec::new();
            }
            out
        }
        Err(_) => f(&mut Vec::new()),
    })
}

impl Extractor for DenseSift {
    fn info(&self) -> DescriptorInfo {
        let dtype = if self.params.float_descriptors { DescriptorDtype::Float32 } else { DescriptorDtype::Uint8 };
        DescriptorInfo { width: DSIFT_LEN, dtype, kind: DescriptorKind::Local, needs: ColorNeeds::GRAY }
    }
    fn extract(&self, image: &DecodedImage) -> Result<Features> {
        Ok(self.compute(image.require_gray()?))
    }
    /// [`dense_memory_bytes`] of the frames of a `width` x `height` image:
    /// about 780 bytes per pixel at the defaults (step 1, one frame per
    /// pixel; measured peak 620), 100 + 680 / step^2 in general.
    fn memory_bytes(&self, width: usize, height: usize) -> Option<u128> {
        let p = &self.params;
        let n = Geometry::new(width, height, p.step, p.bin_size, p.bounds, p.fast, p.window_size).len() as u128;
        Some(dense_memory_bytes(width as u128 * height as u128, 1, 0, n, n, p.float_descriptors))
    }
}

/// An upper bound of the peak bytes of dense SIFT or PHOW on a `pixels`
/// image with `channels` described planes (`smoothing` of them blurred
/// first, PHOW), `pass_frames` frames in the largest pass (one bin size) and
/// `total_frames` in all: per pixel the float planes (4 per channel), the
/// blurred copy and its temporary (8), the gradient, column- and
/// row-filtered orientation lanes (96); per frame of a pass the normalised
/// float descriptors and the frame (524 per channel); per frame kept the
/// output row and keypoint (128 values per channel, 1 or 4 bytes each, and
/// 28); then the Arrow copy of the output. 16 MiB added for small images.
pub(crate) fn dense_memory_bytes(
    pixels: u128,
    channels: u128,
    smoothing: u128,
    pass_frames: u128,
    total_frames: u128,
    float_descriptors: bool,
) -> u128 {
    let row = DSIFT_LEN as u128 * channels * if float_descriptors { 4 } else { 1 };
    let work = pixels * (4 * channels + 8 * smoothing.min(1) + 96) + pass_frames * 524 * channels + total_frames * (row + 28);
    let output = total_frames * (2 * row + 44);
    work.max(output) + (16 << 20)
}

// ---------------------------------------------------------------------------
// VLFeat's float approximations (vl/mathop.h).

/// `vl_fast_atan2_f`: the angle of (x, y) in (-pi, pi], within 0.0062 rad (0.35 degree).
#[inline(always)]
pub(crate) fn vl_fast_atan2(y: f32, x: f32) -> f32 {
    const C3: f32 = 0.1821;
    const C1: f32 = 0.9675;
    let abs_y = y.abs() + EPS_F32;
    let (r, base) = if x >= 0.0 {
        ((x - abs_y) / (x + abs_y), (std::f64::consts::PI / 4.0) as f32)
    } else {
        ((x + abs_y) / (abs_y - x), (3.0 * std::f64::consts::PI / 4.0) as f32)
    };
    let angle = base + (C3 * r * r - C1) * r;
    if y < 0.0 {
        -angle
    } else {
        angle
    }
}

/// `vl_fast_resqrt_f`: 1 / sqrt(x) by the bit trick and two Newton steps.
#[inline(always)]
fn vl_fast_resqrt(x: f32) -> f32 {
    let xhalf = 0.5 * x;
    let mut u = f32::from_bits(0x5f37_59df_u32.wrapping_sub(x.to_bits() >> 1));
    u = u * (1.5 - xhalf * u * u);
    u * (1.5 - xhalf * u * u)
}

/// `vl_fast_sqrt_f`: sqrt(x), 0 below 1e-8.
#[inline(always)]
pub(crate) fn vl_fast_sqrt(x: f32) -> f32 {
    if x < 1e-8 {
        0.0
    } else {
        x * vl_fast_resqrt(x)
    }
}

/// `vl_mod_2pi_f` for an angle in (-pi, pi]: into [0, 2 pi].
#[inline(always)]
fn vl_mod_2pi(mut x: f32) -> f32 {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    if x > two_pi {
        x -= two_pi;
    }
    if x < 0.0 {
        x += two_pi;
    }
    x
}

/// `_vl_dsift_new_kernel`: the window of bin `bin` along one axis, taps for
/// offsets `-(s - 1) ..= s - 1`; `None` for the flat window's triangle.
fn bin_kernel(bin_size: usize, bin: Option<usize>, window_size: f64) -> Vec<f32> {
    let s = bin_size as i64;
    let sigma = bin_size as f32 * window_size as f32;
    let delta = bin.map(|b| bin_size as f32 * (b as f32 - 0.5 * (NUM_BINS as f32 - 1.0)));
    (-s + 1..s)
        .map(|x| {
            let tri = 1.0 - (x as f32).abs() / bin_size as f32;
            match delta {
                Some(d) => {
                    let z = (x as f32 - d) / sigma;
                    tri * (-0.5 * z * z).exp()
                }
                None => tri / bin_size as f32,
            }
        })
        .collect()
}

/// `_vl_dsift_get_bin_window_mean` times the bin size.
fn bin_window_weight(bin_size: usize, bin: usize, window_size: f64) -> f32 {
    let s = bin_size as i64;
    let sigma = bin_size as f32 * window_size as f32;
    let delta = bin_size as f32 * (bin as f32 - 0.5 * (NUM_BINS as f32 - 1.0));
    let mut acc = 0f32;
    for x in -s + 1..s {
        let z = (x as f32 - delta) / sigma;
        acc += (-0.5 * z * z).exp();
    }
    acc / (2 * bin_size - 1) as f32 * bin_size as f32
}

// ---------------------------------------------------------------------------
// The kernel.

type Lane = [f32; NUM_ORIENT];

#[derive(Default)]
struct Scratch {
    /// Orientation planes of the gradient region, one lane per pixel.
    grad: Vec<Lane>,
    /// Column-filtered rows.
    vert: Vec<Lane>,
    /// Row-filtered values at bin centres.
    horiz: Vec<Lane>,
    gx: Vec<f32>,
    gy: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Buffers above this size are freed after the image.
const SCRATCH_KEEP_BYTES: usize = 64 << 20;

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let out = f(&mut s);
            let bytes = 32 * (s.grad.capacity() + s.vert.capacity() + s.horiz.capacity()) + 4 * (s.gx.capacity() + s.gy.capacity());
            if bytes > SCRATCH_KEEP_BYTES {
                *s = Scratch::default();
            }
            out
        }
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The rectangle of pixels whose gradient some window reads.
#[derive(Debug, Clone, Copy)]
struct Region {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
}

/// Compute the frames (centre and norm) of `plane`, appended to `frames`,
/// and their normalised descriptors (before the 512 scaling): `desc` is
/// overwritten with `g.len()` rows of 128 values.
pub(crate) fn describe_plane(plane: &[f32], w: usize, h: usize, g: &Geometry, frames: &mut Vec<Frame>, desc: &mut Vec<f32>) {
    assert_eq!(plane.len(), w * h, "plane must have w * h values");
    if g.len() == 0 {
        desc.clear();
        return;
    }
    with_scratch(|sc| {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::features::use_avx2() {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2(plane: &[f32], w: usize, h: usize, g: &Geometry, sc: &mut Scratch, frames: &mut Vec<Frame>, desc: &mut Vec<f32>) {
                    describe_impl(plane, w, h, g, sc, frames, desc)
                }
                // SAFETY: the CPU supports AVX2 (checked by use_avx2).
                unsafe { avx2(plane, w, h, g, sc, frames, desc) };
                return;
            }
        }
        describe_impl(plane, w, h, g, sc, frames, desc)
    })
}

#[inline(always)]
fn describe_impl(plane: &[f32], w: usize, h: usize, g: &Geometry, sc: &mut Scratch, frames: &mut Vec<Frame>, desc: &mut Vec<f32>) {
    let s = g.bin_size;
    let r = s - 1; // kernel radius
    // Bin-centre rows and columns: y0 + i step + b s.
    let last_cy = g.y0 + (g.ny - 1) * g.step + (NUM_BINS - 1) * s;
    let last_cx = g.x0 + (g.nx - 1) * g.step + (NUM_BINS - 1) * s;
    let region = Region {
        x0: g.x0.saturating_sub(r),
        y0: g.y0.saturating_sub(r),
        w: (last_cx + r).min(w - 1) + 1 - g.x0.saturating_sub(r),
        h: (last_cy + r).min(h - 1) + 1 - g.y0.saturating_sub(r),
    };
    gradients(plane, w, h, region, sc);
    // every value is written below: only resize
    desc.resize(g.len() * DSIFT_LEN, 0.0);
    let out = &mut desc[..];
    if g.fast {
        flat_window(g, h, w, region, sc, out);
    } else {
        gaussian_window(g, h, w, region, sc, out);
    }
    let frame_size = (NUM_BINS - 1) * s + 1;
    let norm_constant = (frame_size * frame_size) as f32;
    let delta = 0.5 * s as f32 * (NUM_BINS - 1) as f32;
    frames.reserve(g.len());
    for (k, d) in out.chunks_exact_mut(DSIFT_LEN).enumerate() {
        let (iy, ix) = (k / g.nx, k % g.nx);
        let fy = (g.y0 + iy * g.step) as f32;
        let fx = (g.x0 + ix * g.step) as f32;
        let mass = lane_sum(d, |v| v);
        normalize(d);
        for v in d.iter_mut() {
            *v = v.min(0.2);
        }
        normalize(d);
        frames.push(Frame { x: fx + delta, y: fy + delta, norm: mass / norm_constant });
    }
}

/// Sum of `f(v)` over a 128-vector, in 8 interleaved partial sums (SIMD order).
#[inline(always)]
fn lane_sum(d: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; NUM_ORIENT];
    for c in d.chunks_exact(NUM_ORIENT) {
        for t in 0..NUM_ORIENT {
            acc[t] += f(c[t]);
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `_vl_dsift_normalize_histogram`.
/// (The sum of squares is taken in SIMD order, not VLFeat's sequential one.)
#[inline(always)]
fn normalize(d: &mut [f32]) {
    let ss = lane_sum(d, |v| v * v);
    let norm = vl_fast_sqrt(ss) + EPS_F32;
    for v in d.iter_mut() {
        *v /= norm;
    }
}

/// Orientation planes of the pixels of `region` (VLFeat's gradient and
/// orientation split; the derivative is one-sided at the image border).
#[inline(always)]
fn gradients(plane: &[f32], w: usize, h: usize, region: Region, sc: &mut Scratch) {
    let Region { x0, y0, w: rw, h: rh } = region;
    // every lane is written below: only resize
    sc.grad.resize(rw * rh, [0.0; NUM_ORIENT]);
    sc.gx.resize(rw, 0.0);
    sc.gy.resize(rw, 0.0);
    let bins_per_rad = NUM_ORIENT as f64 / (2.0 * std::f64::consts::PI);
    for ry in 0..rh {
        let y = y0 + ry;
        let row = &plane[y * w..(y + 1) * w];
        // y derivative
        let (gy, gx) = (&mut sc.gy[..rw], &mut sc.gx[..rw]);
        if h == 1 {
            gy.fill(0.0);
        } else if y == 0 {
            let (a, b) = (&plane[w..2 * w], row);
            for i in 0..rw {
                gy[i] = a[x0 + i] - b[x0 + i];
            }
        } else if y == h - 1 {
            let (a, b) = (row, &plane[(y - 1) * w..y * w]);
            for i in 0..rw {
                gy[i] = a[x0 + i] - b[x0 + i];
            }
        } else {
            let (a, b) = (&plane[(y + 1) * w..(y + 2) * w], &plane[(y - 1) * w..y * w]);
            for i in 0..rw {
                gy[i] = 0.5 * (a[x0 + i] - b[x0 + i]);
            }
        }
        // x derivative
        for (i, v) in gx.iter_mut().enumerate() {
            let x = x0 + i;
            *v = if w == 1 {
                0.0
            } else if x == 0 {
                row[1] - row[0]
            } else if x == w - 1 {
                row[x] - row[x - 1]
            } else {
                0.5 * (row[x + 1] - row[x - 1])
            };
        }
        // angle and modulus, in place of gx (nt) and gy (modulus)
        for i in 0..rw {
            let (ggx, ggy) = (gx[i], gy[i]);
            let angle = vl_fast_atan2(ggy, ggx);
            gy[i] = vl_fast_sqrt(ggx * ggx + ggy * ggy);
            gx[i] = (vl_mod_2pi(angle) as f64 * bins_per_rad) as f32;
        }
        let out = &mut sc.grad[ry * rw..(ry + 1) * rw];
        for i in 0..rw {
            let (nt, m) = (gx[i], gy[i]);
            let bint = nt.floor();
            let rbint = nt - bint;
            let b = bint as usize;
            let mut lane = [0f32; NUM_ORIENT];
            lane[b % NUM_ORIENT] = (1.0 - rbint) * m;
            lane[(b + 1) % NUM_ORIENT] = rbint * m;
            out[i] = lane;
        }
    }
}

/// Filter the columns of the gradient region with `kernel` (taps for offsets
/// -r..=r, value at y = sum_u k(u) P(y - u), border replicated) at `rows`
/// (image rows), into `out` (one region-wide row per entry of `rows`).
#[inline(always)]
fn filter_columns(grad: &[Lane], region: Region, h: usize, kernel: &[f32], rows: &[usize], out: &mut Vec<Lane>) {
    let rw = region.w;
    let r = (kernel.len() / 2) as i64;
    out.resize(rows.len() * rw, [0.0; NUM_ORIENT]);
    let src_row = |ti: usize, y: usize| {
        let sy = (y as i64 - (ti as i64 - r)).clamp(0, h as i64 - 1) as usize - region.y0;
        &grad[sy * rw..(sy + 1) * rw]
    };
    for (ri, &y) in rows.iter().enumerate() {
        let dst = &mut out[ri * rw..(ri + 1) * rw];
        let k0 = kernel[0];
        for (d, s) in dst.iter_mut().zip(src_row(0, y)) {
            for t in 0..NUM_ORIENT {
                d[t] = k0 * s[t];
            }
        }
        for (ti, &k) in kernel.iter().enumerate().skip(1) {
            for (d, s) in dst.iter_mut().zip(src_row(ti, y)) {
                for t in 0..NUM_ORIENT {
                    d[t] += k * s[t];
                }
            }
        }
    }
}

/// Filter row `src` (region-wide) with `kernel` at image column `x`.
#[inline(always)]
fn filter_at(src: &[Lane], region: Region, w: usize, kernel: &[f32], x: usize) -> Lane {
    let r = (kernel.len() / 2) as i64;
    let mut acc = [0f32; NUM_ORIENT];
    let lo = x as i64 - r;
    let hi = x as i64 + r;
    if lo >= 0 && hi < w as i64 {
        // interior: no clamping; kernel tap u reads column x - u
        let base = (x - region.x0) as i64;
        for (ti, &k) in kernel.iter().enumerate() {
            let s = &src[(base + r - ti as i64) as usize];
            for t in 0..NUM_ORIENT {
                acc[t] += k * s[t];
            }
        }
    } else {
        for (ti, &k) in kernel.iter().enumerate() {
            let u = ti as i64 - r;
            let sx = (x as i64 - u).clamp(0, w as i64 - 1) as usize - region.x0;
            let s = &src[sx];
            for t in 0..NUM_ORIENT {
                acc[t] += k * s[t];
            }
        }
    }
    acc
}

/// Flat window: one triangular filter for every bin, bins weighted after.
#[inline(always)]
fn flat_window(g: &Geometry, h: usize, w: usize, region: Region, sc: &mut Scratch, out: &mut [f32]) {
    let s = g.bin_size;
    let kernel = bin_kernel(s, None, g.window_size);
    // Every bin-centre row and column (sorted, distinct), and where each
    // frame's bins are in them.
    let centres = |start: usize, n: usize| -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).flat_map(|i| (0..NUM_BINS).map(move |b| start + i * g.step + b * s)).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let rows = centres(g.y0, g.ny);
    let cols = centres(g.x0, g.nx);
    let index_of = |v: &[usize], x: usize| v.binary_search(&x).expect("centre listed");
    filter_columns(&sc.grad, region, h, &kernel, &rows, &mut sc.vert);
    let rw = region.w;
    sc.horiz.resize(rows.len() * cols.len(), [0.0; NUM_ORIENT]);
    for ri in 0..rows.len() {
        let src = &sc.vert[ri * rw..(ri + 1) * rw];
        for (ci, &x) in cols.iter().enumerate() {
            sc.horiz[ri * cols.len() + ci] = filter_at(src, region, w, &kernel, x);
        }
    }
    let weights: Vec<f32> = (0..NUM_BINS).map(|b| bin_window_weight(s, b, g.window_size)).collect();
    let row_idx: Vec<[usize; NUM_BINS]> =
        (0..g.ny).map(|i| std::array::from_fn(|b| index_of(&rows, g.y0 + i * g.step + b * s))).collect();
    let col_idx: Vec<[usize; NUM_BINS]> =
        (0..g.nx).map(|i| std::array::from_fn(|b| index_of(&cols, g.x0 + i * g.step + b * s))).collect();
    let nc = cols.len();
    let mut k = 0;
    for ri in &row_idx {
        for ci in &col_idx {
            let d = &mut out[k * DSIFT_LEN..(k + 1) * DSIFT_LEN];
            for by in 0..NUM_BINS {
                for bx in 0..NUM_BINS {
                    let wgt = weights[bx] * weights[by];
                    let v = &sc.horiz[ri[by] * nc + ci[bx]];
                    let o = &mut d[(by * NUM_BINS + bx) * NUM_ORIENT..(by * NUM_BINS + bx + 1) * NUM_ORIENT];
                    for t in 0..NUM_ORIENT {
                        o[t] = wgt * v[t];
                    }
                }
            }
            k += 1;
        }
    }
}

/// Gaussian window: a separable kernel per bin row and bin column.
#[inline(always)]
fn gaussian_window(g: &Geometry, h: usize, w: usize, region: Region, sc: &mut Scratch, out: &mut [f32]) {
    let s = g.bin_size;
    let kernels: Vec<Vec<f32>> = (0..NUM_BINS).map(|b| bin_kernel(s, Some(b), g.window_size)).collect();
    let rw = region.w;
    for by in 0..NUM_BINS {
        let rows: Vec<usize> = (0..g.ny).map(|i| g.y0 + i * g.step + by * s).collect();
        filter_columns(&sc.grad, region, h, &kernels[by], &rows, &mut sc.vert);
        for bx in 0..NUM_BINS {
            let kx = &kernels[bx];
            let off = (by * NUM_BINS + bx) * NUM_ORIENT;
            for iy in 0..g.ny {
                let src = &sc.vert[iy * rw..(iy + 1) * rw];
                for ix in 0..g.nx {
                    let x = g.x0 + ix * g.step + bx * s;
                    let v = filter_at(src, region, w, kx, x);
                    let k = iy * g.nx + ix;
                    out[k * DSIFT_LEN + off..k * DSIFT_LEN + off + NUM_ORIENT].copy_from_slice(&v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct transcription of the definition in the module docs (whole
    /// planes filtered everywhere, then sampled), to check the fast path.
    fn reference(plane: &[f32], w: usize, h: usize, p: &DsiftParams) -> (Vec<Frame>, Vec<f32>) {
        let g = Geometry::new(w, h, p.step, p.bin_size, p.bounds, p.fast, p.window_size);
        let mut planes = vec![vec![0f32; w * h]; NUM_ORIENT];
        let at = |x: usize, y: usize| plane[y * w + x];
        for y in 0..h {
            for x in 0..w {
                let gy = if h == 1 { 0.0 } else if y == 0 { at(x, 1) - at(x, 0) } else if y == h - 1 { at(x, y) - at(x, y - 1) } else { 0.5 * (at(x, y + 1) - at(x, y - 1)) };
                let gx = if w == 1 { 0.0 } else if x == 0 { at(1, y) - at(0, y) } else if x == w - 1 { at(x, y) - at(x - 1, y) } else { 0.5 * (at(x + 1, y) - at(x - 1, y)) };
                let a = vl_fast_atan2(gy, gx);
                let m = vl_fast_sqrt(gx * gx + gy * gy);
                let nt = (vl_mod_2pi(a) as f64 * (8.0 / (2.0 * std::f64::consts::PI))) as f32;
                let b = nt.floor();
                planes[b as usize % 8][y * w + x] += (1.0 - (nt - b)) * m;
                planes[(b as usize + 1) % 8][y * w + x] += (nt - b) * m;
            }
        }
        let s = p.bin_size as i64;
        let conv = |pl: &[f32], kx: &[f32], ky: &[f32], cx: i64, cy: i64| {
            let mut acc = 0f64;
            for (iy, &ky) in ky.iter().enumerate() {
                for (ix, &kx) in kx.iter().enumerate() {
                    let yy = (cy - (iy as i64 - s + 1)).clamp(0, h as i64 - 1) as usize;
                    let xx = (cx - (ix as i64 - s + 1)).clamp(0, w as i64 - 1) as usize;
                    acc += (kx * ky) as f64 * pl[yy * w + xx] as f64;
                }
            }
            acc as f32
        };
        let mut frames = Vec::new();
        let mut desc = Vec::new();
        for iy in 0..g.ny {
            for ix in 0..g.nx {
                let (fx, fy) = ((g.x0 + ix * g.step) as i64, (g.y0 + iy * g.step) as i64);
                let mut d = vec![0f32; DSIFT_LEN];
                for by in 0..4 {
                    for bx in 0..4 {
                        for t in 0..8 {
                            let (kx, ky, wgt) = if p.fast {
                                let k = bin_kernel(p.bin_size, None, p.window_size);
                                (k.clone(), k, bin_window_weight(p.bin_size, bx, p.window_size) * bin_window_weight(p.bin_size, by, p.window_size))
                            } else {
                                (bin_kernel(p.bin_size, Some(bx), p.window_size), bin_kernel(p.bin_size, Some(by), p.window_size), 1.0)
                            };
                            d[t + 8 * bx + 32 * by] = wgt * conv(&planes[t], &kx, &ky, fx + bx as i64 * s, fy + by as i64 * s);
                        }
                    }
                }
                let fs = (3 * s + 1) as f32;
                let mass: f32 = d.iter().sum::<f32>() / (fs * fs);
                normalize(&mut d);
                d.iter_mut().for_each(|v| *v = v.min(0.2));
                normalize(&mut d);
                frames.push(Frame { x: fx as f32 + 1.5 * s as f32, y: fy as f32 + 1.5 * s as f32, norm: mass });
                desc.extend(d);
            }
        }
        (frames, desc)
    }

    fn test_image(w: usize, h: usize) -> Vec<f32> {
        (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32, (i / w) as f32);
                0.5 + 0.3 * (x * 0.31 + y * 0.17).sin() * (y * 0.23).cos() + 0.1 * ((x * 1.7).sin() * (y * 2.3).cos())
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_in_both_window_modes() {
        let (w, h) = (37, 29);
        let img = test_image(w, h);
        for fast in [true, false] {
            for (step, bin_size, bounds) in [(1, 3, None), (4, 5, None), (3, 2, Some([2, 1, 33, 27])), (2, 6, Some([-5, 0, 100, 100]))] {
                let p = DsiftParams { step, bin_size, bounds, fast, window_size: 1.5, float_descriptors: true };
                let (rf, rd) = reference(&img, w, h, &p);
                let g = Geometry::new(w, h, step, bin_size, bounds, fast, 1.5);
                let (mut f, mut d) = (Vec::new(), Vec::new());
                describe_plane(&img, w, h, &g, &mut f, &mut d);
                assert_eq!(f.len(), rf.len());
                assert!(!f.is_empty());
                for (a, b) in f.iter().zip(&rf) {
                    assert_eq!((a.x, a.y), (b.x, b.y));
                    assert!((a.norm - b.norm).abs() <= 1e-5 * b.norm.abs().max(1e-3), "{a:?} {b:?}");
                }
                let err = d.iter().zip(&rd).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-4, "fast={fast} step={step} size={bin_size}: {err}");
            }
        }
    }

    #[test]
    fn frame_grid_follows_vlfeat() {
        // 100 x 100, step 4, bin 8: 19 x 19 frames, first centre at 12.
        let g = Geometry::new(100, 100, 4, 8, None, true, 2.0);
        assert_eq!((g.nx, g.ny), (19, 19));
        let g = Geometry::new(24, 25, 1, 8, None, true, 2.0);
        assert_eq!((g.nx, g.ny), (0, 1));
        let g = Geometry::new(1, 1, 1, 1, None, true, 2.0);
        assert_eq!(g.len(), 0);
        let g = Geometry::new(10, 10, 1, 1, Some([0, 0, 3, 3]), true, 2.0);
        assert_eq!((g.nx, g.ny), (1, 1));
    }

    #[test]
    fn constant_and_tiny_images() {
        let ds = DenseSift::new(DsiftParams { step: 2, bin_size: 3, fast: true, ..Default::default() }).unwrap();
        let img = vec![128u8; 30 * 20];
        let (kps, desc) = ds.compute(GrayView::new(&img, 30, 20));
        assert!(!kps.is_empty());
        let Descriptors::U8 { data, .. } = &desc else { panic!() };
        assert!(data.iter().all(|&v| v == 0));
        assert!(kps.iter().all(|k| k.response == 0.0));
        for (w, h) in [(1, 1), (7, 300), (300, 7)] {
            let img = vec![7u8; w * h];
            let (kps, desc) = ds.compute(GrayView::new(&img, w, h));
            assert!(kps.is_empty() && desc.is_empty());
        }
    }

    #[test]
    fn bad_parameters() {
        assert!(DenseSift::new(DsiftParams { step: 0, ..Default::default() }).unwrap_err().to_string().starts_with("step"));
        assert!(DenseSift::new(DsiftParams { bin_size: 0, ..Default::default() }).unwrap_err().to_string().starts_with("size"));
        assert!(DenseSift::new(DsiftParams { window_size: -1.0, ..Default::default() }).is_err());
        assert!(DenseSift::new(DsiftParams { bounds: Some([5, 0, 4, 9]), ..Default::default() }).is_err());
    }

    #[test]
    fn fast_atan2_and_sqrt() {
        for i in 0..720 {
            let t = (i as f64 * 0.5 - 179.75).to_radians();
            let a = vl_fast_atan2(t.sin() as f32, t.cos() as f32) as f64;
            assert!((a - t).abs() < 0.0062, "{i}: {a} {t}");
        }
        assert_eq!(vl_fast_sqrt(0.0), 0.0);
        assert!((vl_fast_sqrt(2.0) - 2f32.sqrt()).abs() < 1e-6);
    }
}
