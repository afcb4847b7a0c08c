//! Who is calling ([`Caller`]), how they authenticated ([`Credential`]), and what their role
//! lets them see and change.

use super::users::{Role, User};
use crate::error::{ApiError, ApiResult};

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: User,
    /// Over the Unix socket as root.
    pub local: bool,
    /// The credential the request came with (long-lived streams re-check it).
    pub cred: Credential,
}

/// How a caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// root over the Unix socket.
    Local,
    /// A JWT access token: the user row's `token_gen` it was issued under, its expiry (s).
    Access { gen: String, exp: u64 },
    /// An API token (`kbk_...`), by id.
    ApiToken { id: String },
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.user.name
    }
    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }
    /// Refuses viewers.
    pub fn require_write(&self) -> ApiResult<()> {
        if self.user.role == Role::Viewer {
            return Err(ApiError::forbidden(format!(
                "user '{}' is a viewer and cannot change anything (ask an admin for the member role)",
                self.user.name
            )));
        }
        Ok(())
    }
    pub fn require_admin(&self) -> ApiResult<()> {
        if !self.is_admin() {
            return Err(ApiError::forbidden(format!(
                "only admins may do this (user '{}' is a {})",
                self.user.name,
                self.user.role.as_str()
            )));
        }
        Ok(())
    }
    /// May see a lab owned by `owner` (`None`: created locally by root).
    pub fn can_see(&self, owner: Option<&str>) -> bool {
        match self.user.role {
            Role::Admin | Role::Viewer => true,
            Role::Member => owner == Some(self.user.name.as_str()),
        }
    }
    /// May change a lab owned by `owner`.
    pub fn can_change(&self, owner: Option<&str>) -> bool {
        match self.user.role {
            Role::Admin => true,
            Role::Member => owner == Some(self.user.name.as_str()),
            Role::Viewer => false,
        }
    }
}
