//! PCA by eigendecomposition of the covariance. (Being written: issue 5.)
