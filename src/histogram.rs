//! Bag-of-visual-words histograms.
//!
//! Image $i$ owns descriptors $o_i .. o_{i+1}$ with visual words $w_j$; its
//! term-frequency histogram is $h_{i,k} = |\{ j : w_j = k \}|$, the same counts
//! as Spark's `CountVectorizer` (minTF = 1, minDF = 1, not binary) on the
//! word lists. Optional inverse document frequency (document frequency
//! $df_k$ = number of images containing word $k$, $n$ images):
//! - scikit-learn `TfidfTransformer(smooth_idf=True)`: $\ln\frac{1 + n}{1 + df_k} + 1$;
//! - scikit-learn `smooth_idf=False`: $\ln\frac{n}{df_k} + 1$ (0/0 words are
//!   given $1$, see [`idf`]);
//! - Spark `IDF`: $\ln\frac{n + 1}{df_k + 1}$, and $0$ when $df_k$ < `min_doc_freq`.
//!
//! Then $h \cdot idf$ and optional L1 or L2 row normalisation (rows of zeros
//! stay zero), the order of `TfidfTransformer`.
//!
//! Images with no descriptors give all-zero rows: rows are never dropped.
//! Work is spread over images with rayon; results do not depend on the
//! number of threads.

use rayon::prelude::*;

use crate::cluster::kmeans::assign_labels;
use crate::error::{BovwError, Result};

/// Descriptors assigned per call of `assign_labels` in [`descriptor_histograms`].
pub const ASSIGN_CHUNK: usize = 1 << 16;

/// Row normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Raw (possibly idf-weighted) counts.
    None,
    /// Rows sum to 1 in absolute value.
    L1,
    /// Rows have unit Euclidean norm.
    L2,
}

impl Norm {
    /// Parse `None`/`"l1"`/`"l2"`.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `norm`.
    pub fn parse(name: Option<&str>) -> Result<Self> {
        match name {
            None | Some("none") => Ok(Norm::None),
            Some("l1") => Ok(Norm::L1),
            Some("l2") => Ok(Norm::L2),
            Some(other) => Err(BovwError::param("norm", format!("expected None, 'l1' or 'l2', got {other:?}"))),
        }
    }
}

/// The idf formula.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum IdfKind {
    /// scikit-learn `smooth_idf=True`: `ln((1 + n) / (1 + df)) + 1`.
    SklearnSmooth,
    /// scikit-learn `smooth_idf=False`: `ln(n / df) + 1`.
    Sklearn,
    /// Spark ML `IDF(minDocFreq)`: `ln((n + 1) / (df + 1))`, 0 below `min_doc_freq`.
    Spark { min_doc_freq: u64 },
}

/// Check image offsets: `offsets[0] == 0`, non-decreasing, last = `n_rows`.
///
/// # Errors
/// [`BovwError::InvalidParameter`] naming `offsets`.
pub fn check_offsets(offsets: &[usize], n_rows: usize) -> Result<()> {
    if offsets.is_empty() {
        return Err(BovwError::param("offsets", "must have n_images + 1 >= 1 entries"));
    }
    if offsets[0] != 0 {
        return Err(BovwError::param("offsets", format!("must start at 0, got {}", offsets[0])));
    }
    if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(BovwError::param("offsets", format!("must be non-decreasing (entry {} < entry {i})", i + 1)));
    }
    let last = *offsets.last().unwrap();
    if last != n_rows {
        return Err(BovwError::param("offsets", format!("last entry {last} must equal the number of descriptors {n_rows}")));
    }
    Ok(())
}

/// Check that every word is in `0..n_words`.
///
/// # Errors
/// [`BovwError::InvalidParameter`] naming `words`, the first bad position and value.
pub fn check_words(words: &[i64], n_words: usize) -> Result<()> {
    if let Some(pos) = words.par_iter().position_first(|&w| w < 0 || w as u64 >= n_words as u64) {
        return Err(BovwError::param(
            "words",
            format!("word id {} at position {pos} is outside [0, n_words={n_words})", words[pos]),
        ));
    }
    Ok(())
}

/// A zeroed `n_images x n_words` histogram block, allocated fallibly.
///
/// # Errors
/// [`BovwError::Memory`] when the product overflows or cannot be allocated
/// (`n_words = 10**12` asks for terabytes).
pub fn histogram_block(n_images: usize, n_words: usize) -> Result<Vec<f32>> {
    let what = format!("the ({n_images}, {n_words}) float32 histograms");
    let len = n_images
        .checked_mul(n_words)
        .ok_or_else(|| BovwError::memory(what.clone(), n_images as u128 * n_words as u128 * 4))?;
    crate::error::try_zeroed_vec::<f32>(len, &what)
}

/// Count words per image: dense `n_images x n_words` row-major `f32`.
/// Words must be valid (see [`check_words`]).
pub fn count_by_offsets<W: Copy + Into<u64> + Sync>(words: &[W], offsets: &[usize], n_words: usize) -> Vec<f32> {
    let n_images = offsets.len().saturating_sub(1);
    let mut out = vec![0f32; n_images * n_words];
    if n_words == 0 {
        return out;
    }
    out.par_chunks_mut(n_words).enumerate().for_each(|(i, row)| {
        for &w in &words[offsets[i]..offsets[i + 1]] {
            row[w.into() as usize] += 1.0;
        }
    });
    out
}

/// Counts of signed words (validated first).
///
/// # Errors
/// As [`check_words`] and [`check_offsets`].
pub fn counts_from_words(words: &[i64], offsets: &[usize], n_words: usize) -> Result<Vec<f32>> {
    check_offsets(offsets, words.len())?;
    check_words(words, n_words)?;
    let n_images = offsets.len() - 1;
    let mut out = histogram_block(n_images, n_words)?;
    if n_words == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(n_words).enumerate().for_each(|(i, row)| {
        for &w in &words[offsets[i]..offsets[i + 1]] {
            row[w as usize] += 1.0;
        }
    });
    Ok(out)
}

/// Counts when each descriptor carries its image index instead of offsets.
///
/// # Errors
/// [`BovwError::InvalidParameter`] naming `image_index` (length or a value
/// outside `0..n_images`) or `words`.
pub fn counts_from_image_index(words: &[i64], image_index: &[i64], n_images: usize, n_words: usize) -> Result<Vec<f32>> {
    if image_index.len() != words.len() {
        return Err(BovwError::param(
            "image_index",
            format!("has {} entries but words has {}", image_index.len(), words.len()),
        ));
    }
    check_words(words, n_words)?;
    if let Some(pos) = image_index.par_iter().position_first(|&i| i < 0 || i as u64 >= n_images as u64) {
        return Err(BovwError::param(
            "image_index",
            format!("image index {} at position {pos} is outside [0, n_images={n_images})", image_index[pos]),
        ));
    }
    let mut out = histogram_block(n_images, n_words)?;
    for (&w, &i) in words.iter().zip(image_index) {
        out[i as usize * n_words + w as usize] += 1.0;
    }
    Ok(out)
}

/// Document frequency of each word (images whose count is > 0).
pub fn document_frequency(counts: &[f32], n_words: usize) -> Vec<u64> {
    let mut df = vec![0u64; n_words];
    if n_words == 0 {
        return df;
    }
    for row in counts.chunks_exact(n_words) {
        for (d, &c) in df.iter_mut().zip(row) {
            if c > 0.0 {
                *d += 1;
            }
        }
    }
    df
}

/// Inverse document frequency from document frequencies over `n_images`.
/// With `Sklearn` (no smoothing) a word seen in no image would be
/// `ln(n / 0) + 1 = inf` in scikit-learn; it is set to 1 here, harmless since
/// its counts are 0 in the training set.
pub fn idf(df: &[u64], n_images: usize, kind: IdfKind) -> Vec<f64> {
    let n = n_images as f64;
    df.iter()
        .map(|&d| {
            let d = d as f64;
            match kind {
                IdfKind::SklearnSmooth => ((1.0 + n) / (1.0 + d)).ln() + 1.0,
                IdfKind::Sklearn => {
                    if d == 0.0 {
                        1.0
                    } else {
                        (n / d).ln() + 1.0
                    }
                }
                IdfKind::Spark { min_doc_freq } => {
                    if (d as u64) < min_doc_freq {
                        0.0
                    } else {
                        ((n + 1.0) / (d + 1.0)).ln()
                    }
                }
            }
        })
        .collect()
}

/// Multiply by idf (if given) and normalise each row in place.
///
/// # Errors
/// [`BovwError::Shape`] naming `idf` if its length is not `n_words`.
pub fn weight_and_normalize(hist: &mut [f32], n_words: usize, idf: Option<&[f64]>, norm: Norm) -> Result<()> {
    if let Some(w) = idf {
        if w.len() != n_words {
            return Err(BovwError::Shape { what: "idf".into(), expected: format!("({n_words},)"), got: format!("({},)", w.len()) });
        }
    }
    if n_words == 0 {
        return Ok(());
    }
    hist.par_chunks_mut(n_words).for_each(|row| {
        if let Some(w) = idf {
            row.iter_mut().zip(w).for_each(|(h, &v)| *h = (*h as f64 * v) as f32);
        }
        let s: f64 = match norm {
            Norm::None => return,
            Norm::L1 => row.iter().map(|&v| (v as f64).abs()).sum(),
            Norm::L2 => row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt(),
        };
        if s > 0.0 {
            row.iter_mut().for_each(|v| *v = (*v as f64 / s) as f32);
        }
    });
    Ok(())
}

/// Assign descriptors to their nearest visual word and count per image, in
/// chunks of about [`ASSIGN_CHUNK`] descriptors (whole images per chunk), so
/// that memory stays bounded; each chunk calls
/// [`crate::cluster::kmeans::assign_labels`].
///
/// `values`: descriptors `offsets[n_images] x d` row-major; `vocabulary`:
/// `n_words x d`. Returns counts `n_images x n_words` (`f32`).
///
/// # Errors
/// [`BovwError::Shape`] for widths that differ or lengths that are not
/// multiples of `d`; [`BovwError::InvalidParameter`] for bad offsets;
/// [`BovwError::InvalidInput`] naming the first descriptor row with NaN or
/// infinity, or an empty vocabulary.
pub fn descriptor_histograms(values: &[f32], offsets: &[usize], d: usize, vocabulary: &[f32]) -> Result<Vec<f32>> {
    if d == 0 || vocabulary.len() % d != 0 {
        return Err(BovwError::Shape {
            what: "vocabulary".into(),
            expected: format!("(n_words, {d})"),
            got: format!("{} values", vocabulary.len()),
        });
    }
    let n_words = vocabulary.len() / d;
    if n_words == 0 {
        return Err(BovwError::input("vocabulary is empty"));
    }
    if values.len() % d != 0 {
        return Err(BovwError::Shape {
            what: "descriptors".into(),
            expected: format!("(n, {d}) like the vocabulary"),
            got: format!("{} values", values.len()),
        });
    }
    let n_rows = values.len() / d;
    check_offsets(offsets, n_rows)?;
    if let Some(r) = values.par_chunks(d).position_first(|row| row.iter().any(|v| !v.is_finite())) {
        return Err(BovwError::input(format!("descriptors: row {r} contains NaN or infinity")));
    }
    if vocabulary.iter().any(|v| !v.is_finite()) {
        return Err(BovwError::input("vocabulary contains NaN or infinity"));
    }
    let n_images = offsets.len() - 1;
    let mut out = histogram_block(n_images, n_words)?;
    let mut img = 0usize;
    while img < n_images {
        // Whole images, about ASSIGN_CHUNK descriptors.
        let start = img;
        let mut end = img + 1;
        while end < n_images && offsets[end + 1] - offsets[start] <= ASSIGN_CHUNK {
            end += 1;
        }
        let (r0, r1) = (offsets[start], offsets[end]);
        if r1 > r0 {
            let (labels, _) = assign_labels(&values[r0 * d..r1 * d], vocabulary, d);
            let local: Vec<usize> = offsets[start..=end].iter().map(|o| o - r0).collect();
            let counts = count_by_offsets(&labels, &local, n_words);
            out[start * n_words..end * n_words].copy_from_slice(&counts);
        }
        img = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_empty_rows() {
        let words = [0i64, 2, 2, 1, 2];
        let offsets = [0usize, 3, 3, 5];
        let h = counts_from_words(&words, &offsets, 3).unwrap();
        assert_eq!(h, vec![1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]);
        let idx = [0i64, 0, 0, 2, 2];
        assert_eq!(counts_from_image_index(&words, &idx, 3, 3).unwrap(), h);
        assert!(counts_from_words(&[3], &[0, 1], 3).unwrap_err().to_string().contains("position 0"));
        assert!(counts_from_words(&[-1], &[0, 1], 3).is_err());
        assert!(counts_from_words(&[0], &[0, 2], 3).is_err());
        assert!(counts_from_image_index(&[0], &[5], 3, 3).is_err());
    }

    #[test]
    fn idf_and_norms() {
        let mut h = vec![1.0f32, 0.0, 3.0, 0.0, 0.0, 0.0];
        let df = document_frequency(&h, 3);
        assert_eq!(df, vec![1, 0, 1]);
        let w = idf(&df, 2, IdfKind::SklearnSmooth);
        assert!((w[0] - ((3.0f64 / 2.0).ln() + 1.0)).abs() < 1e-12);
        let s = idf(&df, 2, IdfKind::Spark { min_doc_freq: 0 });
        assert!((s[1] - 3.0f64.ln()).abs() < 1e-12);
        weight_and_normalize(&mut h, 3, None, Norm::L1).unwrap();
        assert_eq!(&h[..3], &[0.25, 0.0, 0.75]);
        assert_eq!(&h[3..], &[0.0, 0.0, 0.0]);
        let mut g = vec![3.0f32, 4.0];
        weight_and_normalize(&mut g, 2, None, Norm::L2).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-7 && (g[1] - 0.8).abs() < 1e-7);
    }

    #[test]
    fn fused_assign_count() {
        let vocab = [0.0f32, 0.0, 10.0, 10.0];
        let desc = [1.0f32, 1.0, 9.0, 9.0, 11.0, 10.0, 0.5, -0.5];
        let offsets = [0usize, 1, 1, 4];
        let h = descriptor_histograms(&desc, &offsets, 2, &vocab).unwrap();
        assert_eq!(h, vec![1.0, 0.0, 0.0, 0.0, 1.0, 2.0]);
        let mut bad = desc;
        bad[5] = f32::NAN;
        assert!(descriptor_histograms(&bad, &offsets, 2, &vocab).unwrap_err().to_string().contains("row 2"));
    }
}
