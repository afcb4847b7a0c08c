//! The cgroups a lab's or a function's VMs sit in, above each VM's own: its owner's
//! (`user.<name>`, limited by the owner's quotas, so the kernel holds a user to them across all
//! their labs and functions) and the lab's (`lab.<name>`) or function's (`fn.<name>`), where its
//! usage can be read. The jail creates them
//! (`kobako_runtime::jail`); the last VM to end removes them.

use kobako_runtime::config::CgroupLevel;

use super::netpolicy;

/// The levels for the VMs of lab `lab` owned by `owner` (None: the local CLI's labs, root's,
/// have no user level).
pub(crate) fn levels(lab: &str, owner: Option<&str>) -> Vec<CgroupLevel> {
    with_owner(owner, format!("lab.{}", dir_name(lab)))
}

/// The levels for the VMs of function `name` (its warm VM and its invocations' clones).
pub(crate) fn function_levels(name: &str, owner: Option<&str>) -> Vec<CgroupLevel> {
    with_owner(owner, format!("fn.{}", dir_name(name)))
}

fn with_owner(owner: Option<&str>, last: String) -> Vec<CgroupLevel> {
    let mut v = Vec::new();
    if let Some(o) = owner {
        let info = netpolicy::host_config()
            .owner
            .as_ref()
            .and_then(|lookup| lookup(o));
        v.push(CgroupLevel {
            name: format!("user.{}", dir_name(o)),
            guest_memory_mib: info.and_then(|i| i.max_memory_mib),
            vms: info.and_then(|i| i.max_vms),
        });
    }
    v.push(CgroupLevel {
        name: last,
        guest_memory_mib: None,
        vms: None,
    });
    v
}

/// A name as a cgroup directory: letters, digits, `.`, `_`, `-` kept; a name that needed other
/// characters replaced (an OIDC user `a@b`) gets a hash of the original, so two names never
/// share a group.
fn dir_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == name {
        return clean;
    }
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{clean}-{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_plain_directory_names_and_stay_distinct() {
        assert_eq!(dir_name("alice"), "alice");
        assert_eq!(dir_name("net-1.lab_a"), "net-1.lab_a");
        let a = dir_name("a@b.c");
        let b = dir_name("a_b.c");
        assert!(a.starts_with("a_b.c-") && a != b, "{a} {b}");
        assert!(dir_name("../../etc").starts_with(".._.._etc-"));
        let l = levels("net1", None);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "lab.net1");
    }
}
