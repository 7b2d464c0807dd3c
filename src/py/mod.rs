//! Python bindings: thin wrappers that convert types, release the GIL and call
//! one stage function. One file per stage.

pub mod args;
pub mod arrays;
pub mod cluster;
pub mod color;
pub mod dense;
pub mod cnn;
pub mod decomposition;
pub mod encode;
pub mod features;
pub mod gmm;
pub mod histogram;
pub mod image;
pub mod kmajority;
pub mod orb;
pub mod sift;

use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::error::{BovwError, ImageError};

impl From<BovwError> for PyErr {
    fn from(err: BovwError) -> PyErr {
        match err {
            BovwError::Dtype { .. } => PyTypeError::new_err(err.to_string()),
            BovwError::Memory { .. } => PyMemoryError::new_err(err.to_string()),
            _ => PyValueError::new_err(err.to_string()),
        }
    }
}

impl From<ImageError> for PyErr {
    fn from(err: ImageError) -> PyErr {
        PyValueError::new_err(err.reason)
    }
}

/// Register every stage's functions on the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    image::register(m)?;
    sift::register(m)?;
    orb::register(m)?;
    dense::register(m)?;
    color::register(m)?;
    cluster::register(m)?;
    kmajority::register(m)?;
    histogram::register(m)?;
    decomposition::register(m)?;
    gmm::register(m)?;
    encode::register(m)?;
    cnn::register(m)?;
    features::register(m)?;
    Ok(())
}
