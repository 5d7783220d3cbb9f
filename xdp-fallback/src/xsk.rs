//! AF_XDP sockets over libc: a UMEM, its fill and completion rings, and the socket's RX
//! and TX rings, bound to one queue of one interface.
//!
//! All `unsafe` of the AF_XDP path is in this module: the mmaps of the UMEM and the rings,
//! and the reads and writes of ring entries the kernel shares with us.
//!
//! Frames are `FRAME_SIZE` bytes, aligned. Half of them are lent to the kernel through the
//! fill ring for receiving; received frames go back to the fill ring once the caller is
//! done with them (`rx_release`). The other half are for sending: taken from a free list,
//! queued on the TX ring, and returned to the list from the completion ring.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per UMEM frame: a page, so a 1500-byte underlay frame and headroom fit.
pub const FRAME_SIZE: usize = 4096;
/// Headroom the kernel leaves in front of received packets (XDP_PACKET_HEADROOM is 256).
const RX_HEADROOM: usize = 0;

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error(
        "cannot create an AF_XDP socket: {0} (needs a kernel with AF_XDP and root or CAP_NET_RAW + CAP_BPF)"
    )]
    Socket(io::Error),
    #[error("cannot set up the AF_XDP {what}: {err}")]
    Setup { what: &'static str, err: io::Error },
    #[error(
        "cannot register the AF_XDP UMEM: {0} (its pages count against RLIMIT_MEMLOCK: run as root with CAP_IPC_LOCK, or raise the limit, e.g. LimitMEMLOCK=infinity in the systemd unit)"
    )]
    UmemLimit(io::Error),
    #[error("cannot bind the AF_XDP socket to queue {queue} of interface index {ifindex}: {err}")]
    Bind { ifindex: u32, queue: u32, err: io::Error },
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> XskError {
    move |err| XskError::Setup { what, err }
}

/// How the socket moves packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskMode {
    /// The driver DMAs into the UMEM.
    ZeroCopy,
    /// The kernel copies between its buffers and the UMEM (veth, generic XDP).
    Copy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskModeRequest {
    /// Zero-copy where the driver supports it, copy otherwise.
    Auto,
    Copy,
    ZeroCopy,
}

#[derive(Debug, Clone, Copy)]
pub struct XskConfig {
    /// Frames in the UMEM (half receive, half send). A power of two.
    pub frames: u32,
    /// Entries of each ring. A power of two, at most `frames / 2`.
    pub ring: u32,
    pub mode: XskModeRequest,
}

impl Default for XskConfig {
    fn default() -> Self {
        Self { frames: 4096, ring: 2048, mode: XskModeRequest::Auto }
    }
}

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::from_raw(p, len)
    }

    fn ring(fd: RawFd, len: usize, pgoff: u64) -> io::Result<Self> {
        // SAFETY: maps the ring the kernel set up for this socket at the offset it defines.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        Self::from_raw(p, len)
    }

    fn from_raw(p: *mut libc::c_void, len: usize) -> io::Result<Self> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `mmap` returned; nothing borrows it past its owner.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One of the four rings: producer and consumer indices shared with the kernel, and the
/// entries. `cached_*` are this side's copies, refreshed only when they run out.
struct Ring<T> {
    _map: Mapping,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    desc: NonNull<T>,
    mask: u32,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
}

impl<T: Copy> Ring<T> {
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, size: u32, pgoff: u64) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let map = Mapping::ring(fd, len, pgoff)?;
        let base = map.ptr.as_ptr();
        // SAFETY: the kernel's offsets lie inside the mapping it sized for this ring.
        let at = |o: u64| unsafe { NonNull::new_unchecked(base.add(o as usize)) };
        Ok(Self {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            desc: at(off.desc).cast(),
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
            _map: map,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: a u32 index inside the live mapping, only ever accessed atomically.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn write(&mut self, i: u32, v: T) {
        // SAFETY: `i & mask` < size entries in the mapping; the entry belongs to this side
        // (reserved, not yet published), so the kernel does not read it concurrently.
        unsafe { self.desc.as_ptr().add((i & self.mask) as usize).write_volatile(v) }
    }

    fn read(&self, i: u32) -> T {
        // SAFETY: `i & mask` < size; the entry was published by the kernel (producer index
        // read with Acquire) and is not reused until we move the consumer index past it.
        unsafe { self.desc.as_ptr().add((i & self.mask) as usize).read_volatile() }
    }

    // -- this side produces (fill, TX) --

    /// Free entries, up to `want`.
    fn free(&mut self, want: u32) -> u32 {
        let mut free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free < want {
            self.cached_cons = self.consumer().load(Ordering::Acquire);
            free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        }
        free.min(want)
    }

    fn push(&mut self, v: T) {
        let i = self.cached_prod;
        self.write(i, v);
        self.cached_prod = i.wrapping_add(1);
    }

    fn publish(&self) {
        self.producer().store(self.cached_prod, Ordering::Release);
    }

    /// Whether the kernel has taken every entry published.
    fn consumed_all(&self) -> bool {
        self.consumer().load(Ordering::Acquire) == self.cached_prod
    }

    // -- this side consumes (RX, completion) --

    /// Entries ready, up to `want`.
    fn ready(&mut self, want: u32) -> u32 {
        let mut ready = self.cached_prod.wrapping_sub(self.cached_cons);
        if ready < want {
            self.cached_prod = self.producer().load(Ordering::Acquire);
            ready = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        ready.min(want)
    }

    fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.consumer().store(self.cached_cons, Ordering::Release);
    }
}

/// A received packet: where it lies in the UMEM.
#[derive(Debug, Clone, Copy, Default)]
pub struct RxDesc {
    pub addr: u64,
    pub len: u32,
}

/// What both halves of a socket share: the descriptor and the UMEM. Each half only ever
/// touches its own frames (receive frames: the first half; send frames: the second).
struct Shared {
    fd: OwnedFd,
    umem: Mapping,
}

impl Shared {
    /// `len` bytes at `addr`, if they lie inside the UMEM and within one frame.
    fn frame_ptr(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let a = usize::try_from(addr).ok()?;
        if a.checked_add(len)? > self.umem.len || (a % FRAME_SIZE) + len > FRAME_SIZE {
            return None;
        }
        // SAFETY: `a` is inside the mapping (checked just above).
        Some(unsafe { self.umem.ptr.as_ptr().add(a) })
    }
}

/// The receiving half of an AF_XDP socket: RX and fill rings, and the receive frames.
pub struct XskRx {
    fill: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    shared: Arc<Shared>,
    /// Descriptors handed out by the last burst, not yet released.
    held: u32,
    mode: XskMode,
    queue: u32,
}

/// The sending half: TX and completion rings, and the send frames.
pub struct XskTx {
    tx: Ring<libc::xdp_desc>,
    comp: Ring<u64>,
    shared: Arc<Shared>,
    free: Vec<u64>,
    queued: u32,
}

// SAFETY: the mapping is only written through in disjoint frames (each half its own),
// and the descriptor is a plain fd: sharing them between the halves' threads is sound.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}
// SAFETY: each half owns its rings and its frames; the shared part (fd, UMEM mapping) is
// only read through or written in disjoint frames.
unsafe impl Send for XskRx {}
// SAFETY: as above.
unsafe impl Send for XskTx {}

/// Opens an AF_XDP socket on queue `queue` of interface `ifindex`, with its own UMEM, and
/// returns its two halves. The XDP program must redirect to it (its fd in the XSKMAP).
pub fn open(ifindex: u32, queue: u32, cfg: &XskConfig) -> Result<(XskRx, XskTx), XskError> {
    assert!(cfg.frames.is_power_of_two() && cfg.ring.is_power_of_two());
    assert!(cfg.ring * 2 <= cfg.frames);
    match cfg.mode {
        XskModeRequest::Auto => open_mode(ifindex, queue, cfg, XskMode::ZeroCopy)
            .or_else(|_| open_mode(ifindex, queue, cfg, XskMode::Copy)),
        XskModeRequest::Copy => open_mode(ifindex, queue, cfg, XskMode::Copy),
        XskModeRequest::ZeroCopy => open_mode(ifindex, queue, cfg, XskMode::ZeroCopy),
    }
}

fn open_mode(
    ifindex: u32,
    queue: u32,
    cfg: &XskConfig,
    mode: XskMode,
) -> Result<(XskRx, XskTx), XskError> {
    // SAFETY: plain socket(2).
    let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(XskError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let umem_len = cfg.frames as usize * FRAME_SIZE;
    let umem = Mapping::anonymous(umem_len).map_err(setup("UMEM"))?;
    let reg = libc::xdp_umem_reg {
        addr: umem.ptr.as_ptr() as u64,
        len: umem_len as u64,
        chunk_size: FRAME_SIZE as u32,
        headroom: RX_HEADROOM as u32,
        flags: 0,
        tx_metadata_len: 0,
    };
    setsockopt(&fd, libc::XDP_UMEM_REG, &reg).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOBUFS) | Some(libc::EPERM) => XskError::UmemLimit(e),
        _ => XskError::Setup { what: "UMEM registration", err: e },
    })?;
    for opt in [
        libc::XDP_UMEM_FILL_RING,
        libc::XDP_UMEM_COMPLETION_RING,
        libc::XDP_RX_RING,
        libc::XDP_TX_RING,
    ] {
        setsockopt(&fd, opt, &cfg.ring).map_err(setup("ring sizes"))?;
    }
    // SAFETY: an all-zero xdp_mmap_offsets is a valid value to be overwritten.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut optlen = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: `off` and `optlen` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            (&raw mut off).cast(),
            &mut optlen,
        )
    };
    if r < 0 {
        return Err(setup("ring offsets")(io::Error::last_os_error()));
    }
    let raw = fd.as_raw_fd();
    let mut fill = Ring::<u64>::map(raw, &off.fr, cfg.ring, libc::XDP_UMEM_PGOFF_FILL_RING)
        .map_err(setup("fill ring"))?;
    let comp = Ring::<u64>::map(raw, &off.cr, cfg.ring, libc::XDP_UMEM_PGOFF_COMPLETION_RING)
        .map_err(setup("completion ring"))?;
    let rx = Ring::map(raw, &off.rx, cfg.ring, libc::XDP_PGOFF_RX_RING as u64)
        .map_err(setup("RX ring"))?;
    let tx = Ring::map(raw, &off.tx, cfg.ring, libc::XDP_PGOFF_TX_RING as u32 as u64)
        .map_err(setup("TX ring"))?;
    // Receive frames: the first half, all lent to the kernel at once.
    let half = cfg.frames / 2;
    let n = fill.free(cfg.ring);
    for i in 0..n.min(half) {
        fill.push(i as u64 * FRAME_SIZE as u64);
    }
    fill.publish();
    let free = (half..cfg.frames).map(|i| i as u64 * FRAME_SIZE as u64).collect();
    let flags = libc::XDP_USE_NEED_WAKEUP
        | match mode {
            XskMode::ZeroCopy => libc::XDP_ZEROCOPY,
            XskMode::Copy => libc::XDP_COPY,
        };
    let sa = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: `sa` is a valid sockaddr_xdp of the size given.
    let r = unsafe {
        libc::bind(
            raw,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(XskError::Bind { ifindex, queue, err: io::Error::last_os_error() });
    }
    let shared = Arc::new(Shared { fd, umem });
    Ok((
        XskRx { fill, rx, shared: shared.clone(), held: 0, mode, queue },
        XskTx { tx, comp, shared, free, queued: 0 },
    ))
}

impl XskRx {
    pub fn mode(&self) -> XskMode {
        self.mode
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Takes up to `out.len()` received packets. Their frames stay the caller's until
    /// [`XskRx::release`], which must run before the next burst.
    pub fn burst(&mut self, out: &mut [RxDesc]) -> usize {
        if self.held != 0 {
            debug_assert!(false, "release runs between two bursts");
            return 0;
        }
        let n = self.rx.ready(out.len() as u32);
        for (k, slot) in out.iter_mut().enumerate().take(n as usize) {
            let d = self.rx.read(self.rx.cached_cons.wrapping_add(k as u32));
            *slot = RxDesc { addr: d.addr, len: d.len };
        }
        self.held = n;
        n as usize
    }

    /// Lends the frames of the last burst (`taken`, as `burst` filled it) to the kernel
    /// again through the fill ring.
    pub fn release(&mut self, taken: &[RxDesc]) {
        let n = self.held;
        if n == 0 {
            return;
        }
        let room = self.fill.free(n);
        for d in taken.iter().take(room.min(n) as usize) {
            self.fill.push(d.addr & !(FRAME_SIZE as u64 - 1));
        }
        self.fill.publish();
        self.rx.release(n);
        self.held = 0;
        // A zero-copy driver that ran out of fill frames waits for a wake-up.
        if self.fill.needs_wakeup() {
            // SAFETY: a zero-length, non-blocking receive on our socket: the AF_XDP way to
            // wake the driver; no buffer is touched.
            unsafe {
                libc::recvfrom(
                    self.shared.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    /// The bytes of a packet of the current burst, if its descriptor lies inside the UMEM.
    pub fn frame_mut(&mut self, d: RxDesc) -> Option<&mut [u8]> {
        let p = self.shared.frame_ptr(d.addr, d.len as usize)?;
        // SAFETY: inside one receive frame (checked), which the kernel handed us and gets
        // back only at `release`; `&mut self` keeps the borrow unique.
        Some(unsafe { std::slice::from_raw_parts_mut(p, d.len as usize) })
    }

    /// The same bytes, shared (several frames of one burst at once).
    pub fn frame(&self, d: RxDesc) -> Option<&[u8]> {
        let p = self.shared.frame_ptr(d.addr, d.len as usize)?;
        // SAFETY: as for `frame_mut`; shared borrows of `self` exclude `frame_mut`.
        Some(unsafe { std::slice::from_raw_parts(p, d.len as usize) })
    }

    /// Packets the kernel dropped for this socket (RX ring full, no fill frame).
    pub fn dropped(&self) -> u64 {
        // SAFETY: zeroed xdp_statistics is valid.
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `st` and `len` are valid for writes of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                self.shared.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&raw mut st).cast(),
                &mut len,
            )
        };
        if r < 0 { 0 } else { st.rx_dropped + st.rx_ring_full + st.rx_fill_ring_empty_descs }
    }
}

impl AsRawFd for XskRx {
    fn as_raw_fd(&self) -> RawFd {
        self.shared.fd.as_raw_fd()
    }
}

impl XskTx {
    /// Moves completed sends back to the free list.
    pub fn reclaim(&mut self) {
        let n = self.comp.ready(self.comp.size);
        for k in 0..n {
            let addr = self.comp.read(self.comp.cached_cons.wrapping_add(k));
            self.free.push(addr & !(FRAME_SIZE as u64 - 1));
        }
        if n > 0 {
            self.comp.release(n);
        }
    }

    /// A free send frame (all `FRAME_SIZE` bytes of it), if one is free and the TX ring
    /// has room. Queue it with [`XskTx::push`].
    pub fn frame(&mut self) -> Option<&mut [u8]> {
        if self.free.is_empty() {
            self.reclaim();
        }
        if self.tx.free(1) == 0 {
            return None;
        }
        let addr = *self.free.last()?;
        let p = self.shared.frame_ptr(addr, FRAME_SIZE)?;
        // SAFETY: a whole send frame from the free list: neither the kernel (not queued)
        // nor anyone else uses it; `&mut self` keeps the borrow unique.
        Some(unsafe { std::slice::from_raw_parts_mut(p, FRAME_SIZE) })
    }

    /// Queues the frame last returned by [`XskTx::frame`], `len` bytes of it.
    pub fn push(&mut self, len: u32) {
        let Some(addr) = self.free.pop() else { return };
        self.tx.push(libc::xdp_desc { addr, len, options: 0 });
        self.queued += 1;
    }

    /// Publishes queued sends and kicks the kernel when it asks for it (in copy mode the
    /// send runs in this call).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.queued == 0 {
            return Ok(());
        }
        self.queued = 0;
        self.tx.publish();
        // In copy mode each kick sends at most a batch (32) and answers EAGAIN while more
        // is queued: kick until the ring is drained or the kernel is busy for real.
        for _ in 0..64 {
            if !self.tx.needs_wakeup() {
                break;
            }
            // SAFETY: a zero-length send on our socket, the AF_XDP way to kick TX.
            let r = unsafe {
                libc::sendto(
                    self.shared.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    if self.tx.consumed_all() {
                        break;
                    }
                }
                // Busy: the driver is still sending; what is queued goes with the next kick.
                Some(libc::EBUSY) | Some(libc::ENOBUFS) => break,
                _ => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends queued but not yet taken by the kernel (the ring's backlog).
    pub fn backlog(&mut self) -> u32 {
        self.tx.size - self.tx.free(self.tx.size)
    }
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a valid T of the size given, read by the kernel only.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
