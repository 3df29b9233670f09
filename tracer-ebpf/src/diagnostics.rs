//! Reports of what should never happen in the kernel programs (a kernel read refused, a
//! value outside what the kernel documents), for `tracer watch --debug`. They go through
//! aya-log, which userspace leaves switched off (log level 0) unless `--debug` is given:
//! then each site costs one load of the level and a branch, and none sits on the path a
//! packet normally takes.

/// Logs a rare failure at warn level. aya-log's macros take a program context they do
/// not read; the sites here are deep in helpers without one, hence the unit.
macro_rules! rare_failure {
    ($($arg:tt)+) => {
        aya_log_ebpf::warn!(&(), $($arg)+)
    };
}
pub(crate) use rare_failure;
