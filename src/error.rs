//! The crate's error type.
//!
//! Every fallible stage function returns [`BovwError`]. The Python bindings
//! map each variant to the matching Python exception class (see `src/py/mod.rs`):
//! [`BovwError::Dtype`] becomes `TypeError`, [`BovwError::Memory`]
//! `MemoryError`, everything else `ValueError`.

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
    /// A buffer could not be allocated (the allocator refused, or its size
    /// does not fit in memory at all); `what` names the buffer.
    #[error("cannot allocate {what}: {bytes} bytes ({})", human_bytes(*bytes))]
    Memory { what: String, bytes: u128 },
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
    /// Shorthand for [`BovwError::Memory`].
    pub fn memory(what: impl Into<String>, bytes: u128) -> Self {
        BovwError::Memory { what: what.into(), bytes }
    }
}

/// A byte count for people: `"4.0 TiB"`, `"512 MiB"`, `"812 B"`.
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A zeroed `Vec<T>` of `len` elements, allocated fallibly: a length whose
/// byte size overflows, or an allocation the allocator refuses, is a
/// [`BovwError::Memory`] naming `what` instead of a process abort.
///
/// # Errors
/// [`BovwError::Memory`] as above.
pub fn try_zeroed_vec<T: Clone + Default>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    let bytes = (len as u128) * (std::mem::size_of::<T>() as u128);
    v.try_reserve_exact(len).map_err(|_| BovwError::memory(what, bytes))?;
    v.resize(len, T::default());
    Ok(v)
}

/// An empty `Vec<T>` with room for `len` elements, allocated fallibly.
///
/// # Errors
/// [`BovwError::Memory`] naming `what` when the allocation fails.
pub fn try_with_capacity<T>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::new();
    let bytes = (len as u128) * (std::mem::size_of::<T>() as u128);
    v.try_reserve_exact(len).map_err(|_| BovwError::memory(what, bytes))?;
    Ok(v)
}

/// Check that `bytes` can be allocated now: reserve them and free them at
/// once. Kernels whose many buffers are sized up front (the SIFT and ORB
/// pyramids) call this with their peak estimate before any work, so that an
/// image that cannot fit gives [`BovwError::Memory`] rather than an abort
/// half-way. Large allocations are fresh `mmap`s that are never touched
/// here, so the probe costs a system call, not the memory.
///
/// # Errors
/// [`BovwError::Memory`] naming `what` when the allocator refuses.
pub fn probe_allocation(bytes: u128, what: &str) -> Result<()> {
    let n = usize::try_from(bytes).map_err(|_| BovwError::memory(what, bytes))?;
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve_exact(n).map_err(|_| BovwError::memory(what, bytes))?;
    drop(v);
    Ok(())
}

/// The crate's result type.
pub type Result<T, E = BovwError> = std::result::Result<T, E>;
