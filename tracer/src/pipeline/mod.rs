//! Ties packet events together: which reply answers which query, and which query
//! never got one. Bookkeeping only: what a pairing means is for `findings` to decide.

pub(crate) mod bounded;
pub(crate) mod dns_decode;
pub(crate) mod dns_parse;
pub(crate) mod loss;
pub(crate) mod naming;
pub(crate) mod paths;
pub(crate) mod queries;
