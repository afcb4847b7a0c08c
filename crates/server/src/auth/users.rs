//! Users: the [`Role`] and [`User`] types, their rows (create, list, change, delete, set a
//! password, quotas), name and quota rules, the first start's `admin`, and the row of a
//! request's caller (through the read cache).

use kobako_state::{Db, NewUser, UserRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::passwords::{check_password, hash_password};
use super::secrets::random_token;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including users and every lab.
    Admin,
    /// Creates and operates their own labs; sees only those.
    Member,
    /// Reads every lab; changes nothing.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// A user as the API shows it (never the hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// Most VMs this user's labs may run at once (none = no limit).
    pub max_vms: Option<i64>,
    /// Most memory (MiB) this user's labs may use at once (none = no limit).
    pub max_memory_mib: Option<i64>,
    /// Most disk (MiB) this user's checkpoints and packet captures may take (none = no limit).
    pub max_disk_mib: Option<i64>,
    pub created_ms: i64,
}

/// User names: 1-64 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_user_name(n: &str) -> ApiResult<()> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' || c == '-'
        });
    if !ok {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("user name '{n}': use 1-64 of a-z 0-9 . _ - starting with a letter or digit"),
        ));
    }
    Ok(())
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> User {
        User {
            role: Role::parse(&r.role).unwrap_or(Role::Viewer),
            name: r.name,
            max_vms: r.max_vms,
            max_memory_mib: r.max_memory_mib,
            max_disk_mib: r.max_disk_mib,
            created_ms: r.created_ms,
        }
    }
}

pub fn get_user(db: &Db, name: &str) -> ApiResult<Option<User>> {
    Ok(db.user(name)?.map(User::from))
}

pub fn list_users(db: &Db) -> ApiResult<Vec<User>> {
    Ok(db.users()?.into_iter().map(User::from).collect())
}

pub fn count_users(db: &Db) -> ApiResult<i64> {
    Ok(db.count_users()?)
}

/// Creates a user (hashes the password here: call from a blocking thread).
pub fn add_user(
    db: &Db,
    name: &str,
    password: &str,
    role: Role,
    max_vms: Option<i64>,
    max_memory_mib: Option<i64>,
) -> ApiResult<User> {
    check_user_name(name)?;
    check_password(password)?;
    check_quota(max_vms, max_memory_mib)?;
    if name == "root" {
        return Err(ApiError::unprocessable(
            "invalid_name",
            "'root' is the local admin of the Unix socket; pick another name",
        ));
    }
    let hash = hash_password(password)?;
    let inserted = db.insert_user(&NewUser {
        name,
        hash: &hash,
        role: role.as_str(),
        max_vms,
        max_memory_mib,
    })?;
    if !inserted {
        return Err(ApiError::conflict(format!("user '{name}' already exists")));
    }
    get_user(db, name)?.ok_or_else(|| ApiError::internal("user vanished after insert"))
}

/// Sets (or with `None` removes) a user's disk quota (MiB of checkpoints and captures).
pub fn set_max_disk_mib(db: &Db, name: &str, max_disk_mib: Option<i64>) -> ApiResult<User> {
    check_disk_quota(max_disk_mib)?;
    if !db.set_user_disk_quota(name, max_disk_mib)? {
        return Err(ApiError::not_found(format!("no user '{name}'")));
    }
    get_user(db, name)?.ok_or_else(|| ApiError::not_found(format!("no user '{name}'")))
}

/// A disk quota is MiB: 0 or more.
pub fn check_disk_quota(max_disk_mib: Option<i64>) -> ApiResult<()> {
    if max_disk_mib.is_some_and(|v| v < 0) {
        return Err(ApiError::unprocessable(
            "invalid_quota",
            "max_disk_mib is MiB of disk: 0 or more",
        ));
    }
    Ok(())
}

pub fn check_quota(max_vms: Option<i64>, max_memory_mib: Option<i64>) -> ApiResult<()> {
    if max_vms.is_some_and(|v| v < 0) || max_memory_mib.is_some_and(|v| v < 0) {
        return Err(ApiError::unprocessable(
            "invalid_quota",
            "quotas are counts of VMs and MiB of memory: 0 or more",
        ));
    }
    Ok(())
}

/// Changes what is given; the password change revokes the user's refresh tokens.
pub fn update_user(
    db: &Db,
    name: &str,
    role: Option<Role>,
    password: Option<&str>,
    max_vms: Option<Option<i64>>,
    max_memory_mib: Option<Option<i64>>,
) -> ApiResult<User> {
    let Some(mut u) = get_user(db, name)? else {
        return Err(ApiError::not_found(format!("no user '{name}'")));
    };
    if let Some(pw) = password {
        set_password(db, name, pw, false)?;
    }
    if let Some(r) = role {
        u.role = r;
    }
    if let Some(v) = max_vms {
        u.max_vms = v;
    }
    if let Some(v) = max_memory_mib {
        u.max_memory_mib = v;
    }
    check_quota(u.max_vms, u.max_memory_mib)?;
    db.update_user(name, u.role.as_str(), u.max_vms, u.max_memory_mib)?;
    Ok(u)
}

pub fn delete_user(db: &Db, name: &str) -> ApiResult<()> {
    if !db.delete_user(name)? {
        return Err(ApiError::not_found(format!("no user '{name}'")));
    }
    Ok(())
}

/// Sets `name`'s password (hashes here: call from a blocking thread). Unless `keep_tokens`,
/// every session of the user ends: a new `token_gen` invalidates its access tokens, and its
/// refresh and API tokens are revoked.
pub fn set_password(db: &Db, name: &str, pw: &str, keep_tokens: bool) -> ApiResult<()> {
    check_password(pw)?;
    let h = hash_password(pw)?;
    let new_gen = (!keep_tokens).then(|| random_token(16));
    if !db.set_user_password(name, &h, new_gen.as_deref())? {
        return Err(ApiError::not_found(format!("no user '{name}'")));
    }
    Ok(())
}

/// The user row's `token_gen` (`None`: no such user).
pub fn user_gen(db: &Db, name: &str) -> ApiResult<Option<String>> {
    Ok(db.user_token_gen(name)?)
}

/// The user row (from the read cache when the database is unchanged); 401 when it is gone.
pub(super) async fn current_user(state: &AppState, name: &str) -> ApiResult<User> {
    if let Some(u) = state.cache.user(name) {
        return Ok(u);
    }
    let version = state.cache.version();
    let n = name.to_string();
    let u = state
        .db
        .run(move |db| get_user(db, &n))
        .await?
        .ok_or_else(|| ApiError::unauthorized("the token's user no longer exists"))?;
    if let Some(v) = version {
        state.cache.put_user(v, &u);
    }
    Ok(u)
}

pub(super) fn password_hash_of(db: &Db, name: &str) -> ApiResult<Option<String>> {
    Ok(db.user_password_hash(name)?)
}

/// First start: when there is no user, create `admin` with a random password, write it 0600 to
/// `<state>/server/initial-admin-password` and return it (printed once by the caller).
pub fn bootstrap_admin(db: &Db, dir: &std::path::Path) -> anyhow::Result<Option<String>> {
    if count_users(db).map_err(|e| anyhow::anyhow!(e.message))? > 0 {
        return Ok(None);
    }
    let pw = random_token(18);
    add_user(db, "admin", &pw, Role::Admin, None, None).map_err(|e| anyhow::anyhow!(e.message))?;
    crate::tls::write_private(
        &dir.join("initial-admin-password"),
        format!("{pw}\n").as_bytes(),
    )?;
    Ok(Some(pw))
}
