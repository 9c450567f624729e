//! The shape of `src/` (STYLE.md, "Shape of the request path"): no import cycles between
//! modules, and no file over 600 lines. Read from the source files themselves, so a change
//! that breaks either fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Longest file allowed in `src/` (tests included; split them by concern).
const MAX_LINES: usize = 600;

/// Module path (`["proxy", "call"]`) → source, for every file under `src/`.
fn modules() -> BTreeMap<Vec<String>, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<Vec<String>, String>, root: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out, root);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).unwrap().with_extension("");
                let mut module: Vec<String> = relative
                    .iter()
                    .map(|part| part.to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    module.last().map(String::as_str),
                    Some("lib" | "main" | "mod")
                ) {
                    module.pop();
                }
                out.insert(module, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &mut out, &root);
    out
}

/// Every `crate::…`, `super::…` and `self::…` path in `source`, outside its unit tests.
fn paths(source: &str) -> Vec<Vec<String>> {
    let code = source
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or(source);
    let mut found = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        for (at, _) in code.match_indices(start) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &code[at..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            found.push(
                rest[..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
    found
}

/// The module a path names, resolved from module `from`: its longest known prefix.
fn resolve(from: &[String], path: &[String], known: &BTreeMap<Vec<String>, String>) -> Vec<String> {
    let mut base: Vec<String> = match path[0].as_str() {
        "crate" => Vec::new(),
        _ => from.to_vec(),
    };
    let mut parts = &path[1..];
    if path[0] == "super" {
        base.pop();
        while parts.first().is_some_and(|p| p == "super") {
            base.pop();
            parts = &parts[1..];
        }
    }
    for part in parts {
        let mut next = base.clone();
        next.push(part.clone());
        if !known.contains_key(&next) {
            break;
        }
        base = next;
    }
    base
}

/// Edges between sibling modules: a reference from `a::x` to `a::y::z` is `a::x → a::y`;
/// a child naming its ancestor is the tree itself, not an edge.
fn sibling_edges() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let known = modules();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, source) in &known {
        if module.last().is_some_and(|m| m == "tests") {
            continue;
        }
        for path in paths(source) {
            let target = resolve(module, &path, &known);
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue;
            }
            edges
                .entry(module[..=common].to_vec())
                .or_default()
                .insert(target[..=common].to_vec());
        }
    }
    edges
}

/// No module reaches itself through the modules it imports.
#[test]
fn src_has_no_import_cycles() {
    let edges = sibling_edges();
    assert!(
        edges.contains_key(&vec!["proxy".to_owned()]),
        "the scan found the crate's imports"
    );
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<Vec<Vec<String>>> = vec![vec![start.clone()]];
        while let Some(trail) = stack.pop() {
            let last = trail.last().unwrap();
            for next in edges.get(last).into_iter().flatten() {
                let cycle = trail.iter().map(|m| m.join("::")).collect::<Vec<_>>();
                assert!(
                    next != start,
                    "import cycle: {} → {}",
                    cycle.join(" → "),
                    start.join("::")
                );
                if seen.insert(next.clone()) {
                    let mut longer = trail.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
}

/// The scan sees a cycle when there is one: two sibling modules importing each other.
#[test]
fn the_cycle_scan_finds_a_planted_cycle() {
    let known: BTreeMap<Vec<String>, String> = [
        (vec!["a".to_owned()], "use crate::b::X;".to_owned()),
        (vec!["b".to_owned()], "use crate::a::Y;".to_owned()),
    ]
    .into_iter()
    .collect();
    let from_a = resolve(
        &["a".to_owned()],
        &paths(&known[&vec!["a".to_owned()]])[0],
        &known,
    );
    let from_b = resolve(
        &["b".to_owned()],
        &paths(&known[&vec!["b".to_owned()]])[0],
        &known,
    );
    assert_eq!(
        (from_a, from_b),
        (vec!["b".to_owned()], vec!["a".to_owned()])
    );
}

/// No file in `src/` is over 600 lines.
#[test]
fn no_src_file_is_over_600_lines() {
    let long: Vec<String> = modules()
        .iter()
        .map(|(module, source)| (module.join("::"), source.lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .map(|(module, lines)| format!("{module}: {lines}"))
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}
