//! Errors of the host network layer: one enum, named after the failed action, with the
//! kernel's error (errno + extended-ack message) as `#[source]`.

use std::io;

use crate::netlink::NetlinkError;

/// Everything that can go wrong in `kobako-net`.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An interface name the kernel would reject (empty, longer than 15 bytes, `/`, space ...).
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidIfName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },

    /// A lab name that cannot name a namespace / nft table.
    #[error("invalid lab name {name:?}: {reason}")]
    InvalidLabName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },

    /// VLAN ids are 1..=4094 (0 and 4095 are reserved by 802.1Q).
    #[error("VLAN id {0} is outside 1..=4094")]
    InvalidVlan(u32),

    /// A negative, non-finite or absurd impairment value.
    #[error("invalid impairment: {0}")]
    InvalidImpairment(String),

    /// Any other invalid argument (MTU, port number, address).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The interface does not exist in that namespace.
    #[error("unknown interface {name:?} in namespace {ns}")]
    UnknownInterface {
        /// Namespace searched.
        ns: String,
        /// Interface name.
        name: String,
    },

    /// The lab's namespace does not exist.
    #[error("lab {0:?} does not exist")]
    UnknownLab(String),

    /// An object exists with the right name but the wrong kind (e.g. a veth where a bridge is
    /// expected); kobako does not silently replace what it did not make.
    #[error("interface {name:?} in namespace {ns} is a {found}, expected a {expected}")]
    Conflict {
        /// Namespace.
        ns: String,
        /// Interface name.
        name: String,
        /// Kind found.
        found: String,
        /// Kind expected.
        expected: &'static str,
    },

    /// The running kernel lacks a feature (e.g. `CONFIG_NET_SCH_NETEM`).
    #[error("not supported by this kernel: {0}")]
    Unsupported(String),

    /// A netlink request failed.
    #[error("{op}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's answer.
        #[source]
        source: NetlinkError,
    },

    /// A system call or file operation failed.
    #[error("{op}")]
    Io {
        /// What was being done.
        op: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl NetError {
    pub(crate) fn nl(op: impl Into<String>) -> impl FnOnce(NetlinkError) -> NetError {
        let op = op.into();
        move |source| NetError::Netlink { op, source }
    }

    pub(crate) fn io(op: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
        let op = op.into();
        move |source| NetError::Io { op, source }
    }

    /// The errno behind this error, if it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Netlink { source, .. } => Some(source.errno),
            NetError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = NetError> = std::result::Result<T, E>;
