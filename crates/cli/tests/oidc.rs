//! OpenID Connect login of `kobako serve` over real HTTPS, against an identity provider played
//! by this test: a small HTTP server with discovery, JWKS and token endpoints, ID tokens signed
//! by `openssl` with a fresh RSA key. The browser's part (following redirects) is played by the
//! test too. What is real: kobako's server, its discovery and key fetching, the PKCE code
//! exchange, the ID token checks, user creation and the token pair it hands out.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::server::Server;
use common::KOBAKO;
use serde_json::{json, Value};
use sha2::Digest;

// ---- the identity provider ------------------------------------------------------------------

fn b64url(b: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What the provider will put into the ID token for one authorization code.
struct Grant {
    challenge: String,
    claims: Value,
    /// Sign with HS256 using this secret instead of the RSA key (algorithm confusion).
    hs256: Option<String>,
}

struct Idp {
    url: String,
    grants: Arc<Mutex<HashMap<String, Grant>>>,
    _dir: tempfile::TempDir,
}

impl Idp {
    fn start() -> Idp {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let st = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .expect("openssl (Debian package openssl) makes the provider's key");
        assert!(st.success());
        let m = Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&key)
            .output()
            .unwrap();
        let hex = String::from_utf8(m.stdout).unwrap();
        let hex = hex.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
        let grants: Arc<Mutex<HashMap<String, Grant>>> = Default::default();
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
            "n": b64url(&n), "e": "AQAB"}]});
        let (u, g, k) = (url.clone(), grants.clone(), key.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let (method, path, body) = read_request(&mut s);
                let (status, resp) = match (method.as_str(), path.as_str()) {
                    ("GET", "/.well-known/openid-configuration") => (
                        200,
                        json!({"issuer": u, "authorization_endpoint": format!("{u}/authorize"),
                            "token_endpoint": format!("{u}/token"), "jwks_uri": format!("{u}/jwks")}),
                    ),
                    ("GET", "/jwks") => (200, jwks.clone()),
                    ("POST", "/token") => token(&g, &k, &body),
                    _ => (404, json!({"error": "not_found"})),
                };
                let b = resp.to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                    b.len()
                );
            }
        });
        Idp {
            url,
            grants,
            _dir: dir,
        }
    }

    /// A signed JWT.
    fn sign(key: &Path, claims: &Value, hs256: Option<&str>) -> String {
        let alg = if hs256.is_some() { "HS256" } else { "RS256" };
        let input = format!(
            "{}.{}",
            b64url(
                json!({"alg": alg, "kid": "k1", "typ": "JWT"})
                    .to_string()
                    .as_bytes()
            ),
            b64url(claims.to_string().as_bytes())
        );
        let mut c = Command::new("openssl");
        match hs256 {
            Some(secret) => c.args(["dgst", "-sha256", "-binary", "-hmac", secret]),
            None => c.args(["dgst", "-sha256", "-binary", "-sign"]).arg(key),
        };
        let mut p = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let sig = p.wait_with_output().unwrap().stdout;
        format!("{input}.{}", b64url(&sig))
    }
}

fn read_request(s: &mut std::net::TcpStream) -> (String, String, String) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap_or(0);
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut len = 0;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    let _ = r.read_exact(&mut body);
    (method, path, String::from_utf8_lossy(&body).into_owned())
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// The token endpoint: the code must be known, the PKCE verifier must match its challenge and
/// the client must authenticate.
fn token(grants: &Mutex<HashMap<String, Grant>>, key: &Path, body: &str) -> (u16, Value) {
    let f = form(body);
    let Some(g) = grants.lock().unwrap().remove(&f["code"]) else {
        return (400, json!({"error": "invalid_grant"}));
    };
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    if b64url(&sha2::Sha256::digest(verifier.as_bytes())) != g.challenge {
        return (
            400,
            json!({"error": "invalid_grant", "error_description": "PKCE"}),
        );
    }
    if f.get("client_id").map(String::as_str) != Some("kobako")
        || f.get("client_secret").map(String::as_str) != Some("s3cret")
    {
        return (401, json!({"error": "invalid_client"}));
    }
    let id = Idp::sign(key, &g.claims, g.hs256.as_deref());
    (
        200,
        json!({"id_token": id, "access_token": "x", "token_type": "Bearer"}),
    )
}

// ---- the server ------------------------------------------------------------------------------

/// The one server fixture (`common::server`) as the browser sees it: with the login's binding
/// cookie (`kobako_oidc`), as the last login set it.
struct Browser {
    srv: Server,
    cookie: Mutex<Option<String>>,
}

impl std::ops::Deref for Browser {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.srv
    }
}

impl Browser {
    fn start(extra: &[&str]) -> Browser {
        Browser {
            srv: Server::start_with(extra),
            cookie: Mutex::new(None),
        }
    }

    fn log(&self) -> String {
        self.srv.log_text()
    }

    /// (status, headers we care about, body text).
    fn get(&self, path: &str, token: Option<&str>) -> (u16, Option<String>, String) {
        let mut r = self.agent.get(&self.url(path));
        if let Some(t) = token {
            r = r.set("authorization", &format!("Bearer {t}"));
        }
        if let Some(c) = self.cookie.lock().unwrap().as_deref() {
            r = r.set("cookie", &format!("kobako_oidc={c}"));
        }
        let resp = match r.call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("GET {path}: {e}"),
        };
        let status = resp.status();
        let loc = resp.header("location").map(str::to_string);
        (status, loc, resp.into_string().unwrap())
    }
}

/// Starts a login like a browser: returns the callback URL's query parameters the provider
/// would send back, after registering `claims` (with the login's nonce) for a fresh code.
fn authorize(srv: &Browser, idp: &Idp, claims: Value, hs256: Option<&str>) -> (String, String) {
    // A client that does not follow redirects, to read the Location.
    let (status, loc, body) = {
        let a = ureq::AgentBuilder::new()
            .redirects(0)
            .tls_config(tls_of(srv))
            .build();
        let resp = match a.get(&srv.url("/auth/oidc/login")).call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("login: {e}"),
        };
        // The browser keeps the login's binding cookie.
        if let Some(c) = resp.header("set-cookie") {
            assert!(
                c.contains("HttpOnly") && c.contains("Secure") && c.contains("SameSite=Lax"),
                "{c}"
            );
            let v = c
                .strip_prefix("kobako_oidc=")
                .and_then(|r| r.split(';').next())
                .unwrap_or_else(|| panic!("{c}"));
            *srv.cookie.lock().unwrap() = Some(v.to_string());
        }
        (
            resp.status(),
            resp.header("location").map(str::to_string),
            resp.into_string().unwrap_or_default(),
        )
    };
    assert_eq!(status, 302, "{body}");
    let loc = loc.unwrap();
    assert!(loc.starts_with(&format!("{}/authorize?", idp.url)), "{loc}");
    let q = form(loc.split_once('?').unwrap().1);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "kobako");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["scope"].split(' ').any(|s| s == "openid"), "{loc}");
    let mut claims = claims;
    if claims.get("nonce").is_none() {
        claims["nonce"] = json!(q["nonce"]);
    }
    let code = format!(
        "code-{}",
        q["state"].len() + idp.grants.lock().unwrap().len()
    );
    let code = format!("{code}-{}", &q["state"][..8]);
    idp.grants.lock().unwrap().insert(
        code.clone(),
        Grant {
            challenge: q["code_challenge"].clone(),
            claims,
            hs256: hs256.map(str::to_string),
        },
    );
    (code, q["state"].clone())
}

fn tls_of(srv: &Browser) -> Arc<rustls::ClientConfig> {
    common::tls_for(&srv.state.path().join("server/tls/cert.pem"))
}

fn claims(idp: &Idp, sub: &str, user: &str) -> Value {
    json!({"iss": idp.url, "aud": "kobako", "sub": sub, "preferred_username": user,
        "email": format!("{user}@example.org"), "iat": now(), "exp": now() + 300})
}

/// The access token inside the callback's page.
fn session_of(page: &str) -> Value {
    let start = page.find("const s=").expect(page) + "const s=".len();
    let end = page[start..].find(";localStorage").unwrap() + start;
    serde_json::from_str(&page[start..end]).unwrap()
}

#[test]
fn oidc_login_creates_and_signs_in_users_and_refuses_bad_tokens() {
    let idp = Idp::start();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "s3cret\n").unwrap();
    let srv = Browser::start(&[
        "--oidc-issuer",
        &idp.url,
        "--oidc-client-id",
        "kobako",
        "--oidc-client-secret-file",
        secret.path().to_str().unwrap(),
        "--oidc-role",
        "member",
    ]);
    let (s, _, body) = srv.get("/auth/oidc", None);
    assert_eq!(s, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["enabled"], true);
    assert_eq!(info["issuer"], idp.url.as_str());

    // A good login: the user is created with the configured role and can use the API.
    let (code, state) = authorize(&srv, &idp, claims(&idp, "sub-ann", "Ann"), None);
    let (s, _, page) = srv.get(
        &format!("/auth/oidc/callback?code={code}&state={state}"),
        None,
    );
    assert_eq!(s, 200, "{page}\n{}", srv.log());
    let session = session_of(&page);
    let tok = session["access"].as_str().unwrap().to_string();
    let (s, _, me) = srv.get("/auth/me", Some(&tok));
    assert_eq!(s, 200, "{me}");
    let me: Value = serde_json::from_str(&me).unwrap();
    assert_eq!(me["name"], "ann");
    assert_eq!(me["role"], "member");
    let (s, _, labs) = srv.get("/labs", Some(&tok));
    assert_eq!(s, 200, "{labs}");

    // The same state cannot be used twice.
    let (s, _, e) = srv.get(
        &format!("/auth/oidc/callback?code={code}&state={state}"),
        None,
    );
    assert_eq!(s, 400, "{e}");
    assert!(e.contains("unknown or expired login state"), "{e}");

    // Second login of the same subject: the same user, no second account.
    let (code, state) = authorize(&srv, &idp, claims(&idp, "sub-ann", "ann"), None);
    let (s, _, page) = srv.get(
        &format!("/auth/oidc/callback?code={code}&state={state}"),
        None,
    );
    assert_eq!(s, 200, "{page}");
    assert_eq!(session_of(&page)["user"]["name"], "ann");

    // Refusals, each with its reason, and no user created by any of them.
    let bad: Vec<(&str, Value, Option<&str>, u16, &str)> = vec![
        (
            "another subject",
            claims(&idp, "sub-mallory", "ann"),
            None,
            403,
            "another identity",
        ),
        (
            "wrong audience",
            json!({"aud": "other-app"}),
            None,
            401,
            "another client",
        ),
        (
            "expired",
            json!({"exp": now() - 3600, "iat": now() - 7200}),
            None,
            401,
            "expired",
        ),
        (
            "wrong issuer",
            json!({"iss": "http://127.0.0.1:1"}),
            None,
            401,
            "not issued by",
        ),
        (
            "wrong nonce",
            json!({"nonce": "not-the-login-nonce"}),
            None,
            401,
            "nonce",
        ),
        (
            "HS256 with a guessable secret",
            json!({}),
            Some("kobako"),
            401,
            "public-key",
        ),
        (
            "a bad name",
            json!({"preferred_username": "Robert'); DROP"}),
            None,
            403,
            "not a valid kobako user name",
        ),
    ];
    for (what, patch, hs, want, needle) in bad {
        let mut c = claims(&idp, &format!("sub-{what}"), "eve");
        if what == "another subject" {
            c = patch.clone();
        } else {
            for (k, v) in patch.as_object().unwrap() {
                c[k] = v.clone();
            }
        }
        let (code, state) = authorize(&srv, &idp, c, hs);
        let (s, _, e) = srv.get(
            &format!("/auth/oidc/callback?code={code}&state={state}"),
            None,
        );
        assert_eq!(s, want, "{what}: {e}");
        assert!(e.contains(needle), "{what}: {e}");
    }
    let admin_pw =
        std::fs::read_to_string(srv.state.path().join("server/initial-admin-password")).unwrap();
    // (status, body) of a password login.
    let login = |u: &str, p: &str| -> (u16, Value) {
        match srv
            .agent
            .post(&srv.url("/auth/login"))
            .send_json(json!({"username": u, "password": p}))
        {
            Ok(r) | Err(ureq::Error::Status(_, r)) => (r.status(), r.into_json().unwrap()),
            Err(e) => panic!("login {u}: {e}"),
        }
    };
    let (s, admin) = login("admin", admin_pw.trim());
    assert_eq!(s, 200, "{admin}");
    let at = admin["access_token"].as_str().unwrap();
    let (_, _, users) = srv.get("/users", Some(at));
    let users: Value = serde_json::from_str(&users).unwrap();
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["admin", "ann"],
        "refused logins must not create users"
    );

    // A local user's name is never taken over; an OIDC user has no password.
    let (code, state) = authorize(&srv, &idp, claims(&idp, "sub-adm", "admin"), None);
    let (s, _, e) = srv.get(
        &format!("/auth/oidc/callback?code={code}&state={state}"),
        None,
    );
    assert_eq!(s, 403, "{e}");
    assert!(e.contains("local user"), "{e}");
    assert_eq!(login("admin", admin_pw.trim()).0, 200);
    let (s, e) = login("ann", "");
    assert!(
        s == 401 || s == 422,
        "password login of an OIDC user: {s} {e}"
    );

    // The provider reporting a failure, and a callback without a code.
    let (s, _, e) = srv.get(
        "/auth/oidc/callback?error=access_denied&error_description=user%20cancelled&state=x",
        None,
    );
    assert_eq!(s, 401, "{e}");
    assert!(
        e.contains("access_denied") && e.contains("user cancelled"),
        "{e}"
    );
    let (s, _, e) = srv.get("/auth/oidc/callback", None);
    assert_eq!(s, 400, "{e}");

    // The sign-up is in the audit log.
    let (_, _, audit) = srv.get("/audit", Some(at));
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let signups: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/api/v1/auth/oidc/callback")
        .collect();
    assert_eq!(signups.len(), 1, "one sign-up (ann) in {audit}");
    assert_eq!(signups[0]["user"], "ann");
    assert!(!srv.log().contains("panicked"), "{}", srv.log());
}

#[test]
fn an_unreachable_issuer_is_a_clear_502() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let srv = Browser::start(&[
        "--oidc-issuer",
        &format!("http://127.0.0.1:{port}"),
        "--oidc-client-id",
        "kobako",
    ]);
    let (s, _, e) = srv.get("/auth/oidc/login", None);
    assert_eq!(s, 502, "{e}");
    assert!(e.contains("issuer's metadata"), "{e}");
}

#[test]
fn a_non_https_issuer_is_refused_at_start() {
    let out = Command::new(KOBAKO)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--oidc-issuer",
            "http://idp.example.org",
            "--oidc-client-id",
            "kobako",
        ])
        .env("KOBAKO_STATE", tempfile::tempdir().unwrap().path())
        .env("KOBAKO_RUN", tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("must be an https:// URL"), "{e}");
}

// ---- attacks on the login flow (issue 17 item 7) ---------------------------------------------

/// A server signing in at `idp` (client `kobako` with the provider's secret), and `extra` flags.
fn idp_server(idp: &Idp, extra: &[&str]) -> Browser {
    let secret = idp._dir.path().join("client-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let secret = secret.to_str().unwrap().to_string();
    let mut args = vec![
        "--oidc-issuer",
        &idp.url,
        "--oidc-client-id",
        "kobako",
        "--oidc-client-secret-file",
        &secret,
    ];
    args.extend_from_slice(extra);
    Browser::start(&args)
}

/// Users (name list) as the admin sees them.
fn user_names(srv: &Browser) -> Vec<String> {
    let pw =
        std::fs::read_to_string(srv.state.path().join("server/initial-admin-password")).unwrap();
    let r = srv
        .agent
        .post(&srv.url("/auth/login"))
        .send_json(json!({"username": "admin", "password": pw.trim()}))
        .unwrap();
    let at = r.into_json::<Value>().unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, _, users) = srv.get("/users", Some(&at));
    serde_json::from_str::<Value>(&users)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect()
}

fn callback(srv: &Browser, code: &str, state: &str) -> (u16, String) {
    let (s, _, body) = srv.get(
        &format!("/auth/oidc/callback?code={code}&state={state}"),
        None,
    );
    (s, body)
}

/// Login CSRF: the attacker starts a login in their own browser, signs in at the provider as
/// themselves, and makes the victim's browser open the callback link (code and state): the
/// victim would be signed in to the attacker's account. The state is bound to the browser that
/// started it, so the link fails in any other browser (without the cookie, or with its own).
#[test]
fn oidc_login_started_in_another_browser_is_refused() {
    let idp = Idp::start();
    let srv = idp_server(&idp, &[]);
    let (code, state) = authorize(&srv, &idp, claims(&idp, "sub-att", "attacker"), None);
    // The victim's browser: no cookie at all.
    *srv.cookie.lock().unwrap() = None;
    let (s, e) = callback(&srv, &code, &state);
    assert_eq!(s, 400, "{e}");
    assert!(e.contains("started in another browser"), "{e}");

    // The victim's browser with a login of its own in progress (its own cookie).
    let (code, state) = authorize(&srv, &idp, claims(&idp, "sub-att", "attacker"), None);
    let (vcode, vstate) = authorize(&srv, &idp, claims(&idp, "sub-vic", "victim"), None);
    let (s, e) = callback(&srv, &code, &state);
    assert_eq!(s, 400, "{e}");
    assert!(e.contains("started in another browser"), "{e}");
    assert_eq!(user_names(&srv), ["admin"], "nobody signed in");

    // The victim's own login, in its own browser, works.
    let (s, page) = callback(&srv, &vcode, &vstate);
    assert_eq!(s, 200, "{page}");
    assert_eq!(session_of(&page)["user"]["name"], "victim");
}

/// An account at the provider with someone else's address, not verified, used to take the
/// kobako user named after that address.
#[test]
fn oidc_unverified_email_cannot_name_a_user() {
    let idp = Idp::start();
    let srv = idp_server(&idp, &["--oidc-username-claim", "email"]);
    let with_email = |sub: &str, verified: Option<Value>| {
        let mut c = json!({"iss": idp.url, "aud": "kobako", "sub": sub,
            "email": "boss@example.org", "iat": now(), "exp": now() + 300});
        if let Some(v) = verified {
            c["email_verified"] = v;
        }
        c
    };
    for (what, v) in [
        ("email_verified false", Some(json!(false))),
        ("no email_verified", None),
        ("email_verified \"no\"", Some(json!("no"))),
    ] {
        let (code, state) = authorize(&srv, &idp, with_email(&format!("sub-{what}"), v), None);
        let (s, e) = callback(&srv, &code, &state);
        assert_eq!(s, 403, "{what}: {e}");
        assert!(e.contains("not verified"), "{what}: {e}");
    }
    assert_eq!(user_names(&srv), ["admin"]);
    let (code, state) = authorize(&srv, &idp, with_email("sub-boss", Some(json!(true))), None);
    let (s, page) = callback(&srv, &code, &state);
    assert_eq!(s, 200, "{page}");
    assert_eq!(session_of(&page)["user"]["name"], "boss");
}

/// Anyone with an account at a shared provider (a public Google, GitLab) signing in to a
/// server meant for one organisation: --oidc-allowed-domain and --oidc-allowed-group.
#[test]
fn oidc_login_outside_allowed_domains_or_groups_is_refused() {
    let idp = Idp::start();
    let srv = idp_server(
        &idp,
        &[
            "--oidc-allowed-domain",
            "example.org",
            "--oidc-allowed-group",
            "kobako-users",
        ],
    );
    let c = |user: &str, email: &str, verified: bool, groups: Value| {
        json!({"iss": idp.url, "aud": "kobako", "sub": format!("sub-{user}"),
            "preferred_username": user, "email": email, "email_verified": verified,
            "groups": groups, "iat": now(), "exp": now() + 300})
    };
    let refused = [
        (
            "other domain",
            c("out1", "x@evil.org", true, json!(["kobako-users"])),
            "domain 'evil.org'",
        ),
        (
            "look-alike domain",
            c(
                "out2",
                "x@example.org.evil.org",
                true,
                json!(["kobako-users"]),
            ),
            "is not admitted",
        ),
        (
            "unverified email",
            c("out3", "x@example.org", false, json!(["kobako-users"])),
            "verified email",
        ),
        (
            "no group",
            c("out4", "x@example.org", true, json!([])),
            "groups",
        ),
        (
            "other group",
            c("out5", "x@example.org", true, json!(["staff"])),
            "groups",
        ),
    ];
    for (what, claims, needle) in refused {
        let (code, state) = authorize(&srv, &idp, claims, None);
        let (s, e) = callback(&srv, &code, &state);
        assert_eq!(s, 403, "{what}: {e}");
        assert!(e.contains(needle), "{what}: {e}");
    }
    assert_eq!(user_names(&srv), ["admin"], "refused logins created users");
    let (code, state) = authorize(
        &srv,
        &idp,
        c(
            "inside",
            "In@Example.ORG",
            true,
            json!(["staff", "kobako-users"]),
        ),
        None,
    );
    let (s, page) = callback(&srv, &code, &state);
    assert_eq!(s, 200, "{page}");
    assert_eq!(session_of(&page)["user"]["name"], "inside");
}

/// A name recycled through OIDC (issue 17 item 3): a provider account deleted in kobako by an
/// admin, and another account of the provider that takes the same name later, is a new user:
/// it gets nothing of the deleted one (labs, tokens).
#[test]
fn oidc_user_recycling_a_deleted_users_name_inherits_nothing() {
    let idp = Idp::start();
    let srv = idp_server(&idp, &["--oidc-role", "member"]);
    let (code, state) = authorize(&srv, &idp, claims(&idp, "sub-old", "kim"), None);
    let (s, page) = callback(&srv, &code, &state);
    assert_eq!(s, 200, "{page}");
    let old = session_of(&page)["access"].as_str().unwrap().to_string();
    let r = srv
        .agent
        .post(&srv.url("/labs"))
        .set("authorization", &format!("Bearer {old}"))
        .set("content-type", "application/yaml")
        .send_bytes(b"name: kim-lab\nnodes:\n  n:\n    vms:\n      v: { image: tiny }\n")
        .unwrap();
    assert_eq!(r.status(), 201);

    // The admin deletes kim; another account at the provider later signs in as kim.
    let pw =
        std::fs::read_to_string(srv.state.path().join("server/initial-admin-password")).unwrap();
    let admin = srv
        .agent
        .post(&srv.url("/auth/login"))
        .send_json(json!({"username": "admin", "password": pw.trim()}))
        .unwrap()
        .into_json::<Value>()
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = srv
        .agent
        .delete(&srv.url("/users/kim"))
        .set("authorization", &format!("Bearer {admin}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 204);
    let (code, state) = authorize(&srv, &idp, claims(&idp, "sub-new", "kim"), None);
    let (s, page) = callback(&srv, &code, &state);
    assert_eq!(s, 200, "{page}");
    let new = session_of(&page)["access"].as_str().unwrap().to_string();
    let (s, _, labs) = srv.get("/labs", Some(&new));
    assert_eq!(s, 200);
    assert_eq!(
        labs.trim(),
        "[]",
        "the new kim sees none of the old kim's labs"
    );
    let (s, _, labs) = srv.get("/labs", Some(&admin));
    assert_eq!(labs.trim(), "[]", "the old kim's lab is gone: {s}");
    let (s, _, e) = srv.get("/labs", Some(&old));
    assert_eq!(s, 401, "the old kim's token is dead: {e}");
}
