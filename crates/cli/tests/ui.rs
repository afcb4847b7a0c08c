//! The web UI end to end: `web/e2e/ui.mjs` drives headless Chromium (Debian's `chromium`
//! through playwright-core) against a real `kobako serve` with real VMs: log in, users, the
//! lab editor and its validation errors, create and start a lab, VMs turning ready in the
//! graph, a console command, a 100 ms link delay seen in the RTT, cut/heal, member and viewer
//! restrictions, stop and delete. First-page load and event-to-screen latency are measured
//! and printed; screenshots go to `target/ui-screenshots` (`KOBAKO_UI_SHOTS` overrides).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;
use common::text;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn web_ui_end_to_end() {
    let chromium = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Chromium is missing: the web UI test needs Debian's `chromium` (scripts/setup.sh installs it)");
    let web = repo().join("web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "web/node_modules is missing: scripts/build.sh installs it (npm ci in web/)"
    );

    let lab = format!("ui-e2e-{}", std::process::id() % 100_000);
    let mut server = Server::start();
    server.labs = vec![lab.clone(), format!("{lab}-m"), format!("{lab}-ws")];
    let password = server.admin_password();

    let shots = std::env::var("KOBAKO_UI_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target/ui-screenshots"));
    let mut node = Command::new("node")
        .arg(web.join("e2e/ui.mjs"))
        .current_dir(&web)
        .env("KOBAKO_UI_URL", server.base_url())
        .env("KOBAKO_UI_ADMIN_PASSWORD", &password)
        .env("KOBAKO_UI_LAB", &lab)
        .env("KOBAKO_UI_SHOTS", &shots)
        .env("CHROMIUM", chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (scripts/setup.sh installs nodejs)");
    let mut out = String::new();
    node.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    node.stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = node.wait().unwrap();
    // The measurements, for the test log (`--nocapture`) and next to the screenshots.
    println!("{out}");
    let _ = std::fs::write(shots.join("results.txt"), &out);
    assert!(
        st.success(),
        "web UI end-to-end test failed ({st}); screenshots in {}\n--- stdout\n{out}\n--- stderr\n{err}\n--- kobako serve\n{}",
        shots.display(),
        server.log_text()
    );
    assert!(out.contains("first page load (") && out.contains("event-to-screen latency"));
    assert!(out.contains(" passed, 0 failed"), "{out}");

    // The lab was stopped and deleted through the UI: nothing is left running.
    server.labs.clear();
    server.kill9();
    server.assert_clean();
}

/// The UI is served with the right types and caching, with the API beside it.
#[test]
fn web_ui_static_files() {
    let server = Server::start();
    let url = server.base_url();
    let curl = |path: &str, extra: &[&str]| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = Command::new("curl")
                .args(["-sk", "-D", "-", "-o", "/dev/null"])
                .args(extra)
                .arg(format!("{url}{path}"))
                .output()
                .unwrap();
            if o.status.success() || Instant::now() > deadline {
                return text(&o.stdout).to_lowercase();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let index = curl("/", &[]);
    let status = |h: &str| {
        h.lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(status(&index), "200", "{index}");
    assert!(index.contains("content-type: text/html"), "{index}");
    assert!(index.contains("cache-control: no-cache"), "{index}");
    let etag = index
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("etag")
        .trim()
        .to_string();
    let again = curl("/", &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(status(&again), "304", "{again}");
    // App routes get the app; API paths keep the API's JSON 404.
    let route = curl("/labs/some-lab", &[]);
    assert!(
        status(&route) == "200" && route.contains("text/html"),
        "{route}"
    );
    let api = curl("/api/v1/nope", &[]);
    assert!(
        status(&api) == "404" && api.contains("application/json"),
        "{api}"
    );
    let missing = curl("/assets/missing-0000.js", &[]);
    assert_eq!(status(&missing), "404", "{missing}");
    // The hashed bundle index.html names: JavaScript, cached for a year.
    let body = Command::new("curl")
        .args(["-sk", &format!("{url}/")])
        .output()
        .unwrap();
    let html = text(&body.stdout);
    let js = html
        .split('"')
        .find(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .unwrap_or_else(|| panic!("no script in {html}"));
    let asset = curl(js, &[]);
    assert!(asset.contains("content-type: text/javascript"), "{asset}");
    assert!(asset.contains("max-age=31536000, immutable"), "{asset}");
}
