//! Node templates shipped with kobako (`crates/lab/templates/*.yaml`, embedded). A template
//! file is a node definition (`description`, `vms`, `links`, `node_network`); it resolves
//! exactly like a template written in a lab file, which shadows it when named the same.

/// (name, YAML text) of every shipped template.
pub const BUILTIN: &[(&str, &str)] = &[
    ("web-stack", include_str!("../../templates/web-stack.yaml")),
    (
        "router-vpn-ids",
        include_str!("../../templates/router-vpn-ids.yaml"),
    ),
];

/// The text of the shipped template `name`.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Names of the shipped templates.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}
