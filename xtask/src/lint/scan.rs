//! Just enough of Rust's token grammar to find the paths that start at the crate root.
//!
//! Comments and string, char and raw string literals are skipped, so text that only
//! mentions `crate::x` (a doc comment, an error message, a test's input) never counts as an
//! import. A parser crate would do the same, but xtask keeps to the dependencies it has.

/// What the path finder needs to see; literals, lifetimes and numbers are dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned {
    pub token: Token,
    pub line: usize,
}

/// A top-level name a path reaches from the crate root, and the line it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootPath {
    pub name: String,
    pub line: usize,
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn word(&mut self) -> String {
        let mut word = String::new();
        while let Some(c) = self.peek(0).filter(|&c| is_ident_continue(c)) {
            word.push(c);
            self.pos += 1;
        }
        word
    }

    /// Past the closing `quote`, honouring backslash escapes (the opening quote is consumed).
    fn skip_quoted(&mut self, quote: char) {
        while let Some(c) = self.bump() {
            if c == '\\' {
                self.bump();
            } else if c == quote {
                return;
            }
        }
    }

    /// Past a raw string whose `hashes` and opening quote come next.
    fn skip_raw_string(&mut self, hashes: usize) {
        self.pos += hashes + 1;
        while let Some(c) = self.bump() {
            if c == '"' && (0..hashes).all(|i| self.peek(i) == Some('#')) {
                self.pos += hashes;
                return;
            }
        }
    }

    fn skip_block_comment(&mut self) {
        self.pos += 2;
        let mut depth = 1;
        while depth > 0 {
            match (self.bump(), self.peek(0)) {
                (None, _) => return,
                (Some('/'), Some('*')) => {
                    self.pos += 1;
                    depth += 1;
                }
                (Some('*'), Some('/')) => {
                    self.pos += 1;
                    depth -= 1;
                }
                _ => {}
            }
        }
    }

    /// A char literal (`'a'`, `'\''`) is skipped; a lifetime or label (`'a`) too.
    fn skip_char_or_lifetime(&mut self) {
        self.pos += 1;
        if self.peek(0) == Some('\\') || self.peek(1) == Some('\'') {
            self.skip_quoted('\'');
        } else {
            self.word();
        }
    }
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

pub fn tokens(src: &str) -> Vec<Spanned> {
    let mut lx = Lexer { chars: src.chars().collect(), pos: 0, line: 1 };
    let mut out = Vec::new();
    while let Some(c) = lx.peek(0) {
        let line = lx.line;
        let token = match c {
            '/' if lx.peek(1) == Some('/') => {
                while lx.peek(0).is_some_and(|c| c != '\n') {
                    lx.pos += 1;
                }
                None
            }
            '/' if lx.peek(1) == Some('*') => {
                lx.skip_block_comment();
                None
            }
            '"' => {
                lx.pos += 1;
                lx.skip_quoted('"');
                None
            }
            '\'' => {
                lx.skip_char_or_lifetime();
                None
            }
            ':' if lx.peek(1) == Some(':') => {
                lx.pos += 2;
                Some(Token::PathSep)
            }
            c if c.is_ascii_digit() => {
                // Suffixes and hex digits (`1u32`, `0xff`) go with the number.
                lx.word();
                None
            }
            c if is_ident_start(c) => word_or_literal(&mut lx),
            c => {
                lx.bump();
                (!c.is_whitespace()).then_some(Token::Punct(c))
            }
        };
        out.extend(token.map(|token| Spanned { token, line }));
    }
    out
}

/// An identifier, or the literal it prefixes: `r"…"`, `r#"…"#`, `br"…"`, `cr"…"`, `b"…"`,
/// `c"…"`, `b'…'`; `r#name` is the identifier `name`.
fn word_or_literal(lx: &mut Lexer) -> Option<Token> {
    let word = lx.word();
    let hashes = (0..).take_while(|&i| lx.peek(i) == Some('#')).count();
    match (word.as_str(), lx.peek(0)) {
        ("r" | "br" | "cr", Some('"' | '#')) if lx.peek(hashes) == Some('"') => {
            lx.skip_raw_string(hashes);
            None
        }
        ("r", Some('#')) if hashes == 1 && lx.peek(1).is_some_and(is_ident_start) => {
            lx.pos += 1;
            Some(Token::Ident(lx.word()))
        }
        ("b" | "c", Some('"')) => {
            lx.pos += 1;
            lx.skip_quoted('"');
            None
        }
        ("b", Some('\'')) => {
            lx.pos += 1;
            lx.skip_quoted('\'');
            None
        }
        _ => Some(Token::Ident(word)),
    }
}

fn ident(tokens: &[Spanned], i: usize) -> Option<&str> {
    match tokens.get(i).map(|t| &t.token) {
        Some(Token::Ident(word)) => Some(word),
        _ => None,
    }
}

fn is(tokens: &[Spanned], i: usize, token: &Token) -> bool {
    tokens.get(i).is_some_and(|t| t.token == *token)
}

/// The top-level names that the paths of a file reach from the crate root: `crate::a::…`,
/// each branch of `crate::{a::…, b::{…}}`, and `super::` chains that climb out of `module`
/// (the file's module path, e.g. `["kernel", "btf"]`; empty for lib.rs) to the root.
/// Inline `mod x { … }` blocks deepen the module path for the `super::` inside them.
pub fn root_paths(src: &str, module: &[String]) -> Vec<RootPath> {
    let tokens = tokens(src);
    let mut out = Vec::new();
    let mut depth = 0;
    // Inline modules open around the current token, with the brace depth inside each.
    let mut inline: Vec<usize> = Vec::new();
    for i in 0..tokens.len() {
        match &tokens[i].token {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Token::Ident(word)
                if word == "mod" && ident(&tokens, i + 1).is_some() && is(&tokens, i + 2, &Token::Punct('{')) =>
            {
                inline.push(depth + 1);
            }
            // The first segment only: `super::super::x` is one path.
            Token::Ident(word)
                if (word == "crate" || word == "super")
                    && is(&tokens, i + 1, &Token::PathSep)
                    && !(i > 0 && is(&tokens, i - 1, &Token::PathSep)) =>
            {
                walk(&tokens, i, module.len() + inline.len(), &mut out);
            }
            _ => {}
        }
    }
    out
}

/// Follows the path at `tokens[i]`; `below_root` is how many segments of the module path
/// the path has not climbed out of yet (0: it is at the crate root).
fn walk(tokens: &[Spanned], mut i: usize, mut below_root: usize, out: &mut Vec<RootPath>) {
    loop {
        match ident(tokens, i) {
            Some("crate") => below_root = 0,
            Some("super") => match below_root.checked_sub(1) {
                Some(up) => below_root = up,
                // Above the crate root: not Rust; the compiler says so.
                None => return,
            },
            // `crate::{self}` names the root itself.
            Some("self") => return,
            Some(name) => {
                if below_root == 0 {
                    out.push(RootPath { name: name.to_string(), line: tokens[i].line });
                }
                return;
            }
            None if is(tokens, i, &Token::Punct('{')) => {
                let mut branch = i + 1;
                loop {
                    walk(tokens, branch, below_root, out);
                    let end = end_of_branch(tokens, branch);
                    if !is(tokens, end, &Token::Punct(',')) {
                        return;
                    }
                    branch = end + 1;
                }
            }
            None => return,
        }
        if !is(tokens, i + 1, &Token::PathSep) {
            return;
        }
        i += 2;
    }
}

/// The `,` or `}` that ends the use-group branch starting at `tokens[i]`.
fn end_of_branch(tokens: &[Spanned], i: usize) -> usize {
    let mut depth = 0usize;
    for (j, t) in tokens.iter().enumerate().skip(i) {
        match t.token {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') if depth == 0 => return j,
            Token::Punct('}') => depth -= 1,
            Token::Punct(',') if depth == 0 => return j,
            _ => {}
        }
    }
    tokens.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &[&str]) -> Vec<String> {
        path.iter().map(|s| s.to_string()).collect()
    }

    /// (name, line) of every root path in `src`, seen from `path`.
    fn found(src: &str, path: &[&str]) -> Vec<(String, usize)> {
        root_paths(src, &module(path)).into_iter().map(|p| (p.name, p.line)).collect()
    }

    fn names(src: &str, path: &[&str]) -> Vec<String> {
        found(src, path).into_iter().map(|(name, _)| name).collect()
    }

    #[test]
    fn plain_use_and_its_line() {
        let src = "//! doc\n\nuse crate::model::Flow;\nuse std::fmt;\n";
        assert_eq!(found(src, &["node"]), [("model".to_string(), 3)]);
    }

    #[test]
    fn grouped_imports_with_nested_braces() {
        let src = "use crate::{\n    model::{self, Flow, nat::{Nat, Kind}},\n    firewall::Rule,\n    kernel,\n};";
        assert_eq!(
            found(src, &["pipeline"]),
            [("model".to_string(), 2), ("firewall".to_string(), 3), ("kernel".to_string(), 4)]
        );
        // `self` in a group at the root is the crate itself; a trailing comma ends nothing.
        assert_eq!(names("use crate::{self, model,};", &["node"]), ["model"]);
    }

    #[test]
    fn paths_inline_in_expressions() {
        let src = "fn f() -> u32 {\n    let x = crate::model::nat::count(1) + 2;\n    x\n}";
        assert_eq!(found(src, &["node"]), [("model".to_string(), 2)]);
        assert_eq!(names("impl From<crate::firewall::Rule> for X {}", &["node"]), ["firewall"]);
        assert_eq!(names("macro_rules! m { () => { $crate::model::f() } }", &["node"]), ["model"]);
    }

    #[test]
    fn super_paths_count_only_when_they_reach_the_root() {
        // From kernel/layout.rs: kernel::btf, inside its own top-level module.
        assert!(names("use super::btf::Btf;", &["kernel", "layout"]).is_empty());
        // From kernel/layout.rs, two levels up is the root.
        assert_eq!(names("use super::super::other::X;", &["kernel", "layout"]), ["other"]);
        assert_eq!(names("use super::{super::other::X, sibling};", &["kernel", "layout"]), ["other"]);
        // From kernel.rs, one level up is the root.
        assert_eq!(names("fn f() { super::model::g() }", &["kernel"]), ["model"]);
        // Above the root: not Rust, not counted.
        assert!(names("use super::x;", &[]).is_empty());
    }

    #[test]
    fn imports_in_test_modules_count_with_their_depth() {
        let src = "\
fn f() {}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::btf::Builder;
    use super::super::super::model::Flow;
    use crate::firewall::Rule;
}

fn g() { super::super::after::h() }
";
        // kernel/layout.rs: `tests` is kernel::layout::tests; after its block closes,
        // `super::super` from kernel::layout is the root again.
        assert_eq!(
            found(src, &["kernel", "layout"]),
            [("model".to_string(), 7), ("firewall".to_string(), 8), ("after".to_string(), 11)]
        );
    }

    #[test]
    fn comments_and_literals_do_not_count() {
        let src = r###"
// use crate::a::x;
/// Reads [`crate::b::Y`].
/* use crate::c; /* nested: crate::d:: */ still a comment crate::e::f */
fn f() {
    let s = "crate::g::h";
    let escaped = "a \" crate::i::j \\";
    let raw = r#"crate::k::l " still raw"#;
    let raw0 = r"crate::m::n";
    let bytes = b"crate::o::p";
    let braw = br##"crate::q::r"#"##;
    let c = c"crate::s::t";
    let quote = '"';
    let ch = '\'';
    let b = b'"';
    let life: &'static str = "crate::u::v";
    crate::model::real();
}
"###;
        assert_eq!(found(src, &["node"]), [("model".to_string(), 17)]);
    }

    #[test]
    fn visibility_and_raw_identifiers() {
        assert!(names("pub(crate) fn f() {} pub(super) struct S;", &["node"]).is_empty());
        assert_eq!(names("use crate::r#model::x;", &["node"]), ["model"]);
        // A label and a lifetime are not char literals: what follows them still counts.
        assert_eq!(names("fn f<'a>(x: &'a u8) { 'outer: loop { crate::model::g(); } }", &["node"]), ["model"]);
    }

    #[test]
    fn lines_counted_through_multi_line_literals_and_comments() {
        let src = "/* one\ntwo */\nlet s = \"a\nb\";\nlet r = r#\"c\nd\"#;\nuse crate::model;\n";
        assert_eq!(found(src, &["node"]), [("model".to_string(), 7)]);
    }
}
