//! Integer arguments from Python, checked against their ranges with a
//! `ValueError` that names the parameter and the range.
//!
//! A Rust `usize` or `u64` parameter would turn `-1` into PyO3's anonymous
//! `OverflowError: can't convert negative int to unsigned`, and a huge int
//! into another; bindings take [`Int`] instead and call [`Int::range`].

use std::fmt;

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;

use crate::error::BovwError;
use crate::features::check_threads;

/// A Python `int` (or anything with `__index__`, e.g. NumPy integers) of any
/// size: its value when it fits in `i64`, else its sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    /// The value.
    Fits(i64),
    /// Beyond the `i64` range; `true` when negative.
    Huge(bool),
}

impl<'a, 'py> FromPyObject<'a, 'py> for Int {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        match obj.extract::<i64>() {
            Ok(v) => Ok(Int::Fits(v)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Ok(Int::Huge(obj.lt(0i64)?)),
            Err(e) => Err(e),
        }
    }
}

impl fmt::Display for Int {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Int::Fits(v) => write!(f, "{v}"),
            Int::Huge(true) => write!(f, "an integer below -2**63"),
            Int::Huge(false) => write!(f, "an integer above 2**63 - 1"),
        }
    }
}

impl Int {
    /// The value, when it is in `lo..=hi`.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `name` and the range.
    pub fn range(self, name: &str, lo: i64, hi: i64) -> Result<i64, BovwError> {
        match self {
            Int::Fits(v) if (lo..=hi).contains(&v) => Ok(v),
            _ if hi == i64::MAX => Err(BovwError::param(name, format!("must be an integer >= {lo}, got {self}"))),
            _ => Err(BovwError::param(name, format!("must be an integer between {lo} and {hi}, got {self}"))),
        }
    }

    /// [`Int::range`] as a `usize` (`lo >= 0`).
    ///
    /// # Errors
    /// As [`Int::range`].
    pub fn index(self, name: &str, lo: i64, hi: i64) -> Result<usize, BovwError> {
        Ok(self.range(name, lo.max(0), hi)? as usize)
    }

    /// A seed: any integer in `0..=2**64 - 1` would do for the generator,
    /// but bovw's Python layer passes 31-bit seeds; `0..=2**63 - 1` is accepted.
    ///
    /// # Errors
    /// [`BovwError::InvalidParameter`] naming `name` for a negative value.
    pub fn seed(self, name: &str) -> Result<u64, BovwError> {
        Ok(self.range(name, 0, i64::MAX)? as u64)
    }
}

/// The largest `i32`: the cap of counts that OpenCV or NumPy store as `int`
/// (feature counts, vocabulary sizes, iteration counts).
pub const INT_MAX: i64 = i32::MAX as i64;

/// An `n_threads` argument: `None` or 0 for all cores, else 1..=256.
///
/// # Errors
/// [`BovwError::InvalidParameter`] naming `n_threads` and the range.
pub fn threads(n_threads: Option<Int>) -> Result<Option<usize>, BovwError> {
    match n_threads {
        None => Ok(None),
        Some(Int::Fits(v)) => check_threads(Some(v)),
        Some(huge) => Err(BovwError::param(
            "n_threads",
            format!("must be None (all cores) or between 1 and {}, got {huge}", crate::features::MAX_THREADS),
        )),
    }
}

/// A float argument that must be finite and in `(lo, hi]` (`lo_open`) or `[lo, hi]`.
///
/// # Errors
/// [`BovwError::InvalidParameter`] naming `name` and the range.
pub fn float_in(name: &str, v: f64, lo: f64, lo_open: bool, hi: f64) -> Result<f64, BovwError> {
    let ok = v.is_finite() && (if lo_open { v > lo } else { v >= lo }) && v <= hi;
    if !ok {
        let left = if lo_open { "(" } else { "[" };
        let right = if hi.is_infinite() { ")" } else { "]" };
        let hi_s = if hi.is_infinite() { "inf".to_string() } else { hi.to_string() };
        return Err(BovwError::param(name, format!("must be a finite number in {left}{lo}, {hi_s}{right}, got {v}")));
    }
    Ok(v)
}
