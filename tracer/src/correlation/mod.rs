//! Ties packet events together: which reply answers which query, and which query
//! never got one. Bookkeeping only: what a pairing means is for `findings` to decide.

pub mod bounded;
pub mod dns;
pub mod loss;
pub mod paths;
