//! Ties packet events together: which reply answers which query, and which query
//! never got one. Bookkeeping only: what a pairing means is for `findings` to decide.

pub mod bounded;
pub mod dns_decode;
pub mod dns_parse;
pub mod loss;
pub mod naming;
pub mod paths;
pub mod queries;
