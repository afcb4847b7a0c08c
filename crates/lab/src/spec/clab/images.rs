//! Which kobako image runs a containerlab node's container image.
//!
//! The table maps the image's repository (registry host, `library/`, tag and digest
//! stripped) to a kobako image: one kobako builds itself (`tiny`, or a recipe such as
//! `debian-frr`). Overrides, strongest first: the node's label `kobako.image` (inherited from
//! `kinds`/`defaults` like any label), the caller's map (`kobako import clab --image
//! REPO=IMAGE`), and an `image:` that already names a kobako image.

/// The documented table: repository → kobako image, and why.
pub const TABLE: &[(&str, &str, &str)] = &[
    (
        "alpine",
        "tiny",
        "busybox userland with ip, ping, nc, wget, udhcpc",
    ),
    ("busybox", "tiny", "busybox userland"),
    (
        "frrouting/frr",
        "debian-frr",
        "FRR 8.4 (Debian bookworm) with bgpd, ospfd, ospf6d, isisd, bfdd, vtysh",
    ),
    (
        "frrouting/frr-debian",
        "debian-frr",
        "FRR 8.4 (Debian bookworm)",
    ),
    (
        "nicolaka/netshoot",
        "debian-router",
        "iproute2, nftables, tcpdump, ping, curl",
    ),
    (
        "wbitt/network-multitool",
        "debian-router",
        "iproute2, nftables, tcpdump, ping, curl",
    ),
    (
        "hellt/network-multitool",
        "debian-router",
        "iproute2, nftables, tcpdump, ping, curl",
    ),
    (
        "praqma/network-multitool",
        "debian-router",
        "iproute2, nftables, tcpdump, ping, curl",
    ),
    (
        "debian",
        "debian-router",
        "Debian bookworm with iproute2, nftables, tcpdump, ping, curl",
    ),
    (
        "ubuntu",
        "ubuntu",
        "Ubuntu 24.04 (noble) with systemd, iproute2, ping, tracepath, curl, tcpdump",
    ),
];

/// The label that names a node's kobako image.
pub const LABEL: &str = "kobako.image";
/// The label that adds a readiness check (a command that exits 0 once the node is ready).
pub const READY_LABEL: &str = "kobako.ready";

/// The repository part of a container image reference: `quay.io/frrouting/frr:9.1.0` →
/// `frrouting/frr`, `alpine:3` → `alpine`, `docker.io/library/debian@sha256:…` → `debian`.
pub fn repository(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    // A tag is a `:` after the last `/` (a `:` before it is a registry port).
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    let no_tag = match no_digest[last_slash..].find(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    let mut parts: Vec<&str> = no_tag.split('/').collect();
    // A first part with '.' or ':' (or `localhost`) is a registry host.
    if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        parts.remove(0);
    }
    if parts.len() > 1 && parts[0] == "library" {
        parts.remove(0);
    }
    parts.join("/").to_ascii_lowercase()
}

/// Images kobako builds by name (no container image reference looks like these).
pub fn is_kobako_image(image: &str) -> bool {
    image == "tiny" || kobako_image::recipes::find(image).is_some()
}

/// The kobako image for container image `image`, by the table or `overrides` (repository or
/// full reference → kobako image).
pub fn lookup<'a>(image: &str, overrides: &'a [(String, String)]) -> Option<&'a str> {
    let repo = repository(image);
    if let Some((_, k)) = overrides
        .iter()
        .find(|(from, _)| *from == image || *from == repo)
    {
        return Some(k.as_str());
    }
    if is_kobako_image(image) {
        return kobako_image::recipes::find(image)
            .map(|r| r.name)
            .or(Some("tiny"));
    }
    TABLE
        .iter()
        .find(|(r, _, _)| *r == repo)
        .map(|(_, k, _)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_lose_registry_tag_and_digest() {
        for (img, repo) in [
            ("alpine", "alpine"),
            ("alpine:3.20", "alpine"),
            ("docker.io/library/alpine:latest", "alpine"),
            ("quay.io/frrouting/frr:9.1.0", "frrouting/frr"),
            ("frrouting/frr:v8.4.1", "frrouting/frr"),
            ("localhost:5000/team/img:1", "team/img"),
            ("ghcr.io/hellt/network-multitool", "hellt/network-multitool"),
            ("debian@sha256:abcd", "debian"),
        ] {
            assert_eq!(repository(img), repo, "{img}");
        }
    }

    #[test]
    fn the_table_and_overrides() {
        assert_eq!(
            lookup("quay.io/frrouting/frr:9.1.0", &[]),
            Some("debian-frr")
        );
        assert_eq!(lookup("alpine:latest", &[]), Some("tiny"));
        assert_eq!(lookup("debian-frr", &[]), Some("debian-frr"));
        assert_eq!(lookup("tiny", &[]), Some("tiny"));
        assert_eq!(lookup("vrnetlab/vr-sros:23.7", &[]), None);
        let o = vec![("alpine".to_string(), "debian-router".to_string())];
        assert_eq!(lookup("alpine:3", &o), Some("debian-router"));
    }
}
