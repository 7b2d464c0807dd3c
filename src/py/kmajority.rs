//! Bindings for `crate::cluster::kmajority` (Hamming k-majority clustering).

use numpy::ndarray::{Array1, Array2};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::cluster::kmajority::{assign_labels, kmajority};
use crate::error::BovwError;
use crate::features::with_threads;
use crate::py::args::{self, Int, INT_MAX};

/// A (n, d) uint8 array as an owned contiguous buffer: (bytes, n, d).
fn rows(a: &PyReadonlyArray2<'_, u8>) -> (Vec<u8>, usize, usize) {
    let shape = a.shape();
    let (n, d) = (shape[0], shape[1]);
    (crate::py::arrays::c_order(a).into_owned(), n, d)
}

/// Fit k-majority on (n, d) uint8 descriptors.
/// Returns (centers (k, d) uint8, labels (n,) int64, inertia, n_iter).
#[pyfunction]
#[pyo3(signature = (x, n_clusters, *, max_iter=Int::Fits(100), seed=Int::Fits(0), init=None, n_threads=None))]
#[pyo3(text_signature = "(x, n_clusters, *, max_iter=100, seed=0, init=None, n_threads=None)")]
#[allow(clippy::type_complexity)]
pub fn kmajority_fit<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, u8>,
    n_clusters: Int,
    max_iter: Int,
    seed: Int,
    init: Option<PyReadonlyArray2<'py, u8>>,
    n_threads: Option<Int>,
) -> PyResult<(Bound<'py, PyArray2<u8>>, Bound<'py, PyArray1<i64>>, u64, usize)> {
    let n_threads = args::threads(n_threads)?;
    let n_clusters = n_clusters.index("n_clusters", 1, INT_MAX)?;
    let max_iter = max_iter.index("max_iter", 1, INT_MAX)?;
    let seed = seed.seed("seed")?;
    let (data, _n, d) = rows(&x);
    let init = match init {
        Some(c) => {
            let (cd, ck, cw) = rows(&c);
            if cw != d || ck != n_clusters {
                return Err(BovwError::Shape {
                    what: "init".into(),
                    expected: format!("({n_clusters}, {d})"),
                    got: format!("({ck}, {cw})"),
                }
                .into());
            }
            Some(cd)
        }
        None => None,
    };
    let res = py.detach(|| with_threads(n_threads, || kmajority(&data, d, n_clusters, max_iter, seed, init.as_deref())))?;
    let k = res.centers.len() / d.max(1);
    let centers = Array2::from_shape_vec((k, d), res.centers).expect("k * d");
    let labels: Array1<i64> = res.labels.iter().map(|&l| l as i64).collect();
    Ok((centers.into_pyarray(py), labels.into_pyarray(py), res.inertia, res.n_iter))
}

/// Nearest center (Hamming) of each row: returns (labels (n,) int64, distances (n,) int64).
#[pyfunction]
#[pyo3(signature = (x, centers, *, n_threads=None))]
#[allow(clippy::type_complexity)]
pub fn kmajority_predict<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, u8>,
    centers: PyReadonlyArray2<'py, u8>,
    n_threads: Option<Int>,
) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>)> {
    let n_threads = args::threads(n_threads)?;
    let (data, n, d) = rows(&x);
    let (cd, k, cw) = rows(&centers);
    if cw != d {
        return Err(BovwError::Shape { what: "X".into(), expected: format!("(n, {cw}) like the centers"), got: format!("({n}, {d})") }.into());
    }
    if k == 0 || d == 0 {
        return Err(BovwError::input("centers: empty vocabulary").into());
    }
    let (labels, dist) = py.detach(|| with_threads(n_threads, || assign_labels(&data, &cd, d)));
    let labels: Array1<i64> = labels.iter().map(|&l| l as i64).collect();
    let dist: Array1<i64> = dist.iter().map(|&v| v as i64).collect();
    Ok((labels.into_pyarray(py), dist.into_pyarray(py)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kmajority_fit, m)?)?;
    m.add_function(wrap_pyfunction!(kmajority_predict, m)?)?;
    Ok(())
}
