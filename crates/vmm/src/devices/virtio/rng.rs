//! virtio-rng (entropy device, type 4): one request queue; every device-writable buffer is
//! filled from the host's `getrandom(2)`. Optional rate limiter (Firecracker's `entropy`
//! section: `{"rate_limiter": ...}`), charged by the bytes handed out.

use std::any::Any;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::Epoll;

use super::device_state::{ActiveState, DeviceState};
use super::queue::ChainWriter;
use super::rate_limiter::RateLimiter;
use super::{ActiveContext, VirtioDevice, COMMON_FEATURES, TYPE_RNG};

const QUEUE_SIZE: u16 = 256;
const TOKEN_LIMITER: u64 = super::DEVICE_TOKEN_BASE;
/// Largest amount handed out per request (Linux asks for at most a page or so).
const MAX_PER_REQUEST: usize = 64 << 10;

/// The entropy device.
pub struct Rng {
    state: DeviceState,
    limiter: RateLimiter,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng").finish_non_exhaustive()
    }
}

impl Rng {
    pub fn new(limiter: Option<&crate::config::RateLimiter>) -> std::io::Result<Rng> {
        Ok(Rng {
            state: DeviceState::Inactive,
            limiter: RateLimiter::new(limiter)?,
            buf: Vec::new(),
        })
    }

    fn process(&mut self) {
        let Some(ActiveState { mem, queues, irq }) = self.state.active_mut() else {
            return;
        };
        let queue = &mut queues[0];
        let mut used = false;
        loop {
            queue.disable_notification(mem);
            while let Some((head, chain)) = queue.pop(mem) {
                let len = match chain {
                    Ok(c) => {
                        let want = crate::cast::usize_from(c.writable_len()).min(MAX_PER_REQUEST);
                        if !self.limiter.consume(want as u64, 1) {
                            queue.undo_pop();
                            break;
                        }
                        self.buf.resize(want, 0);
                        match getrandom::fill(&mut self.buf) {
                            Ok(()) => ChainWriter::new(mem, &c.writable).write(&self.buf),
                            Err(_) => 0,
                        }
                    }
                    Err(_) => 0,
                };
                queue.add_used(mem, head, crate::cast::len_u32(len));
                used = true;
            }
            if self.limiter.is_blocked() || !queue.enable_notification(mem) {
                break;
            }
        }
        if used && queue.needs_notification(mem) {
            irq.signal_used();
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        COMMON_FEATURES
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, ctx: ActiveContext, _epoll: &Epoll) -> Result<(), super::ActivateError> {
        if ctx.queues.is_empty() {
            return Err(crate::devices::virtio::ActivateError::BadQueueCount {
                device: "virtio-rng",
                needs: 1,
                got: 0,
            });
        }
        self.state.activate(ctx);
        Ok(())
    }
    fn reset(&mut self, _epoll: &Epoll) {
        self.state.reset();
    }
    fn queue_event(&mut self, _idx: usize, _epoll: &Epoll) {
        self.process();
    }
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![(self.limiter.timer_fd(), TOKEN_LIMITER)]
    }
    fn event(&mut self, token: u64, _epoll: &Epoll) {
        if token == TOKEN_LIMITER {
            self.limiter.on_timer();
            self.process();
        }
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
