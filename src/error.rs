//! The crate's error type.
//!
//! Every fallible stage function returns [`BovwError`]. The Python bindings
//! map each variant to the matching Python exception class (see `src/py/mod.rs`):
//! [`BovwError::Dtype`] becomes `TypeError`, everything else `ValueError`.

/// The pipeline stage at which one image of a batch failed.
///
/// Batch kernels never fail the whole batch for one bad image: each row gets
/// its features or an [`ImageError`] naming the stage, which Python writes to
/// the `error_stage` column and the job to `errors.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Reading the file (done in Python; listed here so the names are one set).
    Read,
    /// Bytes to pixels: empty, not a JPEG/PNG, corrupt, truncated, 16-bit,
    /// over the size limits.
    Decode,
    /// Pixels to descriptors: the extractor refused the image (too small...).
    Descriptors,
}

impl Stage {
    /// The stage's name as written to `error_stage` and `errors.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Read => "read",
            Stage::Decode => "decode",
            Stage::Descriptors => "descriptors",
        }
    }
}

/// Why one image could not be used, and at which [`Stage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ImageError {
    /// Where it failed.
    pub stage: Stage,
    /// A human-readable reason ("truncated JPEG: ...").
    pub reason: String,
}

impl ImageError {
    /// A decode-stage error.
    pub fn decode(reason: impl Into<String>) -> Self {
        ImageError { stage: Stage::Decode, reason: reason.into() }
    }
    /// A descriptor-stage error.
    pub fn descriptors(reason: impl Into<String>) -> Self {
        ImageError { stage: Stage::Descriptors, reason: reason.into() }
    }
}

/// Errors raised by bovw's kernels.
#[derive(Debug, thiserror::Error)]
pub enum BovwError {
    /// One image could not be used (a single-image call such as `decode_gray`).
    #[error(transparent)]
    Image(#[from] ImageError),
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
