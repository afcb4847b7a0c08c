//! Warnings about a valid lab file: things that resolve but are probably not what the author
//! meant. `kobako lab check`, `up` and `up --dry-run` print them; nothing is refused.

use super::model::{Attachment, Cidr, Lab};

impl Lab {
    /// Each warning as one line naming where and why.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.links {
            // The two ends of a point-to-point link, with their addresses.
            let ends: Vec<(String, &[Cidr])> = self
                .vms()
                .flat_map(|vm| {
                    vm.interfaces.iter().filter_map(move |i| match &i.attach {
                        Attachment::Link(n) if n == &l.name => Some((
                            format!("{}.{}:{}", vm.id.node, vm.id.vm, i.name),
                            i.addresses.as_slice(),
                        )),
                        _ => None,
                    })
                })
                .collect();
            let [(a, aa), (b, ba)] = ends.as_slice() else {
                continue;
            };
            if aa.is_empty() || ba.is_empty() {
                continue;
            }
            // Ends that share no subnet (of the same family) reach each other only by routes.
            let shared = aa.iter().any(|x| {
                ba.iter().any(|y| {
                    x.addr.is_ipv4() == y.addr.is_ipv4()
                        && (x.contains(y.addr) || y.contains(x.addr))
                })
            });
            let same_family = aa
                .iter()
                .any(|x| ba.iter().any(|y| x.addr.is_ipv4() == y.addr.is_ipv4()));
            if !shared && same_family {
                let list = |v: &[Cidr]| {
                    v.iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                out.push(format!(
                    "link '{}': {a} ({}) and {b} ({}) are in different subnets, so they do not \
                     reach each other directly: give both ends addresses in one subnet (e.g. a /30 \
                     or /31), or add routes if this is meant",
                    l.name,
                    list(aa),
                    list(ba)
                ));
            }
        }
        out
    }
}
