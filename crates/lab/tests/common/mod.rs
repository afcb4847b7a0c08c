//! Helpers of the lab-file tests: load a file against a fixed host, expect errors or a lab,
//! find one error by its message and check where it points.
#![allow(dead_code)]

use kobako_lab::spec::{self, HostLimits, Lab, MemMib, SpecError, SpecErrors};

pub fn host() -> HostLimits {
    HostLimits {
        cpus: 2,
        memory: MemMib(4096),
    }
}

pub fn errors(text: &str) -> SpecErrors {
    match spec::load_str("lab.yaml", text, &host()) {
        Ok(_) => panic!("expected errors in:\n{text}"),
        Err(e) => e,
    }
}

pub fn ok(text: &str) -> Lab {
    spec::load_one("lab.yaml", text, &host()).unwrap_or_else(|e| panic!("{e}"))
}

/// The one error whose message contains `needle`, checked for line, column and path.
pub fn find(e: &SpecErrors, needle: &str, line: usize, col: usize, path: &str) -> SpecError {
    let hits: Vec<&SpecError> = e
        .errors()
        .iter()
        .filter(|x| x.message.contains(needle))
        .collect();
    assert_eq!(hits.len(), 1, "want one error with {needle:?}, got:\n{e}");
    let x = hits[0].clone();
    assert_eq!(
        (x.pos.line, x.pos.col, x.path.to_string().as_str()),
        (line, col, path),
        "position/path of {needle:?} in:\n{e}"
    );
    assert_eq!(x.file, "lab.yaml");
    x
}
