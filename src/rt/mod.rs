//! Runtime seam.
