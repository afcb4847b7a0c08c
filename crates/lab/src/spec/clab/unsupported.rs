//! containerlab fields kobako does not map, each with what to do instead. They are taken out of
//! the tree before it is deserialized, so they are reported with their own message (an error,
//! or a warning for the few that change nothing in a VM) instead of "unknown key".

use crate::spec::error::{Path, SpecError};
use crate::spec::yaml::{MKind, MNode};

/// How kobako treats a containerlab field it does not map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The field has no meaning for a VM: dropped, with a warning.
    Ignored,
    /// The topology would not run as its author meant: an error.
    Refused,
}

use Severity::{Ignored, Refused};

/// Node fields (also of `defaults` and `kinds`).
const NODE: &[(&str, Severity, &str)] = &[
    ("image-pull-policy", Ignored, "kobako builds images from recipes; nothing is pulled"),
    ("auto-remove", Ignored, "kobako removes a lab's VMs at `kobako down`"),
    ("restart-policy", Ignored, "a VM's services restart by their own policy; restart a VM with `kobako restart LAB/NODE`"),
    ("startup-delay", Ignored, "kobako starts every node at once and `up` waits until each is ready"),
    ("entrypoint", Refused, "a VM boots its own init: put the program in `cmd:` (a supervised service) or `exec:`"),
    ("network-mode", Refused, "every kobako VM has its own kernel and network stack: remove `network-mode`"),
    ("runtime", Refused, "kobako chooses the runtime per host (`kobako up` runs VMs): remove `runtime`"),
    ("cpu-set", Refused, "kobako does not pin a node's VMs to host CPUs: remove `cpu-set` (use `cpu:`)"),
    ("license", Refused, "licences belong to vendor NOS kinds, which kobako does not run"),
    ("publish", Refused, "use `ports:` (`HOST:PORT`), which kobako maps to published host ports"),
    ("wait-for", Refused, "kobako starts every node at once and `up` waits until each is ready: remove `wait-for`"),
    ("stages", Refused, "kobako starts every node at once and `up` waits until each is ready: remove `stages`"),
    ("env-files", Refused, "put the variables in `env:`"),
    ("user", Refused, "commands in a kobako VM run as root: remove `user`"),
    ("devices", Refused, "a VM has its own virtual devices: remove `devices`"),
    ("cap-add", Refused, "a VM has its own kernel with every capability: remove `cap-add`"),
    ("shm-size", Refused, "give the VM more `memory:` instead"),
    ("dns", Refused, "write /etc/resolv.conf with `binds:` instead"),
    ("extras", Refused, "kind-specific extras are not supported: remove `extras`"),
    ("certificate", Refused, "kobako does not issue node certificates: remove `certificate`"),
    ("healthcheck", Refused, "convert the topology with `kobako import clab FILE -o lab.yaml` and declare `ready:` checks there"),
    ("aliases", Refused, "kobako VMs reach each other by address: remove `aliases`"),
    ("config", Refused, "kobako does not render config templates: copy configs in with `binds:` or `startup-config:`"),
    ("components", Refused, "components belong to vendor NOS kinds, which kobako does not run"),
    ("type", Refused, "node types belong to vendor NOS kinds, which kobako does not run"),
    ("enforce-startup-config", Refused, "remove it: kobako applies `startup-config:` to FRR nodes every time"),
    ("suppress-startup-config", Refused, "remove `startup-config:` instead"),
    ("sandbox", Refused, "kobako VMs boot the lab's guest kernel: remove `sandbox`"),
    ("kernel", Refused, "set `kernel:` in a kobako lab file (convert with `kobako import clab FILE -o lab.yaml`)"),
];

/// Top-level fields.
const TOP: &[(&str, Severity, &str)] = &[(
    "settings",
    Refused,
    "kobako has its own certificate and settings: remove `settings`",
)];

/// Takes every field of the tables out of `root` (a containerlab document): refused fields
/// become errors, ignored ones warnings.
pub fn take(file: &str, root: &mut MNode) -> (Vec<SpecError>, Vec<SpecError>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut visit = |n: &mut MNode, table: &[(&str, Severity, &str)]| {
        let MKind::Map(entries) = &mut n.kind else {
            return;
        };
        entries.retain(|(k, v)| {
            let Some((_, sev, fix)) = table.iter().find(|(name, _, _)| name == k) else {
                return true;
            };
            let e = SpecError {
                file: file.to_string(),
                pos: v.key_pos,
                path: v.path.clone(),
                message: match sev {
                    Refused => format!("containerlab's `{k}` is not supported by kobako"),
                    Ignored => {
                        format!("containerlab's `{k}` has no effect on a kobako VM: ignored")
                    }
                },
                fix: Some(fix.to_string()),
                limit: None,
            };
            match sev {
                Refused => errors.push(e),
                Ignored => warnings.push(e),
            }
            false
        });
    };
    visit(root, TOP);
    let topo = Path::root().key("topology");
    if let Some(n) = child_mut(root, &topo.key("defaults")) {
        visit(n, NODE);
    }
    for group in ["kinds", "nodes"] {
        if let Some(MNode {
            kind: MKind::Map(entries),
            ..
        }) = child_mut(root, &topo.key(group))
        {
            for (_, n) in entries.iter_mut() {
                visit(n, NODE);
            }
        }
    }
    (errors, warnings)
}

fn child_mut<'a>(root: &'a mut MNode, path: &Path) -> Option<&'a mut MNode> {
    let mut n = root;
    for seg in path.segs() {
        n = match &mut n.kind {
            MKind::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| *k == seg)
                .map(|(_, v)| v)?,
            _ => return None,
        };
    }
    Some(n)
}
