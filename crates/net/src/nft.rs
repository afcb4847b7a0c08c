//! nftables over nfnetlink, for the few rules kobako needs: masquerade (uplink NAT) and DNAT
//! (published ports), in tables owned by kobako (`kobako-<lab>`), replaced atomically.
//!
//! A table is always written as one nfnetlink batch — `NEWTABLE, DELTABLE, NEWTABLE, chains,
//! rules` — so re-applying is idempotent and a half-written table can never be observed; deleting
//! a table deletes its chains and rules with it.
//!
//! Wire format: include/uapi/linux/netfilter/nf_tables.h and nfnetlink.h; the expression
//! encodings follow what `nft` (libnftnl) sends for the equivalent rule text, given in each
//! builder's doc comment.

use std::net::Ipv4Addr;

use crate::error::{NetError, Result};
use crate::netlink::{
    attrs, get_str, Msg, NlSocket, NETLINK_NETFILTER, NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP,
};
use crate::netns::Netns;
use crate::types::{IfName, Ipv4Cidr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NLM_F_APPEND: u16 = 0x800;

/// `NFPROTO_IPV4`.
pub const FAMILY_IP: u8 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;

/// Netfilter hooks (`enum nf_inet_hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// NF_INET_PRE_ROUTING
    Prerouting = 0,
    /// NF_INET_LOCAL_IN
    Input = 1,
    /// NF_INET_FORWARD
    Forward = 2,
    /// NF_INET_LOCAL_OUT
    Output = 3,
    /// NF_INET_POST_ROUTING
    Postrouting = 4,
}

/// A transport protocol for port matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP (6)
    Tcp = 6,
    /// UDP (17)
    Udp = 17,
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta KEY` into reg 1 (`NFT_META_*`: 6 iifname, 7 oifname, 16 l4proto).
    Meta(u32),
    /// `payload` load into reg 1: base (1 network, 2 transport), offset, length.
    Payload(u32, u32, u32),
    /// `fib daddr type` into reg 1.
    FibDaddrType,
    /// Compare reg 1: `eq` (true) or `neq` (false) with bytes.
    Cmp(bool, Vec<u8>),
    /// Load `data` into a register.
    Immediate(u32, Vec<u8>),
    /// DNAT to address in reg 1 and, if set, port in reg 2.
    Dnat {
        /// Whether reg 2 holds a port.
        port: bool,
    },
    /// Masquerade.
    Masq,
    /// `ct state` into reg 1.
    CtState,
    /// reg 1 = (reg 1 & mask) ^ 0, 4 bytes.
    And(u32),
    /// reg 1 = (reg 1 & mask) ^ 0 over `mask.len()` bytes, mask in wire order (for payload
    /// loads, which are in network byte order).
    Mask(Vec<u8>),
    /// A verdict: accept (true) or drop (false).
    Verdict(bool),
}

impl Expr {
    /// `meta iifname "NAME"`: load + compare the NUL-padded 16-byte name.
    pub fn iifname_eq(n: &IfName) -> [Expr; 2] {
        [Expr::Meta(6), Expr::Cmp(true, n.padded().to_vec())]
    }
    /// `meta oifname "NAME"` / `!= "NAME"`.
    pub fn oifname(n: &IfName, eq: bool) -> [Expr; 2] {
        [Expr::Meta(7), Expr::Cmp(eq, n.padded().to_vec())]
    }
    /// `ip saddr ADDR`.
    pub fn saddr_eq(a: Ipv4Addr) -> [Expr; 2] {
        [
            Expr::Payload(1, 12, 4),
            Expr::Cmp(true, a.octets().to_vec()),
        ]
    }
    /// `meta l4proto P th dport PORT`.
    pub fn dport_eq(p: L4, port: u16) -> [Expr; 4] {
        [
            Expr::Meta(16),
            Expr::Cmp(true, vec![p as u8]),
            Expr::Payload(2, 2, 2),
            Expr::Cmp(true, port.to_be_bytes().to_vec()),
        ]
    }
    /// `fib daddr type local` (RTN_LOCAL = 2, compared in host byte order).
    pub fn daddr_local() -> [Expr; 2] {
        [
            Expr::FibDaddrType,
            Expr::Cmp(true, 2u32.to_ne_bytes().to_vec()),
        ]
    }
    /// `dnat to ADDR:PORT`.
    pub fn dnat(a: Ipv4Addr, port: u16) -> [Expr; 3] {
        [
            Expr::Immediate(NFT_REG_1, a.octets().to_vec()),
            Expr::Immediate(NFT_REG_2, port.to_be_bytes().to_vec()),
            Expr::Dnat { port: true },
        ]
    }

    /// `ip daddr PREFIX` (e.g. `ip daddr 10.0.0.0/8`): load, mask, compare with the network.
    pub fn daddr_in(net: Ipv4Cidr) -> Vec<Expr> {
        let p = u32::from(net.prefix());
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
        let mut v = vec![Expr::Payload(1, 16, 4)];
        if p < 32 {
            v.push(Expr::Mask(mask.to_be_bytes().to_vec()));
        }
        v.push(Expr::Cmp(
            true,
            (u32::from(net.addr()) & mask).to_be_bytes().to_vec(),
        ));
        v
    }

    /// `ct state established,related`.
    pub fn ct_established_or_related() -> [Expr; 3] {
        // NF_CT_STATE_BIT(IP_CT_ESTABLISHED) = 2, NF_CT_STATE_BIT(IP_CT_RELATED) = 4
        [
            Expr::CtState,
            Expr::And(2 | 4),
            Expr::Cmp(false, 0u32.to_ne_bytes().to_vec()),
        ]
    }

    fn encode(&self, m: &mut Msg) {
        m.nest(NFTA_LIST_ELEM | NLA_F_NESTED);
        let name = match self {
            Expr::Meta(_) => "meta",
            Expr::Payload(..) => "payload",
            Expr::FibDaddrType => "fib",
            Expr::Cmp(..) => "cmp",
            Expr::Immediate(..) => "immediate",
            Expr::Dnat { .. } => "nat",
            Expr::Masq => "masq",
            Expr::CtState => "ct",
            Expr::And(_) | Expr::Mask(_) => "bitwise",
            Expr::Verdict(_) => "immediate",
        };
        m.attr_str(NFTA_EXPR_NAME, name);
        match self {
            Expr::Masq => {}
            _ => {
                m.nest(NFTA_EXPR_DATA | NLA_F_NESTED);
                match self {
                    Expr::Meta(key) => {
                        // NFTA_META_DREG = 1, NFTA_META_KEY = 2
                        m.attr_u32_be(1, NFT_REG_1).attr_u32_be(2, *key);
                    }
                    Expr::Payload(base, off, len) => {
                        // NFTA_PAYLOAD_DREG, BASE, OFFSET, LEN = 1..4
                        m.attr_u32_be(1, NFT_REG_1)
                            .attr_u32_be(2, *base)
                            .attr_u32_be(3, *off)
                            .attr_u32_be(4, *len);
                    }
                    Expr::FibDaddrType => {
                        // NFTA_FIB_DREG = 1, NFTA_FIB_RESULT = 2 (NFT_FIB_RESULT_ADDRTYPE = 3),
                        // NFTA_FIB_FLAGS = 3 (NFTA_FIB_F_DADDR = 2)
                        m.attr_u32_be(1, NFT_REG_1)
                            .attr_u32_be(2, 3)
                            .attr_u32_be(3, 2);
                    }
                    Expr::Cmp(eq, data) => {
                        // NFTA_CMP_SREG = 1, NFTA_CMP_OP = 2 (EQ 0, NEQ 1), NFTA_CMP_DATA = 3
                        m.attr_u32_be(1, NFT_REG_1)
                            .attr_u32_be(2, if *eq { 0 } else { 1 });
                        m.nest(3 | NLA_F_NESTED)
                            .attr(NFTA_DATA_VALUE, data)
                            .nest_end();
                    }
                    Expr::Immediate(reg, data) => {
                        // NFTA_IMMEDIATE_DREG = 1, NFTA_IMMEDIATE_DATA = 2
                        m.attr_u32_be(1, *reg);
                        m.nest(2 | NLA_F_NESTED)
                            .attr(NFTA_DATA_VALUE, data)
                            .nest_end();
                    }
                    Expr::Dnat { port } => {
                        // NFTA_NAT_TYPE = 1 (NFT_NAT_DNAT = 1), FAMILY = 2, REG_ADDR_MIN = 3,
                        // REG_PROTO_MIN = 5
                        m.attr_u32_be(1, 1)
                            .attr_u32_be(2, FAMILY_IP as u32)
                            .attr_u32_be(3, NFT_REG_1);
                        if *port {
                            m.attr_u32_be(5, NFT_REG_2);
                        }
                    }
                    Expr::CtState => {
                        // NFTA_CT_DREG = 1, NFTA_CT_KEY = 2 (NFT_CT_STATE = 0)
                        m.attr_u32_be(1, NFT_REG_1).attr_u32_be(2, 0);
                    }
                    Expr::And(mask) => {
                        // NFTA_BITWISE_SREG = 1, DREG = 2, LEN = 3, MASK = 4, XOR = 5
                        m.attr_u32_be(1, NFT_REG_1)
                            .attr_u32_be(2, NFT_REG_1)
                            .attr_u32_be(3, 4);
                        m.nest(4 | NLA_F_NESTED)
                            .attr(NFTA_DATA_VALUE, &mask.to_ne_bytes())
                            .nest_end();
                        m.nest(5 | NLA_F_NESTED)
                            .attr(NFTA_DATA_VALUE, &[0u8; 4])
                            .nest_end();
                    }
                    Expr::Mask(mask) => {
                        m.attr_u32_be(1, NFT_REG_1)
                            .attr_u32_be(2, NFT_REG_1)
                            .attr_u32_be(3, mask.len() as u32);
                        m.nest(4 | NLA_F_NESTED)
                            .attr(NFTA_DATA_VALUE, mask)
                            .nest_end();
                        m.nest(5 | NLA_F_NESTED)
                            .attr(NFTA_DATA_VALUE, &vec![0u8; mask.len()])
                            .nest_end();
                    }
                    Expr::Verdict(accept) => {
                        // NFTA_IMMEDIATE_DREG = 1 (NFT_REG_VERDICT = 0), NFTA_IMMEDIATE_DATA =
                        // 2 { NFTA_DATA_VERDICT = 2 { NFTA_VERDICT_CODE = 1 } }; NF_DROP 0,
                        // NF_ACCEPT 1
                        m.attr_u32_be(1, 0);
                        m.nest(2 | NLA_F_NESTED);
                        m.nest(2 | NLA_F_NESTED)
                            .attr_u32_be(1, u32::from(*accept))
                            .nest_end();
                        m.nest_end();
                    }
                    Expr::Masq => {}
                }
                m.nest_end();
            }
        }
        m.nest_end();
    }
}

/// A base chain and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Chain name.
    pub name: &'static str,
    /// Chain type: `nat` or `filter`.
    pub kind: &'static str,
    /// Hook.
    pub hook: Hook,
    /// Priority (-100 dstnat, 100 srcnat).
    pub priority: i32,
    /// Rules, each a list of expressions.
    pub rules: Vec<Vec<Expr>>,
}

fn nfgen(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

fn nft_msg(ty: u16, flags: u16, family: u8) -> Msg {
    Msg::new((NFNL_SUBSYS_NFTABLES << 8) | ty, flags).header(&nfgen(family, 0))
}

/// Builds the batch that atomically (re)creates `table` with `chains`.
pub(crate) fn table_batch(family: u8, table: &str, chains: &[Chain]) -> (Vec<Msg>, Vec<bool>) {
    let mut msgs = Vec::new();
    let mut acked = Vec::new();
    let mut push = |m: Msg, ack: bool| {
        msgs.push(m);
        acked.push(ack);
    };
    push(
        Msg::new(NFNL_MSG_BATCH_BEGIN, 0).header(&nfgen(0, NFNL_SUBSYS_NFTABLES)),
        false,
    );
    // NEWTABLE (no EXCL) makes DELTABLE valid whether or not the table existed.
    let mut m = nft_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK, family);
    m.attr_str(NFTA_TABLE_NAME, table);
    push(m, true);
    let mut m = nft_msg(NFT_MSG_DELTABLE, NLM_F_ACK, family);
    m.attr_str(NFTA_TABLE_NAME, table);
    push(m, true);
    if !chains.is_empty() {
        let mut m = nft_msg(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK, family);
        m.attr_str(NFTA_TABLE_NAME, table);
        push(m, true);
    }
    for c in chains {
        let mut m = nft_msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK, family);
        m.attr_str(NFTA_CHAIN_TABLE, table)
            .attr_str(NFTA_CHAIN_NAME, c.name);
        m.nest(NFTA_CHAIN_HOOK | NLA_F_NESTED)
            .attr_u32_be(NFTA_HOOK_HOOKNUM, c.hook as u32)
            .attr_u32_be(NFTA_HOOK_PRIORITY, c.priority as u32)
            .nest_end();
        m.attr_u32_be(NFTA_CHAIN_POLICY, 1) // NF_ACCEPT
            .attr_str(NFTA_CHAIN_TYPE, c.kind);
        push(m, true);
        for r in &c.rules {
            let mut m = nft_msg(
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
                family,
            );
            m.attr_str(NFTA_RULE_TABLE, table)
                .attr_str(NFTA_RULE_CHAIN, c.name);
            m.nest(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED);
            for e in r {
                e.encode(&mut m);
            }
            m.nest_end();
            push(m, true);
        }
    }
    push(
        Msg::new(NFNL_MSG_BATCH_END, 0).header(&nfgen(0, NFNL_SUBSYS_NFTABLES)),
        false,
    );
    (msgs, acked)
}

/// An nfnetlink handle on one namespace.
#[derive(Debug)]
pub struct Nft {
    ns: Netns,
    sock: std::sync::Mutex<NlSocket>,
}

impl Nft {
    /// Opens an nfnetlink socket inside `ns`.
    pub fn open(ns: &Netns) -> Result<Nft> {
        let sock = ns
            .enter(|| NlSocket::new(NETLINK_NETFILTER))?
            .map_err(NetError::io(format!(
                "open nfnetlink socket in {}",
                ns.name()
            )))?;
        Ok(Nft {
            ns: ns.clone(),
            sock: std::sync::Mutex::new(sock),
        })
    }

    fn sock(&self) -> std::sync::MutexGuard<'_, NlSocket> {
        self.sock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Atomically replaces `table` (family ip) with `chains`.
    pub fn replace_table(&self, table: &str, chains: &[Chain]) -> Result<()> {
        let (msgs, acked) = table_batch(FAMILY_IP, table, chains);
        self.sock()
            .batch(msgs, &acked)
            .map_err(NetError::nl(format!(
                "write nft table {table} in {}",
                self.ns.name()
            )))
    }

    /// Deletes `table` (family ip) with everything in it; absent is fine.
    pub fn delete_table(&self, table: &str) -> Result<()> {
        self.replace_table(table, &[])
    }

    /// Names of the ip-family tables in the namespace.
    pub fn tables(&self) -> Result<Vec<String>> {
        let m = nft_msg(NFT_MSG_GETTABLE, NLM_F_DUMP, FAMILY_IP);
        let replies = self.sock().dump(m).map_err(NetError::nl(format!(
            "list nft tables in {}",
            self.ns.name()
        )))?;
        let mut out = Vec::new();
        for r in replies {
            if let Some(body) = r.payload.get(4..) {
                for (ty, p) in attrs(body) {
                    if ty == NFTA_TABLE_NAME {
                        out.push(get_str(p));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masq_rule_encoding() {
        // nft add rule ip t c oifname "up" masquerade — the expression list libnftnl emits.
        let up = IfName::new("up").unwrap();
        let mut m = Msg::new(0, 0);
        m.nest(NFTA_RULE_EXPRESSIONS | NLA_F_NESTED);
        for e in Expr::oifname(&up, true).iter().chain([Expr::Masq].iter()) {
            e.encode(&mut m);
        }
        m.nest_end();
        let p = m.payload();
        let exprs: Vec<_> = attrs(attrs(p).next().unwrap().1).collect();
        assert_eq!(exprs.len(), 3);
        let names: Vec<String> = exprs
            .iter()
            .map(|(_, e)| get_str(attrs(e).next().unwrap().1))
            .collect();
        assert_eq!(names, ["meta", "cmp", "masq"]);
        // cmp data is the 16-byte NUL-padded name
        let cmp = attrs(exprs[1].1).nth(1).unwrap().1;
        let data = attrs(cmp).nth(2).unwrap().1;
        let value = attrs(data).next().unwrap().1;
        assert_eq!(value.len(), 16);
        assert_eq!(&value[..3], b"up\0");
    }

    #[test]
    fn daddr_prefix_is_masked_in_network_order() {
        let e = Expr::daddr_in("172.16.0.0/12".parse().unwrap());
        assert_eq!(
            e,
            vec![
                Expr::Payload(1, 16, 4),
                Expr::Mask(vec![255, 240, 0, 0]),
                Expr::Cmp(true, vec![172, 16, 0, 0]),
            ]
        );
        // Host bits in the prefix are ignored; a /32 needs no mask.
        let e = Expr::daddr_in("10.1.2.3/8".parse().unwrap());
        assert_eq!(e[2], Expr::Cmp(true, vec![10, 0, 0, 0]));
        let e = Expr::daddr_in("169.254.169.254/32".parse().unwrap());
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn batch_shape() {
        let (msgs, acked) = table_batch(FAMILY_IP, "kobako-x", &[]);
        // begin, newtable, deltable, end
        assert_eq!(msgs.len(), 4);
        assert_eq!(acked, vec![false, true, true, false]);
    }
}
