//! Bag-of-visual-words histograms. (Being written: issue 5.)
