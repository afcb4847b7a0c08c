//! The microVM metadata service (MMDS), as Firecracker's: a JSON data store the API fills
//! (`PUT`/`PATCH`/`GET /mmds`) and the guest reads over HTTP at a link-local address
//! (169.254.169.254 by default) through the network interfaces `PUT /mmds/config` names.
//!
//! - [`Mmds`]: the data store (a JSON object, at most `--mmds-size-limit` bytes serialised),
//!   its version (V1: plain GETs; V2: a session token from `PUT /latest/api/token` first) and
//!   the V2 [`token::TokenAuthority`]. One per VMM process, shared by the API side (the
//!   controllers) and every MMDS-enabled virtio-net device.
//! - [`guest_http`]: the guest's HTTP requests and their answers (IMDS text or JSON).
//! - [`stack::MmdsStack`]: per network device, the frames the guest sends to the MMDS address
//!   (ARP and TCP) are taken out of the transmit path before the tap and answered by a small
//!   TCP responder whose frames go into the device's receive queue; nothing reaches the tap.
//! - [`wire`]: the frame formats.

pub mod guest_http;
pub mod stack;
pub mod token;
pub mod wire;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default data store limit (bytes), Firecracker's default `--mmds-size-limit` (its API's
/// payload limit).
pub const DEFAULT_SIZE_LIMIT: usize = 51200;
/// The address the guest reaches the MMDS on unless `ipv4_address` says otherwise.
pub const DEFAULT_IPV4: [u8; 4] = [169, 254, 169, 254];
/// The MAC address the MMDS answers ARP with (Firecracker's).
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];

/// `version` of `PUT /mmds/config`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    #[default]
    V1,
    V2,
}

/// Why the data store refused a change (the store is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmdsError {
    #[error("The MMDS data store must be a JSON object (got {0}).")]
    NotAnObject(&'static str),
    #[error("The MMDS data store would be {size} bytes, over its limit of {limit} bytes (kobako-vmm --mmds-size-limit).")]
    TooLarge { size: usize, limit: usize },
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The data store and how the guest reaches it.
#[derive(Debug)]
pub struct Mmds {
    data: Value,
    limit: usize,
    version: MmdsVersion,
    imds_compat: bool,
    pub tokens: token::TokenAuthority,
}

impl Default for Mmds {
    fn default() -> Self {
        Mmds::new(DEFAULT_SIZE_LIMIT)
    }
}

impl Mmds {
    /// An empty store holding at most `limit` bytes of JSON.
    pub fn new(limit: usize) -> Mmds {
        Mmds {
            data: Value::Object(Default::default()),
            limit,
            version: MmdsVersion::V1,
            imds_compat: false,
            tokens: Default::default(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// `--mmds-size-limit`: applies to the next change (what is stored stays).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    fn check(&self, v: &Value) -> Result<(), MmdsError> {
        if !v.is_object() {
            return Err(MmdsError::NotAnObject(kind(v)));
        }
        let size = serde_json::to_vec(v).map_or(usize::MAX, |b| b.len());
        if size > self.limit {
            return Err(MmdsError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// `PUT /mmds`: replaces the whole store.
    pub fn put(&mut self, v: Value) -> Result<(), MmdsError> {
        self.check(&v)?;
        self.data = v;
        Ok(())
    }

    /// `PATCH /mmds`: a JSON merge patch (RFC 7396): `null` removes a key, objects merge,
    /// anything else replaces.
    pub fn patch(&mut self, p: Value) -> Result<(), MmdsError> {
        if !p.is_object() {
            return Err(MmdsError::NotAnObject(kind(&p)));
        }
        let mut next = self.data.clone();
        merge_patch(&mut next, p);
        self.check(&next)?;
        self.data = next;
        Ok(())
    }

    /// `GET /mmds`.
    pub fn data(&self) -> &Value {
        &self.data
    }

    /// `PUT /mmds/config`: how the guest's requests are answered.
    pub fn configure(&mut self, version: MmdsVersion, imds_compat: bool) {
        if version != self.version {
            self.tokens = Default::default();
        }
        self.version = version;
        self.imds_compat = imds_compat;
    }

    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }
}

/// RFC 7396 merge of `patch` into `target`.
fn merge_patch(target: &mut Value, patch: Value) {
    let Value::Object(p) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(t) = target else {
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(&k);
        } else {
            merge_patch(t.entry(k).or_insert(Value::Null), v);
        }
    }
}

/// Checks a configured MMDS address: link-local 169.254.1.0–169.254.254.255 (the pattern of
/// Firecracker's API description), returned as bytes.
pub fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let ip: std::net::Ipv4Addr = s.parse().ok()?;
    let o = ip.octets();
    (o[0] == 169 && o[1] == 254 && (1..=254).contains(&o[2])).then_some(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn put_patch_and_limits_leave_the_store_whole_on_error() {
        let mut m = Mmds::new(64);
        m.put(json!({"a": {"b": "c"}, "x": 1})).unwrap();
        m.patch(json!({"a": {"d": "e"}, "x": null})).unwrap();
        assert_eq!(m.data(), &json!({"a": {"b": "c", "d": "e"}}));
        assert_eq!(m.put(json!([1])), Err(MmdsError::NotAnObject("an array")));
        assert!(matches!(
            m.patch(json!({"big": "y".repeat(100)})),
            Err(MmdsError::TooLarge { limit: 64, .. })
        ));
        assert!(matches!(
            m.put(json!({"big": "y".repeat(100)})),
            Err(MmdsError::TooLarge { .. })
        ));
        assert_eq!(m.data(), &json!({"a": {"b": "c", "d": "e"}}), "unchanged");
        m.patch(json!({"a": "flat"})).unwrap();
        assert_eq!(m.data(), &json!({"a": "flat"}));
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_ipv4("169.254.169.254"), Some(DEFAULT_IPV4));
        assert_eq!(parse_ipv4("169.254.1.0"), Some([169, 254, 1, 0]));
        for bad in [
            "169.254.0.1",
            "169.254.255.1",
            "10.0.0.1",
            "169.254.169",
            "x",
            "",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad}");
        }
    }
}
