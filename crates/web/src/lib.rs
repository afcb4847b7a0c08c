//! The web UI (`web/`, a TypeScript single-page app) as built by Vite into `web/dist`,
//! embedded at compile time (see `build.rs`). No HTTP types here: the server's `web` module
//! turns a [`lookup`] into a response.
//!
//! - Files under `assets/` have content hashes in their names: cached for a year, immutable.
//! - Everything else (`index.html`, the favicon) is revalidated on every load (`no-cache` with
//!   an ETag), so a new kobako binary is picked up at once.
//! - A path that is no file is a route of the app: [`lookup`] returns `index.html` for it
//!   (SPA fallback), except for paths that look like a missing file (a dot in the last
//!   segment), which are 404s.

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Path inside `dist`, without a leading `/`.
    pub path: &'static str,
    pub content_type: &'static str,
    /// Quoted strong ETag (hash of the content).
    pub etag: &'static str,
    /// Content-hashed name: cache forever.
    pub immutable: bool,
    pub data: &'static [u8],
}

impl Asset {
    /// The `Cache-Control` value to send with it.
    pub fn cache_control(&self) -> &'static str {
        if self.immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/files.rs"));

/// Whether the UI was built when this binary was (web/dist existed).
pub fn embedded() -> bool {
    !FILES.is_empty()
}

/// What to answer for a GET of `path` (the URL path, e.g. `/labs/x`); `None`: 404.
pub fn lookup(path: &str) -> Option<&'static Asset> {
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|s| s == "..") {
        return None;
    }
    let rel = if rel.is_empty() { "index.html" } else { rel };
    if let Some(a) = FILES.iter().find(|a| a.path == rel) {
        return Some(a);
    }
    let last = rel.rsplit('/').next().unwrap_or("");
    if last.contains('.') || rel.starts_with("assets/") {
        return None;
    }
    FILES.iter().find(|a| a.path == "index.html")
}

/// The page served at `/` when the binary was built without the UI.
pub const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>kobako</title>\
<h1>kobako: the web UI was not built into this binary</h1>\
<p>Build it with <code>scripts/build.sh</code> (which runs <code>npm ci</code> and \
<code>npm run build</code> in <code>web/</code>) and rebuild kobako. The API is at \
<a href=\"/api/v1/openapi.json\">/api/v1</a>.</p>\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_rules() {
        if !embedded() {
            assert!(lookup("/").is_none());
            return;
        }
        assert_eq!(lookup("/").unwrap().path, "index.html");
        assert_eq!(lookup("/labs/x").unwrap().path, "index.html");
        assert_eq!(lookup("/admin/users").unwrap().path, "index.html");
        assert!(lookup("/assets/nope-123.js").is_none());
        assert!(lookup("/favicon-missing.png").is_none());
        assert!(lookup("/../etc/passwd").is_none());
        let idx = lookup("/index.html").unwrap();
        assert_eq!(idx.cache_control(), "no-cache");
        assert!(idx.content_type.starts_with("text/html"));
        let js = FILES.iter().find(|a| a.path.ends_with(".js")).unwrap();
        assert!(js.immutable && js.content_type.starts_with("text/javascript"));
    }
}
