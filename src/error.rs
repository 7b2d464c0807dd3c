//! The crate's error type.
//!
//! Every fallible stage function returns [`BovwError`]. The Python bindings
//! map each variant to the matching Python exception class (see `src/py/mod.rs`):
//! [`BovwError::Dtype`] becomes `TypeError`, everything else `ValueError`.

/// Errors raised by bovw's kernels.
#[derive(Debug, thiserror::Error)]
pub enum BovwError {
    /// An encoded image (row `index` of a batch) could not be decoded.
    #[error("image {index}: cannot decode ({reason})")]
    Decode { index: usize, reason: String },
    /// An array has the wrong shape; `what` names the argument.
    #[error("{what}: expected shape {expected}, got {got}")]
    Shape { what: String, expected: String, got: String },
    /// An array has the wrong element type.
    #[error("{what}: expected dtype {expected}, got {got}")]
    Dtype { what: String, expected: String, got: String },
    /// A parameter is outside its domain; `name` is the parameter's Python name.
    #[error("{name}: {reason}")]
    InvalidParameter { name: String, reason: String },
    /// The input data cannot be processed (NaN, too few samples, too small an image...).
    #[error("{0}")]
    InvalidInput(String),
    /// An Arrow array or batch is not of the expected layout.
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
}

impl BovwError {
    /// Shorthand for [`BovwError::InvalidParameter`].
    pub fn param(name: &str, reason: impl Into<String>) -> Self {
        BovwError::InvalidParameter { name: name.to_string(), reason: reason.into() }
    }
    /// Shorthand for [`BovwError::InvalidInput`].
    pub fn input(reason: impl Into<String>) -> Self {
        BovwError::InvalidInput(reason.into())
    }
}

/// The crate's result type.
pub type Result<T, E = BovwError> = std::result::Result<T, E>;
