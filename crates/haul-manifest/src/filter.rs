//! Which entries of a tree a transfer includes: ordered include and exclude rules.
//!
//! A [`Filter`] is a list of rules, each an include (`+`) or an exclude (`-`) with a glob
//! pattern. For every entry below the transfer root:
//!
//! - **The rules are checked in order, and the first rule that matches decides.** An entry no
//!   rule matches is included. So an include placed before an exclude makes an exception to
//!   it: `+ *.keep` then `- *` keeps only the `.keep` files (of the root directory: see below
//!   for what happens to directories).
//! - **A pattern is matched against the entry's path relative to the transfer root**: its
//!   names joined with `/`, no leading slash (`po1/ofuser/user1.db`), as raw bytes.
//! - **Anchored or floating.** A pattern starting with `/` is anchored at the transfer root:
//!   `/tmp` matches the entry `tmp` of the root and nothing deeper. A pattern with a `/`
//!   anywhere but at its end is anchored too (as in `.gitignore`): `ofuser/*.db` matches
//!   `ofuser/a.db`, not `po1/ofuser/a.db`. A pattern with no `/` (apart from a trailing one)
//!   floats: it is matched against the entry's own name at any depth, so `*.tmp` matches
//!   `a.tmp`, `x/a.tmp` and `x/y/a.tmp`.
//! - **A trailing `/` matches directories only**: `cache/` excludes every directory named
//!   `cache`, but not a file named `cache`. A directory-only rule is skipped for other
//!   entries, and a later rule may still match them.
//! - **Wildcards.** `*` matches any run of bytes within one name and `?` exactly one byte,
//!   neither ever matching `/`; `**` as a whole path component matches across directories
//!   (`/a/**` is everything under `a`, but not `a` itself; `**/x` is `x` at any depth,
//!   `a/**/x` is `a/x`, `a/b/x`, ...); `[abc]`, `[a-z]` and `[!abc]` match one byte of a class;
//!   `{a,b}` matches either alternative; `\` makes the next character literal (`\*` is a
//!   star). Matching is on bytes, not characters: a non-ASCII character in a name is several
//!   bytes, so it is matched by `*` or by its own literal bytes, not by one `?`, and a class
//!   should hold ASCII only.
//! - **Names that are not UTF-8** are matched as the bytes they are; a pattern given as bytes
//!   may contain such bytes literally (they then match only themselves).
//!
//! **An excluded directory excludes everything below it**: the scan never opens it, so no
//! rule is even asked about its contents. An include that matches something inside an
//! excluded directory has no effect (as in rsync): to copy only `a/b/c`, the directories `a`
//! and `a/b` must be included too, which is what [`Filter::files_from`] arranges.
//! [`Filter::decide`] answers for one entry on its own (its parent already included);
//! [`Filter::transfers`] also checks every ancestor directory.
//!
//! The transfer root itself is never filtered.
//!
//! # Examples
//!
//! ```
//! use haul_manifest::Filter;
//!
//! let filter = Filter::new()
//!     .exclude("*.tmp")?      // floating: any file or directory named *.tmp, any depth
//!     .exclude("/scratch/")?  // anchored, directories only: the root's scratch directory
//!     .include("logs/keep.log")? // anchored (it has a '/'): an exception to the next rule
//!     .exclude("logs/*.log")?;
//!
//! assert!(filter.excludes(b"a.tmp", false));
//! assert!(filter.excludes(b"deep/down/b.tmp", false));
//! assert!(filter.excludes(b"scratch", true));
//! assert!(!filter.excludes(b"scratch", false)); // a file named scratch: '/' wants a directory
//! assert!(!filter.excludes(b"x/scratch", true)); // anchored: only at the root
//! assert!(filter.decide(b"logs/keep.log", false)); // the first matching rule decides
//! assert!(filter.excludes(b"logs/other.log", false));
//! assert!(filter.decide(b"logs/sub/other.log", false)); // '*' never matches '/'
//!
//! // Everything under a directory, but not the directory itself:
//! let contents = Filter::new().exclude("/cache/**")?;
//! assert!(contents.decide(b"cache", true));
//! assert!(contents.excludes(b"cache/a/b", false));
//!
//! // The rules travel to the receiver as bytes and come back as the same filter.
//! let rules = filter.to_rules();
//! assert_eq!(rules[0], b"- *.tmp");
//! let again = Filter::from_rules(&rules)?;
//! assert!(again.excludes(b"deep/down/b.tmp", false));
//! # Ok::<(), haul_manifest::FilterError>(())
//! ```
//!
//! Rule files ([`Filter::exclude_from`]) hold one pattern a line; `+ ` or `- ` in front makes
//! an include or an exclude (no prefix: exclude), and blank lines and lines starting with `#`
//! are skipped:
//!
//! ```text
//! # build output
//! - *.o
//! + /keep/important.tmp
//! *.tmp
//! ```
//!
//! A list of paths ([`Filter::files_from`]) restricts the transfer to those paths: see there.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use globset::{Candidate, Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Ordered include and exclude rules deciding which entries of a tree are transferred. See the
/// [module documentation](self) for the matching rules.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    rules: Vec<Rule>,
    compiled: Compiled,
}

/// A problem with a filter rule, a rule file or a list of paths.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A pattern that is not a valid glob, or matches nothing.
    #[error("bad filter pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as given (not UTF-8 bytes shown replaced).
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A serialized rule (see [`Filter::from_rules`]) that is not `+ PATTERN` or `- PATTERN`.
    #[error("bad filter rule {rule:?}: a rule is \"+ PATTERN\" or \"- PATTERN\"")]
    Rule {
        /// The rule as given.
        rule: String,
    },
    /// A rule file or list of paths that could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A bad line in a rule file or list of paths.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
}

#[derive(Clone, Debug)]
struct Rule {
    include: bool,
    /// The pattern exactly as given: what [`Filter::to_rules`] sends.
    pattern: Vec<u8>,
    dir_only: bool,
    glob: Glob,
    /// The pattern holds bytes that are not UTF-8: it is matched against the path in the
    /// same encoding as the pattern (see [`widen`]).
    widened: bool,
}

/// The rules as two glob sets (the rules given as plain UTF-8 and the others), each with the
/// index of the rule behind each of its globs.
#[derive(Clone, Debug, Default)]
struct Compiled {
    plain: GlobSet,
    plain_rules: Vec<usize>,
    widened: GlobSet,
    widened_rules: Vec<usize>,
}

impl Filter {
    /// A filter with no rules: it includes everything.
    pub fn new() -> Filter {
        Filter::default()
    }

    /// True when the filter has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Appends a rule excluding what `pattern` matches.
    pub fn exclude(self, pattern: impl AsRef<[u8]>) -> Result<Filter, FilterError> {
        let rule = Rule::parse(false, pattern.as_ref())?;
        self.extend(vec![rule])
    }

    /// Appends a rule including what `pattern` matches (an exception to the rules after it).
    pub fn include(self, pattern: impl AsRef<[u8]>) -> Result<Filter, FilterError> {
        let rule = Rule::parse(true, pattern.as_ref())?;
        self.extend(vec![rule])
    }

    /// Appends the rules of a rule file: one pattern a line, `+ PATTERN` to include, `- PATTERN`
    /// or a bare pattern to exclude; blank lines and lines starting with `#` are skipped. A
    /// line ends at `\n` (a `\r` before it is dropped); nothing else is trimmed, since names
    /// may start or end with spaces.
    pub fn exclude_from(self, path: &Path) -> Result<Filter, FilterError> {
        let text = read(path)?;
        let mut rules = Vec::new();
        for (number, line) in lines(&text) {
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let (include, pattern) = match line {
                [b'+', b' ', rest @ ..] => (true, rest),
                [b'-', b' ', rest @ ..] => (false, rest),
                _ => (false, line),
            };
            let rule = Rule::parse(include, pattern).map_err(|e| FilterError::Line {
                path: path.to_path_buf(),
                line: number,
                message: e.to_string(),
            })?;
            rules.push(rule);
        }
        self.extend(rules)
    }

    /// Restricts the transfer to the paths listed in `list` (relative to `source_root`, one a
    /// line; blank lines and lines starting with `#` skipped; a leading `./` or `/` ignored),
    /// their ancestor directories (the directories alone, not their other contents) and, for
    /// a listed directory, everything under it.
    ///
    /// Each listed path is looked up (`lstat`, so a symlink is a symlink) under `source_root`:
    /// one that does not exist, or a path with a `..` component, is an error naming it and
    /// its line. The list becomes anchored include rules (`+ /a/` for the ancestor `a`,
    /// `+ /a/b` for a file, `+ /a/b/` and `+ /a/b/**` for a directory), followed by `- /**`,
    /// which excludes everything else. Rules added before this call still apply first; rules
    /// added after it never match anything.
    pub fn files_from(self, source_root: &Path, list: &Path) -> Result<Filter, FilterError> {
        let text = read(list)?;
        let mut seen = HashSet::new();
        let mut rules = Vec::new();
        let mut push = |include: bool, pattern: Vec<u8>, rules: &mut Vec<Rule>| {
            if seen.insert(pattern.clone()) {
                // Built from escaped literal names: always a valid pattern.
                rules.push(Rule::parse(include, &pattern)?);
            }
            Ok::<(), FilterError>(())
        };
        for (number, line) in lines(&text) {
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let bad = |message: String| FilterError::Line {
                path: list.to_path_buf(),
                line: number,
                message,
            };
            let shown = String::from_utf8_lossy(line);
            let mut parts = Vec::new();
            for part in line.split(|&b| b == b'/') {
                match part {
                    b"" | b"." => {}
                    b".." => {
                        return Err(bad(format!(
                            "{shown:?} goes up with \"..\"; list paths inside the source"
                        )));
                    }
                    part => parts.push(part),
                }
            }
            if parts.is_empty() {
                // The source root itself: everything.
                push(true, b"/**".to_vec(), &mut rules)?;
                continue;
            }
            let mut pattern = Vec::new();
            for (depth, part) in parts.iter().enumerate() {
                pattern.push(b'/');
                escape_into(part, &mut pattern);
                if depth + 1 < parts.len() {
                    let mut ancestor = pattern.clone();
                    ancestor.push(b'/');
                    push(true, ancestor, &mut rules)?;
                }
            }
            let rel = parts.join(&b'/');
            let on_disk = source_root.join(OsStr::from_bytes(&rel));
            let meta = std::fs::symlink_metadata(&on_disk).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    bad(format!(
                        "{shown:?} does not exist in the source {}",
                        source_root.display()
                    ))
                } else {
                    bad(format!("cannot look up {}: {e}", on_disk.display()))
                }
            })?;
            if meta.is_dir() {
                let mut dir = pattern.clone();
                dir.push(b'/');
                push(true, dir, &mut rules)?;
                pattern.extend_from_slice(b"/**");
            }
            push(true, pattern, &mut rules)?;
        }
        rules.push(Rule::parse(false, b"/**")?);
        self.extend(rules)
    }

    /// Whether the entry at `rel` (relative to the transfer root, `/`-separated) is included,
    /// going by the entry alone: the first rule that matches decides, and an entry no rule
    /// matches is included. Its ancestors are not checked (the scan never asks about the
    /// contents of an excluded directory); [`Filter::transfers`] checks them too.
    pub fn decide(&self, rel: &[u8], is_dir: bool) -> bool {
        self.first_match(rel, is_dir)
            .is_none_or(|index| self.rules[index].include)
    }

    /// The opposite of [`Filter::decide`]: true when a rule excludes the entry.
    pub fn excludes(&self, rel: &[u8], is_dir: bool) -> bool {
        !self.decide(rel, is_dir)
    }

    /// Whether the entry at `rel` would be transferred: it and every directory above it
    /// (below the transfer root) are included.
    pub fn transfers(&self, rel: &[u8], is_dir: bool) -> bool {
        rel.iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .all(|(at, _)| self.decide(&rel[..at], true))
            && self.decide(rel, is_dir)
    }

    /// The rules in order, each as `+ PATTERN` or `- PATTERN` with the pattern exactly as
    /// given, for [`Filter::from_rules`] on the other side.
    pub fn to_rules(&self) -> Vec<Vec<u8>> {
        self.rules
            .iter()
            .map(|rule| {
                let mut out = Vec::with_capacity(rule.pattern.len() + 2);
                out.extend_from_slice(if rule.include { b"+ " } else { b"- " });
                out.extend_from_slice(&rule.pattern);
                out
            })
            .collect()
    }

    /// Builds the filter that [`Filter::to_rules`] described: the same rules, the same
    /// decisions.
    pub fn from_rules<R: AsRef<[u8]>>(rules: &[R]) -> Result<Filter, FilterError> {
        let rules = rules
            .iter()
            .map(|rule| {
                let rule = rule.as_ref();
                match rule {
                    [b'+', b' ', pattern @ ..] => Rule::parse(true, pattern),
                    [b'-', b' ', pattern @ ..] => Rule::parse(false, pattern),
                    _ => Err(FilterError::Rule {
                        rule: String::from_utf8_lossy(rule).into_owned(),
                    }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Filter::new().extend(rules)
    }

    /// Appends rules and rebuilds the glob sets once.
    fn extend(mut self, rules: Vec<Rule>) -> Result<Filter, FilterError> {
        if rules.is_empty() {
            return Ok(self);
        }
        self.rules.extend(rules);
        self.compiled = Compiled::build(&self.rules)?;
        Ok(self)
    }

    /// The index of the first rule matching the entry, if any.
    fn first_match(&self, rel: &[u8], is_dir: bool) -> Option<usize> {
        if self.rules.is_empty() {
            return None;
        }
        let eligible = |index: &usize| is_dir || !self.rules[*index].dir_only;
        let mut first = None;
        let mut hits = Vec::new();
        if !self.compiled.plain_rules.is_empty() {
            let candidate = Candidate::new(Path::new(OsStr::from_bytes(rel)));
            self.compiled
                .plain
                .matches_candidate_into(&candidate, &mut hits);
            first = hits
                .iter()
                .map(|&hit| self.compiled.plain_rules[hit])
                .filter(eligible)
                .min();
        }
        if !self.compiled.widened_rules.is_empty() {
            let wide = widen(rel);
            let candidate = Candidate::new(Path::new(wide.as_str()));
            self.compiled
                .widened
                .matches_candidate_into(&candidate, &mut hits);
            let wide_first = hits
                .iter()
                .map(|&hit| self.compiled.widened_rules[hit])
                .filter(eligible)
                .min();
            first = match (first, wide_first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        first
    }
}

impl Compiled {
    fn build(rules: &[Rule]) -> Result<Compiled, FilterError> {
        let mut plain = GlobSetBuilder::new();
        let mut widened = GlobSetBuilder::new();
        let mut compiled = Compiled::default();
        for (index, rule) in rules.iter().enumerate() {
            if rule.widened {
                widened.add(rule.glob.clone());
                compiled.widened_rules.push(index);
            } else {
                plain.add(rule.glob.clone());
                compiled.plain_rules.push(index);
            }
        }
        let too_big = |e: globset::Error| FilterError::Pattern {
            pattern: format!("({} rules together)", rules.len()),
            reason: e.to_string(),
        };
        compiled.plain = plain.build().map_err(too_big)?;
        compiled.widened = widened.build().map_err(too_big)?;
        Ok(compiled)
    }
}

impl Rule {
    fn parse(include: bool, pattern: &[u8]) -> Result<Rule, FilterError> {
        let bad = |reason: &str| FilterError::Pattern {
            pattern: String::from_utf8_lossy(pattern).into_owned(),
            reason: reason.to_owned(),
        };
        if pattern.is_empty() {
            return Err(bad("the pattern is empty"));
        }
        let mut body = pattern;
        let leading = body.starts_with(b"/");
        while let [b'/', rest @ ..] = body {
            body = rest;
        }
        let dir_only = body.ends_with(b"/");
        while let [rest @ .., b'/'] = body {
            body = rest;
        }
        if body.is_empty() {
            return Err(bad(
                "it names the transfer root, which is never filtered; to match everything use /**",
            ));
        }
        let anchored = leading || body.contains(&b'/');
        let mut source = Vec::with_capacity(body.len() + 3);
        if !anchored {
            source.extend_from_slice(b"**/");
        }
        source.extend_from_slice(body);
        let widened = std::str::from_utf8(&source).is_err();
        let text = widen(&source);
        let glob = GlobBuilder::new(&text)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| bad(&e.kind().to_string()))?;
        Ok(Rule {
            include,
            pattern: pattern.to_vec(),
            dir_only,
            glob,
            widened,
        })
    }
}

/// Bytes as a string the glob library accepts: UTF-8 as it is, and each byte that is not part
/// of valid UTF-8 as one character of the last private-use plane (U+10FF80 to U+10FFFF), the
/// same for a pattern and for the paths it is matched against. (A name really holding those
/// characters could then match such a pattern's raw bytes: no real file system names files
/// that way.)
fn widen(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for &byte in chunk.invalid() {
            // 0x10FF00 + a byte is at most U+10FFFF: always a valid character.
            out.extend(char::from_u32(0x10_FF00 + u32::from(byte)));
        }
    }
    out
}

/// Appends `name` with every glob metacharacter escaped, so the pattern matches just it.
fn escape_into(name: &[u8], out: &mut Vec<u8>) {
    for &byte in name {
        if matches!(byte, b'\\' | b'*' | b'?' | b'[' | b']' | b'{' | b'}') {
            out.push(b'\\');
        }
        out.push(byte);
    }
}

fn read(path: &Path) -> Result<Vec<u8>, FilterError> {
    std::fs::read(path).map_err(|source| FilterError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The lines of a file with their numbers (from 1), without `\n` or a `\r` before it.
fn lines(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    text.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .enumerate()
        .map(|(at, line)| (at + 1, line))
        .filter(|_| !text.is_empty())
}
