//! Small helpers with no GPU and no model knowledge.

pub mod clock;
pub(crate) mod json;
pub mod linalg;
pub mod rng;
