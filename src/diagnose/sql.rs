//! sql step
