//! OpenID Connect login (optional): the authorization-code flow with PKCE against one issuer.
//!
//! `kobako serve --oidc-issuer URL --oidc-client-id ID [--oidc-client-secret-file F]` turns it
//! on. The browser goes to `GET /api/v1/auth/oidc/login`, which redirects to the issuer's
//! authorization endpoint with a random `state`, `nonce` and PKCE challenge kept here for ten
//! minutes; the issuer sends the browser back to `/api/v1/auth/oidc/callback?code&state`; the
//! server exchanges the code (with the PKCE verifier and the client secret) at the token
//! endpoint, verifies the ID token (signature against the issuer's JWKS — asymmetric algorithms
//! only —, issuer, audience, expiry, nonce) and signs the user in with kobako's own token pair,
//! exactly as a password login would: the rest of the API never sees the IdP.
//!
//! Users: the `preferred_username` claim (or the one `--oidc-username-claim` names; `email`
//! is the fallback, its local part) is the kobako user name. The first login creates the user
//! with `--oidc-role` (default `viewer`: an admin promotes) and binds it to the token's `sub`;
//! later logins must carry the same `sub`. A local (password) user of that name is never taken
//! over. OIDC users have no password (`kobako user passwd` can give them one).
//!
//! Hardening: an `email` that names the user must come with `email_verified: true` (anyone
//! can put any address in an unverified profile); `--oidc-allowed-domain` and
//! `--oidc-allowed-group` restrict who may sign in at all (the verified email's domain, the
//! `groups` claim). The `state` is bound to the browser that started the login by an HttpOnly
//! cookie holding a random value (its hash is kept with the state), so a login link started
//! in one browser — an attacker's — cannot be completed in another (login CSRF). Logins in
//! flight are capped ([`PENDING_MAX`]) and expire after ten minutes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine;
use kobako_state::Db;
use serde::Deserialize;
use sha2::Digest;

use crate::auth::{self, Role, TokenPair};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// How long a started login may take at the identity provider.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Most logins in flight (a flood of `/login` calls cannot grow memory without bound).
pub const PENDING_MAX: usize = 10_000;
/// The cookie binding a login's `state` to the browser that started it.
pub const BINDING_COOKIE: &str = "kobako_oidc";
/// How long the issuer's metadata and keys are trusted before they are fetched again.
const META_TTL: Duration = Duration::from_secs(3600);

/// `kobako serve --oidc-*`.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer URL (its `/.well-known/openid-configuration` is read).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Role of users created by their first OIDC login.
    pub role: Role,
    /// The callback URL registered at the issuer (default: from the request's Host header).
    pub redirect_url: Option<String>,
    /// Claim that names the user (default `preferred_username`, then `email`).
    pub username_claim: String,
    /// When not empty: only users whose verified email is in one of these domains.
    pub allowed_domains: Vec<String>,
    /// When not empty: only users whose `groups` claim holds one of these.
    pub allowed_groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

struct Pending {
    /// SHA-256 of the browser binding cookie's value.
    binding: String,
    nonce: String,
    verifier: String,
    redirect_uri: String,
    created: Instant,
}

struct Meta {
    discovery: Discovery,
    keys: jsonwebtoken::jwk::JwkSet,
    fetched: Instant,
}

pub struct Oidc {
    pub cfg: OidcConfig,
    pending: Mutex<HashMap<String, Pending>>,
    meta: Mutex<Option<Meta>>,
    http: ureq::Agent,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn idp_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "identity_provider",
        format!("OpenID Connect: {what}: {e}"),
    )
}

impl Oidc {
    pub fn new(mut cfg: OidcConfig) -> anyhow::Result<Oidc> {
        while cfg.issuer.ends_with('/') {
            cfg.issuer.pop();
        }
        let url = &cfg.issuer;
        let local = url.starts_with("http://127.0.0.1")
            || url.starts_with("http://localhost")
            || url.starts_with("http://[::1]");
        if !url.starts_with("https://") && !local {
            anyhow::bail!(
                "--oidc-issuer {url}: the issuer must be an https:// URL (plain http only on localhost)"
            );
        }
        if cfg.client_id.is_empty() {
            anyhow::bail!("--oidc-client-id is empty: give the client id registered at the issuer");
        }
        Ok(Oidc {
            cfg,
            pending: Mutex::new(HashMap::new()),
            meta: Mutex::new(None),
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .redirects(0)
                .build(),
        })
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str, what: &str) -> ApiResult<T> {
        let r = self.http.get(url).call().map_err(|e| idp_error(what, e))?;
        r.into_json::<T>()
            .map_err(|e| idp_error(what, format!("{url}: not the expected JSON ({e})")))
    }

    /// The issuer's metadata and keys (`refresh`: fetch again, e.g. for an unknown key id).
    fn meta(&self, refresh: bool) -> ApiResult<(Discovery, jsonwebtoken::jwk::JwkSet)> {
        {
            let m = self.meta.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = m.as_ref() {
                if !refresh && m.fetched.elapsed() < META_TTL {
                    return Ok((m.discovery.clone(), m.keys.clone()));
                }
            }
        }
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer);
        let d: Discovery = self.get_json(&url, "read the issuer's metadata")?;
        if d.issuer.trim_end_matches('/') != self.cfg.issuer {
            return Err(idp_error(
                "issuer metadata",
                format!(
                    "{url} names issuer {}, not {} (check --oidc-issuer)",
                    d.issuer, self.cfg.issuer
                ),
            ));
        }
        let keys: jsonwebtoken::jwk::JwkSet =
            self.get_json(&d.jwks_uri, "read the issuer's signing keys")?;
        *self.meta.lock().unwrap_or_else(|e| e.into_inner()) = Some(Meta {
            discovery: d.clone(),
            keys: keys.clone(),
            fetched: Instant::now(),
        });
        Ok((d, keys))
    }

    /// Starts a login: the URL to send the browser to and the value of the binding cookie to
    /// set in that browser (call from a blocking thread).
    pub fn begin(&self, redirect_uri: String) -> ApiResult<(String, String)> {
        let (d, _) = self.meta(false)?;
        let state = auth::random_token(24);
        let binding = auth::random_token(24);
        let nonce = auth::random_token(24);
        let verifier = auth::random_token(48);
        let challenge = b64(&sha2::Sha256::digest(verifier.as_bytes()));
        let mut url = format!(
            "{}{}response_type=code&scope=openid%20profile%20email&client_id={}&redirect_uri={}&state={state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
            d.authorization_endpoint,
            if d.authorization_endpoint.contains('?') { '&' } else { '?' },
            enc(&self.cfg.client_id),
            enc(&redirect_uri),
        );
        url.shrink_to_fit();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|_, v| v.created.elapsed() < PENDING_TTL);
        if p.len() >= PENDING_MAX {
            return Err(ApiError::unavailable(
                "too many OpenID Connect logins in progress; try again in a few minutes",
            ));
        }
        p.insert(
            state,
            Pending {
                binding: auth::token_hash(&binding),
                nonce,
                verifier,
                redirect_uri,
                created: Instant::now(),
            },
        );
        Ok((url, binding))
    }

    /// Logins in flight.
    pub fn pending_len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Finishes a login: checks the browser's binding cookie, exchanges `code`, verifies the
    /// ID token, returns (subject, user name).
    pub fn finish(
        &self,
        code: &str,
        state: &str,
        binding: Option<&str>,
    ) -> ApiResult<(String, String)> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(state)
            .filter(|p| p.created.elapsed() < PENDING_TTL)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "unknown or expired login state: start again at /api/v1/auth/oidc/login",
                )
            })?;
        // The state is used up either way: a link sent to someone else is good for nothing.
        if binding.map(auth::token_hash).as_deref() != Some(pending.binding.as_str()) {
            return Err(ApiError::bad_request(
                "this login was started in another browser (or its cookie was blocked): \
                 start again at /api/v1/auth/oidc/login in this browser",
            ));
        }
        let (d, _) = self.meta(false)?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", pending.redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
            ("client_id", self.cfg.client_id.as_str()),
        ];
        if let Some(s) = &self.cfg.client_secret {
            form.push(("client_secret", s.as_str()));
        }
        let resp = match self.http.post(&d.token_endpoint).send_form(&form) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let body = r.into_string().unwrap_or_default();
                return Err(ApiError::unauthorized(format!(
                    "the identity provider refused the login code ({code}): {}",
                    body.chars().take(300).collect::<String>()
                )));
            }
            Err(e) => return Err(idp_error("exchange the login code", e)),
        };
        #[derive(Deserialize)]
        struct TokenResponse {
            id_token: Option<String>,
        }
        let t: TokenResponse = resp
            .into_json()
            .map_err(|e| idp_error("token response", e))?;
        let id_token = t.id_token.ok_or_else(|| {
            idp_error(
                "token response",
                "no id_token (is the `openid` scope allowed?)",
            )
        })?;
        let claims = self.verify(&id_token)?;
        if claims.get("nonce").and_then(|v| v.as_str()) != Some(pending.nonce.as_str()) {
            return Err(ApiError::unauthorized(
                "the ID token's nonce does not match this login (replayed token?)",
            ));
        }
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the ID token has no subject (`sub`)"))?
            .to_string();
        let name = self.user_name(&claims)?;
        self.check_allowed(&claims)?;
        Ok((sub, name))
    }

    /// `--oidc-allowed-domain` / `--oidc-allowed-group`.
    fn check_allowed(&self, claims: &serde_json::Value) -> ApiResult<()> {
        if !self.cfg.allowed_domains.is_empty() {
            let email = verified_email(claims).ok_or_else(|| {
                ApiError::forbidden(
                    "this server only admits some email domains, and the ID token has no \
                     verified email (`email` with `email_verified: true`)",
                )
            })?;
            let domain = email.rsplit_once('@').map(|x| x.1).unwrap_or_default();
            if !self
                .cfg
                .allowed_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
            {
                return Err(ApiError::forbidden(format!(
                    "email domain '{domain}' is not admitted on this server (ask an admin)"
                )));
            }
        }
        if !self.cfg.allowed_groups.is_empty() {
            let groups: Vec<&str> = claims
                .get("groups")
                .and_then(|g| g.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            if !groups
                .iter()
                .any(|g| self.cfg.allowed_groups.iter().any(|a| a == g))
            {
                return Err(ApiError::forbidden(
                    "none of your groups at the identity provider is admitted on this server \
                     (ask an admin)",
                ));
            }
        }
        Ok(())
    }

    /// Signature (asymmetric algorithms only), issuer, audience and expiry of an ID token.
    fn verify(&self, token: &str) -> ApiResult<serde_json::Value> {
        use jsonwebtoken::Algorithm as A;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::unauthorized(format!("the ID token is malformed: {e}")))?;
        if !matches!(
            header.alg,
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 | A::ES256 | A::ES384
        ) {
            return Err(ApiError::unauthorized(format!(
                "the ID token is signed with {:?}; only the issuer's public-key algorithms are accepted",
                header.alg
            )));
        }
        let find = |keys: &jsonwebtoken::jwk::JwkSet| match &header.kid {
            Some(kid) => keys.find(kid).cloned(),
            None if keys.keys.len() == 1 => keys.keys.first().cloned(),
            None => None,
        };
        let (_, keys) = self.meta(false)?;
        let jwk = match find(&keys) {
            Some(k) => k,
            // Keys rotate: read them again once before refusing.
            None => find(&self.meta(true)?.1).ok_or_else(|| {
                ApiError::unauthorized(format!(
                    "the ID token's key {:?} is not among the issuer's keys",
                    header.kid
                ))
            })?,
        };
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
            .map_err(|e| idp_error("the issuer's signing key", e))?;
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.set_audience(&[&self.cfg.client_id]);
        v.set_issuer(&[&self.cfg.issuer, &format!("{}/", self.cfg.issuer)]);
        v.leeway = 60;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                ApiError::unauthorized(match e.kind() {
                    K::ExpiredSignature => "the ID token has expired".to_string(),
                    K::InvalidAudience => format!(
                        "the ID token is for another client (audience is not {})",
                        self.cfg.client_id
                    ),
                    K::InvalidIssuer => {
                        format!("the ID token was not issued by {}", self.cfg.issuer)
                    }
                    K::InvalidSignature => "the ID token's signature is not valid".to_string(),
                    _ => format!("the ID token was refused: {e}"),
                })
            })
    }

    fn user_name(&self, claims: &serde_json::Value) -> ApiResult<String> {
        let pick = |c: &str| claims.get(c).and_then(|v| v.as_str()).map(str::to_string);
        // An email names the user only when the provider verified it.
        let from_email = || -> ApiResult<Option<String>> {
            if pick("email").is_none() {
                return Ok(None);
            }
            let e = verified_email(claims).ok_or_else(|| {
                ApiError::forbidden(
                    "the ID token's email is not verified (`email_verified` is not true): \
                     verify it at the identity provider first",
                )
            })?;
            Ok(Some(e.split('@').next().unwrap_or_default().to_string()))
        };
        let raw = if self.cfg.username_claim == "email" {
            from_email()?
        } else {
            match pick(&self.cfg.username_claim) {
                Some(n) => Some(n),
                None => from_email()?,
            }
        };
        let raw = raw.ok_or_else(|| {
            ApiError::forbidden(format!(
                "the ID token has no `{}` or `email` claim to name a kobako user \
                     (set --oidc-username-claim)",
                self.cfg.username_claim
            ))
        })?;
        let name = raw.to_ascii_lowercase();
        auth::check_user_name(&name).map_err(|_| {
            ApiError::forbidden(format!(
                "'{raw}' from the ID token is not a valid kobako user name (1-64 of a-z 0-9 . _ -)"
            ))
        })?;
        if name == "root" {
            return Err(ApiError::forbidden(
                "'root' cannot sign in through OpenID Connect",
            ));
        }
        Ok(name)
    }
}

/// The `email` claim when `email_verified` is true (a JSON boolean, or the string "true" as
/// some providers send it).
fn verified_email(claims: &serde_json::Value) -> Option<&str> {
    let verified = match claims.get("email_verified") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => false,
    };
    claims
        .get("email")
        .and_then(|v| v.as_str())
        .filter(|_| verified)
}

/// The binding cookie's value from a request's `Cookie` headers.
pub fn binding_from(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(BINDING_COOKIE)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_string)
        })
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The user `name` bound to `sub`: created with `role` on first login; a local user or one
/// bound to another subject is refused.
pub fn sign_in(
    state: &AppState,
    db: &Db,
    sub: &str,
    name: &str,
    role: Role,
) -> ApiResult<TokenPair> {
    let now = kobako_state::now_ms();
    let bound = db.user_oidc_subject(name)?;
    match bound {
        None => {
            db.insert_oidc_user(name, role.as_str(), sub, now)?;
            let detail = format!(
                "user created by its first OpenID Connect login (role {}, subject {sub})",
                role.as_str()
            );
            db.insert_audit(&kobako_state::NewAudit {
                ts_ms: now,
                user: name,
                method: "GET",
                path: "/api/v1/auth/oidc/callback",
                status: 200,
                detail: Some(&detail),
            })?;
        }
        Some(Some(s)) if s == sub => {}
        Some(Some(_)) => {
            return Err(ApiError::forbidden(format!(
                "user '{name}' belongs to another identity at the issuer"
            )))
        }
        Some(None) => {
            return Err(ApiError::forbidden(format!(
                "'{name}' is a local user of this server: sign in with its password \
                 (an admin may delete it to let the OIDC identity take the name)"
            )))
        }
    }
    let user = auth::get_user(db, name)?.ok_or_else(|| ApiError::internal("user vanished"))?;
    auth::issue_pair(state, db, user)
}

/// The page the callback answers with: stores the session where the web UI keeps it and
/// opens the UI.
pub fn session_page(pair: &TokenPair) -> String {
    let session = serde_json::json!({
        "access": pair.access_token,
        "refresh": pair.refresh_token,
        "expiresIn": pair.expires_in,
        "user": pair.user,
    });
    // `<` escaped so no claim can close the script element.
    let js = session.to_string().replace('<', "\\u003c");
    format!(
        "<!doctype html><meta charset=utf-8><title>kobako: signed in</title>\
         <p>Signed in as {}. Opening kobako…</p>\
         <script>const s={js};localStorage.setItem('kobako.session',JSON.stringify(\
         {{access:s.access,refresh:s.refresh,expires:Date.now()+s.expiresIn*1000,user:s.user}}));\
         location.replace('/');</script>",
        html_escape(&pair.user.name)
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_must_be_https_unless_local() {
        let cfg = |issuer: &str| OidcConfig {
            issuer: issuer.into(),
            client_id: "kobako".into(),
            client_secret: None,
            role: Role::Viewer,
            redirect_url: None,
            username_claim: "preferred_username".into(),
            allowed_domains: vec![],
            allowed_groups: vec![],
        };
        assert!(Oidc::new(cfg("http://idp.example.com")).is_err());
        assert!(Oidc::new(cfg("https://idp.example.com/")).is_ok());
        assert_eq!(
            Oidc::new(cfg("https://idp.example.com///"))
                .unwrap()
                .cfg
                .issuer,
            "https://idp.example.com"
        );
        assert!(Oidc::new(cfg("http://127.0.0.1:9999")).is_ok());
    }

    fn oidc(claim: &str, domains: &[&str], groups: &[&str]) -> Oidc {
        Oidc::new(OidcConfig {
            issuer: "https://idp.example.com".into(),
            client_id: "kobako".into(),
            client_secret: None,
            role: Role::Viewer,
            redirect_url: None,
            username_claim: claim.into(),
            allowed_domains: domains.iter().map(|d| d.to_string()).collect(),
            allowed_groups: groups.iter().map(|d| d.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn an_email_names_a_user_only_when_verified() {
        let o = oidc("email", &[], &[]);
        let c = |v: serde_json::Value| {
            let mut c = serde_json::json!({"email": "Boss@example.org"});
            if !v.is_null() {
                c["email_verified"] = v;
            }
            c
        };
        assert_eq!(o.user_name(&c(true.into())).unwrap(), "boss");
        assert_eq!(o.user_name(&c("true".into())).unwrap(), "boss");
        for v in [
            false.into(),
            serde_json::Value::Null,
            "yes".into(),
            1.into(),
        ] {
            let e = o.user_name(&c(v.clone())).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{v}");
        }
        // The default claim falls back to the email, with the same rule.
        let o = oidc("preferred_username", &[], &[]);
        assert!(o.user_name(&c(false.into())).is_err());
        let named = serde_json::json!({"preferred_username": "ann", "email": "x@y"});
        assert_eq!(o.user_name(&named).unwrap(), "ann");
    }

    #[test]
    fn allowed_domains_and_groups() {
        let o = oidc("preferred_username", &["example.org"], &["ops"]);
        let c = |email: &str, verified: bool, groups: serde_json::Value| serde_json::json!({"email": email, "email_verified": verified, "groups": groups});
        assert!(o
            .check_allowed(&c("a@EXAMPLE.org", true, serde_json::json!(["ops"])))
            .is_ok());
        for bad in [
            c("a@example.org", false, serde_json::json!(["ops"])),
            c("a@sub.example.org", true, serde_json::json!(["ops"])),
            c("a@example.org.evil", true, serde_json::json!(["ops"])),
            c("a@example.org", true, serde_json::json!("ops")),
            c("a@example.org", true, serde_json::json!(["dev"])),
        ] {
            assert!(o.check_allowed(&bad).is_err(), "{bad}");
        }
        assert!(oidc("x", &[], &[])
            .check_allowed(&serde_json::json!({}))
            .is_ok());
    }

    #[test]
    fn the_binding_cookie_is_read_among_others() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            "cookie",
            "a=1; kobako_oidcx=no; kobako_oidc=yes".parse().unwrap(),
        );
        assert_eq!(binding_from(&h).as_deref(), Some("yes"));
        assert_eq!(binding_from(&axum::http::HeaderMap::new()), None);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            enc("https://h:1/a b?x=1&y"),
            "https%3A%2F%2Fh%3A1%2Fa%20b%3Fx%3D1%26y"
        );
    }

    #[test]
    fn session_page_cannot_be_broken_out_of() {
        let page = session_page(&TokenPair {
            access_token: "</script><script>alert(1)</script>".into(),
            token_type: "Bearer".into(),
            expires_in: 900,
            refresh_token: "r".into(),
            user: auth::User {
                name: "ann".into(),
                role: Role::Viewer,
                max_vms: None,
                max_memory_mib: None,
                max_disk_mib: None,
                created_ms: 0,
            },
        });
        assert_eq!(page.matches("</script>").count(), 1, "{page}");
    }
}
