//! A minimal i8042 PS/2 controller at ports 0x60-0x64: enough for Linux's i8042 driver to probe
//! it, for the guest to reset the machine (command 0xFE, the way `reboot=k` and Firecracker
//! guests shut down), and for the host to inject Ctrl-Alt-Del.
//!
//! Guest accesses come from vCPU threads; Ctrl-Alt-Del from the event-loop thread. A reset is
//! reported by writing `reset_evt`, which the event loop polls.

use std::collections::VecDeque;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::{BusDevice, EventFdTrigger};

/// Port base (data port 0x60; the command/status port is 0x64 = base + 4).
pub const I8042_PORT: u64 = 0x60;
/// Keyboard IRQ.
pub const KBD_IRQ: u32 = 1;

const OFS_DATA: u64 = 0;
const OFS_STATUS: u64 = 4;

// Status register bits.
const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_I8042_CMD_DATA: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

// Controller commands (https://wiki.osdev.org/%228042%22_PS/2_Controller).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;

const CTR_KBD_INT: u8 = 0x01;

// Set-2 scancodes (what atkbd expects by default).
const KEY_CTRL: u16 = 0x0014;
const KEY_ALT: u16 = 0x0011;
const KEY_DEL: u16 = 0xe071;

/// The controller.
#[derive(Debug)]
pub struct I8042 {
    reset_evt: EventFd,
    kbd_irq: EventFdTrigger,
    status: u8,
    control: u8,
    outp: u8,
    cmd: u8,
    buf: VecDeque<u8>,
}

impl I8042 {
    pub fn new(reset_evt: EventFd, kbd_irq: EventFdTrigger) -> Self {
        I8042 {
            reset_evt,
            kbd_irq,
            status: SB_KBD_ENABLED,
            control: CTR_KBD_INT,
            outp: 0,
            cmd: 0,
            buf: VecDeque::new(),
        }
    }

    /// The controller's registers and queued bytes, for a snapshot.
    pub fn save(&self) -> I8042Snap {
        I8042Snap {
            status: self.status,
            control: self.control,
            outp: self.outp,
            cmd: self.cmd,
            buf: self.buf.iter().copied().collect(),
        }
    }

    /// Back to a snapshot's state.
    pub fn restore(&mut self, s: &I8042Snap) {
        self.status = s.status;
        self.control = s.control;
        self.outp = s.outp;
        self.cmd = s.cmd;
        self.buf = s.buf.iter().copied().take(16).collect();
    }

    fn push(&mut self, b: u8) {
        if self.buf.len() < 16 {
            self.buf.push_back(b);
        }
        self.status |= SB_OUT_DATA_AVAIL;
    }

    fn push_key(&mut self, code: u16, release: bool) {
        let [prefix, scancode] = code.to_be_bytes();
        if prefix != 0 {
            self.push(prefix);
        }
        if release {
            self.push(0xf0);
        }
        self.push(scancode);
    }

    /// Queues Ctrl-Alt-Del press and release and raises the keyboard interrupt.
    pub fn trigger_ctrl_alt_del(&mut self) -> std::io::Result<()> {
        for k in [KEY_CTRL, KEY_ALT, KEY_DEL] {
            self.push_key(k, false);
        }
        for k in [KEY_DEL, KEY_ALT, KEY_CTRL] {
            self.push_key(k, true);
        }
        self.kbd_irq.trigger()
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            OFS_STATUS => self.status,
            OFS_DATA => {
                let v = self.buf.pop_front().unwrap_or(0);
                if self.buf.is_empty() {
                    self.status &= !SB_OUT_DATA_AVAIL;
                } else if self.control & CTR_KBD_INT != 0 {
                    let _ = self.kbd_irq.trigger();
                }
                v
            }
            _ => 0,
        };
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            OFS_STATUS => {
                self.status |= SB_I8042_CMD_DATA;
                self.cmd = 0;
                match v {
                    CMD_RESET_CPU => {
                        crate::log_info!("guest requested a CPU reset through the i8042");
                        let _ = self.reset_evt.write(1);
                    }
                    CMD_READ_CTR => self.push(self.control),
                    CMD_READ_OUTP => self.push(self.outp),
                    CMD_SELF_TEST => self.push(0x55),
                    CMD_KBD_TEST => self.push(0x00),
                    CMD_WRITE_CTR | CMD_WRITE_OUTP => self.cmd = v,
                    _ => {}
                }
            }
            OFS_DATA => {
                self.status &= !SB_I8042_CMD_DATA;
                match self.cmd {
                    CMD_WRITE_CTR => self.control = v,
                    CMD_WRITE_OUTP => self.outp = v,
                    // A byte for the keyboard itself: acknowledge it (0xFA) like a real one.
                    _ => self.push(0xfa),
                }
                self.cmd = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn reset_command_signals_and_ctrl_alt_del_queues_keys() {
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(
            reset.try_clone().unwrap(),
            EventFdTrigger(irq.try_clone().unwrap()),
        );
        assert!(reset.read().is_err(), "no reset yet");
        dev.write(OFS_STATUS, &[CMD_SELF_TEST]);
        let mut b = [0u8];
        dev.read(OFS_DATA, &mut b);
        assert_eq!(b[0], 0x55);
        dev.write(OFS_STATUS, &[CMD_RESET_CPU]);
        assert_eq!(reset.read().unwrap(), 1);
        dev.trigger_ctrl_alt_del().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        let mut keys = vec![];
        loop {
            dev.read(OFS_STATUS, &mut b);
            if b[0] & SB_OUT_DATA_AVAIL == 0 {
                break;
            }
            dev.read(OFS_DATA, &mut b);
            keys.push(b[0]);
        }
        assert_eq!(
            keys,
            vec![0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]
        );
    }
}

/// The i8042's state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042Snap {
    pub status: u8,
    pub control: u8,
    pub outp: u8,
    pub cmd: u8,
    pub buf: Vec<u8>,
}
