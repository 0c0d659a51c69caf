//! Determinism traps the simulation cannot see by itself, caught in the source.
//!
//! An unbiased `tokio::select!` picks among ready branches with tokio's thread RNG, which is
//! seeded from a process-wide counter, not from madsim's seed: a world then replays one way in
//! a fresh process and another way after other worlds in the same process (`fuzz`, the
//! in-process half of `check-determinism`). The room proxy's loops had three such selects, and
//! cluster seeds diverged in-process once node pauses made two branches ready at once.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read a source dir") {
        let p = e.expect("a dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_select_in_code_the_simulation_runs_is_biased() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("../src"), &mut files);
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut unbiased = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read a source file");
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if !l.contains("select! {") || l.trim_start().starts_with("//") {
                continue;
            }
            // `biased;` may follow comment lines that say why the order is what it is.
            let next = lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| !l.starts_with("//"));
            if next != Some("biased;") {
                unbiased.push(format!("{}:{}", f.display(), i + 1));
            }
        }
    }
    assert!(
        files.len() > 50,
        "found the sources ({} files)",
        files.len()
    );
    assert!(
        unbiased.is_empty(),
        "unbiased select! (add `biased;` and order the branches on purpose): {unbiased:?}"
    );
}
