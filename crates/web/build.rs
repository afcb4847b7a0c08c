//! Embeds `web/dist` (the built web UI) into the crate: one `include_bytes!` per file, with
//! its content type and an ETag computed here. A missing `dist` is not an error (Rust-only
//! builds and tests keep working): the server then answers `/` with a page saying how to
//! build the UI, and this prints a cargo warning.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let dist = match std::env::var_os("KOBAKO_WEB_DIST") {
        Some(d) => PathBuf::from(d),
        None => manifest.join("../../web/dist"),
    };
    println!("cargo:rerun-if-env-changed=KOBAKO_WEB_DIST");
    println!("cargo:rerun-if-changed={}", dist.display());
    println!(
        "cargo:rerun-if-changed={}",
        dist.join("index.html").display()
    );
    println!("cargo:rerun-if-changed={}", dist.join("assets").display());

    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        walk(&dist, &dist, &mut files);
        files.sort();
    } else {
        println!(
            "cargo:warning=web UI not embedded: {} has no index.html (scripts/build.sh builds it; or `npm --prefix web ci && npm --prefix web run build`)",
            dist.display()
        );
    }
    let mut out = String::from("pub(crate) static FILES: &[Asset] = &[\n");
    for (rel, abs) in &files {
        println!("cargo:rerun-if-changed={}", abs.display());
        let data = std::fs::read(abs).unwrap();
        let _ = writeln!(
            out,
            "    Asset {{ path: {rel:?}, content_type: {ct:?}, etag: \"\\\"{tag:016x}\\\"\", immutable: {imm}, data: include_bytes!({abs:?}) }},",
            ct = content_type(rel),
            tag = fnv1a(&data),
            imm = rel.starts_with("assets/"),
            abs = abs.display().to_string(),
        );
    }
    out.push_str("];\n");
    let dst = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("files.rs");
    std::fs::write(dst, out).unwrap();
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            println!("cargo:rerun-if-changed={}", p.display());
            walk(root, &p, out);
        } else if p.is_file() {
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            // Build bookkeeping, not served.
            if !rel.starts_with('.') {
                out.push((rel, p.canonicalize().unwrap()));
            }
        }
    }
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
