//! NumPy arrays' values in row-major (C) order.
//!
//! rust-numpy's `as_slice` succeeds for any contiguous array, Fortran-ordered
//! ones included, whose memory holds the values column by column: read as
//! (row, column) values, such a slice is the transposed data, silently. The
//! bindings read arrays through these two functions instead.

use std::borrow::Cow;

use numpy::ndarray::Dimension;
use numpy::{Element, PyReadonlyArray, PyUntypedArrayMethods};

use crate::error::BovwError;

/// The values in row-major order: borrowed when the array is C-contiguous,
/// else copied in that order (strided views, Fortran order).
pub fn c_order<'a, T: Element + Copy, D: Dimension>(a: &'a PyReadonlyArray<'_, T, D>) -> Cow<'a, [T]> {
    if a.is_c_contiguous() {
        if let Ok(s) = a.as_slice() {
            return Cow::Borrowed(s);
        }
    }
    Cow::Owned(a.as_array().iter().copied().collect())
}

/// The values of a C-contiguous array.
///
/// # Errors
/// [`BovwError::InvalidInput`] `"{what} must be C-contiguous"` for any other layout
/// (a strided view, Fortran order).
pub fn c_slice<'a, T: Element, D: Dimension>(a: &'a PyReadonlyArray<'_, T, D>, what: &str) -> Result<&'a [T], BovwError> {
    if a.is_c_contiguous() {
        if let Ok(s) = a.as_slice() {
            return Ok(s);
        }
    }
    Err(BovwError::input(format!("{what} must be C-contiguous")))
}
