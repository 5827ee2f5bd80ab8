//! The floors of `src/lib.rs`, checked: a module of the crate uses only modules on floors below
//! its own. The floors are read from the crate documentation itself, so the chart a reader sees
//! is the rule that is enforced.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// `module → floor`, from the `//! - floor N: [`a`]: … [`b`]: …` lines of src/lib.rs.
fn floors(lib: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let mut current = None;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            break;
        };
        // A floor's entry starts with "- floor N:" and goes on over indented lines.
        if let Some(rest) = doc.trim().strip_prefix("- floor ") {
            let (n, _) = rest.split_once(':').expect("`- floor N:`");
            current = Some(n.trim().parse::<u32>().expect("floor number"));
        } else if !doc.starts_with("   ") {
            current = None;
        }
        let doc = doc.trim();
        let Some(floor) = current else { continue };
        // Module links: "[`name`]:" (a link followed by a colon names the floor's modules).
        let mut rest = doc;
        while let Some(i) = rest.find("[`") {
            let tail = &rest[i + 2..];
            let Some(j) = tail.find("`]") else { break };
            let name = &tail[..j];
            if tail[j + 2..].starts_with(':') && !name.contains("::") {
                out.insert(name.to_string(), floor);
            }
            rest = &tail[j + 2..];
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under src/ belongs to.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every `crate::name` a file mentions (code, `use` lines and doc links alike).
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let tail = &rest[i + "crate::".len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // `kcdproxy::crate::` never occurs; `$crate::` in macros is the crate too.
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn no_module_uses_one_on_its_own_floor_or_above() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let floors = floors(&lib);
    assert!(
        floors.len() >= 10,
        "the floor list in src/lib.rs was not read: {floors:?}"
    );
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&own) = floors.get(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is on no floor",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("read");
        for used in crate_paths(&text) {
            if used == module {
                continue;
            }
            match floors.get(&used) {
                Some(&f) if f < own => {}
                Some(&f) => wrong.push(format!(
                    "{}: `{module}` (floor {own}) uses `crate::{used}` (floor {f})",
                    file.strip_prefix(root).unwrap_or(file).display()
                )),
                None => {}
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn every_module_of_the_crate_is_on_a_floor() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = fs::read_to_string(root.join("src/lib.rs")).expect("src/lib.rs");
    let floors = floors(&lib);
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ") {
            let m = m.trim_end_matches(';');
            assert!(floors.contains_key(m), "`{m}` is declared but on no floor");
        }
    }
}
