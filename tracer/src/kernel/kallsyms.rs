//! Parses `/proc/kallsyms`: the kernel addresses of the few variables the programs read
//! that BTF does not locate.

use anyhow::{Context, Result};

const KALLSYMS: &str = "/proc/kallsyms";

/// The addresses of `names` in the running kernel, in the order asked; `None` for a name
/// the kernel does not list (data symbols are listed only with `CONFIG_KALLSYMS_ALL`).
pub(crate) fn running(names: &[&str]) -> Result<Vec<Option<u64>>> {
    let text =
        std::fs::read_to_string(KALLSYMS).with_context(|| format!("reading {KALLSYMS} failed: is /proc mounted?"))?;
    Ok(addresses(&text, names))
}

/// Symbols of vmlinux only: a module's symbol carries `[module]` after its name.
pub(crate) fn addresses(text: &str, names: &[&str]) -> Vec<Option<u64>> {
    let mut found = vec![None; names.len()];
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(address), Some(_kind), Some(name), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if let Some(slot) = names.iter().position(|wanted| *wanted == name) {
            if found[slot].is_none() {
                found[slot] = u64::from_str_radix(address, 16).ok();
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_data_symbols_and_skips_modules_and_garbage() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffff82a1b2c8 D page_offset_base\n\
                    ffffffffc0a00000 d vmemmap_base\t[some_module]\n\
                    ffffffff82a1b2c0 D vmemmap_base\n\
                    nonsense\n\
                    zzzz D other\n";
        assert_eq!(
            addresses(text, &["page_offset_base", "vmemmap_base", "missing"]),
            [Some(0xffffffff82a1b2c8), Some(0xffffffff82a1b2c0), None]
        );
    }

    #[test]
    fn hidden_addresses_read_as_zero() {
        // kernel.kptr_restrict hides addresses from readers without CAP_SYSLOG as zeros.
        let text = "0000000000000000 D page_offset_base\n";
        assert_eq!(addresses(text, &["page_offset_base"]), [Some(0)]);
    }
}
