//! COM1: an 8250/16550 UART (vm-superio's emulation) at port 0x3f8, IRQ 4, whose output goes to
//! stdout, a file, a Unix socket's connected clients, or nowhere.
//!
//! Guest writes arrive on vCPU threads through the I/O bus; host input (stdin or socket
//! clients) is fed in by the event-loop thread. Both go through the device's `Mutex`.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::{BusDevice, EventFdTrigger};

/// Port base of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// Legacy IRQ (and GSI) of COM1.
pub const COM1_IRQ: u32 = 4;

/// Where guest console output goes.
pub enum SerialOut {
    Sink,
    Stdout(io::Stdout),
    File(File),
    /// Every client connected to the console socket gets a copy; a client whose write fails is
    /// dropped. Writes are non-blocking so a slow client cannot stall the guest.
    Clients(Arc<Mutex<Vec<UnixStream>>>),
}

impl std::fmt::Debug for SerialOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SerialOut::Sink => "Sink",
            SerialOut::Stdout(_) => "Stdout",
            SerialOut::File(_) => "File",
            SerialOut::Clients(_) => "Clients",
        })
    }
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SerialOut::Sink => Ok(buf.len()),
            SerialOut::Stdout(s) => s.write(buf),
            SerialOut::File(f) => f.write(buf),
            SerialOut::Clients(c) => {
                let mut clients = c.lock().unwrap_or_else(|e| e.into_inner());
                clients.retain_mut(|s| s.write_all(buf).is_ok());
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            SerialOut::Stdout(s) => s.flush(),
            SerialOut::File(f) => f.flush(),
            _ => Ok(()),
        }
    }
}

/// The UART as a bus device.
pub struct SerialDevice {
    pub uart: Serial<EventFdTrigger, NoEvents, SerialOut>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    pub fn new(irq: EventFdTrigger, out: SerialOut) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
        }
    }

    /// A UART that continues from a snapshot's register state.
    pub fn from_state(irq: EventFdTrigger, out: SerialOut, s: &SerialSnap) -> io::Result<Self> {
        let st = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let uart = Serial::from_state(&st, irq, NoEvents, out)
            .map_err(|e| io::Error::other(format!("serial state: {e:?}")))?;
        Ok(SerialDevice { uart })
    }

    /// The UART's registers and pending input, for a snapshot.
    pub fn save(&self) -> SerialSnap {
        let s = self.uart.state();
        SerialSnap {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Host input for the guest; returns how many bytes fitted in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (1, Ok(off @ 0..8)) = (data.len(), u8::try_from(offset)) {
            data[0] = self.uart.read(off);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, Ok(off @ 0..8)) = (data.len(), u8::try_from(offset)) {
            // An interrupt-trigger or output error loses one byte; the guest cannot act on it.
            let _ = self.uart.write(off, data[0]);
            if offset == 0 {
                let _ = self.uart.writer_mut().flush();
            }
        }
    }
}

/// The 16550's state in a snapshot (vm-superio's `SerialState`, which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnap {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}
