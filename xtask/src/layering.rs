//! The kernel's module layering, checked from its source: within `hypervisor/src/vmm/`, no module
//! imports one that (directly or through others) imports it back. A cycle there means two jobs share
//! one module's worth of state; the fix is a module below both (as `vcpu` is for `exits`, `irq_exits`
//! and `events`). Tests are left out: they may reach anything. A host test, so `cargo xtask test`
//! fails on a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Which sibling modules each module of `dir` names (`super::NAME` or `crate::vmm::NAME`), from the
/// non-test part of each `NAME.rs`.
fn imports(dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files: BTreeMap<String, String> = std::fs::read_dir(dir)
        .expect("vmm directory")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let module = name.strip_suffix(".rs")?.to_string();
            (module != "mod").then(|| (module, std::fs::read_to_string(e.path()).unwrap()))
        })
        .collect();
    let names: Vec<&String> = files.keys().collect();
    files
        .iter()
        .map(|(module, text)| {
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            let uses = names
                .iter()
                .filter(|&&other| other != module)
                .filter(|&&other| {
                    [format!("super::{other}"), format!("crate::vmm::{other}")]
                        .iter()
                        .any(|path| {
                            code.match_indices(path.as_str()).any(|(at, _)| {
                                let next = code[at + path.len()..].chars().next();
                                !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
                            })
                        })
                })
                .map(|&other| other.clone())
                .collect();
            (module.clone(), uses)
        })
        .collect()
}

/// Every module that can reach itself through the import graph.
fn modules_on_cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    graph
        .keys()
        .filter(|start| {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<&String> = graph[*start].iter().collect();
            while let Some(module) = stack.pop() {
                if module == *start {
                    return true;
                }
                if seen.insert(module) {
                    stack.extend(graph.get(module).into_iter().flatten());
                }
            }
            false
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_modules_import_no_cycle() {
        let dir = crate::paths::workspace_root().join("hypervisor/src/vmm");
        let graph = imports(&dir);
        assert!(graph.contains_key("exits") && graph["exits"].contains("vcpu"));
        let cyclic = modules_on_cycles(&graph);
        assert!(cyclic.is_empty(), "modules on import cycles: {cyclic:?}");
    }

    #[test]
    fn a_cycle_is_found() {
        let graph = BTreeMap::from([
            ("a".to_string(), BTreeSet::from(["b".to_string()])),
            ("b".to_string(), BTreeSet::from(["c".to_string()])),
            ("c".to_string(), BTreeSet::from(["a".to_string()])),
            ("d".to_string(), BTreeSet::from(["a".to_string()])),
        ]);
        assert_eq!(modules_on_cycles(&graph), ["a", "b", "c"]);
    }
}
