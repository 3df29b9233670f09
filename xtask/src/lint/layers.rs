//! The layering of tracer/src: which of the crate's top-level modules may import which.
//!
//! Layers keep the crate's dependencies pointing one way, so a lower module can be read,
//! tested and changed without the ones built on it; an import that points up is how a
//! cycle starts.

use std::fmt;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::scan;

/// The layers of tracer/src, bottom first. A module may import from any module of a lower
/// layer, never from a higher one; modules of one layer may not import each other unless
/// [`SAME_LAYER`] lists the pair. lib.rs and main.rs sit above every layer. A new top-level
/// module needs a place here before the check passes.
pub const LAYERS: &[&[&str]] = &[
    &["model", "system"],
    &["schema"],
    &["kernel", "firewall"],
    &["node"],
    &["pipeline"],
    &["findings"],
    &["analysis"],
    &["engine", "sinks"],
    &["commands"],
    // Tests only: captures the pcapng sink writes, read back by the replay source.
    &["capture_round_trip"],
];

/// `(importer, imported)`: modules of one layer that may import from each other anyway.
pub const SAME_LAYER: &[(&str, &str)] = &[];

/// Where the table is, for the messages that send people to it.
pub const TABLE_FILE: &str = file!();

pub struct Table<'a> {
    pub layers: &'a [&'a [&'a str]],
    pub same_layer: &'a [(&'a str, &'a str)],
}

pub const TABLE: Table<'static> = Table { layers: LAYERS, same_layer: SAME_LAYER };

impl Table<'_> {
    fn layer(&self, module: &str) -> Option<usize> {
        self.layers.iter().position(|layer| layer.contains(&module))
    }
}

/// A `.rs` file of the crate.
pub struct Source {
    /// The path messages show, e.g. `tracer/src/kernel/btf.rs`.
    pub shown: String,
    /// Its module path, e.g. `["kernel", "btf"]`; empty for lib.rs and main.rs.
    pub module: Vec<String>,
    pub text: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// A top-level module the table does not place.
    Unplaced(String),
    /// An import from a higher layer, or from the same layer without [`SAME_LAYER`]'s leave.
    Import { at: String, from: String, from_layer: usize, to: String, to_layer: usize },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unplaced(module) => {
                write!(f, "module `{module}` is not in the layer table in {TABLE_FILE}: place it")
            }
            Problem::Import { at, from, from_layer, to, to_layer } if to_layer > from_layer => {
                write!(f, "{at}: `{from}` (layer {from_layer}) imports `{to}` (layer {to_layer}, above it)")
            }
            Problem::Import { at, from, from_layer, to, .. } => write!(
                f,
                "{at}: `{from}` (layer {from_layer}) imports `{to}` (layer {from_layer} too, and SAME_LAYER in \
                 {TABLE_FILE} does not allow the pair)"
            ),
        }
    }
}

/// Every problem of the crate whose top-level `modules` and files are given: the modules
/// the table does not place, then the imports it forbids, in file order.
pub fn check(table: &Table, modules: &[String], sources: &[Source]) -> Vec<Problem> {
    let mut problems: Vec<Problem> =
        modules.iter().filter(|m| table.layer(m).is_none()).map(|m| Problem::Unplaced(m.clone())).collect();
    for source in sources {
        // lib.rs and main.rs (no top-level module) may import anything.
        let Some(from) = source.module.first() else { continue };
        // An unplaced module is reported once above, not at each of its imports.
        let Some(from_layer) = table.layer(from) else { continue };
        for path in scan::root_paths(&source.text, &source.module) {
            let to = path.name.as_str();
            // Items of lib.rs are not modules; unplaced modules are reported above.
            if to == from || !modules.iter().any(|m| m == to) {
                continue;
            }
            let Some(to_layer) = table.layer(to) else { continue };
            let allowed =
                to_layer < from_layer || (to_layer == from_layer && table.same_layer.contains(&(from.as_str(), to)));
            if !allowed {
                problems.push(Problem::Import {
                    at: format!("{}:{}", source.shown, path.line),
                    from: from.clone(),
                    from_layer,
                    to: to.to_string(),
                    to_layer,
                });
            }
        }
    }
    problems
}

/// The top-level modules of the crate whose sources are in `src` (each `foo.rs` and `foo/`
/// beside lib.rs), and all its `.rs` files, shown under the name `shown`.
pub fn read_crate(src: &Path, shown: &str) -> Result<(Vec<String>, Vec<Source>)> {
    let mut modules = Vec::new();
    for (name, is_dir) in entries(src)? {
        if is_dir && name != "bin" {
            modules.push(name);
        } else if let Some(stem) = name.strip_suffix(".rs").filter(|stem| !["lib", "main"].contains(stem)) {
            modules.push(stem.to_string());
        }
    }
    // `foo.rs` beside `foo/` is one module.
    modules.sort();
    modules.dedup();
    let mut files = Vec::new();
    rust_files(src, "", &mut files)?;
    let sources = files
        .into_iter()
        .map(|relative| {
            let path = src.join(&relative);
            let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(Source { shown: format!("{shown}/{relative}"), module: module_of(&relative), text })
        })
        .collect::<Result<_>>()?;
    Ok((modules, sources))
}

/// The names in `dir`, sorted, each with whether it is a directory.
fn entries(dir: &Path) -> Result<Vec<(String, bool)>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            bail!("{} holds a file name that is not UTF-8: rename it", dir.display());
        };
        let is_dir = entry.file_type().with_context(|| format!("reading {}", entry.path().display()))?.is_dir();
        entries.push((name, is_dir));
    }
    entries.sort();
    Ok(entries)
}

/// The `.rs` files under `dir`, as paths relative to the crate's src (`prefix` is `dir`'s).
fn rust_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    for (name, is_dir) in entries(dir)? {
        if is_dir {
            // src/bin holds crates of their own, above the library like main.rs.
            if !(prefix.is_empty() && name == "bin") {
                rust_files(&dir.join(&name), &format!("{prefix}{name}/"), out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(format!("{prefix}{name}"));
        }
    }
    Ok(())
}

/// The module path of the file at `relative` (to the crate's src): `a/b.rs` and
/// `a/b/mod.rs` are `a::b`; lib.rs and main.rs are the root.
fn module_of(relative: &str) -> Vec<String> {
    let mut parts: Vec<String> = relative.split('/').map(str::to_string).collect();
    if let Some(file) = parts.pop() {
        let stem = file.strip_suffix(".rs").unwrap_or(&file);
        let root = parts.is_empty() && (stem == "lib" || stem == "main");
        if stem != "mod" && !root {
            parts.push(stem.to_string());
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYERS: &[&[&str]] = &[&["model"], &["kernel", "firewall"], &["commands"]];
    const TABLE: Table = Table { layers: LAYERS, same_layer: &[("firewall", "kernel")] };

    fn modules() -> Vec<String> {
        ["model", "kernel", "firewall", "commands"].map(String::from).to_vec()
    }

    fn source(relative: &str, text: &str) -> Source {
        Source { shown: format!("tracer/src/{relative}"), module: module_of(relative), text: text.to_string() }
    }

    fn messages(sources: &[Source]) -> Vec<String> {
        check(&TABLE, &modules(), sources).iter().map(Problem::to_string).collect()
    }

    #[test]
    fn module_paths_of_files() {
        assert_eq!(module_of("lib.rs"), Vec::<String>::new());
        assert_eq!(module_of("main.rs"), Vec::<String>::new());
        assert_eq!(module_of("model.rs"), ["model"]);
        assert_eq!(module_of("kernel/mod.rs"), ["kernel"]);
        assert_eq!(module_of("kernel/btf.rs"), ["kernel", "btf"]);
        assert_eq!(module_of("kernel/btf/mod.rs"), ["kernel", "btf"]);
        assert_eq!(module_of("kernel/lib.rs"), ["kernel", "lib"]);
    }

    #[test]
    fn downward_imports_pass() {
        let sources = [
            source("kernel/mod.rs", "use crate::model::Flow;"),
            source(
                "commands/watch.rs",
                "use crate::{kernel::Programs, model};\nfn f() { super::super::firewall::g() }",
            ),
            source("firewall/rules.rs", "use crate::kernel::Btf;"),
        ];
        assert!(messages(&sources).is_empty());
    }

    #[test]
    fn upward_imports_fail_one_line_each() {
        let sources = [source(
            "model/flow.rs",
            "use crate::model::nat;\nuse crate::{\n    kernel::Btf,\n    commands::{watch, triage},\n};\n",
        )];
        assert_eq!(
            messages(&sources),
            [
                "tracer/src/model/flow.rs:3: `model` (layer 0) imports `kernel` (layer 1, above it)",
                "tracer/src/model/flow.rs:4: `model` (layer 0) imports `commands` (layer 2, above it)",
            ]
        );
    }

    #[test]
    fn same_layer_imports_need_leave() {
        let sources = [
            source("kernel/mod.rs", "fn f() -> u32 { crate::firewall::count() }"),
            source("firewall/mod.rs", "use crate::kernel::Btf;"),
        ];
        let problems = check(&TABLE, &modules(), &sources);
        assert_eq!(
            problems,
            [Problem::Import {
                at: "tracer/src/kernel/mod.rs:1".to_string(),
                from: "kernel".to_string(),
                from_layer: 1,
                to: "firewall".to_string(),
                to_layer: 1,
            }]
        );
        assert!(problems[0].to_string().contains("does not allow the pair"));
    }

    #[test]
    fn imports_in_test_modules_count() {
        let text = "fn f() {}\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::commands::fixtures;\n}\n";
        assert_eq!(
            messages(&[source("model/flow.rs", text)]),
            ["tracer/src/model/flow.rs:6: `model` (layer 0) imports `commands` (layer 2, above it)"]
        );
    }

    #[test]
    fn unplaced_modules_are_named_once() {
        let sources =
            [source("netns.rs", "use crate::commands::x;"), source("model/mod.rs", "use crate::netns::Namespace;")];
        let mut modules = modules();
        modules.push("netns".to_string());
        let messages: Vec<String> = check(&TABLE, &modules, &sources).iter().map(Problem::to_string).collect();
        assert_eq!(messages, [format!("module `netns` is not in the layer table in {TABLE_FILE}: place it")]);
        assert!(TABLE_FILE.ends_with("xtask/src/lint/layers.rs"), "{TABLE_FILE}");
    }

    #[test]
    fn roots_items_and_own_module_are_not_imports() {
        let sources = [
            source("lib.rs", "pub mod model;\npub use crate::commands::watch;"),
            source("main.rs", "use tracer::commands::watch;\nfn main() { crate::run() }"),
            source("model/mod.rs", "use crate::VERSION;\nuse crate::model::nat;\nuse super::kernel::X;"),
        ];
        // `super::kernel` from model/mod.rs is the root's kernel: the one real problem.
        assert_eq!(
            messages(&sources),
            ["tracer/src/model/mod.rs:3: `model` (layer 0) imports `kernel` (layer 1, above it)"]
        );
    }

    #[test]
    fn the_real_table_places_each_module_once() {
        let mut all: Vec<&str> = super::LAYERS.iter().flat_map(|layer| layer.iter().copied()).collect();
        all.sort();
        let count = all.len();
        all.dedup();
        assert_eq!(all.len(), count, "a module is in two layers");
        for (a, b) in SAME_LAYER {
            assert!(
                super::TABLE.layer(a).is_some() && super::TABLE.layer(a) == super::TABLE.layer(b),
                "{a} and {b} are not in one layer"
            );
        }
    }

    #[test]
    fn reads_a_crate_tree() {
        let dir = std::env::temp_dir().join(format!("xtask-layers-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (path, text) in [
            ("lib.rs", "pub mod a;"),
            ("main.rs", ""),
            ("a.rs", ""),
            ("a/inner.rs", "use crate::b::X;"),
            ("b/mod.rs", ""),
            ("bin/tool.rs", "use crate::a;"),
            ("notes.txt", "crate::b"),
        ] {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        let (modules, sources) = read_crate(&dir, "tracer/src").unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(modules, ["a", "b"]);
        let files: Vec<(&str, Vec<String>)> = sources.iter().map(|s| (s.shown.as_str(), s.module.clone())).collect();
        assert_eq!(
            files,
            [
                ("tracer/src/a/inner.rs", vec!["a".to_string(), "inner".to_string()]),
                ("tracer/src/a.rs", vec!["a".to_string()]),
                ("tracer/src/b/mod.rs", vec!["b".to_string()]),
                ("tracer/src/lib.rs", vec![]),
                ("tracer/src/main.rs", vec![]),
            ]
        );
    }
}
