//! The typed values every part of tracer speaks in: packets and what the kernel reports
//! about them, hooks and families, drop reasons, firewall backends, DNS messages, node
//! settings, time. Data only, at the bottom: it imports nothing of the rest of the crate.

/// Defines a plain enum named by strum: the derives every such enum has, and `name()`,
/// `Display` and serde's form all through strum's names, so each name is written once (by
/// the `#[strum(serialize_all = ...)]` case rule given with the enum) for JSON, text and
/// metrics alike.
macro_rules! named_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($body:tt)* }) => {
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
            strum::IntoStaticStr, strum::EnumString, strum::VariantNames,
        )]
        $(#[$meta])*
        $vis enum $name { $($body)* }

        impl $name {
            /// The name every output uses.
            pub(crate) fn name(self) -> &'static str {
                self.into()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = String::deserialize(deserializer)?;
                name.parse()
                    .map_err(|_| serde::de::Error::unknown_variant(&name, <$name as strum::VariantNames>::VARIANTS))
            }
        }
    };
}
pub(crate) use named_enum;

pub(crate) mod dns;
pub(crate) mod firewall;
pub(crate) mod hook;
pub(crate) mod netfilter;
pub(crate) mod packet;
pub(crate) mod plain;
pub(crate) mod pod;
pub(crate) mod serde_forms;
pub(crate) mod sysctl;

/// Maps the kernel's monotonic timestamps to wall-clock time. The offset is taken
/// once at start so that event order and spacing are exactly the kernel's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub(crate) fn now() -> WallClock {
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        WallClock { offset_ns: realtime - monotonic }
    }

    pub(crate) fn wall_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(monotonic_ns as i128 + self.offset_ns).unwrap_or(0)
    }
}

/// The kernel's `bpf_ktime_get_ns` clock (CLOCK_MONOTONIC), in which records are stamped.
pub(crate) fn monotonic_now_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and a live timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}
