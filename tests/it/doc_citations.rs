//! Every document the code and docs cite exists, and so does every section they cite.
//!
//! A citation is a path ending in `.md` (resolved from the repository root, else from the citing
//! file's folder) and the `§N` tokens after it on the same line; `§N` with no path before it on
//! its line belongs to the nearest path cited above it in the same file (in Markdown, to the file
//! itself). A section exists when the cited file has a heading that starts with that number
//! (`## 3. Lifecycle`, `### 6.4 Test vectors`). In Rust only comments are read (string literals
//! hold file names, not citations). Short names of documents the repository does not have
//! (`design §3`, `anchors §4`, `style §3`, `ens-api`) are refused wherever they appear; outside
//! specifications are cited as "section N", not `§N`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// What is checked, relative to the repository root.
const SCANNED: &[&str] = &[
    "src",
    "tests",
    "benches",
    "docs",
    "charts",
    "scripts",
    "bench",
    "README.md",
    "BENCHMARKS.md",
];

/// Endings of the text files read.
const TEXT: &[&str] = &["rs", "md", "sh", "js", "lua", "yaml", "txt", "toml"];

#[test]
fn every_cited_document_and_section_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for top in SCANNED {
        collect(&root.join(top), &mut files);
    }
    assert!(
        files.len() > 50,
        "found only {} files to check under {root:?}",
        files.len()
    );
    let this_file = root.join(file!());
    let mut headings = Headings::default();
    let mut problems = Vec::new();
    let mut cited = 0;
    for path in files.iter().filter(|p| **p != this_file) {
        let Ok(text) = fs::read_to_string(path) else {
            continue; // not UTF-8: not a document that cites anything
        };
        let rel = path.strip_prefix(root).unwrap_or(path);
        let found = check(rel, &text, &mut |doc| headings.of(&root.join(doc)));
        cited += found.sections;
        problems.extend(found.problems);
    }
    assert!(
        problems.is_empty(),
        "{} citation(s) point at nothing (regenerate with the new names, or add the heading):\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The tree cites well over a hundred sections; far fewer means the scanner stopped seeing them.
    assert!(cited > 100, "only {cited} section citations found");
}

#[test]
fn a_missing_section_a_missing_file_and_an_old_name_are_reported() {
    let mut docs = fake_docs();
    let text = "\
//! Module doc (`docs/p.md` §3.1, §9).
/// Bare §2 follows docs/p.md above; §4 is missing.
/// See docs/none.md §1.
/// Old style: design §3, and ens-api.md §6.
fn f() {}
";
    let found = check(Path::new("src/x.rs"), text, &mut |d| docs(d));
    assert_eq!(
        found.problems,
        [
            "src/x.rs:1: docs/p.md has no section §9",
            "src/x.rs:2: docs/p.md has no section §4",
            "src/x.rs:3: docs/none.md does not exist",
            "src/x.rs:4: `design §` names a document the repository does not have",
            "src/x.rs:4: `ens-api` names a document the repository does not have",
            "src/x.rs:4: ens-api.md does not exist",
        ]
    );
}

#[test]
fn bare_sections_need_a_document_and_markdown_cites_itself() {
    let mut docs = fake_docs();
    let rust = "/// ENS answers 304 (§8.2).\nfn f() {}\n";
    let found = check(Path::new("src/y.rs"), rust, &mut |d| docs(d));
    assert_eq!(
        found.problems,
        ["src/y.rs:1: §8.2 without a document cited before it"]
    );

    let markdown = "# Doc\n## 2. Two\nAs §2 says, and docs/p.md §3.1; not §7.\n";
    let found = check(Path::new("docs/p.md"), markdown, &mut |d| docs(d));
    assert_eq!(found.problems, ["docs/p.md:3: docs/p.md has no section §7"]);
    assert_eq!(found.sections, 3);

    // Strings in Rust are not citations; URLs are not repository paths.
    let code = "let f = \"receiver.md\"; // https://example.com/README.md\n";
    let found = check(Path::new("benches/z.rs"), code, &mut |d| docs(d));
    assert!(found.problems.is_empty(), "{:?}", found.problems);
}

/// `docs/p.md` with sections 2, 3, 3.1 and 9.3; nothing else exists.
fn fake_docs() -> impl FnMut(&Path) -> Option<Vec<String>> {
    |doc| {
        (doc == Path::new("docs/p.md")).then(|| ["2", "3", "3.1", "9.3"].map(String::from).to_vec())
    }
}

/// What one file cites: the problems found and how many section citations were checked.
#[derive(Debug, Default)]
struct Found {
    problems: Vec<String>,
    sections: usize,
}

/// Checks one file. `headings(doc)` gives the section numbers of a repository path, or `None`
/// when it does not exist.
fn check(rel: &Path, text: &str, headings: &mut dyn FnMut(&Path) -> Option<Vec<String>>) -> Found {
    let ext = rel.extension().and_then(|e| e.to_str()).unwrap_or("");
    let markdown = ext == "md";
    let dir = rel.parent().unwrap_or(Path::new(""));
    let mut found = Found::default();
    // The document a bare `§N` belongs to; `Some(None)`: one that does not exist (reported once).
    let mut current: Option<Option<PathBuf>> = markdown.then(|| Some(rel.to_path_buf()));
    for (n, line) in text.lines().enumerate() {
        let at = format!("{}:{}", rel.display(), n + 1);
        for old in old_names(line) {
            found.problems.push(format!(
                "{at}: `{old}` names a document the repository does not have"
            ));
        }
        let read = if ext == "rs" { comment(line) } else { line };
        let mut on_line: Option<Option<PathBuf>> = None;
        for token in tokens(read) {
            match token {
                Token::Doc(cited) => {
                    let resolved = resolve(&cited, dir, headings);
                    if resolved.is_none() {
                        found.problems.push(format!("{at}: {cited} does not exist"));
                    }
                    on_line = Some(resolved);
                    if !markdown {
                        current = on_line.clone();
                    }
                }
                Token::Section(number) => match on_line.as_ref().or(current.as_ref()) {
                    None => found.problems.push(format!(
                        "{at}: §{number} without a document cited before it"
                    )),
                    Some(None) => {}
                    Some(Some(doc)) => {
                        found.sections += 1;
                        if !headings(doc).is_some_and(|h| h.contains(&number)) {
                            found
                                .problems
                                .push(format!("{at}: {} has no section §{number}", doc.display()));
                        }
                    }
                },
            }
        }
    }
    found
}

/// A cited repository path, or the number of a cited section.
#[derive(Debug, PartialEq)]
enum Token {
    Doc(String),
    Section(String),
}

/// The `.md` paths and `§N` numbers of a line, in order. URLs are skipped.
fn tokens(line: &str) -> Vec<Token> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        if c == '§' {
            let rest = &line[start + c.len_utf8()..];
            let number: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.');
            if !number.is_empty() {
                out.push(Token::Section(number.to_string()));
            }
            i += 1;
            continue;
        }
        if is_path(c) && (i == 0 || !is_path(chars[i - 1].1)) {
            let end = chars[i..]
                .iter()
                .find(|(_, c)| !is_path(*c))
                .map_or(line.len(), |(at, _)| *at);
            let word = &line[start..end];
            let url = word.starts_with("//") || line[..start].ends_with(':');
            // `x.md` (and `x.md.` at the end of a sentence), not `x.mdx`.
            let word = word.trim_end_matches('.');
            if !url && word.ends_with(".md") && word.len() > 3 {
                out.push(Token::Doc(word.trim_start_matches("./").to_string()));
            }
            i += line[start..end].chars().count();
            continue;
        }
        i += 1;
    }
    out
}

/// The comment part of a Rust line: after a `//` at the start or after white space.
fn comment(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return trimmed;
    }
    line.find(" //").map_or("", |at| &line[at..])
}

/// Old short names of documents that live outside the repository.
fn old_names(line: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (name, pattern) in [
        ("design §", "design §"),
        ("anchors §", "anchors §"),
        ("style §", "style §"),
    ] {
        let mut from = 0;
        while let Some(at) = line[from..].find(pattern) {
            let at = from + at;
            let before = line[..at].chars().next_back();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '/' || c == '.') {
                out.push(name);
            }
            from = at + pattern.len();
        }
    }
    if line.contains("ens-api") {
        out.push("ens-api");
    }
    if line.contains("shared/") && line.contains(".md") {
        out.push("shared/");
    }
    out
}

/// A cited path as a repository path: from the root, else from the citing file's folder.
fn resolve(
    cited: &str,
    dir: &Path,
    headings: &mut dyn FnMut(&Path) -> Option<Vec<String>>,
) -> Option<PathBuf> {
    [PathBuf::from(cited), dir.join(cited)]
        .into_iter()
        .find(|p| headings(p).is_some())
}

/// Section numbers of Markdown files, read once each.
#[derive(Default)]
struct Headings(HashMap<PathBuf, Option<Vec<String>>>);

impl Headings {
    fn of(&mut self, path: &Path) -> Option<Vec<String>> {
        self.0
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                let text = fs::read_to_string(path).ok()?;
                Some(text.lines().filter_map(heading_number).collect())
            })
            .clone()
    }
}

/// `## 3. Lifecycle` → `3`, `#### 5.5.1 Transactional email` → `5.5.1`.
fn heading_number(line: &str) -> Option<String> {
    let rest = line.trim_start_matches('#');
    if rest.len() == line.len() || !rest.starts_with(' ') {
        return None;
    }
    let number: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let number = number.trim_end_matches('.');
    (!number.is_empty()).then(|| number.to_string())
}

/// Text files below `path` (or `path` itself), skipping installed packages.
fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if TEXT.contains(&ext) {
            out.push(path.to_path_buf());
        }
        return;
    }
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.file_name()
            .is_some_and(|n| n == "node_modules" || n == "target")
        {
            continue;
        }
        collect(&p, out);
    }
}
