//! virtio-net on a host tap device: one rx and one tx queue per queue pair, each on its own
//! thread. With several pairs (multi-queue, one per vCPU) the tap is multi-queue, pair i moves
//! frames through the tap's queue i, and a control queue lets the driver choose how many pairs
//! are in use (VIRTIO_NET_CTRL_MQ); the tap only steers received flows to those. Frames pass
//! through with the 12-byte virtio-net header (the tap is opened with the same header size), so
//! checksum and TSO offloads cost nothing here: the guest's NEEDS_CSUM/GSO headers go to the tap
//! as they are, and the tap is told (TUNSETOFFLOAD) which offloads the guest accepted on
//! receive. Frames larger than the guest's rx buffer chain are dropped and counted. Buffers are
//! allocated once at activation.

use super::tap::Tap;
use super::{ActivateContext, VirtioDevice, Worker, F_EVENT_IDX, F_VERSION_1, TYPE_NET};
use crate::config::NetConfig;
use crate::error::Result;
use crate::stats::DeviceCounters;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Device accepts frames with partial checksums (guest tx).
pub const F_CSUM: u64 = 1 << 0;
/// Driver accepts frames with partial checksums (guest rx).
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// Driver accepts TCPv4 GSO frames.
pub const F_GUEST_TSO4: u64 = 1 << 7;
/// Driver accepts TCPv6 GSO frames.
pub const F_GUEST_TSO6: u64 = 1 << 8;
/// Device accepts TCPv4 GSO frames.
pub const F_HOST_TSO4: u64 = 1 << 11;
/// Device accepts TCPv6 GSO frames.
pub const F_HOST_TSO6: u64 = 1 << 12;
const F_MAC: u64 = 1 << 5;
/// Control virtqueue.
pub const F_CTRL_VQ: u64 = 1 << 17;
/// Multi-queue (with the control queue to choose the number of pairs).
pub const F_MQ: u64 = 1 << 22;
/// Most queue pairs a NIC offers.
pub const MAX_QUEUE_PAIRS: u16 = 8;
const CTRL_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
const CTRL_OK: u8 = 0;
const CTRL_ERR: u8 = 1;

/// The tap offloads matching the driver's receive features (TSO only together with checksums,
/// as both virtio and the tap require).
pub fn tap_offloads(features: u64) -> u32 {
    use super::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
    if features & F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = TUN_F_CSUM;
    if features & F_GUEST_TSO4 != 0 {
        f |= TUN_F_TSO4;
    }
    if features & F_GUEST_TSO6 != 0 {
        f |= TUN_F_TSO6;
    }
    f
}
/// virtio_net_hdr_v1 (with num_buffers), the only header layout under VERSION_1.
pub const VNET_HDR_BYTES: usize = 12;
/// Largest frame plus header we move (no TSO, so 1514 + header; room for jumbo-ish frames).
pub const MAX_FRAME_BYTES: usize = 65_562;
const MAX_DESCS: usize = 64;

/// The NIC.
pub struct Net {
    taps: Vec<Arc<Tap>>,
    mac: [u8; 6],
    counters: Arc<DeviceCounters>,
    workers: Vec<Worker>,
}

impl Net {
    /// Opens the tap named in `cfg` with `pairs` queue pairs (clamped to 1..=8; one per vCPU is
    /// the usual choice). A tap that already exists as a single-queue device gets one pair.
    pub fn new(cfg: &NetConfig, pairs: u16) -> Result<Self> {
        let pairs = usize::from(pairs.clamp(1, MAX_QUEUE_PAIRS));
        let hdr = VNET_HDR_BYTES as i32;
        let taps = match Tap::open_queues(&cfg.tap, hdr, pairs) {
            Ok(t) => t,
            Err(_) if pairs > 1 => vec![Tap::open(&cfg.tap, hdr)?],
            Err(e) => return Err(e),
        };
        Ok(Self {
            taps: taps.into_iter().map(Arc::new).collect(),
            mac: cfg.mac,
            counters: Arc::new(DeviceCounters::default()),
            workers: Vec::new(),
        })
    }

    fn pairs(&self) -> u16 {
        self.taps.len() as u16
    }
}

/// Lets the first `n` tap queues receive (at least the first); the rest are detached.
fn use_pairs(taps: &[Arc<Tap>], n: usize) -> Result<()> {
    if taps.len() < 2 {
        return Ok(());
    }
    for (i, t) in taps.iter().enumerate() {
        if i < n.max(1) {
            t.set_queue_attached(true)?;
        }
    }
    for (i, t) in taps.iter().enumerate() {
        if i >= n.max(1) {
            t.set_queue_attached(false)?;
        }
    }
    Ok(())
}

/// Answers one control command (class, command, data): only MQ_VQ_PAIRS_SET is offered.
fn control_command(cmd: &[u8], mq: bool, taps: &[Arc<Tap>]) -> u8 {
    match cmd {
        [CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET, lo, hi, ..] => {
            let n = usize::from(u16::from_le_bytes([*lo, *hi]));
            if mq && (1..=taps.len()).contains(&n) && use_pairs(taps, n).is_ok() {
                CTRL_OK
            } else {
                CTRL_ERR
            }
        }
        _ => CTRL_ERR,
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        let mut q = vec![256; 2 * usize::from(self.pairs())];
        if self.pairs() > 1 {
            q.push(256); // control queue, after all the pairs
        }
        q
    }
    fn features(&self) -> u64 {
        let mq = if self.pairs() > 1 {
            F_CTRL_VQ | F_MQ
        } else {
            0
        };
        mq | F_VERSION_1
            | F_EVENT_IDX
            | F_MAC
            | F_CSUM
            | F_GUEST_CSUM
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_HOST_TSO4
            | F_HOST_TSO6
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status u16 (link up), max_virtqueue_pairs u16.
        let cfg = [
            self.mac[0],
            self.mac[1],
            self.mac[2],
            self.mac[3],
            self.mac[4],
            self.mac[5],
            1,
            0,
            self.pairs() as u8,
            (self.pairs() >> 8) as u8,
        ];
        super::read_config_bytes(&cfg, offset, data);
    }
    fn activate(&mut self, mut ctx: ActivateContext) -> Result<()> {
        // Also after a reset with fewer features: the tap must not hand over what the guest
        // cannot take.
        self.taps[0].set_offload(tap_offloads(ctx.features))?;
        // Only the first pair until the driver asks for more (virtio 1.2, 5.1.6.5.5).
        use_pairs(&self.taps, 1)?;
        let mq = ctx.features & F_MQ != 0;
        let ctrl_index = 2 * self.pairs();
        for aq in std::mem::take(&mut ctx.queues) {
            if self.pairs() > 1 && aq.index == ctrl_index {
                let w = spawn_control(&ctx, aq, mq, self.taps.clone())?;
                self.workers.push(w);
                continue;
            }
            let pair = usize::from(aq.index / 2);
            let Some(tap) = self.taps.get(pair).cloned() else {
                continue;
            };
            let (mem, counters, irq) = (ctx.mem.clone(), self.counters.clone(), aq.irq);
            let queue = Mutex::new(aq.queue);
            let mut buf = vec![0u8; MAX_FRAME_BYTES];
            if aq.index % 2 == 0 {
                // rx: move frames from the tap into guest buffers; hold one frame while the guest
                // has no buffers (and stop watching the tap until it kicks).
                let mut pending: Option<usize> = None;
                let w = Worker::spawn(
                    format!("{}-rx{pair}", ctx.name),
                    ctx.seccomp,
                    ctx.cpu.clone(),
                    aq.notify,
                    Some(tap.raw_fd()),
                    move |_| {
                        let mut q = queue.lock();
                        let mut used = false;
                        let mut watch = true;
                        loop {
                            let len = match pending.take() {
                                Some(n) => n,
                                None => match tap.read_frame(&mut buf) {
                                    Ok(Some(n)) => {
                                        // The tap fills the 10-byte legacy header; without
                                        // MRG_RXBUF, num_buffers is 1.
                                        if n >= VNET_HDR_BYTES {
                                            buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                                        }
                                        n
                                    }
                                    _ => break,
                                },
                            };
                            let mut chain = q.pop_descriptor_chain(&*mem);
                            if chain.is_none()
                                && q.event_idx_enabled()
                                && q.enable_notification(&*mem).unwrap_or(false)
                            {
                                // Buffers arrived while we re-armed notifications.
                                chain = q.pop_descriptor_chain(&*mem);
                            }
                            let Some(chain) = chain else {
                                pending = Some(len);
                                watch = false;
                                break;
                            };
                            let head = chain.head_index();
                            let mut done = 0usize;
                            for d in chain.take(MAX_DESCS) {
                                if done == len {
                                    break;
                                }
                                let n = (d.len() as usize).min(len - done);
                                if !d.is_write_only()
                                    || !mem.check_range(GuestAddress(d.addr().0), n)
                                    || mem
                                        .write_slice(&buf[done..done + n], GuestAddress(d.addr().0))
                                        .is_err()
                                {
                                    break;
                                }
                                done += n;
                            }
                            let used_len = if done == len {
                                counters.read_ops.fetch_add(1, Ordering::Relaxed);
                                counters.read_bytes.fetch_add(
                                    (len - VNET_HDR_BYTES.min(len)) as u64,
                                    Ordering::Relaxed,
                                );
                                len as u32
                            } else {
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                0
                            };
                            if q.add_used(&*mem, head, used_len).is_err() {
                                break;
                            }
                            used = true;
                        }
                        if used && q.needs_notification(&*mem).unwrap_or(true) {
                            irq.trigger();
                        }
                        watch
                    },
                )?;
                self.workers.push(w);
            } else {
                let w = Worker::spawn(
                    format!("{}-tx{pair}", ctx.name),
                    ctx.seccomp,
                    ctx.cpu.clone(),
                    aq.notify,
                    None,
                    move |_| {
                        let mut q = queue.lock();
                        let mut used = false;
                        loop {
                            if q.event_idx_enabled() {
                                let _ = q.disable_notification(&*mem);
                            }
                            while let Some(chain) = q.pop_descriptor_chain(&*mem) {
                                let head = chain.head_index();
                                let mut len = 0usize;
                                let mut ok = true;
                                for d in chain.take(MAX_DESCS) {
                                    let n = d.len() as usize;
                                    if d.is_write_only()
                                        || len + n > buf.len()
                                        || mem
                                            .read_slice(
                                                &mut buf[len..len + n],
                                                GuestAddress(d.addr().0),
                                            )
                                            .is_err()
                                    {
                                        ok = false;
                                        break;
                                    }
                                    len += n;
                                }
                                if ok
                                    && len > VNET_HDR_BYTES
                                    && tap.write_frame(&buf[..len]).is_ok()
                                {
                                    counters.write_ops.fetch_add(1, Ordering::Relaxed);
                                    counters.write_bytes.fetch_add(
                                        (len - VNET_HDR_BYTES) as u64,
                                        Ordering::Relaxed,
                                    );
                                } else {
                                    counters.errors.fetch_add(1, Ordering::Relaxed);
                                }
                                if q.add_used(&*mem, head, 0).is_err() {
                                    return true;
                                }
                                used = true;
                            }
                            if !q.event_idx_enabled()
                                || !q.enable_notification(&*mem).unwrap_or(false)
                            {
                                break;
                            }
                        }
                        if used && q.needs_notification(&*mem).unwrap_or(true) {
                            irq.trigger();
                        }
                        true
                    },
                )?;
                self.workers.push(w);
            }
        }
        Ok(())
    }
    fn reset(&mut self) {
        for mut w in self.workers.drain(..) {
            w.stop();
        }
    }
    fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }
}

/// The control queue's thread: reads each command (device-readable descriptors), answers
/// with the one-byte ack in the first device-writable descriptor.
fn spawn_control(
    ctx: &ActivateContext,
    aq: super::ActiveQueue,
    mq: bool,
    taps: Vec<Arc<Tap>>,
) -> Result<Worker> {
    let (mem, irq) = (ctx.mem.clone(), aq.irq);
    let queue = Mutex::new(aq.queue);
    Worker::spawn(
        format!("{}-ctrl", ctx.name),
        ctx.seccomp,
        ctx.cpu.clone(),
        aq.notify,
        None,
        move |_| {
            let mut q = queue.lock();
            let mut used = false;
            loop {
                if q.event_idx_enabled() {
                    let _ = q.disable_notification(&*mem);
                }
                while let Some(chain) = q.pop_descriptor_chain(&*mem) {
                    let head = chain.head_index();
                    let mut cmd = [0u8; 8];
                    let mut got = 0usize;
                    let mut ack_at = None;
                    for d in chain.take(MAX_DESCS) {
                        if d.is_write_only() {
                            if ack_at.is_none() && d.len() >= 1 {
                                ack_at = Some(d.addr());
                            }
                            continue;
                        }
                        let n = (d.len() as usize).min(cmd.len() - got);
                        if mem.read_slice(&mut cmd[got..got + n], d.addr()).is_ok() {
                            got += n;
                        }
                    }
                    let mut written = 0;
                    if let Some(at) = ack_at {
                        let ack = control_command(&cmd[..got], mq, &taps);
                        if mem.write_obj(ack, at).is_ok() {
                            written = 1;
                        }
                    }
                    if q.add_used(&*mem, head, written).is_err() {
                        return true;
                    }
                    used = true;
                }
                if !q.event_idx_enabled() || !q.enable_notification(&*mem).unwrap_or(false) {
                    break;
                }
            }
            if used && q.needs_notification(&*mem).unwrap_or(true) {
                irq.trigger();
            }
            true
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};

    #[test]
    fn tap_offloads_follow_the_guest_receive_features() {
        assert_eq!(tap_offloads(F_VERSION_1 | F_CSUM | F_HOST_TSO4), 0);
        assert_eq!(tap_offloads(F_GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(
            tap_offloads(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        );
        // TSO without checksum offload would be refused by the tap: never asked for.
        assert_eq!(tap_offloads(F_GUEST_TSO4), 0);
    }

    #[test]
    fn control_commands_other_than_pairs_set_are_refused() {
        // No taps needed for the refusals; a single-pair NIC has nothing to switch.
        assert_eq!(
            control_command(&[CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET, 1, 0], true, &[]),
            CTRL_ERR
        );
        assert_eq!(control_command(&[0, 0, 1], true, &[]), CTRL_ERR);
        assert_eq!(control_command(&[CTRL_MQ], true, &[]), CTRL_ERR);
        assert_eq!(control_command(&[], false, &[]), CTRL_ERR);
    }
}
