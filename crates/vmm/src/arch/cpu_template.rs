//! Custom CPU templates in Firecracker's format (`PUT /cpu-config`, `cpu-config` of a config
//! file): CPUID leaf modifiers and MSR modifiers, each a bitmap of `0`/`1`/`x` (clear / set /
//! keep) per bit, applied to every vCPU on top of kobako's own CPUID normalisation
//! ([`super::cpuid`]) before the guest runs.
//!
//! - `cpuid_modifiers`: `{leaf, subleaf, flags, modifiers: [{register: eax|ebx|ecx|edx, bitmap:
//!   "0b" + 32 × [01x]}]}`; a leaf KVM does not report is added (with `flags`, e.g. 1 =
//!   `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`).
//! - `msr_modifiers`: `{addr, bitmap: "0b" + 64 × [01x]}`; the MSR's value after kobako's boot
//!   MSRs is read, modified and written back; an MSR KVM refuses fails `InstanceStart` naming it.
//! - Numbers are hex (`0x`), binary (`0b`) or decimal; `_` may separate digits and bitmap bits.
//! - `kvm_capabilities` (kobako-vmm does not change KVM's capabilities) and the aarch64-only
//!   `reg_modifiers` and `vcpu_features` are refused when not empty, never ignored.
//!
//! Everything is checked when the template is set (`PUT /cpu-config` answers 400 with the
//! field and the value), so `InstanceStart` only applies it.

use serde::{Deserialize, Serialize};

/// At most this many CPUID leaf modifiers and this many MSR modifiers.
pub const MAX_MODIFIERS: usize = 256;

/// `PUT /cpu-config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kvm_capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub msr_modifiers: Vec<MsrModifier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reg_modifiers: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpu_features: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    pub leaf: String,
    pub subleaf: String,
    pub flags: i64,
    pub modifiers: Vec<CpuidRegisterModifier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    pub register: CpuidRegister,
    pub bitmap: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    pub addr: String,
    pub bitmap: String,
}

/// Which bits a modifier sets (`value`) among those it touches (`mask`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bitmap {
    pub mask: u64,
    pub value: u64,
}

impl Bitmap {
    pub fn apply(&self, old: u64) -> u64 {
        (old & !self.mask) | (self.value & self.mask)
    }
}

/// One leaf's modifiers, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafTemplate {
    pub leaf: u32,
    pub subleaf: u32,
    pub flags: u32,
    pub registers: Vec<(CpuidRegister, Bitmap)>,
}

/// A checked template, ready to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuTemplate {
    pub cpuid: Vec<LeafTemplate>,
    pub msrs: Vec<(u32, Bitmap)>,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuTemplateError {
    #[error("Invalid {what} {value:?}: expected a 32-bit number in hex (0x...), binary (0b...) or decimal.")]
    Number { what: &'static str, value: String },
    #[error("Invalid {what} bitmap {value:?}: expected \"0b\" followed by {bits} characters 0, 1 or x (underscores allowed).")]
    Bitmap {
        what: &'static str,
        value: String,
        bits: usize,
    },
    #[error("Invalid flags {0} of a CPUID leaf modifier: expected a 32-bit value.")]
    Flags(i64),
    #[error("kvm_capabilities cannot be changed by kobako-vmm (it uses the capabilities KVM has): leave the list empty.")]
    KvmCapabilities,
    #[error("{0} applies to aarch64 only: kobako-vmm runs x86_64 guests.")]
    Aarch64(&'static str),
    #[error("At most {MAX_MODIFIERS} {0} are accepted.")]
    TooMany(&'static str),
}

fn clip(s: &str) -> String {
    crate::text::clip(s, 80).into_owned()
}

/// `0x..`, `0b..` or decimal, `_` ignored.
fn parse_u32(what: &'static str, s: &str) -> Result<u32, CpuTemplateError> {
    let err = || CpuTemplateError::Number {
        what,
        value: clip(s),
    };
    let t: String = s.trim().chars().filter(|c| *c != '_').collect();
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else if let Some(b) = t.strip_prefix("0b").or_else(|| t.strip_prefix("0B")) {
        u32::from_str_radix(b, 2)
    } else {
        t.parse::<u32>()
    };
    v.map_err(|_| err())
}

/// `0b` + `bits` characters of `0`, `1`, `x` (most significant first), `_` ignored.
fn parse_bitmap(what: &'static str, s: &str, bits: usize) -> Result<Bitmap, CpuTemplateError> {
    let err = || CpuTemplateError::Bitmap {
        what,
        value: clip(s),
        bits,
    };
    let body = s.trim().strip_prefix("0b").ok_or_else(err)?;
    let chars: Vec<char> = body.chars().filter(|c| *c != '_').collect();
    if chars.len() != bits {
        return Err(err());
    }
    let mut b = Bitmap::default();
    for c in chars {
        b.mask <<= 1;
        b.value <<= 1;
        match c {
            '0' => b.mask |= 1,
            '1' => {
                b.mask |= 1;
                b.value |= 1;
            }
            'x' | 'X' => {}
            _ => return Err(err()),
        }
    }
    Ok(b)
}

impl CpuConfig {
    /// Checks every field and returns the template to apply.
    pub fn compile(&self) -> Result<CpuTemplate, CpuTemplateError> {
        if !self.kvm_capabilities.is_empty() {
            return Err(CpuTemplateError::KvmCapabilities);
        }
        if !self.reg_modifiers.is_empty() {
            return Err(CpuTemplateError::Aarch64("reg_modifiers"));
        }
        if !self.vcpu_features.is_empty() {
            return Err(CpuTemplateError::Aarch64("vcpu_features"));
        }
        if self.cpuid_modifiers.len() > MAX_MODIFIERS {
            return Err(CpuTemplateError::TooMany("cpuid_modifiers"));
        }
        if self.msr_modifiers.len() > MAX_MODIFIERS {
            return Err(CpuTemplateError::TooMany("msr_modifiers"));
        }
        let mut t = CpuTemplate::default();
        for m in &self.cpuid_modifiers {
            if m.modifiers.len() > 4 * 8 {
                return Err(CpuTemplateError::TooMany("register modifiers per leaf"));
            }
            let mut registers = Vec::new();
            for r in &m.modifiers {
                registers.push((r.register, parse_bitmap("CPUID register", &r.bitmap, 32)?));
            }
            t.cpuid.push(LeafTemplate {
                leaf: parse_u32("leaf", &m.leaf)?,
                subleaf: parse_u32("subleaf", &m.subleaf)?,
                flags: u32::try_from(m.flags).map_err(|_| CpuTemplateError::Flags(m.flags))?,
                registers,
            });
        }
        for m in &self.msr_modifiers {
            t.msrs.push((
                parse_u32("MSR addr", &m.addr)?,
                parse_bitmap("MSR", &m.bitmap, 64)?,
            ));
        }
        Ok(t)
    }
}

fn low32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

impl CpuTemplate {
    /// Applies the CPUID modifiers to `cpuid` (entries KVM did not report are added); false
    /// when the table is full.
    pub fn apply_cpuid(&self, cpuid: &mut kvm_bindings::CpuId) -> bool {
        for l in &self.cpuid {
            let pos = cpuid
                .as_slice()
                .iter()
                .position(|e| e.function == l.leaf && e.index == l.subleaf);
            let idx = match pos {
                Some(i) => i,
                None => {
                    let e = kvm_bindings::kvm_cpuid_entry2 {
                        function: l.leaf,
                        index: l.subleaf,
                        flags: l.flags,
                        ..Default::default()
                    };
                    if cpuid.push(e).is_err() {
                        return false;
                    }
                    cpuid.as_slice().len() - 1
                }
            };
            let e = &mut cpuid.as_mut_slice()[idx];
            for (reg, b) in &l.registers {
                let r = match reg {
                    CpuidRegister::Eax => &mut e.eax,
                    CpuidRegister::Ebx => &mut e.ebx,
                    CpuidRegister::Ecx => &mut e.ecx,
                    CpuidRegister::Edx => &mut e.edx,
                };
                *r = low32(b.apply(u64::from(*r)));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<CpuTemplate, CpuTemplateError> {
        serde_json::from_str::<CpuConfig>(json).unwrap().compile()
    }

    #[test]
    fn firecracker_format_parses_and_applies() {
        let t = cfg(r#"{
            "cpuid_modifiers": [
                {"leaf": "0x1", "subleaf": "0b0", "flags": 0, "modifiers": [
                    {"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"},
                    {"register": "edx", "bitmap": "0b1xxx_xxxx_xxxx_xxxx_xxxx_xxxx_xxxx_xxx1"}]},
                {"leaf": "1073741840", "subleaf": "0", "flags": 1, "modifiers": [
                    {"register": "eax", "bitmap": "0b00000000000000000000000000101010"}]}],
            "msr_modifiers": [{"addr": "0x1a0", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx11xxxxxxxxxxx"}]
        }"#)
        .unwrap();
        assert_eq!(
            t.msrs,
            vec![(
                0x1a0,
                Bitmap {
                    mask: 0x1800,
                    value: 0x1800
                }
            )]
        );
        let mut c = kvm_bindings::CpuId::new(1).unwrap();
        c.as_mut_slice()[0] = kvm_bindings::kvm_cpuid_entry2 {
            function: 1,
            ecx: 0xffff_ffff,
            edx: 0x0000_0002,
            ..Default::default()
        };
        assert!(t.apply_cpuid(&mut c));
        let s = c.as_slice();
        assert_eq!((s[0].ecx, s[0].edx), (0xffff_fffe, 0x8000_0003));
        assert_eq!(
            (s[1].function, s[1].index, s[1].flags, s[1].eax),
            (0x4000_0010, 0, 1, 42)
        );
        assert_eq!(
            Bitmap {
                mask: 0xf0,
                value: 0x30
            }
            .apply(0xff),
            0x3f
        );
    }

    #[test]
    fn bad_templates_name_the_field() {
        let e = |j: &str| cfg(j).unwrap_err().to_string();
        assert!(e(r#"{"cpuid_modifiers": [{"leaf": "0xZZ", "subleaf": "0", "flags": 0, "modifiers": []}]}"#)
            .contains("Invalid leaf \"0xZZ\""));
        assert!(e(r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": 0, "modifiers": [{"register": "eax", "bitmap": "0b101"}]}]}"#)
            .contains("32 characters"));
        assert!(e(r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b2000000000000000000000000000000000000000000000000000000000000000"}]}"#)
            .contains("64 characters"));
        assert!(
            e(r#"{"msr_modifiers": [{"addr": "0x100000000", "bitmap": "0b0"}]}"#)
                .contains("Invalid MSR addr")
        );
        assert!(e(r#"{"kvm_capabilities": ["!121"]}"#).contains("kvm_capabilities"));
        assert!(e(r#"{"reg_modifiers": [{"addr": "0x1", "bitmap": "0b1"}]}"#).contains("aarch64"));
        assert!(e(
            r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": -1, "modifiers": []}]}"#
        )
        .contains("flags -1"));
        assert!(serde_json::from_str::<CpuConfig>(r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": 0, "modifiers": [{"register": "rax", "bitmap": "0b0"}]}]}"#).is_err());
        assert_eq!(cfg("{}").unwrap(), CpuTemplate::default());
    }
}
