//! The load-time configuration userspace writes into the programs' read-only data.

use aya_ebpf::Global;
use tracer_common::WatchConfig;

// SAFETY: an all-zero WatchConfig is valid (plain integers); userspace overrides it
// before load, and a zero layout is never used because zero netns/port filters are
// replaced too.
#[unsafe(no_mangle)]
pub static CONFIG: Global<WatchConfig> = Global::new(unsafe { core::mem::zeroed() });

/// Reads one field of `CONFIG`. Reading single fields instead of `Global::load`
/// keeps the per-packet cost to the few values a path needs; the volatile read stops
/// the compiler from folding the compile-time zeros.
macro_rules! config {
    ($($field:ident).+) => {{
        let base = &$crate::config::CONFIG as *const aya_ebpf::Global<tracer_common::WatchConfig>
            as *const tracer_common::WatchConfig;
        // SAFETY: Global<T> is repr(transparent) over MaybeUninit<T>, always initialised.
        #[allow(unused_unsafe)]
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*base).$($field).+)) }
    }};
}
pub(crate) use config;

/// Returns `$verdict` from the program at once when this load's programs are to be empty
/// (see `WatchConfig::empty_programs`).
macro_rules! return_if_empty {
    ($verdict:expr) => {
        if $crate::config::config!(empty_programs) != 0 {
            return $verdict;
        }
    };
}
pub(crate) use return_if_empty;
