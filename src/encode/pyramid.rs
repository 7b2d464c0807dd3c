//! Spatial pyramids, and bag-of-words histograms over them.
//!
//! A pyramid is a list of grids `g_0, g_1, ...` (cells per side; `(1, 2, 4)`
//! is Lazebnik et al.'s three levels). A keypoint at `(x, y)` (pixels, origin
//! at the centre of the top-left pixel, so the image spans
//! `[-0.5, width - 0.5) x [-0.5, height - 0.5)`) of an image of
//! `width x height` lies, at level `l`, in column and row
//!
//! ```text
//! cx = floor(((x + 0.5) * g_l) / width),   cy = floor(((y + 0.5) * g_l) / height),
//! ```
//!
//! evaluated in `f64` in that order and clamped to `[0, g_l - 1]`: cells are
//! half-open, so a point on a boundary goes to the cell on its right (below),
//! and points outside the image go to the nearest border cell. The cell's
//! index within the level is `cy * g_l + cx` (row-major), and levels are
//! concatenated in the order given: the encoding of an image is
//! `[level 0 cells..., level 1 cells..., ...]`, each cell an encoding of the
//! descriptors inside it.
//!
//! Level weights: uniform (every cell weight 1, as VLFeat's
//! `phow_caltech101` and `apps/recognition` concatenate them) or Lazebnik et
//! al.'s pyramid match weights for grids `2^l` (`L` the finest level):
//! `1 / 2^L` for level 0 and `1 / 2^(L - l + 1)` for level `l >= 1`.
//!
//! # References
//! - S. Lazebnik, C. Schmid, J. Ponce, "Beyond bags of features: spatial
//!   pyramid matching for recognizing natural scene categories", CVPR 2006.

use rayon::prelude::*;

use super::assign::{assign, Assignment, Assignments};
use super::{check_batch, image_chunks, zeroed_output, Frames};
use crate::error::{BovwError, Result};
use crate::histogram::{check_offsets, check_words, descriptor_histograms, ASSIGN_CHUNK};

/// How pyramid levels are weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LevelWeights {
    /// Every cell weight 1.
    Uniform,
    /// Lazebnik et al.: `1 / 2^L` at level 0, `1 / 2^(L - l + 1)` at level `l`.
    Lazebnik,
}

impl LevelWeights {
    /// Parse `"uniform"` / `"lazebnik"`.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `pyramid_weights`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "uniform" => Ok(LevelWeights::Uniform),
            "lazebnik" => Ok(LevelWeights::Lazebnik),
            other => Err(BovwError::param("pyramid_weights", format!("expected 'uniform' or 'lazebnik', got {other:?}"))),
        }
    }
}

/// A spatial pyramid: grids, their cell offsets and weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Pyramid {
    /// Cells per side of each level.
    pub grids: Vec<usize>,
    /// Weight of each level's cells.
    pub weights: Vec<f64>,
    /// Index of each level's first cell.
    pub first_cell: Vec<usize>,
    /// Total number of cells.
    pub n_cells: usize,
}

impl Pyramid {
    /// A pyramid of the given grids.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `spatial_pyramid` when it is
    /// empty or has a grid of 0 (or above 1024) cells per side, or, with
    /// Lazebnik weights, a grid that is not a power of two or appears twice.
    pub fn new(grids: &[usize], weights: LevelWeights) -> Result<Self> {
        if grids.is_empty() {
            return Err(BovwError::param("spatial_pyramid", "needs at least one grid, e.g. (1, 2, 4)"));
        }
        if let Some(g) = grids.iter().find(|&&g| g == 0 || g > 1024) {
            return Err(BovwError::param("spatial_pyramid", format!("grid sizes must be in [1, 1024], got {g}")));
        }
        let w = match weights {
            LevelWeights::Uniform => vec![1.0; grids.len()],
            LevelWeights::Lazebnik => {
                if let Some(g) = grids.iter().find(|g| !g.is_power_of_two()) {
                    return Err(BovwError::param(
                        "spatial_pyramid",
                        format!("Lazebnik weights need grids 1, 2, 4, ... (powers of two), got {g}"),
                    ));
                }
                let mut sorted = grids.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != grids.len() {
                    return Err(BovwError::param("spatial_pyramid", "Lazebnik weights need distinct grids"));
                }
                let big_l = grids.iter().map(|g| g.trailing_zeros()).max().unwrap_or(0) as i32;
                grids
                    .iter()
                    .map(|g| {
                        let l = g.trailing_zeros() as i32;
                        if l == 0 {
                            0.5f64.powi(big_l)
                        } else {
                            0.5f64.powi(big_l - l + 1)
                        }
                    })
                    .collect()
            }
        };
        let mut first_cell = Vec::with_capacity(grids.len());
        let mut n = 0;
        for g in grids {
            first_cell.push(n);
            n += g * g;
        }
        Ok(Pyramid { grids: grids.to_vec(), weights: w, first_cell, n_cells: n })
    }

    /// The cell of a point at each level (global cell indices), into `out`.
    ///
    /// For a grid `g = 2^l`, `((x + 0.5) * g) / width` equals
    /// `g * ((x + 0.5) / width)` exactly (scaling by a power of two commutes
    /// with rounding), so one division per coordinate serves every such
    /// level.
    #[inline]
    pub fn cells(&self, x: f32, y: f32, width: f64, height: f64, out: &mut [usize]) {
        let (ax, ay) = (x as f64 + 0.5, y as f64 + 0.5);
        let (qx, qy) = (ax / width, ay / height);
        for (l, &g) in self.grids.iter().enumerate() {
            let gf = g as f64;
            let (vx, vy) = if g.is_power_of_two() { (qx * gf, qy * gf) } else { (ax * gf / width, ay * gf / height) };
            out[l] = self.first_cell[l] + cell_index(vy, g) * g + cell_index(vx, g);
        }
    }

    /// The weight of each cell, `n_cells`.
    pub fn cell_weights(&self) -> Vec<f64> {
        let mut w = Vec::with_capacity(self.n_cells);
        for (l, g) in self.grids.iter().enumerate() {
            w.extend(std::iter::repeat(self.weights[l]).take(g * g));
        }
        w
    }
}

/// `clamp(floor(((c + 0.5) * g) / extent), 0, g - 1)`.
#[inline]
pub fn cell_1d(c: f64, extent: f64, g: usize) -> usize {
    cell_index((c + 0.5) * g as f64 / extent, g)
}

/// `clamp(floor(v), 0, g - 1)` without a call to `floor` (a libm call on
/// baseline x86-64): `floor(v) >= g - 1` iff `v >= g - 1`, `floor(v) <= 0`
/// iff `v < 1`, and truncation is `floor` in between (NaN gives 0, as
/// `floor(NaN) as usize` does).
#[inline(always)]
fn cell_index(v: f64, g: usize) -> usize {
    if v >= (g - 1) as f64 {
        g - 1
    } else if v < 1.0 {
        0
    } else {
        v as usize
    }
}

/// The cells (one per level) of every descriptor row of image `i`, `n_rows x levels`.
pub(crate) fn image_cells(p: &Pyramid, frames: &Frames<'_>, i: usize, rows: std::ops::Range<usize>) -> Vec<usize> {
    let levels = p.grids.len();
    let (w, h) = frames.size(i);
    let mut out = vec![0usize; rows.len() * levels];
    for (e, r) in rows.enumerate() {
        let (x, y) = frames.xy(r);
        p.cells(x, y, w, h, &mut out[e * levels..(e + 1) * levels]);
    }
    out
}

/// Spatial layout of an encoding: no pyramid (one cell) or a pyramid with frames.
#[derive(Clone, Copy, Debug)]
pub enum Layout<'a> {
    /// The whole image is one cell.
    Whole,
    /// A spatial pyramid over keypoint positions.
    Pyramid(&'a Pyramid, Frames<'a>),
}

impl Layout<'_> {
    /// Number of cells.
    pub fn n_cells(&self) -> usize {
        match self {
            Layout::Whole => 1,
            Layout::Pyramid(p, _) => p.n_cells,
        }
    }

    /// Cells per descriptor (levels).
    pub fn levels(&self) -> usize {
        match self {
            Layout::Whole => 1,
            Layout::Pyramid(p, _) => p.grids.len(),
        }
    }

    /// Weight of each cell.
    pub fn cell_weights(&self) -> Vec<f64> {
        match self {
            Layout::Whole => vec![1.0],
            Layout::Pyramid(p, _) => p.cell_weights(),
        }
    }

    /// The cells of image `i`'s rows (`n_rows x levels`).
    pub(crate) fn cells(&self, i: usize, rows: std::ops::Range<usize>) -> Vec<usize> {
        match self {
            Layout::Whole => vec![0; rows.len()],
            Layout::Pyramid(p, f) => image_cells(p, f, i, rows),
        }
    }

    /// Check the frames against the batch.
    ///
    /// # Errors
    /// As [`Frames::check`].
    pub fn check(&self, offsets: &[usize]) -> Result<()> {
        match self {
            Layout::Whole => Ok(()),
            Layout::Pyramid(_, f) => f.check(offsets),
        }
    }
}

/// Run `f(image range, assignments of their rows)` over chunks of whole
/// images of about [`ASSIGN_CHUNK`] descriptors, assigning each chunk with
/// [`assign`] (memory stays bounded). `f` gets the first row of the chunk.
pub(crate) fn for_assigned_chunks(
    values: &[f32],
    offsets: &[usize],
    d: usize,
    vocabulary: &[f32],
    how: &Assignment,
    mut f: impl FnMut(usize, usize, usize, &Assignments),
) -> Result<()> {
    for (start, end) in image_chunks(offsets, ASSIGN_CHUNK) {
        let (r0, r1) = (offsets[start], offsets[end]);
        if r1 == r0 {
            continue;
        }
        let a = assign(&values[r0 * d..r1 * d], vocabulary, d, how)?;
        f(start, end, r0, &a);
    }
    Ok(())
}

/// Bag-of-words histograms, hard or soft, over a spatial layout:
/// `n_images x (n_cells * n_words)` `f32`, cell-major (cell `c` holds words
/// `c * n_words .. (c + 1) * n_words`), each cell multiplied by its level
/// weight. With hard assignment and no pyramid this is
/// [`descriptor_histograms`] (the same counts).
///
/// # Errors
/// As [`check_batch`] and [`Frames::check`]; [`BovwError::Shape`] when the
/// vocabulary is empty or of another width.
pub fn bow_histograms(
    values: &[f32],
    offsets: &[usize],
    d: usize,
    vocabulary: &[f32],
    how: &Assignment,
    layout: &Layout<'_>,
) -> Result<Vec<f32>> {
    if d == 0 || vocabulary.is_empty() || vocabulary.len() % d != 0 {
        return Err(BovwError::Shape {
            what: "vocabulary".into(),
            expected: format!("(n_words >= 1, {d})"),
            got: format!("{} values", vocabulary.len()),
        });
    }
    if vocabulary.iter().any(|v| !v.is_finite()) {
        return Err(BovwError::input("vocabulary contains NaN or infinity"));
    }
    let n_images = check_batch(values, offsets, d, "vocabulary")?;
    layout.check(offsets)?;
    if matches!((how, layout), (Assignment::Hard, Layout::Whole)) {
        return descriptor_histograms(values, offsets, d, vocabulary);
    }
    let k = vocabulary.len() / d;
    let width = layout.n_cells() * k;
    let levels = layout.levels();
    let cw = layout.cell_weights();
    if width == 0 {
        return Ok(Vec::new());
    }
    let mut out = zeroed_output(n_images * width, 0f32);
    for_assigned_chunks(values, offsets, d, vocabulary, how, |start, end, r0, a| {
        let m = a.m;
        // `acc` is all zeros between images; `touched` lists its entries
        // that became non-zero (weights are > 0), in first-touch order; only
        // those are written to the zero-filled output.
        out[start * width..end * width].par_chunks_mut(width).enumerate().for_each_init(
            || (vec![0f64; width], Vec::<usize>::new()),
            |(acc, touched), (e, row)| {
                let i = start + e;
                let (o0, o1) = (offsets[i], offsets[i + 1]);
                if o1 == o0 {
                    return;
                }
                let cells = layout.cells(i, o0..o1);
                for r in o0..o1 {
                    let local = r - r0;
                    for ent in 0..m {
                        let (w, wt) = (a.words[local * m + ent] as usize, a.weights[local * m + ent] as f64);
                        if wt == 0.0 {
                            continue;
                        }
                        for c in &cells[(r - o0) * levels..(r - o0 + 1) * levels] {
                            let slot = &mut acc[c * k + w];
                            if *slot == 0.0 {
                                touched.push(c * k + w);
                            }
                            *slot += wt;
                        }
                    }
                }
                for &t in touched.iter() {
                    row[t] = (acc[t] * cw[t / k]) as f32;
                    acc[t] = 0.0;
                }
                touched.clear();
            },
        );
    })?;
    Ok(out)
}

/// Spatial pyramid histograms from visual-word ids (e.g. words of binary
/// descriptors assigned elsewhere): `n_images x (n_cells * n_words)` `f32`,
/// laid out as [`bow_histograms`]'s.
///
/// # Errors
/// As [`check_words`], [`check_offsets`] and [`Frames::check`].
pub fn pyramid_counts_from_words(words: &[i64], offsets: &[usize], n_words: usize, pyramid: &Pyramid, frames: &Frames<'_>) -> Result<Vec<f32>> {
    check_offsets(offsets, words.len())?;
    check_words(words, n_words)?;
    frames.check(offsets)?;
    let n_images = offsets.len() - 1;
    let width = pyramid.n_cells * n_words;
    let levels = pyramid.grids.len();
    let cw = pyramid.cell_weights();
    if width == 0 {
        return Ok(vec![0f32; 0]);
    }
    // Counts go to a per-thread row (in cache) and only the non-zero
    // entries are written to the zero-filled output (see [`zeroed_output`]).
    let mut out = zeroed_output(n_images * width, 0f32);
    out.par_chunks_mut(width).enumerate().for_each_init(
        || (vec![0usize; levels], vec![0f32; width], Vec::<usize>::new()),
        |(cells, acc, touched), (i, row)| {
            let (w, h) = frames.size(i);
            for r in offsets[i]..offsets[i + 1] {
                let (x, y) = frames.xy(r);
                pyramid.cells(x, y, w, h, cells);
                let word = words[r] as usize;
                for &c in cells.iter() {
                    let slot = &mut acc[c * n_words + word];
                    if *slot == 0.0 {
                        touched.push(c * n_words + word);
                    }
                    *slot += 1.0;
                }
            }
            for &t in touched.iter() {
                let s = cw[t / n_words];
                row[t] = if s != 1.0 { (acc[t] as f64 * s) as f32 } else { acc[t] };
                acc[t] = 0.0;
            }
            touched.clear();
        },
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_boundaries() {
        // 100 px wide, 2 cells: the boundary at pixel edge 50 (x = 49.5) goes right.
        assert_eq!(cell_1d(49.4, 100.0, 2), 0);
        assert_eq!(cell_1d(49.5, 100.0, 2), 1);
        assert_eq!(cell_1d(-0.5, 100.0, 2), 0);
        assert_eq!(cell_1d(-3.0, 100.0, 2), 0);
        assert_eq!(cell_1d(99.5, 100.0, 4), 3);
        assert_eq!(cell_1d(1e9, 100.0, 4), 3);
        let p = Pyramid::new(&[1, 2, 4], LevelWeights::Lazebnik).unwrap();
        assert_eq!(p.n_cells, 21);
        assert_eq!(p.weights, vec![0.25, 0.25, 0.5]);
        let mut c = [0usize; 3];
        p.cells(80.0, 10.0, 100.0, 100.0, &mut c);
        assert_eq!(c, [0, 1 + 1, 5 + 3]);
        assert!(Pyramid::new(&[1, 3], LevelWeights::Lazebnik).is_err());
        assert!(Pyramid::new(&[], LevelWeights::Uniform).is_err());
    }

    #[test]
    fn cells_match_the_floor_formula() {
        // The one-division path for power-of-two grids and the floor-free
        // clamp against the formula as written, on cell boundaries (pixel
        // edges x = k - 0.5), just beside them, outside the image and at
        // odd widths.
        let grids = [1usize, 2, 3, 4, 5, 8, 16, 1024];
        let p = Pyramid::new(&grids, LevelWeights::Uniform).unwrap();
        let reference = |c: f32, extent: f64, g: usize| -> usize {
            let v = ((c as f64 + 0.5) * g as f64 / extent).floor();
            v.clamp(0.0, (g - 1) as f64) as usize
        };
        let mut out = vec![0usize; grids.len()];
        for w in [1i64, 2, 3, 7, 99, 100, 101, 348, 1000, 4097] {
            let wf = w as f64;
            let mut xs: Vec<f32> = vec![-1e30, -3.0, -0.5, -0.49, 0.0, f32::MAX, 1e30];
            for k in 0..=w {
                let e = k as f32 - 0.5;
                xs.extend([e, f32::from_bits(e.to_bits().wrapping_add(1)), f32::from_bits(e.to_bits().wrapping_sub(1)), e + 0.25]);
            }
            for &x in &xs {
                for &y in &[x, 0.3f32] {
                    p.cells(x, y, wf, wf, &mut out);
                    for (l, &g) in grids.iter().enumerate() {
                        let want = p.first_cell[l] + reference(y, wf, g) * g + reference(x, wf, g);
                        assert_eq!(out[l], want, "x {x} y {y} width {w} grid {g}");
                    }
                }
            }
        }
    }

    #[test]
    fn pyramid_counts_by_hand() {
        let vocab = [0.0f32, 10.0];
        let desc = [1.0f32, 9.0, 0.0, 11.0];
        let offsets = [0usize, 3, 3, 4];
        let xy = [10.0f32, 10.0, 90.0, 10.0, 90.0, 90.0, 5.0, 5.0];
        let sizes = [100i64, 100, 0, 0, 20, 20];
        let frames = Frames { xy: &xy, stride: 2, sizes: &sizes };
        let p = Pyramid::new(&[1, 2], LevelWeights::Uniform).unwrap();
        let h = bow_histograms(&desc, &offsets, 1, &vocab, &Assignment::Hard, &Layout::Pyramid(&p, frames)).unwrap();
        // Image 0: words 0 (10,10), 1 (90,10), 0 (90,90).
        let mut want = vec![0f32; 3 * 10];
        want[0] = 2.0;
        want[1] = 1.0;
        want[2] = 1.0; // cell (0,0) word 0
        want[2 + 2 + 1] = 1.0; // cell (0,1) word 1
        want[2 + 6] = 1.0; // cell (1,1) word 0
        want[21] = 1.0; // image 2: word 1 in cell 0 and cell (0,0)
        want[22 + 1] = 1.0;
        assert_eq!(h, want);
        let from_words = pyramid_counts_from_words(&[0, 1, 0, 1], &offsets, 2, &p, &frames).unwrap();
        assert_eq!(from_words, want);
        let bad = [100i64, 100, 0, 0, 0, 20];
        let frames = Frames { xy: &xy, stride: 2, sizes: &bad };
        let e = bow_histograms(&desc, &offsets, 1, &vocab, &Assignment::Hard, &Layout::Pyramid(&p, frames)).unwrap_err();
        assert!(e.to_string().contains("image 2"), "{e}");
    }
}
