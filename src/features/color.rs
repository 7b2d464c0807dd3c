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
        Ok(ColorHistogram { params, tables, n_bins, scales })
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

    /// Counts per (row segment, column segment, bin) of the grids' common refinement.
    ///
    /// Each row is done in two passes: the joint bin of every pixel (offset
    /// by its cell, or a dump slot when the mask leaves it out) into a
    /// buffer, branch-free (AVX2, 16 pixels a step, when the CPU has it),
    /// then the counts, in four interleaved copies so that runs of one
    /// colour do not serialise on one counter.
    fn refined_counts(&self, image: RgbView<'_>, mask: Option<&[u8]>) -> RefinedCounts {
        let (w, h) = (image.width, image.height);
        let (row_seg, n_rs) = refinement(h, &self.params.grid);
        let (col_seg, n_cs) = refinement(w, &self.params.grid);
        let nb = self.n_bins;
        let slots = n_rs * n_cs * nb + 1; // + the dump slot
        let dump = (slots - 1) as u32;
        let mut counts = vec![0u32; 4 * slots];
        let col_off: Vec<u32> = col_seg.iter().map(|&c| (c as usize * nb) as u32).collect();
        let mut idx = vec![0u32; w];
        let k = self.kernel();
        for y in 0..h {
            let row = &image.data[3 * y * w..3 * (y + 1) * w];
            let mrow = mask.map(|m| &m[y * w..(y + 1) * w]);
            let base = (row_seg[y] as usize * n_cs * nb) as u32;
            k.row_bins(row, mrow, &col_off, base, dump, &mut idx);
            let (c0, rest) = counts.split_at_mut(slots);
            let (c1, rest) = rest.split_at_mut(slots);
            let (c2, c3) = rest.split_at_mut(slots);
            let mut quads = idx.chunks_exact(4);
            for q in &mut quads {
                c0[q[0] as usize] += 1;
                c1[q[1] as usize] += 1;
                c2[q[2] as usize] += 1;
                c3[q[3] as usize] += 1;
            }
            for &i in quads.remainder() {
                c0[i as usize] += 1;
            }
        }
        let (first, rest) = counts.split_at_mut(slots);
        for c in rest.chunks_exact(slots) {
            for (a, b) in first.iter_mut().zip(c) {
                *a += b;
            }
        }
        counts.truncate(slots - 1);
        RefinedCounts { counts, row_seg, col_seg, n_cs }
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
                    cell.iter_mut().for_each(|v| *v = 0);
                    if r0 < r1 && c0 < c1 {
                        let (rs0, rs1) = (rc.row_seg[r0] as usize, rc.row_seg[r1 - 1] as usize);
                        let (cs0, cs1) = (rc.col_seg[c0] as usize, rc.col_seg[c1 - 1] as usize);
                        for rs in rs0..=rs1 {
                            for cs in cs0..=cs1 {
                                let src = &rc.counts[(rs * rc.n_cs + cs) * nb..(rs * rc.n_cs + cs + 1) * nb];
                                for (a, &b) in cell.iter_mut().zip(src) {
                                    *a += b as u64;
                                }
                            }
                        }
                    }
                    let start = out.len();
                    out.extend(cell.iter().map(|&c| c as f32));
                    let vals = &mut out[start..];
                    let scale = match self.params.normalize {
                        HistNorm::None => 1.0,
                        HistNorm::L1 => {
                            let total: u64 = cell.iter().sum();
                            if total == 0 { 0.0 } else { (1.0 / total as f64) as f32 }
                        }
                        HistNorm::L2 => {
                            let ss: f64 = cell.iter().map(|&c| (c as f64) * (c as f64)).sum();
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
}

impl BinKernel<'_> {
    /// `out[x]` = the slot of pixel `x` of an RGB row: `base + col_off[x] +`
    /// its joint bin, or `dump` when the mask (array or rule) leaves it out.
    fn row_bins(&self, row: &[u8], mask: Option<&[u8]>, col_off: &[u32], base: u32, dump: u32, out: &mut [u32]) {
        let n = out.len();
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(scales) = self.scales {
                if crate::features::use_avx2() {
                    // SAFETY: the CPU supports AVX2 and SSE4.1 (checked by use_avx2:
                    // every AVX2 CPU has SSE4.1); lengths are checked inside.
                    done = unsafe { self.row_bins_avx2(row, mask, col_off, base, dump, out, scales) };
                }
            }
        }
        let t = hsv_tables();
        for x in done..n {
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
            out[x] = if keep { base + col_off[x] + bin } else { dump };
        }
    }

    /// [`Self::row_bins`] for the pixels of the row, 16 at a time, in
    /// AVX2 (the same integer operations; bins by the exact f32 form).
    /// Returns the number of pixels done: all of them when the row has 16
    /// or more, none otherwise.
    ///
    /// # Safety
    /// AVX2 and SSE4.1 must be available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,sse4.1,ssse3")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_bins_avx2(
        &self,
        row: &[u8],
        mask: Option<&[u8]>,
        col_off: &[u32],
        base: u32,
        dump: u32,
        out: &mut [u32],
        scales: [f32; 3],
    ) -> usize {
        use std::arch::x86_64::*;
        let n = out.len().min(row.len() / 3).min(col_off.len());
        let t = hsv_tables();
        // byte shuffles gathering channel ch of 16 pixels from 48 bytes
        let mut masks = [[[0x80u8; 16]; 3]; 3];
        for (ch, m) in masks.iter_mut().enumerate() {
            for j in 0..16 {
                let s = 3 * j + ch;
                m[s / 16][j] = (s % 16) as u8;
            }
        }
        let ld = |m: &[u8; 16]| _mm_loadu_si128(m.as_ptr() as *const __m128i);
        let mk = [
            [ld(&masks[0][0]), ld(&masks[0][1]), ld(&masks[0][2])],
            [ld(&masks[1][0]), ld(&masks[1][1]), ld(&masks[1][2])],
            [ld(&masks[2][0]), ld(&masks[2][1]), ld(&masks[2][2])],
        ];
        let half = _mm256_set1_epi32(1 << (HSV_SHIFT - 1));
        let zero = _mm256_setzero_si256();
        let (lo0, lo1, lo2) = (_mm256_set1_epi32(self.lo[0]), _mm256_set1_epi32(self.lo[1]), _mm256_set1_epi32(self.lo[2]));
        let (sc0, sc1, sc2) = (_mm256_set1_ps(scales[0]), _mm256_set1_ps(scales[1]), _mm256_set1_ps(scales[2]));
        let (st0, st1) = (_mm256_set1_ps(self.strides[0]), _mm256_set1_ps(self.strides[1]));
        let basev = _mm256_set1_epi32(base as i32);
        let dumpv = _mm256_set1_epi32(dump as i32);
        let h180 = _mm256_set1_epi32(180);
        let (rule_v, rule_s) = match self.rule {
            MaskRule::NearWhite { v_above, s_below } => (Some(_mm256_set1_epi32(v_above as i32)), _mm256_set1_epi32(s_below as i32)),
            MaskRule::None => (None, zero),
        };
        let sdiv = t.sdiv.as_ptr();
        let hdiv = t.hdiv.as_ptr();
        // cvtps rounds half to even (the default MXCSR mode), as the tables
        let (sdiv_num, hdiv_num, one) = (_mm256_set1_ps(SDIV_NUM), _mm256_set1_ps(HDIV_NUM), _mm256_set1_epi32(1));
        // Blocks of 16 pixels; the last block is moved back to end at the
        // row's end (overlapping the one before, whose slots it rewrites
        // with the same values) so that no pixel takes the scalar path.
        if n < 16 {
            return 0;
        }
        let mut next = 0;
        while next < n {
            let x = next.min(n - 16);
            next = x + 16;
            // SAFETY: x + 16 <= n, so bytes 3x..3x + 48 of the row, 16 mask
            // bytes, 16 col_off and 16 out entries are in bounds.
            let p = row.as_ptr().add(3 * x);
            let (a, b, c) = (
                _mm_loadu_si128(p as *const __m128i),
                _mm_loadu_si128(p.add(16) as *const __m128i),
                _mm_loadu_si128(p.add(32) as *const __m128i),
            );
            let chan = |m: &[__m128i; 3]| {
                _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(a, m[0]), _mm_shuffle_epi8(b, m[1])), _mm_shuffle_epi8(c, m[2]))
            };
            let (r16, g16, b16) = (chan(&mk[0]), chan(&mk[1]), chan(&mk[2]));
            let m16 = mask.map(|m| _mm_loadu_si128(m.as_ptr().add(x) as *const __m128i));
            for part in 0..2 {
                let pick = |v: __m128i| if part == 0 { v } else { _mm_srli_si128(v, 8) };
                let r = _mm256_cvtepu8_epi32(pick(r16));
                let g = _mm256_cvtepu8_epi32(pick(g16));
                let bl = _mm256_cvtepu8_epi32(pick(b16));
                let v = _mm256_max_epi32(r, _mm256_max_epi32(g, bl));
                let vmin = _mm256_min_epi32(r, _mm256_min_epi32(g, bl));
                let diff = _mm256_sub_epi32(v, vmin);
                let need_s = self.space == ColorSpace::Hsv || rule_v.is_some();
                let s = if need_s {
                    let sd = if t.div_exact {
                        _mm256_cvtps_epi32(_mm256_div_ps(sdiv_num, _mm256_cvtepi32_ps(_mm256_max_epi32(v, one))))
                    } else {
                        _mm256_i32gather_epi32::<4>(sdiv, v)
                    };
                    _mm256_srai_epi32::<12>(_mm256_add_epi32(_mm256_mullo_epi32(diff, sd), half))
                } else {
                    zero
                };
                let (c0, c1, c2) = match self.space {
                    ColorSpace::Hsv => {
                        let vr = _mm256_cmpeq_epi32(v, r);
                        let vg = _mm256_andnot_si256(vr, _mm256_cmpeq_epi32(v, g));
                        let d2 = _mm256_add_epi32(diff, diff);
                        let h_r = _mm256_sub_epi32(g, bl);
                        let h_g = _mm256_add_epi32(_mm256_sub_epi32(bl, r), d2);
                        let h_b = _mm256_add_epi32(_mm256_sub_epi32(r, g), _mm256_add_epi32(d2, d2));
                        let hh = _mm256_blendv_epi8(_mm256_blendv_epi8(h_b, h_g, vg), h_r, vr);
                        let hd = if t.div_exact {
                            _mm256_cvtps_epi32(_mm256_div_ps(hdiv_num, _mm256_cvtepi32_ps(_mm256_max_epi32(diff, one))))
                        } else {
                            _mm256_i32gather_epi32::<4>(hdiv, diff)
                        };
                        let hh = _mm256_srai_epi32::<12>(_mm256_add_epi32(_mm256_mullo_epi32(hh, hd), half));
                        let hh = _mm256_add_epi32(hh, _mm256_and_si256(_mm256_cmpgt_epi32(zero, hh), h180));
                        (hh, s, v)
                    }
                    ColorSpace::Rgb => (r, g, bl),
                    ColorSpace::Opponent => (
                        _mm256_sub_epi32(r, g),
                        _mm256_sub_epi32(_mm256_add_epi32(r, g), _mm256_add_epi32(bl, bl)),
                        _mm256_add_epi32(_mm256_add_epi32(r, g), bl),
                    ),
                };
                let bin_of = |c: __m256i, lo: __m256i, sc: __m256| {
                    _mm256_floor_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, lo)), sc))
                };
                // joint bin in f32 (exact small integers), then to int
                let jb = _mm256_add_ps(
                    _mm256_add_ps(_mm256_mul_ps(bin_of(c0, lo0, sc0), st0), _mm256_mul_ps(bin_of(c1, lo1, sc1), st1)),
                    bin_of(c2, lo2, sc2),
                );
                let off = _mm256_loadu_si256(col_off.as_ptr().add(x + 8 * part) as *const __m256i);
                let slot = _mm256_add_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(jb), off), basev);
                let mut drop = zero;
                if let Some(va) = rule_v {
                    drop = _mm256_and_si256(_mm256_cmpgt_epi32(v, va), _mm256_cmpgt_epi32(rule_s, s));
                }
                if let Some(m) = m16 {
                    let mm = _mm256_cvtepu8_epi32(pick(m));
                    drop = _mm256_or_si256(drop, _mm256_cmpeq_epi32(mm, zero));
                }
                let slot = _mm256_blendv_epi8(slot, dumpv, drop);
                _mm256_storeu_si256(out.as_mut_ptr().add(x + 8 * part) as *mut __m256i, slot);
            }
        }
        n
    }
}

/// OpenCV HSV saturation and value of one pixel (for the near-white rule).
#[inline(always)]
fn sv_pixel(t: &HsvTables, r: i32, g: i32, b: i32) -> (i32, i32) {
    let v = r.max(g).max(b);
    let diff = v - r.min(g).min(b);
    ((diff * t.sdiv[v as usize] + (1 << (HSV_SHIFT - 1))) >> HSV_SHIFT, v)
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
