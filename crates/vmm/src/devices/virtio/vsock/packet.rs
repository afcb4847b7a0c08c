//! The vsock wire format: `struct virtio_vsock_hdr`, its operations and flags, and the checks
//! every packet from the guest passes before a connection sees it. Pure data, no I/O.

/// The host's CID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// [`HDR_LEN`] as a descriptor length.
pub const HDR_LEN_U32: u32 = crate::cast::u32_of(HDR_LEN as u64);
/// Largest payload accepted in one packet (Linux sends at most 64 KiB).
pub const MAX_PKT_PAYLOAD: u32 = 64 << 10;

pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
/// `virtio_vsock_event.id` of a transport reset.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// `struct virtio_vsock_hdr` (little-endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// Why a packet from the guest was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet shorter than the {HDR_LEN}-byte header ({0} bytes)")]
    Short(usize),
    #[error("payload length {len} above the {MAX_PKT_PAYLOAD}-byte limit")]
    TooLong { len: u32 },
    #[error("payload length {len} but only {avail} bytes follow the header")]
    Truncated { len: u32, avail: u64 },
    #[error("socket type {0} (only STREAM = 1)")]
    Type(u16),
    #[error("unknown operation {0}")]
    Op(u16),
    #[error("source CID {src} / destination CID {dst} (expected the guest's and 2)")]
    Cid { src: u64, dst: u64 },
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

impl PacketHeader {
    /// Decodes a header (the first [`HDR_LEN`] bytes); no semantic checks.
    pub fn decode(b: &[u8]) -> Result<PacketHeader, PacketError> {
        if b.len() < HDR_LEN {
            return Err(PacketError::Short(b.len()));
        }
        Ok(PacketHeader {
            src_cid: le64(b, 0),
            dst_cid: le64(b, 8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            type_: le16(b, 28),
            op: le16(b, 30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        })
    }

    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses and checks a packet from the guest: `avail` is how many bytes follow the header
    /// in its chain. The checks every TX packet passes before the state machine sees it.
    pub fn parse_guest(b: &[u8], avail: u64, guest_cid: u64) -> Result<PacketHeader, PacketError> {
        let h = PacketHeader::decode(b)?;
        if h.len > MAX_PKT_PAYLOAD {
            return Err(PacketError::TooLong { len: h.len });
        }
        if u64::from(h.len) > avail {
            return Err(PacketError::Truncated { len: h.len, avail });
        }
        if h.src_cid != guest_cid || h.dst_cid != HOST_CID {
            return Err(PacketError::Cid {
                src: h.src_cid,
                dst: h.dst_cid,
            });
        }
        if h.type_ != TYPE_STREAM {
            return Err(PacketError::Type(h.type_));
        }
        if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&h.op) {
            return Err(PacketError::Op(h.op));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u64 = 3;

    #[test]
    fn header_parsing_checks() {
        let h = PacketHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 1,
            dst_port: 2,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 64 << 10,
            fwd_cnt: 0,
        };
        assert_eq!(PacketHeader::decode(&h.encode()).unwrap(), h);
        assert_eq!(
            PacketHeader::parse_guest(&h.encode()[..43], 5, CID),
            Err(PacketError::Short(43))
        );
        assert_eq!(
            PacketHeader::parse_guest(&h.encode(), 4, CID),
            Err(PacketError::Truncated { len: 5, avail: 4 })
        );
        assert!(PacketHeader::parse_guest(&h.encode(), 5, CID).is_ok());
        assert!(PacketHeader::parse_guest(&h.encode(), 5, 4).is_err());
    }
}
