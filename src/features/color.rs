//! Colour conversions with OpenCV's definitions, and joint colour histograms.
//!
//! # Colour spaces (8-bit, OpenCV's definitions)
//!
//! - **HSV** is OpenCV's 8-bit `cvtColor(..., COLOR_RGB2HSV)`
//!   (`modules/imgproc/src/color_hsv.simd.hpp`, `RGB2HSV_b`): with
//!   $V = \max(R, G, B)$, $\Delta = V - \min(R, G, B)$,
//!   $S = \mathrm{round}(255 \Delta / V)$ and $H$ in $[0, 180)$ (degrees / 2, so
//!   that it fits a byte), in 12-bit fixed point with OpenCV's division
//!   tables, so every one of the $2^{24}$ colours converts to the same bytes
//!   as `cv2.cvtColor` (`tests/test_color.py` checks all of them).
//! - **RGB** is the decoded image itself.
//! - **Opponent** colour (van de Sande, Gevers, Snoek, PAMI 2010):
//!   $O_1 = (R - G)/\sqrt 2$, $O_2 = (R + G - 2B)/\sqrt 6$, $O_3 = (R + G + B)/\sqrt 3$.
//!   A histogram with uniform bins over each channel's full range does not
//!   depend on the $\sqrt{\cdot}$ scale factors, so the histogram is taken
//!   over the integers $R - G \in [-255, 256)$, $R + G - 2B \in [-510, 511)$
//!   and $R + G + B \in [0, 766)$.
//!
//! # Joint histograms (`cv2.calcHist` semantics)
//!
//! Channel $c$ with range $[lo_c, hi_c)$ and $n_c$ bins puts value $v$ in bin
//! $\lfloor v a_c + b_c \rfloor$ with $a_c = n_c / (hi_c - lo_c)$ and
//! $b_c = -a_c lo_c$, computed in `f64` as OpenCV's `calcHist_8u` lookup
//! tables do, so the counts equal `cv2.calcHist` on the same channels, mask,
//! bins and ranges. The joint bin is $(i_0 n_1 + i_1) n_2 + i_2$ (C order of
//! `calcHist`'s `(n_0, n_1, n_2)` array). Ranges are the full channel ranges
//! above (HSV: $[0, 180) \times [0, 256) \times [0, 256)$).
//!
//! A pixel is counted unless the mask excludes it: the near-white rule
//! excludes $V > 230 \wedge S < 30$ (OpenCV HSV bytes; a white studio
//! background), a mask array excludes its zero pixels (as `calcHist`'s mask).
//!
//! A spatial grid $g$ splits the image into $g \times g$ cells, cell
//! $(i, j)$ covering rows $\lfloor iH/g \rfloor \ldots \lfloor (i+1)H/g \rfloor - 1$
//! and the same for columns; several grids (a spatial pyramid, e.g. 1 and 2)
//! are concatenated in the order given, cells in row-major order. Counts are
//! accumulated once per pixel into the common refinement of all grids and
//! summed into each grid's cells. Each cell's histogram is then optionally
//! normalised (L1: sum 1; L2: unit norm; an empty cell stays zero) and
//! square-rooted (after L1 this is the Hellinger map).

use std::sync::OnceLock;

use crate::error::{BovwError, Result};
use crate::features::{DescriptorDtype, DescriptorInfo, DescriptorKind, Descriptors, Extractor, Features, KeyPoint};
use crate::image::{ColorNeeds, DecodedImage, RgbView};

/// Fixed-point shift of OpenCV's 8-bit HSV conversion.
const HSV_SHIFT: u32 = 12;
/// `255 << 12` and `(180 << 12) / 6`, the numerators of the division tables.
const SDIV_NUM: f32 = (255 << HSV_SHIFT) as f32;
const HDIV_NUM: f32 = ((180 << HSV_SHIFT) / 6) as f32;

/// `vpshufb` controls that zero-extend channel `ch` of the 4 interleaved
/// RGB pixels in each 128-bit lane into 32-bit lanes (pixels 0-3 from the
/// low lane, 4-7 from the high one): `TO_DWORDS[set][ch]`, where each
/// lane's first pixel starts at byte `4 set` of the lane.
#[cfg(target_arch = "x86_64")]
const TO_DWORDS: [[[u8; 32]; 3]; 2] = {
    let mut m = [[[0x80u8; 32]; 3]; 2];
    let mut set = 0;
    while set < 2 {
        let mut ch = 0;
        while ch < 3 {
            let mut j = 0;
            while j < 8 {
                // lane j / 4, dword j % 4
                m[set][ch][4 * j] = (4 * set + 3 * (j % 4) + ch) as u8;
                j += 1;
            }
            ch += 1;
        }
        set += 1;
    }
    m
};

/// OpenCV's division tables for the 8-bit HSV conversion (`RGB2HSV_b`):
/// `sdiv[v] = round(255 * 2^12 / v)`, `hdiv[d] = round(180 * 2^12 / (6 d))`.
struct HsvTables {
    sdiv: [i32; 256],
    hdiv: [i32; 256],
    /// The f32 quotients `255 * 2^12 / v` and `180 * 2^12 / 6 / d`, rounded
    /// half to even, equal the tables for every v, d >= 1 (checked), so the
    /// SIMD path may divide instead of gathering.
    div_exact: bool,
}

fn hsv_tables() -> &'static HsvTables {
    static T: OnceLock<HsvTables> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = HsvTables { sdiv: [0; 256], hdiv: [0; 256], div_exact: true };
        for i in 1..256 {
            // saturate_cast<int>(double) rounds half to even (cvRound).
            t.sdiv[i] = (((255i64 << HSV_SHIFT) as f64) / i as f64).round_ties_even() as i32;
            t.hdiv[i] = (((180i64 << HSV_SHIFT) as f64) / (6.0 * i as f64)).round_ties_even() as i32;
            t.div_exact &= (SDIV_NUM / i as f32).round_ties_even() as i32 == t.sdiv[i]
                && (HDIV_NUM / i as f32).round_ties_even() as i32 == t.hdiv[i];
        }
        t
    })
}

/// OpenCV's 8-bit RGB to HSV conversion of one pixel: `(h, s, v)` with `h`
/// in [0, 180), `s` and `v` in [0, 255].
#[inline(always)]
fn hsv_pixel(t: &HsvTables, r: i32, g: i32, b: i32) -> (i32, i32, i32) {
    let v = r.max(g).max(b);
    let vmin = r.min(g).min(b);
    let diff = v - vmin;
    let half = 1 << (HSV_SHIFT - 1);
    let s = (diff * t.sdiv[v as usize] + half) >> HSV_SHIFT;
    let h = if v == r {
        g - b
    } else if v == g {
        b - r + 2 * diff
    } else {
        r - g + 4 * diff
    };
    let mut h = (h * t.hdiv[diff as usize] + half) >> HSV_SHIFT;
    if h < 0 {
        h += 180;
    }
    (h, s, v)
}

/// Convert interleaved RGB bytes to OpenCV's 8-bit HSV bytes (H in [0, 180)),
/// the same bytes as `cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)`.
///
/// # Panics
/// If `rgb.len() != out.len()` or the length is not a multiple of 3.
pub fn rgb_to_hsv(rgb: &[u8], out: &mut [u8]) {
    assert_eq!(rgb.len(), out.len());
    assert_eq!(rgb.len() % 3, 0);
    let t = hsv_tables();
    for (p, o) in rgb.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
        let (h, s, v) = hsv_pixel(t, p[0] as i32, p[1] as i32, p[2] as i32);
        o[0] = h as u8;
        o[1] = s as u8;
        o[2] = v as u8;
    }
}

/// The colour space a histogram is taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorSpace {
    /// OpenCV's 8-bit HSV (H in [0, 180)).
    Hsv,
    /// The RGB bytes.
    Rgb,
    /// Opponent colour (R - G, R + G - 2B, R + G + B).
    Opponent,
}

impl ColorSpace {
    /// Parse `"hsv"`, `"rgb"` or `"opponent"` (case-insensitive).
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] (`space`) for another name.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "hsv" => Ok(ColorSpace::Hsv),
            "rgb" => Ok(ColorSpace::Rgb),
            "opponent" => Ok(ColorSpace::Opponent),
            _ => Err(BovwError::param("space", format!("expected 'hsv', 'rgb' or 'opponent', got {name:?}"))),
        }
    }
    /// The histogram range `[lo, hi)` of each channel, in the units the
    /// channel values are computed in (see the module docs).
    pub fn ranges(self) -> [(i32, i32); 3] {
        match self {
            ColorSpace::Hsv => [(0, 180), (0, 256), (0, 256)],
            ColorSpace::Rgb => [(0, 256), (0, 256), (0, 256)],
            ColorSpace::Opponent => [(-255, 256), (-510, 511), (0, 766)],
        }
    }
    /// The name as parsed.
    pub fn as_str(self) -> &'static str {
        match self {
            ColorSpace::Hsv => "hsv",
            ColorSpace::Rgb => "rgb",
            ColorSpace::Opponent => "opponent",
        }
    }
}

/// Which pixels a histogram leaves out, by a rule that needs no per-image array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskRule {
    /// Count every pixel.
    None,
    /// Leave out near-white pixels: OpenCV HSV `V > v_above` and `S < s_below`
    /// (the default 230 and 30 remove Fruits-360's white background).
    NearWhite { v_above: u8, s_below: u8 },
}

impl MaskRule {
    /// The near-white rule with the thresholds of the Fruits-360 recipe (V > 230, S < 30).
    pub const WHITE: MaskRule = MaskRule::NearWhite { v_above: 230, s_below: 30 };

    /// Parse `"none"` or `"white"`.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] (`mask`) for another name.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "none" | "" => Ok(MaskRule::None),
            "white" | "near-white" | "near_white" => Ok(MaskRule::WHITE),
            _ => Err(BovwError::param("mask", format!("expected None, 'white' or a mask array, got {name:?}"))),
        }
    }
}

/// How each cell's histogram is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistNorm {
    /// Pixel counts.
    None,
    /// Divided by the cell's count (sums to 1).
    L1,
    /// Divided by its Euclidean norm.
    L2,
}

impl HistNorm {
    /// Parse `"l1"`, `"l2"` or `"none"`.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] (`normalize`) for another name.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "l1" => Ok(HistNorm::L1),
            "l2" => Ok(HistNorm::L2),
            "none" | "" => Ok(HistNorm::None),
            _ => Err(BovwError::param("normalize", format!("expected 'l1', 'l2' or None, got {name:?}"))),
        }
    }
}

/// Colour histogram parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ColorHistogramParams {
    pub space: ColorSpace,
    /// Bins per channel, in channel order.
    pub bins: [usize; 3],
    pub mask: MaskRule,
    /// Grid sizes, concatenated in this order (`[1]`: the whole image).
    pub grid: Vec<usize>,
    pub normalize: HistNorm,
    /// Square root of each value after normalisation.
    pub sqrt: bool,
}

impl Default for ColorHistogramParams {
    /// The Fruits-360 recipe: HSV, 18 x 4 x 4 bins, near-white masked,
    /// whole image, L1-normalised and square-rooted.
    fn default() -> Self {
        ColorHistogramParams {
            space: ColorSpace::Hsv,
            bins: [18, 4, 4],
            mask: MaskRule::WHITE,
            grid: vec![1],
            normalize: HistNorm::L1,
            sqrt: true,
        }
    }
}

/// A joint colour histogram extractor (one global descriptor per image).
#[derive(Debug, Clone)]
pub struct ColorHistogram {
    params: ColorHistogramParams,
    /// Per channel: `table[c][v - lo_c]` = bin of value `v` times the channel's
    /// stride in the joint histogram (the tables span every value a channel takes).
    tables: [Vec<u32>; 3],
    n_bins: usize,
    /// `bin_c(x) = floor((x - lo_c) * scales[c])` in f32 for every channel
    /// value where that form is exact (the SIMD path), else None.
    scales: Option<[f32; 3]>,
    /// Whether the HSV SIMD path may bin S and H straight from their
    /// fixed-point products ([`hsv_fold_exact`]).
    hsv_fold: bool,
}

/// Per channel, an f32 `scale` with `floor((x - lo) * scale)` equal to the
/// bin table for every value of the channel (the nearest float to
/// `bins / span` or one of the next few), for the SIMD path; None when a
/// channel has none. Opponent colour stays on the table path: its AVX2 bins
/// disagreed with the tables on some bin counts (e.g. 7 x 5 x 3).
fn exact_f32_scales(params: &ColorHistogramParams, tables: &[Vec<u32>; 3]) -> Option<[f32; 3]> {
    if params.space == ColorSpace::Opponent {
        return None;
    }
    let ranges = params.space.ranges();
    let strides = [params.bins[1] * params.bins[2], params.bins[2], 1];
    let mut out = [0f32; 3];
    for c in 0..3 {
        let (lo, hi) = ranges[c];
        let exact = |scale: f32| {
            (lo..hi).all(|x| ((x - lo) as f32 * scale).floor() as usize * strides[c] == tables[c][(x - lo) as usize] as usize)
        };
        let first = params.bins[c] as f32 / (hi - lo) as f32;
        out[c] = (0..4).map(|i| f32::from_bits(first.to_bits() + i)).find(|&s| exact(s))?;
    }
    Some(out)
}

/// Whether the S and H bins of OpenCV's fixed-point HSV can be taken from
/// the products before the shift: with `t_S = diff * sdiv[V] + 2^11`
/// (S = `t_S >> 12`) and `t_H = h * hdiv[diff] + 2^11` plus `180 * 2^12`
/// when negative (H = `t_H >> 12`), whether `floor(t * (scale / 2^12))` in
/// f32 gives the channel's bin for every `t` the conversion forms: every
/// `V` and `diff <= V` for S, every `diff` and hue numerator `h` in
/// `[-diff, 5 diff]` for H (about 2 x 10^5 products, checked once per
/// process and bin count). True for bin counts whose edges are integers
/// (18 or 9 hue bins; 4, 8, 16... saturation bins), false e.g. for 16 hue
/// bins. `bins` and `scales` are the HSV histogram's, `tables` its bin tables.
fn hsv_fold_exact(bins: [usize; 3], scales: [f32; 3], tables: &[Vec<u32>; 3]) -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    // per channel (H, S) and bin count: 0 not checked yet, 1 no, 2 yes
    static KNOWN: [[AtomicU8; 257]; 2] = [[const { AtomicU8::new(0) }; 257], [const { AtomicU8::new(0) }; 257]];
    let t = hsv_tables();
    let half = 1 << (HSV_SHIFT - 1);
    let unshift = 1.0 / (1 << HSV_SHIFT) as f32;
    let strides = [(bins[1] * bins[2]) as u32, bins[2] as u32];
    // t >= 0 below, so the truncating cast is the floor
    let fold_bin = |c: usize, tt: i32| ((tt as f32) * (scales[c] * unshift)) as u32 * strides[c];
    let check = |c: usize| -> bool {
        if c == 1 {
            (0..256usize).all(|v| {
                let sd = t.sdiv[v.max(1)];
                (0..=v as i32).all(|diff| {
                    let tt = diff * sd + half;
                    fold_bin(1, tt) == tables[1][(tt >> HSV_SHIFT) as usize]
                })
            })
        } else {
            (0..256i32).all(|diff| {
                let hd = t.hdiv[diff.max(1) as usize];
                (-diff..=5 * diff).all(|num| {
                    let mut tt = num * hd + half;
                    if tt < 0 {
                        tt += 180 << HSV_SHIFT;
                    }
                    let hue = (tt >> HSV_SHIFT) as usize;
                    hue < 180 && fold_bin(0, tt) == tables[0][hue]
                })
            })
        }
    };
    (0..2).all(|c| {
        let known = &KNOWN[c][bins[c]];
        match known.load(Ordering::Relaxed) {
            0 => {
                let ok = check(c);
                known.store(if ok { 2 } else { 1 }, Ordering::Relaxed);
                ok
            }
            k => k == 2,
        }
    })
}

/// The segment of each index 0..n in the common refinement of the cuts
/// `floor(i n / g)` of every grid `g`, and the number of segments.
fn refinement(n: usize, grids: &[usize]) -> (Vec<u16>, usize) {
    let mut cuts: Vec<usize> = grids.iter().flat_map(|&g| (0..=g).map(move |i| i * n / g)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut seg = vec![0u16; n];
    for (s, w) in cuts.windows(2).enumerate() {
        for v in &mut seg[w[0]..w[1]] {
            *v = s as u16;
        }
    }
    (seg, cuts.len().saturating_sub(1).max(1))
}

impl ColorHistogram {
    /// Validate the parameters and build the bin tables.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `bins` (a count of 0 or above
    /// the channel's number of values), `grid` (empty, a 0, or above 64).
    pub fn new(params: ColorHistogramParams) -> Result<Self> {
        let ranges = params.space.ranges();
        for (c, (&n, &(lo, hi))) in params.bins.iter().zip(&ranges).enumerate() {
            let span = (hi - lo) as usize;
            if n == 0 || n > span {
                return Err(BovwError::param(
                    "bins",
                    format!("channel {c} of {}: expected 1 to {span} bins, got {n}", params.space.as_str()),
                ));
            }
        }
        if params.grid.is_empty() || params.grid.iter().any(|&g| g == 0 || g > 64) {
            return Err(BovwError::param("grid", format!("expected grid sizes from 1 to 64, got {:?}", params.grid)));
        }
        let strides = [params.bins[1] * params.bins[2], params.bins[2], 1];
        let tables: [Vec<u32>; 3] = std::array::from_fn(|c| {
            let (lo, hi) = ranges[c];
            let n = params.bins[c];
            // calcHist's uniform ranges, in f64: a = n / (hi - lo), b = -a lo.
            let a = n as f64 / (hi - lo) as f64;
            let b = -a * lo as f64;
            (lo..hi)
                .map(|v| {
                    let idx = (v as f64 * a + b).floor() as i64;
                    let idx = idx.clamp(0, n as i64 - 1) as usize;
                    (idx * strides[c]) as u32
                })
                .collect()
        });
        let n_bins = params.bins.iter().product();
        let scales = exact_f32_scales(&params, &tables);
        let hsv_fold = match scales {
            Some(sc) if params.space == ColorSpace::Hsv => hsv_fold_exact(params.bins, sc, &tables),
            _ => false,
        };
        Ok(ColorHistogram { params, tables, n_bins, scales, hsv_fold })
    }

    /// The parameters.
    pub fn params(&self) -> &ColorHistogramParams {
        &self.params
    }

    /// Bins of one cell: the product of `bins`.
    pub fn bins_per_cell(&self) -> usize {
        self.n_bins
    }

    /// Descriptor length: bins per cell times the number of cells of all grids.
    pub fn width(&self) -> usize {
        self.n_bins * self.params.grid.iter().map(|g| g * g).sum::<usize>()
    }

    /// The histogram of one RGB image (with an optional mask of its size:
    /// zero pixels are left out), as described in the module docs.
    ///
    /// # Errors
    /// [`BovwError::Shape`] when the mask's size differs from the image's.
    pub fn histogram(&self, image: RgbView<'_>, mask: Option<&[u8]>) -> Result<Vec<f32>> {
        let (w, h) = (image.width, image.height);
        if let Some(m) = mask {
            if m.len() != w * h {
                return Err(BovwError::Shape {
                    what: "mask".into(),
                    expected: format!("({h}, {w}) like the image"),
                    got: format!("{} values", m.len()),
                });
            }
        }
        let counts = self.refined_counts(image, mask);
        Ok(self.finish(&counts, w, h))
    }

    /// The cells of the grids' common refinement for a `w` x `h` image.
    fn layout(&self, w: usize, h: usize) -> Layout {
        let (row_seg, n_rs) = refinement(h, &self.params.grid);
        let (col_seg, n_cs) = refinement(w, &self.params.grid);
        Layout { row_seg, col_seg, n_rs, n_cs, slots: n_rs * n_cs * self.n_bins + 1 }
    }

    /// The slot of every pixel: `(row segment * n_cs + column segment) *
    /// bins + joint bin`, or the dump slot `slots - 1` for a pixel the mask
    /// (array or rule) leaves out, passed to `sink` one run of pixels at a
    /// time (rows, or stretches of the image when it is one cell).
    fn pixel_slots<F: FnMut(&[u32])>(&self, image: RgbView<'_>, mask: Option<&[u8]>, lay: &Layout, sink: F) {
        let nb = self.n_bins;
        let col_off: Vec<u32> = lay.col_seg.iter().map(|&c| (c as usize * nb) as u32).collect();
        let bases: Vec<u32> = lay.row_seg.iter().map(|&r| (r as usize * lay.n_cs * nb) as u32).collect();
        let mut k = self.kernel();
        k.cells = lay.n_rs > 1 || lay.n_cs > 1;
        k.image_bins(image, mask, &bases, &col_off, (lay.slots - 1) as u32, sink);
    }

    /// Counts per (row segment, column segment, bin) of the grids' common refinement.
    ///
    /// Each run of pixels is done in two passes: the slot of every pixel
    /// ([`Self::pixel_slots`]: branch-free, AVX2, 16 pixels a step, when the
    /// CPU has it) into a buffer, then the counts, in four interleaved
    /// copies so that runs of one colour do not serialise on one counter.
    fn refined_counts(&self, image: RgbView<'_>, mask: Option<&[u8]>) -> RefinedCounts {
        let lay = self.layout(image.width, image.height);
        let slots = lay.slots;
        let mut counts = vec![0u32; 4 * slots];
        self.pixel_slots(image, mask, &lay, |idx: &[u32]| {
            let (c0, rest) = counts.split_at_mut(slots);
            let (c1, rest) = rest.split_at_mut(slots);
            let (c2, c3) = rest.split_at_mut(slots);
            let mut quads = idx.chunks_exact(4);
            for q in &mut quads {
                // SAFETY: image_bins clamps every slot to at most the dump
                // slot, slots - 1, and each of c0..c3 has `slots` entries.
                unsafe {
                    *c0.get_unchecked_mut(q[0] as usize) += 1;
                    *c1.get_unchecked_mut(q[1] as usize) += 1;
                    *c2.get_unchecked_mut(q[2] as usize) += 1;
                    *c3.get_unchecked_mut(q[3] as usize) += 1;
                }
            }
            for &i in quads.remainder() {
                c0[i as usize] += 1;
            }
        });
        let (first, rest) = counts.split_at_mut(slots);
        for c in rest.chunks_exact(slots) {
            for (a, b) in first.iter_mut().zip(c) {
                *a += b;
            }
        }
        counts.truncate(slots - 1);
        RefinedCounts { counts, row_seg: lay.row_seg, col_seg: lay.col_seg, n_cs: lay.n_cs }
    }

    /// The per-pixel binning of this histogram.
    fn kernel(&self) -> BinKernel<'_> {
        let ranges = self.params.space.ranges();
        let strides = [self.params.bins[1] * self.params.bins[2], self.params.bins[2], 1];
        BinKernel {
            space: self.params.space,
            rule: self.params.mask,
            tables: [&self.tables[0], &self.tables[1], &self.tables[2]],
            lo: [ranges[0].0, ranges[1].0, ranges[2].0],
            scales: self.scales,
            strides: [strides[0] as f32, strides[1] as f32],
            cells: true,
            hsv_fold: self.hsv_fold,
        }
    }

    /// Sum the refined counts into each grid's cells, normalise, square-root.
    fn finish(&self, rc: &RefinedCounts, w: usize, h: usize) -> Vec<f32> {
        let nb = self.n_bins;
        let mut out = Vec::with_capacity(self.width());
        let mut cell = vec![0u64; nb];
        for &g in &self.params.grid {
            for i in 0..g {
                let (r0, r1) = (i * h / g, (i + 1) * h / g);
                for j in 0..g {
                    let (c0, c1) = (j * w / g, (j + 1) * w / g);
                    let start = out.len();
                    let segs = if r0 < r1 && c0 < c1 {
                        let (rs0, rs1) = (rc.row_seg[r0] as usize, rc.row_seg[r1 - 1] as usize);
                        let (cs0, cs1) = (rc.col_seg[c0] as usize, rc.col_seg[c1 - 1] as usize);
                        Some((rs0, rs1, cs0, cs1))
                    } else {
                        None
                    };
                    let norm = self.params.normalize;
                    let (total, ss) = match segs {
                        // one segment of the refinement (e.g. every cell of a
                        // single grid): its counts as they are
                        Some((rs0, rs1, cs0, cs1)) if rs0 == rs1 && cs0 == cs1 => {
                            let src = &rc.counts[(rs0 * rc.n_cs + cs0) * nb..(rs0 * rc.n_cs + cs0 + 1) * nb];
                            out.extend(src.iter().map(|&c| c as f32));
                            count_sums(norm, src.iter().map(|&c| c as u64))
                        }
                        Some((rs0, rs1, cs0, cs1)) => {
                            cell.iter_mut().for_each(|v| *v = 0);
                            for rs in rs0..=rs1 {
                                for cs in cs0..=cs1 {
                                    let src = &rc.counts[(rs * rc.n_cs + cs) * nb..(rs * rc.n_cs + cs + 1) * nb];
                                    for (a, &b) in cell.iter_mut().zip(src) {
                                        *a += b as u64;
                                    }
                                }
                            }
                            out.extend(cell.iter().map(|&c| c as f32));
                            count_sums(norm, cell.iter().copied())
                        }
                        None => {
                            out.resize(start + nb, 0.0);
                            (0, 0.0)
                        }
                    };
                    let vals = &mut out[start..];
                    let scale = match norm {
                        HistNorm::None => 1.0,
                        HistNorm::L1 => {
                            if total == 0 { 0.0 } else { (1.0 / total as f64) as f32 }
                        }
                        HistNorm::L2 => {
                            if ss == 0.0 { 0.0 } else { (1.0 / ss.sqrt()) as f32 }
                        }
                    };
                    if self.params.normalize != HistNorm::None {
                        vals.iter_mut().for_each(|v| *v *= scale);
                    }
                    if self.params.sqrt {
                        vals.iter_mut().for_each(|v| *v = v.sqrt());
                    }
                }
            }
        }
        out
    }
}

/// How one histogram bins pixels: the colour space, the mask rule, the
/// per-channel bin tables and, when exact, their f32 form.
struct BinKernel<'a> {
    space: ColorSpace,
    rule: MaskRule,
    tables: [&'a [u32]; 3],
    lo: [i32; 3],
    /// `bin_c(x) = floor((x - lo_c) * scales[c])` for every channel value, or None.
    scales: Option<[f32; 3]>,
    /// Strides of channels 0 and 1 in the joint histogram.
    strides: [f32; 2],
    /// Whether the image has more than one cell of the grids' refinement;
    /// when false every row base and column offset is 0 and the SIMD path
    /// does not read them.
    cells: bool,
    /// [`hsv_fold_exact`] holds.
    hsv_fold: bool,
}

impl BinKernel<'_> {
    /// The slots of every row of an RGB image, one row at a time into
    /// `sink`: `slots[x]` = `bases[y] + col_off[x] +` the joint bin of pixel
    /// `(x, y)`, or `dump` when the mask (array or rule) leaves it out;
    /// every slot is at most `dump` (clamped, whatever the inputs). The
    /// AVX2 loop when the CPU has it and the rows have 16 pixels or more,
    /// else the portable one (the same integers).
    fn image_bins<F: FnMut(&[u32])>(&self, image: RgbView<'_>, mask: Option<&[u8]>, bases: &[u32], col_off: &[u32], dump: u32, mut sink: F) {
        let (w, h) = (image.width, image.height);
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(scales) = self.scales {
                if w >= 16 && crate::features::use_avx2() && std::arch::is_x86_feature_detected!("fma") && hsv_tables().div_exact {
                    // SAFETY: the CPU supports AVX2, FMA and SSE4.1 (checked: every
                    // AVX2 CPU has SSE4.1); the divisions equal OpenCV's tables
                    // (div_exact); w >= 16; lengths are checked inside.
                    unsafe { self.image_bins_avx2(image, mask, bases, col_off, dump, scales, &mut sink) };
                    return;
                }
            }
        }
        let mut idx = vec![0u32; w];
        for y in 0..h {
            let row = &image.data[3 * y * w..3 * (y + 1) * w];
            let mrow = mask.map(|m| &m[y * w..(y + 1) * w]);
            self.row_bins_portable(row, mrow, col_off, bases[y], dump, &mut idx);
            sink(&idx);
        }
    }

    /// `out[x]` = the slot of pixel `x` of an RGB row: `base + col_off[x] +`
    /// its joint bin, or `dump` when the mask (array or rule) leaves it out.
    fn row_bins_portable(&self, row: &[u8], mask: Option<&[u8]>, col_off: &[u32], base: u32, dump: u32, out: &mut [u32]) {
        let n = out.len();
        let t = hsv_tables();
        for x in 0..n {
            let (r, g, b) = (row[3 * x] as i32, row[3 * x + 1] as i32, row[3 * x + 2] as i32);
            let (c0, c1, c2) = match self.space {
                ColorSpace::Hsv => hsv_pixel(t, r, g, b),
                ColorSpace::Rgb => (r, g, b),
                ColorSpace::Opponent => (r - g, r + g - 2 * b, r + g + b),
            };
            let mut keep = mask.map_or(true, |m| m[x] != 0);
            if let MaskRule::NearWhite { v_above, s_below } = self.rule {
                let (s, v) = sv_pixel(t, r, g, b);
                keep &= !(v > v_above as i32 && s < s_below as i32);
            }
            let bin = self.tables[0][(c0 - self.lo[0]) as usize]
                + self.tables[1][(c1 - self.lo[1]) as usize]
                + self.tables[2][(c2 - self.lo[2]) as usize];
            out[x] = if keep { (base + col_off[x] + bin).min(dump) } else { dump };
        }
    }

    /// [`Self::image_bins`] in AVX2: one compiled loop per (colour space,
    /// mask rule, mask array, one cell or more), see [`Self::image_bins_avx2_impl`].
    ///
    /// # Safety
    /// AVX2, FMA and SSE4.1 must be available, `div_exact` must hold and
    /// the rows must have 16 pixels or more.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn image_bins_avx2<F: FnMut(&[u32])>(
        &self,
        image: RgbView<'_>,
        mask: Option<&[u8]>,
        bases: &[u32],
        col_off: &[u32],
        dump: u32,
        scales: [f32; 3],
        sink: &mut F,
    ) {
        let rule = matches!(self.rule, MaskRule::NearWhite { .. });
        let cells = self.cells;
        macro_rules! go {
            ($mode:literal) => {
                match (rule, mask.is_some(), cells) {
                    (false, false, false) => self.image_bins_avx2_impl::<$mode, false, false, false, F>(image, mask, bases, col_off, dump, scales, sink),
                    (false, false, true) => self.image_bins_avx2_impl::<$mode, false, false, true, F>(image, mask, bases, col_off, dump, scales, sink),
                    (false, true, false) => self.image_bins_avx2_impl::<$mode, false, true, false, F>(image, mask, bases, col_off, dump, scales, sink),
                    (false, true, true) => self.image_bins_avx2_impl::<$mode, false, true, true, F>(image, mask, bases, col_off, dump, scales, sink),
                    (true, false, false) => self.image_bins_avx2_impl::<$mode, true, false, false, F>(image, mask, bases, col_off, dump, scales, sink),
                    (true, false, true) => self.image_bins_avx2_impl::<$mode, true, false, true, F>(image, mask, bases, col_off, dump, scales, sink),
                    (true, true, false) => self.image_bins_avx2_impl::<$mode, true, true, false, F>(image, mask, bases, col_off, dump, scales, sink),
                    (true, true, true) => self.image_bins_avx2_impl::<$mode, true, true, true, F>(image, mask, bases, col_off, dump, scales, sink),
                }
            };
        }
        match self.space {
            ColorSpace::Hsv if self.hsv_fold => go!(2),
            ColorSpace::Hsv => go!(1),
            ColorSpace::Rgb => go!(0),
            ColorSpace::Opponent => unreachable!("opponent colour has no exact f32 scales"),
        }
    }

    /// The AVX2 loop, 16 pixels a step in two 8-lane halves, all in f32
    /// (every value is an integer below 2^24, so exact): V, min and Delta
    /// of the channels, OpenCV's table entries `sdiv[V]` and `hdiv[Delta]`
    /// as rounded f32 quotients (equal to the tables, `div_exact`), the
    /// fixed-point products `t = x * div + 2^11` (S and H are `floor(t /
    /// 2^12)`, H plus 180 when negative), each channel's bin by its exact
    /// scale and the joint bin by two FMAs; the near-white rule compares
    /// `t_S < 2^12 s_below`, the same as `S < s_below`.
    /// `MODE`: 0 RGB, 1 HSV, 2 HSV with the S and H bins taken from `t`
    /// directly (`floor(t * scale / 2^12)`, where `hsv_fold` found that
    /// equal to the bin of `floor(t / 2^12)` for every `t`); `RULE`: the
    /// near-white rule; `MASK`: a mask array; `CELLS`: row bases and
    /// column offsets (more than one cell). Every slot is at most `dump`.
    ///
    /// # Safety
    /// AVX2, FMA and SSE4.1 must be available; `div_exact` must hold.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,sse4.1,ssse3")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn image_bins_avx2_impl<const MODE: u8, const RULE: bool, const MASK: bool, const CELLS: bool, F: FnMut(&[u32])>(
        &self,
        image: RgbView<'_>,
        mask: Option<&[u8]>,
        bases: &[u32],
        col_off: &[u32],
        dump: u32,
        scales: [f32; 3],
        sink: &mut F,
    ) {
        use std::arch::x86_64::*;
        let (n, h) = (image.width, image.height);
        assert!(n >= 16 && image.data.len() >= 3 * n * h && bases.len() >= h && col_off.len() >= n);
        assert!(!MASK || mask.is_some_and(|m| m.len() >= n * h));
        let ld = |m: &[u8; 32]| _mm256_loadu_si256(m.as_ptr() as *const __m256i);
        let mk0 = [ld(&TO_DWORDS[0][0]), ld(&TO_DWORDS[0][1]), ld(&TO_DWORDS[0][2])];
        let mk1 = [ld(&TO_DWORDS[1][0]), ld(&TO_DWORDS[1][1]), ld(&TO_DWORDS[1][2])];
        // Runs of pixels: the rows when there are cells (row bases and column
        // offsets), else the image as one stream cut into runs of RUN pixels
        // (the last one longer rather than under 16).
        const RUN: usize = 2048;
        let total = n * h;
        let mut out = vec![0u32; if CELLS { n } else { total.min(RUN + 15) }];
        let zero = _mm256_setzero_ps();
        let one = _mm256_set1_ps(1.0);
        let half = _mm256_set1_ps((1 << (HSV_SHIFT - 1)) as f32);
        let unshift = 1.0 / (1 << HSV_SHIFT) as f32;
        let t180 = _mm256_set1_ps((180 << HSV_SHIFT) as f32);
        let two = _mm256_set1_ps(2.0);
        let four = _mm256_set1_ps(4.0);
        // the fixed-point shift folded into the S and H scales (exact: a power of 2)
        let fold = if MODE == 2 { unshift } else { 1.0 };
        let (sc0, sc1, sc2) = (_mm256_set1_ps(scales[0] * fold), _mm256_set1_ps(scales[1] * fold), _mm256_set1_ps(scales[2]));
        let unshift = _mm256_set1_ps(unshift);
        let (st0, st1) = (_mm256_set1_ps(self.strides[0]), _mm256_set1_ps(self.strides[1]));
        let dumpv = _mm256_set1_epi32(dump as i32);
        let (rule_v, rule_s) = match self.rule {
            MaskRule::NearWhite { v_above, s_below } => {
                (_mm256_set1_ps(v_above as f32), _mm256_set1_ps(((s_below as i32) << HSV_SHIFT) as f32))
            }
            MaskRule::None => (zero, zero),
        };
        let (sdiv_num, hdiv_num) = (_mm256_set1_ps(SDIV_NUM), _mm256_set1_ps(HDIV_NUM));
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        // Blocks of 16 pixels; the last block is moved back to end at the
        // run's end (overlapping the one before, whose slots it rewrites
        // with the same values) so that no pixel takes the scalar path.
        let (mut start, mut y) = (0, 0);
        while start < total {
            let len = if CELLS {
                n
            } else if total - start < RUN + 16 {
                total - start
            } else {
                RUN
            };
            let row = &image.data[3 * start..3 * (start + len)];
            let mrow = if MASK { &mask.unwrap_unchecked()[start..start + len] } else { &[][..] };
            let basev = _mm256_set1_epi32(if CELLS { bases[y] as i32 } else { 0 });
            let mut next = 0;
            while next < len {
                let x = next.min(len - 16);
                next = x + 16;
                // SAFETY: x + 16 <= len (a run has 16 pixels or more), so bytes
                // 3x..3x + 48 of the run, 16 mask bytes, 16 out entries and (with
                // cells, where x is the column) 16 col_off entries are in bounds.
                let p = row.as_ptr().add(3 * x);
                let m16 = if MASK { _mm_loadu_si128(mrow.as_ptr().add(x) as *const __m128i) } else { _mm_setzero_si128() };
                for part in 0..2 {
                    let pick = |v: __m128i| if part == 0 { v } else { _mm_srli_si128::<8>(v) };
                    // pixels 8 part .. 8 part + 7, 4 in each 128-bit lane: lanes
                    // from bytes 0 and 12 of the block, then from 20 and 32 (4
                    // bytes before pixels 8 and 12, to stay inside the 48 bytes)
                    let (pix, mk) = if part == 0 { (_mm256_loadu2_m128i(p.add(12) as *const __m128i, p as *const __m128i), &mk0) } else { (_mm256_loadu2_m128i(p.add(32) as *const __m128i, p.add(20) as *const __m128i), &mk1) };
                    let f = |m: __m256i| _mm256_cvtepi32_ps(_mm256_shuffle_epi8(pix, m));
                    let (r, g, bl) = (f(mk[0]), f(mk[1]), f(mk[2]));
                    let (c0, c1, c2, v, s_t);
                    if MODE > 0 || RULE {
                        v = _mm256_max_ps(r, _mm256_max_ps(g, bl));
                        let diff = _mm256_sub_ps(v, _mm256_min_ps(r, _mm256_min_ps(g, bl)));
                        // S = (diff * sdiv[V] + 2^11) >> 12; V = 0 has diff = 0
                        let sd = _mm256_round_ps::<NEAREST>(_mm256_div_ps(sdiv_num, _mm256_max_ps(v, one)));
                        s_t = _mm256_fmadd_ps(diff, sd, half);
                        if MODE > 0 {
                            let vr = _mm256_cmp_ps::<_CMP_EQ_OQ>(v, r);
                            let vg = _mm256_cmp_ps::<_CMP_EQ_OQ>(v, g);
                            let h_r = _mm256_sub_ps(g, bl);
                            let h_g = _mm256_fmadd_ps(diff, two, _mm256_sub_ps(bl, r));
                            let h_b = _mm256_fmadd_ps(diff, four, _mm256_sub_ps(r, g));
                            let hh = _mm256_blendv_ps(_mm256_blendv_ps(h_b, h_g, vg), h_r, vr);
                            let hd = _mm256_round_ps::<NEAREST>(_mm256_div_ps(hdiv_num, _mm256_max_ps(diff, one)));
                            let h_t = _mm256_fmadd_ps(hh, hd, half);
                            // plus 180 << 12 where negative (the sign bit picks; no -0: fma rounds to +0)
                            let h_t = _mm256_blendv_ps(h_t, _mm256_add_ps(h_t, t180), h_t);
                            (c0, c1, c2) = if MODE == 2 {
                                (h_t, s_t, v)
                            } else {
                                (_mm256_floor_ps(_mm256_mul_ps(h_t, unshift)), _mm256_floor_ps(_mm256_mul_ps(s_t, unshift)), v)
                            };
                        } else {
                            (c0, c1, c2) = (r, g, bl);
                        }
                    } else {
                        (v, s_t) = (zero, zero);
                        (c0, c1, c2) = (r, g, bl);
                    }
                    // joint bin in f32 (exact small integers), then to int
                    let jb = _mm256_fmadd_ps(
                        _mm256_floor_ps(_mm256_mul_ps(c0, sc0)),
                        st0,
                        _mm256_fmadd_ps(_mm256_floor_ps(_mm256_mul_ps(c1, sc1)), st1, _mm256_floor_ps(_mm256_mul_ps(c2, sc2))),
                    );
                    let mut slot = _mm256_cvtps_epi32(jb);
                    if CELLS {
                        let off = _mm256_loadu_si256(col_off.as_ptr().add(x + 8 * part) as *const __m256i);
                        slot = _mm256_add_epi32(_mm256_add_epi32(slot, basev), off);
                    }
                    // in bounds whatever the arithmetic gave (it gives at most dump - 1)
                    slot = _mm256_min_epu32(slot, dumpv);
                    if RULE {
                        let drop = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, rule_v), _mm256_cmp_ps::<_CMP_LT_OQ>(s_t, rule_s));
                        slot = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(slot), _mm256_castsi256_ps(dumpv), drop));
                    }
                    if MASK {
                        let mm = _mm256_cmpeq_epi32(_mm256_cvtepu8_epi32(pick(m16)), _mm256_setzero_si256());
                        slot = _mm256_blendv_epi8(slot, dumpv, mm);
                    }
                    _mm256_storeu_si256(out.as_mut_ptr().add(x + 8 * part) as *mut __m256i, slot);
                }
            }
            sink(&out[..len]);
            start += len;
            y += 1;
        }
    }
}

/// The sum (for L1) or the sum of squares (for L2) of exact counts, for a
/// cell's normalisation: `(sum, sum of squares)`, the unused one 0.
fn count_sums(norm: HistNorm, counts: impl Iterator<Item = u64>) -> (u64, f64) {
    match norm {
        HistNorm::None => (0, 0.0),
        HistNorm::L1 => (counts.sum(), 0.0),
        HistNorm::L2 => (0, counts.map(|c| (c as f64) * (c as f64)).sum()),
    }
}

/// OpenCV HSV saturation and value of one pixel (for the near-white rule).
#[inline(always)]
fn sv_pixel(t: &HsvTables, r: i32, g: i32, b: i32) -> (i32, i32) {
    let v = r.max(g).max(b);
    let diff = v - r.min(g).min(b);
    ((diff * t.sdiv[v as usize] + (1 << (HSV_SHIFT - 1))) >> HSV_SHIFT, v)
}

/// The grids' common refinement of one image: the segment of each row and
/// column, the numbers of segments, and the slots (cells times bins, plus
/// the dump slot).
struct Layout {
    row_seg: Vec<u16>,
    col_seg: Vec<u16>,
    n_rs: usize,
    n_cs: usize,
    slots: usize,
}

struct RefinedCounts {
    counts: Vec<u32>,
    row_seg: Vec<u16>,
    col_seg: Vec<u16>,
    n_cs: usize,
}

impl Extractor for ColorHistogram {
    fn info(&self) -> DescriptorInfo {
        DescriptorInfo { width: self.width(), dtype: DescriptorDtype::Float32, kind: DescriptorKind::Global, needs: ColorNeeds::RGB }
    }
    /// One row: the histogram, at a keypoint in the image centre
    /// (`x = (w - 1) / 2`, `y = (h - 1) / 2`, `size = max(w, h)`).
    fn extract(&self, image: &DecodedImage) -> Result<Features> {
        let rgb = image.require_rgb()?;
        let data = self.histogram(rgb, None)?;
        let kp = KeyPoint {
            x: (rgb.width as f32 - 1.0) * 0.5,
            y: (rgb.height as f32 - 1.0) * 0.5,
            size: rgb.width.max(rgb.height) as f32,
            angle: 0.0,
            response: 0.0,
            octave: 0,
            class_id: -1,
        };
        Ok((vec![kp], Descriptors::F32 { data, width: self.width() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_known_values() {
        // cv2.cvtColor(np.uint8([[[r, g, b]]]), cv2.COLOR_RGB2HSV) on these pixels.
        let mut out = [0u8; 3];
        for (rgb, want) in [
            ([255u8, 0, 0], [0u8, 255, 255]),
            ([0, 255, 0], [60, 255, 255]),
            ([0, 0, 255], [120, 255, 255]),
            ([255, 255, 255], [0, 0, 255]),
            ([0, 0, 0], [0, 0, 0]),
            ([128, 64, 32], [10, 191, 128]),
            ([10, 200, 30], [63, 242, 200]),
        ] {
            rgb_to_hsv(&rgb, &mut out);
            assert_eq!(out, want, "{rgb:?}");
        }
    }

    #[test]
    fn division_reproduces_the_tables() {
        assert!(hsv_tables().div_exact);
    }

    #[test]
    fn bin_tables_follow_calc_hist() {
        let h = ColorHistogram::new(ColorHistogramParams { mask: MaskRule::None, ..Default::default() }).unwrap();
        // 18 hue bins over [0, 180): 10 values per bin; strides 16, 4, 1.
        assert_eq!(h.tables[0][9], 0);
        assert_eq!(h.tables[0][10], 16);
        assert_eq!(h.tables[0][179], 17 * 16);
        assert_eq!(h.tables[1][63], 0);
        assert_eq!(h.tables[1][64], 4);
        assert_eq!(h.tables[2][255], 3);
        assert_eq!(h.width(), 288);
    }

    #[test]
    fn counts_grid_and_normalisation() {
        // 4 x 2 image: left half red, right half white.
        let (w, hgt) = (4, 2);
        let mut data = Vec::new();
        for _ in 0..hgt {
            for x in 0..w {
                data.extend_from_slice(if x < 2 { &[255, 0, 0] } else { &[255, 255, 255] });
            }
        }
        let img = RgbView::new(&data, w, hgt);
        let p = ColorHistogramParams { mask: MaskRule::None, normalize: HistNorm::None, sqrt: false, grid: vec![1, 2], ..Default::default() };
        let hist = ColorHistogram::new(p).unwrap().histogram(img, None).unwrap();
        assert_eq!(hist.len(), 288 * 5);
        // Red: H 0, S 255, V 255 -> bin (0, 3, 3) = 15; white: (0, 0, 3) = 3.
        assert_eq!(hist[15], 4.0);
        assert_eq!(hist[3], 4.0);
        assert_eq!(hist[..288].iter().sum::<f32>(), 8.0);
        // 2 x 2 cells: top-left red only, top-right white only.
        assert_eq!(hist[288 + 15], 2.0);
        assert_eq!(hist[288 + 3], 0.0);
        assert_eq!(hist[2 * 288 + 3], 2.0);
        // The white rule leaves the right half out; L1 + sqrt gives one 1.
        let p = ColorHistogramParams::default();
        let hist = ColorHistogram::new(p).unwrap().histogram(img, None).unwrap();
        assert_eq!(hist[15], 1.0);
        assert_eq!(hist.iter().sum::<f32>(), 1.0);
        // An all-white image: every pixel masked, zeros and no NaN.
        let white = vec![255u8; 3 * 6];
        let hist = ColorHistogram::new(ColorHistogramParams::default()).unwrap().histogram(RgbView::new(&white, 3, 2), None).unwrap();
        assert!(hist.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn simd_and_portable_bins_agree() {
        // every colour channel value appears; width 257 ends on an
        // overlapping block, width 13 is below one block
        for (w, h) in [(257, 23), (13, 5)] {
            let mut state = 12345u32;
            let data: Vec<u8> = (0..3 * w * h)
                .map(|i| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    if i % 7 == 0 { 255 } else { (state >> 16) as u8 }
                })
                .collect();
            let mask: Vec<u8> = (0..w * h).map(|i| (i % 5 != 0) as u8).collect();
            for space in [ColorSpace::Hsv, ColorSpace::Rgb, ColorSpace::Opponent] {
                for bins in [[18, 4, 4], [7, 5, 3], [180, 1, 1], [1, 1, 1]] {
                    let bins = if space == ColorSpace::Opponent { [bins[0].min(511), bins[1], bins[2]] } else { bins };
                    for rule in [MaskRule::None, MaskRule::WHITE] {
                        let p = ColorHistogramParams { space, bins, mask: rule, grid: vec![1, 2], normalize: HistNorm::None, sqrt: false };
                        let hist = ColorHistogram::new(p).unwrap();
                        assert_eq!(hist.kernel().scales.is_some(), space != ColorSpace::Opponent, "{space:?} {bins:?}");
                        let img = RgbView::new(&data, w, h);
                        for m in [None, Some(&mask[..])] {
                            let a = hist.histogram(img, m).unwrap();
                            let b = crate::features::portable_only(|| hist.histogram(img, m).unwrap());
                            assert_eq!(a, b, "{space:?} {bins:?} {rule:?}");
                        }
                    }
                }
            }
        }
    }

    /// Every pixel's slot from the SIMD path (when the CPU has AVX2) and from the portable one.
    fn slots_both(hist: &ColorHistogram, img: RgbView<'_>, mask: Option<&[u8]>) -> (Vec<u32>, Vec<u32>) {
        let lay = hist.layout(img.width, img.height);
        let mut simd = Vec::with_capacity(img.width * img.height);
        hist.pixel_slots(img, mask, &lay, |s| simd.extend_from_slice(s));
        let mut portable = Vec::with_capacity(img.width * img.height);
        crate::features::portable_only(|| hist.pixel_slots(img, mask, &lay, |s| portable.extend_from_slice(s)));
        (simd, portable)
    }

    fn params(space: ColorSpace, bins: [usize; 3], mask: MaskRule, grid: Vec<usize>) -> ColorHistogramParams {
        ColorHistogramParams { space, bins, mask, grid, normalize: HistNorm::None, sqrt: false }
    }

    #[test]
    fn fold_holds_for_integer_bin_edges() {
        let fold = |bins| ColorHistogram::new(params(ColorSpace::Hsv, bins, MaskRule::None, vec![1])).unwrap().hsv_fold;
        assert!(fold([18, 4, 4]));
        assert!(fold([9, 8, 3]));
        assert!(fold([180, 256, 256]));
        // 180 / 16 and 256 / 3 are not integers
        assert!(!fold([16, 4, 4]));
        assert!(!fold([18, 3, 4]));
        let rgb = ColorHistogram::new(params(ColorSpace::Rgb, [8, 8, 8], MaskRule::None, vec![1])).unwrap();
        assert!(!rgb.hsv_fold);
    }

    #[test]
    fn simd_slots_equal_portable_for_every_colour() {
        // all 2^24 colours, one 256 x 256 image per red level (x: blue, y:
        // green), through every AVX2 loop variant: HSV with the S and H bins
        // folded (18 x 4 x 4, 180 x 256 x 256) and not (16 x 5 x 3), RGB,
        // with and without the near-white rule, one cell and 1 + 2 x 2 cells
        let cases = [
            params(ColorSpace::Hsv, [18, 4, 4], MaskRule::None, vec![1]),
            params(ColorSpace::Hsv, [18, 4, 4], MaskRule::WHITE, vec![1]),
            params(ColorSpace::Hsv, [180, 256, 256], MaskRule::None, vec![1]),
            params(ColorSpace::Hsv, [16, 5, 3], MaskRule::WHITE, vec![1, 2]),
            params(ColorSpace::Rgb, [7, 5, 3], MaskRule::WHITE, vec![1]),
        ];
        let hists: Vec<ColorHistogram> = cases.into_iter().map(|p| ColorHistogram::new(p).unwrap()).collect();
        assert_eq!(hists.iter().map(|h| h.hsv_fold).collect::<Vec<_>>(), [true, true, true, false, false]);
        let mut data = vec![0u8; 3 * 256 * 256];
        for r in 0..256 {
            for (i, px) in data.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&[r as u8, (i / 256) as u8, (i % 256) as u8]);
            }
            let img = RgbView::new(&data, 256, 256);
            for hist in &hists {
                let (simd, portable) = slots_both(hist, img, None);
                assert!(simd == portable, "red {r}, {:?}", hist.params());
            }
        }
    }

    #[test]
    fn simd_slots_equal_portable_on_edge_cases() {
        // grey pixels (diff 0), black (V 0), white and near-white, hue wrap
        // (R max, G < B), random; rows shorter than a block (portable only),
        // exactly one block, blocks plus a tail, and images around the
        // 2048-pixel runs of the one-cell stream
        let mut state = 0x2545_f491u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let sizes = [(1, 1), (15, 3), (16, 1), (17, 2), (31, 5), (100, 100), (2063, 1), (2064, 1), (2080, 1), (47, 45), (16, 200)];
        let cases = [
            params(ColorSpace::Hsv, [18, 4, 4], MaskRule::None, vec![1]),
            params(ColorSpace::Hsv, [18, 4, 4], MaskRule::WHITE, vec![1, 2]),
            params(ColorSpace::Hsv, [16, 5, 3], MaskRule::None, vec![3]),
            params(ColorSpace::Hsv, [16, 5, 3], MaskRule::WHITE, vec![1]),
            params(ColorSpace::Rgb, [4, 4, 4], MaskRule::None, vec![1]),
            params(ColorSpace::Rgb, [7, 5, 3], MaskRule::NearWhite { v_above: 100, s_below: 200 }, vec![2]),
            params(ColorSpace::Opponent, [7, 5, 3], MaskRule::WHITE, vec![1]),
        ];
        for (w, h) in sizes {
            let data: Vec<u8> = (0..w * h)
                .flat_map(|_| {
                    let (x, g) = (next(), (next() >> 8) as u8);
                    match x % 8 {
                        0 => [g, g, g],
                        1 => [0, 0, 0],
                        2 => [255, 255, 255],
                        3 => [255, 255 - (x >> 28) as u8, 250],
                        4 => [255, (x >> 8) as u8 / 2, 128 + (x >> 16) as u8 / 2],
                        _ => [(x >> 8) as u8, (x >> 16) as u8, (x >> 24) as u8],
                    }
                })
                .collect();
            let mask: Vec<u8> = (0..w * h).map(|_| (next() % 3 != 0) as u8).collect();
            let img = RgbView::new(&data, w, h);
            for p in &cases {
                let hist = ColorHistogram::new(p.clone()).unwrap();
                for m in [None, Some(&mask[..])] {
                    let (simd, portable) = slots_both(&hist, img, m);
                    assert_eq!(simd.len(), w * h);
                    assert!(simd == portable, "{w} x {h}, mask {}, {p:?}", m.is_some());
                }
            }
        }
        // an all-white image under the rule: every pixel in the dump slot
        let white = vec![255u8; 3 * 40 * 3];
        let hist = ColorHistogram::new(params(ColorSpace::Hsv, [18, 4, 4], MaskRule::WHITE, vec![1])).unwrap();
        let (simd, portable) = slots_both(&hist, RgbView::new(&white, 40, 3), None);
        assert!(simd.iter().all(|&s| s == 288) && simd == portable);
    }

    #[test]
    fn refinement_nests_grids() {
        let (seg, n) = refinement(10, &[1, 2, 3]);
        // cuts 0, 3, 5, 6, 10
        assert_eq!(n, 4);
        assert_eq!(seg, vec![0, 0, 0, 1, 1, 2, 3, 3, 3, 3]);
        let (seg, n) = refinement(1, &[4]);
        assert_eq!((seg, n), (vec![0], 1));
    }

    #[test]
    fn bad_parameters_name_themselves() {
        let e = ColorHistogram::new(ColorHistogramParams { bins: [0, 4, 4], ..Default::default() }).unwrap_err();
        assert!(e.to_string().starts_with("bins"), "{e}");
        let e = ColorHistogram::new(ColorHistogramParams { bins: [181, 4, 4], ..Default::default() }).unwrap_err();
        assert!(e.to_string().starts_with("bins"), "{e}");
        let e = ColorHistogram::new(ColorHistogramParams { grid: vec![], ..Default::default() }).unwrap_err();
        assert!(e.to_string().starts_with("grid"), "{e}");
        assert!(ColorSpace::parse("lab").unwrap_err().to_string().starts_with("space"));
        assert!(MaskRule::parse("black").is_err());
        assert!(HistNorm::parse("l3").is_err());
    }
}
