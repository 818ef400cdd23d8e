//! Redis backends (placeholder while being written).
