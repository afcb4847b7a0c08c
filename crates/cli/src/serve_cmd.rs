//! `kobako serve` (the REST API server, crate `kobako-server`) and its local admin commands
//! `kobako user ...` and `kobako token ...`, which work on the state database directly (root
//! on this host owns it; no running server is needed).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kobako_image::store::Store;
use kobako_image::{debian, tiny};
use kobako_server::auth::{self, Role};
use kobako_server::{Hooks, ServeConfig};

use crate::vm_cmd::runtime;

#[derive(Args)]
pub struct ServeArgs {
    /// HTTPS address (`0.0.0.0:8443` to serve other machines).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Serve only the Unix socket (no HTTPS).
    #[arg(long)]
    pub no_https: bool,
    /// Unix socket for the local CLI (default `$KOBAKO_RUN/server.sock`, i.e.
    /// /run/kobako/server.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// TLS certificate (PEM); default: a self-signed one made on first start.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// OpenID Connect: the issuer URL (turns on "sign in with ..." in the API and the UI).
    #[arg(long, requires = "oidc_client_id")]
    pub oidc_issuer: Option<String>,
    /// OpenID Connect: the client id registered at the issuer.
    #[arg(long, requires = "oidc_issuer")]
    pub oidc_client_id: Option<String>,
    /// OpenID Connect: a file holding the client secret (none: a public client, PKCE only).
    #[arg(long, requires = "oidc_issuer")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// OpenID Connect: role of users created by their first login (admin, member, viewer).
    #[arg(long, default_value = "viewer")]
    pub oidc_role: String,
    /// OpenID Connect: the callback URL registered at the issuer
    /// (default https://<Host of the request>/api/v1/auth/oidc/callback).
    #[arg(long, requires = "oidc_issuer")]
    pub oidc_redirect_url: Option<String>,
    /// OpenID Connect: the ID token claim naming the kobako user (then `email`'s local part).
    #[arg(long, default_value = "preferred_username")]
    pub oidc_username_claim: String,
    /// Admit only users whose verified email is in this domain (repeat for several).
    #[arg(long = "oidc-allowed-domain", requires = "oidc_issuer")]
    pub oidc_allowed_domains: Vec<String>,
    /// Admit only users whose `groups` claim holds this group (repeat for several).
    #[arg(long = "oidc-allowed-group", requires = "oidc_issuer")]
    pub oidc_allowed_groups: Vec<String>,
}

/// `kobako serve`.
pub fn serve(a: ServeArgs) -> Result<i32> {
    // Every password check allocates argon2's 19 MiB work area. glibc serves such a block from
    // a per-thread arena once one has been freed (its mmap threshold adapts upwards) and keeps
    // it: the soak (scripts/soak.sh) saw the server grow by 19 MiB steps per blocking thread,
    // and 8 rounds of 4 concurrent logins took it from 67 to 555 MB. A fixed threshold keeps
    // blocks of 1 MiB and more in mmap, returned to the system when freed (the same rounds:
    // flat at ~52 MB).
    // SAFETY: mallopt sets an allocator parameter (it takes the allocator's own locks).
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    let state_dir = kobako_state::state_root();
    let oidc = match (a.oidc_issuer, a.oidc_client_id) {
        (Some(issuer), Some(client_id)) => {
            let role = Role::parse(&a.oidc_role).with_context(|| {
                format!("--oidc-role {}: use admin, member or viewer", a.oidc_role)
            })?;
            let client_secret = match &a.oidc_client_secret_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("--oidc-client-secret-file {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            Some(kobako_server::oidc::OidcConfig {
                issuer,
                client_id,
                client_secret,
                role,
                redirect_url: a.oidc_redirect_url,
                username_claim: a.oidc_username_claim,
                allowed_domains: a.oidc_allowed_domains,
                allowed_groups: a.oidc_allowed_groups,
            })
        }
        _ => None,
    };
    let cfg = ServeConfig {
        oidc,
        listen: (!a.no_https).then_some(a.listen),
        socket: Some(a.socket.unwrap_or_else(kobako_server::default_socket)),
        cert: a.cert,
        key: a.key,
        state_dir: state_dir.clone(),
    };
    let rt: Arc<dyn kobako_runtime::Runtime> = Arc::new(runtime()?);
    let hooks = Hooks {
        runtime: rt,
        // Lab VMs boot as with `kobako up` (accelerator, warm clones, free page reporting).
        boot: crate::config::boot_settings()?,
        build_image: Some(Arc::new(build_image)),
        missing_artifacts: Some(Arc::new(kobako_lab::controller::missing_artifacts)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(kobako_server::serve(cfg.clone(), hooks, |s| {
        if let Some(addr) = cfg.listen {
            eprintln!("kobako serve: https://{addr}/api/v1 (OpenAPI: /api/v1/openapi.json)");
        }
        if let Some(c) = &s.cert {
            eprintln!("  certificate: {} (clients: curl --cacert {})", c.display(), c.display());
        }
        if let Some(sock) = &cfg.socket {
            eprintln!(
                "  local socket: {} (root only: curl --unix-socket {} http://localhost/api/v1/labs)",
                sock.display(),
                sock.display()
            );
        }
        if s.admin_password.is_some() {
            // The password itself never goes to stderr (journals and log files keep it).
            let file = kobako_server::server_dir(&state_dir).join("initial-admin-password");
            eprintln!(
                "  first start: created user 'admin'; its password is in {} (mode 0600, root only; change it with `kobako user passwd admin`)",
                file.display()
            );
        }
    }))?;
    // Stopped by SIGTERM/SIGINT (scenario runs were cancelled): open consoles and streams
    // are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    eprintln!("kobako serve: stopped");
    Ok(0)
}

struct LineProgress<'a>(&'a (dyn Fn(&str) + Send + Sync));

impl kobako_image::Progress for LineProgress<'_> {
    fn step(&self, msg: &str) {
        (self.0)(msg)
    }
}

fn build_image(
    kind: &str,
    name: &str,
    packages: &[String],
    progress: &(dyn Fn(&str) + Send + Sync),
) -> std::result::Result<(), String> {
    let p = LineProgress(progress);
    let r: Result<()> = (|| {
        let agent = tiny::find_agent()?;
        match kind {
            "tiny" => {
                let img = tiny::build(&agent, &p)?;
                Store::default().register_tiny(&img)?;
            }
            "debian" => {
                let mut o = debian::DebianOptions::new(name);
                o.packages = packages.to_vec();
                debian::build(&Store::default(), &o, &agent, &p)?;
            }
            other => bail!("image kind '{other}': debian or tiny"),
        }
        Ok(())
    })();
    r.map_err(|e| format!("{e:#}"))
}

fn db() -> Result<kobako_server::db::Pool> {
    kobako_server::db::Pool::open(&kobako_state::state_root(), 1)
        .context("open the state database (run as root, or set KOBAKO_STATE)")
}

fn api(e: kobako_server::error::ApiError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message)
}

fn read_password(prompt: &str) -> Result<String> {
    use std::io::BufRead;
    // Not echoed when stdin is a terminal.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    if tty {
        eprint!("{prompt}: ");
        let _ = std::process::Command::new("stty").arg("-echo").status();
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if tty {
        let _ = std::process::Command::new("stty").arg("echo").status();
        eprintln!();
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user. The password is read from stdin (one line), or generated and printed with
    /// --generate-password.
    Add {
        name: String,
        /// admin, member (own labs only) or viewer (read-only).
        #[arg(long, default_value = "member")]
        role: String,
        /// Most VMs this user's labs may run at once.
        #[arg(long)]
        max_vms: Option<i64>,
        /// Most memory (MiB) this user's labs may use at once.
        #[arg(long)]
        max_memory_mib: Option<i64>,
        #[arg(long)]
        generate_password: bool,
    },
    /// List users (`-o wide` adds the disk quota and creation time).
    Ls {
        #[command(flatten)]
        out: crate::output::OutputArgs,
    },
    /// Remove a user (their labs stay).
    Rm { name: String },
    /// Set a user's password (read from stdin, one line).
    Passwd { name: String },
    /// Change a user's role or quotas (`--max-vms none` removes a limit).
    Set {
        name: String,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        max_vms: Option<String>,
        #[arg(long)]
        max_memory_mib: Option<String>,
    },
}

fn role(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| anyhow::anyhow!("role '{s}': admin, member or viewer"))
}

fn limit(s: &Option<String>) -> Result<Option<Option<i64>>> {
    match s.as_deref() {
        None => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(v) => Ok(Some(Some(v.parse().with_context(|| {
            format!("'{v}': a number, or none to remove the limit")
        })?))),
    }
}

/// `kobako user ...`.
pub fn user(c: UserCmd) -> Result<i32> {
    let pool = db()?;
    let db = pool.get();
    match c {
        UserCmd::Add {
            name,
            role: r,
            max_vms,
            max_memory_mib,
            generate_password,
        } => {
            let r = role(&r)?;
            let pw = if generate_password {
                auth::random_token(12)
            } else {
                read_password(&format!("password for {name}"))?
            };
            let u = auth::add_user(&db, &name, &pw, r, max_vms, max_memory_mib).map_err(api)?;
            eprintln!("user {} added ({})", u.name, u.role.as_str());
            if generate_password {
                println!("{pw}");
            }
        }
        UserCmd::Ls { out } => {
            let users = auth::list_users(&db).map_err(api)?;
            let wide = out.is_wide();
            if out.is_json() {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                print!(
                    "{:<24} {:<7} {:>7} {:>10}",
                    "USER", "ROLE", "MAX-VMS", "MAX-MEM"
                );
                if wide {
                    print!(" {:>10}  CREATED", "MAX-DISK");
                }
                println!();
                for u in users {
                    let vms = u.max_vms.map_or("-".into(), |v| v.to_string());
                    let mem = u.max_memory_mib.map_or("-".into(), |v| format!("{v}M"));
                    print!(
                        "{:<24} {:<7} {:>7} {:>10}",
                        u.name,
                        u.role.as_str(),
                        vms,
                        mem
                    );
                    if wide {
                        let disk = u.max_disk_mib.map_or("-".into(), |v| format!("{v}M"));
                        print!(" {disk:>10}  {}", crate::output::utc(Some(u.created_ms)));
                    }
                    println!();
                }
            }
        }
        UserCmd::Rm { name } => {
            // With everything they have (labs, functions, operations, tokens).
            kobako_server::cascade::delete_user_offline(&db, &kobako_state::state_root(), &name)
                .map_err(api)?;
            eprintln!("user {name} removed with their labs and functions");
        }
        UserCmd::Passwd { name } => {
            let pw = read_password(&format!("new password for {name}"))?;
            auth::update_user(&db, &name, None, Some(&pw), None, None).map_err(api)?;
            eprintln!("password of {name} changed (their sessions were ended)");
        }
        UserCmd::Set {
            name,
            role: r,
            max_vms,
            max_memory_mib,
        } => {
            let r = r.as_deref().map(role).transpose()?;
            let u = auth::update_user(
                &db,
                &name,
                r,
                None,
                limit(&max_vms)?,
                limit(&max_memory_mib)?,
            )
            .map_err(api)?;
            println!("{}", serde_json::to_string(&u)?);
        }
    }
    Ok(0)
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create an API token for a user; prints the secret once.
    Create {
        /// What it is for.
        name: String,
        #[arg(long)]
        user: String,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_days: Option<u32>,
    },
    /// List API tokens.
    Ls {
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        out: crate::output::OutputArgs,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

/// `kobako token ...`.
pub fn token(c: TokenCmd) -> Result<i32> {
    let pool = db()?;
    let db = pool.get();
    match c {
        TokenCmd::Create {
            name,
            user,
            expires_days,
        } => {
            if auth::get_user(&db, &user).map_err(api)?.is_none() {
                bail!("no user '{user}' (kobako user ls)");
            }
            let (t, secret) = auth::create_token(&db, &user, &name, expires_days).map_err(api)?;
            eprintln!("token {} for {} (shown once):", t.id, t.user);
            println!("{secret}");
        }
        TokenCmd::Ls { user, out } => {
            let v = auth::list_tokens(&db, user.as_deref()).map_err(api)?;
            let wide = out.is_wide();
            if out.is_json() {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{:<10} {:<16} {:<24} {:<8}", "ID", "USER", "NAME", "STATE");
                if wide {
                    print!(" {:<16} {:<16} LAST-USED", "CREATED", "EXPIRES");
                }
                println!();
                for t in v {
                    print!(
                        "{:<10} {:<16} {:<24} {:<8}",
                        t.id,
                        t.user,
                        t.name,
                        if t.revoked { "revoked" } else { "active" }
                    );
                    if wide {
                        use crate::output::utc;
                        print!(
                            " {:<16} {:<16} {}",
                            utc(Some(t.created_ms)),
                            utc(t.expires_ms),
                            utc(t.last_used_ms)
                        );
                    }
                    println!();
                }
            }
        }
        TokenCmd::Revoke { id } => {
            auth::revoke_token(&db, &id, None).map_err(api)?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(0)
}
