//! Safe wrappers over DPDK. All the crate's `unsafe` lives here.

use std::ffi::{CStr, CString, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::DpdkError;
use crate::sys;

/// Packets per burst: DPDK's customary 32.
pub const BURST: usize = 32;

static EAL_DONE: AtomicBool = AtomicBool::new(false);

fn errno_text(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local string.
    let s = unsafe { CStr::from_ptr(sys::rte_strerror(code)) };
    s.to_string_lossy().into_owned()
}

fn rte_errno() -> i32 {
    // SAFETY: reads the calling thread's rte_errno.
    unsafe { sys::omni_rte_errno() }
}

fn cstring(s: &str) -> Result<CString, DpdkError> {
    CString::new(s).map_err(|_| DpdkError::Nul(s.to_string()))
}

/// The initialised EAL of this process; cleaned up (hugepage files included) on drop.
pub struct Eal {
    _not_send: PhantomData<*const ()>,
}

impl Eal {
    /// `rte_eal_init` with `args` (without a program name), once per process.
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal, DpdkError> {
        if EAL_DONE.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::AlreadyInitialised);
        }
        let joined = args.iter().map(|a| a.as_ref()).collect::<Vec<_>>().join(" ");
        let mut owned = vec![cstring("omni-dataplane")?];
        for a in args {
            owned.push(cstring(a.as_ref())?);
        }
        // rte_eal_init may permute argv: give it its own array of pointers.
        let mut argv: Vec<*mut libc::c_char> =
            owned.iter().map(|c| c.as_ptr().cast_mut()).collect();
        // SAFETY: argv holds argc valid NUL-terminated strings that outlive the call; EAL
        // keeps no pointer into them after returning (it copies what it needs).
        let r = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        if r < 0 {
            return Err(DpdkError::EalInit { reason: errno_text(rte_errno()), args: joined });
        }
        Ok(Eal { _not_send: PhantomData })
    }

    /// NUMA socket of the calling thread.
    pub fn socket_id(&self) -> i32 {
        // SAFETY: no preconditions once EAL is up.
        unsafe { sys::rte_socket_id() as i32 }
    }

    /// Ports DPDK has (probed devices and vdevs created so far).
    pub fn port_count(&self) -> u16 {
        // SAFETY: no preconditions once EAL is up.
        unsafe { sys::rte_eth_dev_count_avail() }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: returns EAL's static path string (copied before cleanup).
        let runtime_dir = unsafe { CStr::from_ptr(sys::rte_eal_get_runtime_dir()) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: DPDK objects are dropped before the EAL by their owners (they are
        // created from a `&Eal`); cleanup releases hugepage memory and its files.
        unsafe { sys::rte_eal_cleanup() };
        // EAL leaves its (now empty) runtime directory behind; remove it if it is empty.
        if !runtime_dir.is_empty() {
            let _ = std::fs::remove_dir(&runtime_dir);
        }
    }
}

/// The lcore id of the calling thread (`u32::MAX` for a thread EAL did not create).
pub fn lcore_id() -> u32 {
    // SAFETY: reads a thread-local.
    unsafe { sys::omni_rte_lcore_id() }
}

/// Makes the calling thread (started outside EAL, after [`Eal::init`]) an EAL thread with
/// an lcore id of its own, so that mempool caches and per-lcore state work for it as for
/// EAL's own workers. Returns the lcore id.
pub fn register_thread() -> Result<u32, DpdkError> {
    // SAFETY: registers the calling thread only; DPDK checks that EAL is initialised.
    let r = unsafe { sys::rte_thread_register() };
    if r != 0 {
        return Err(DpdkError::Port {
            port: u16::MAX,
            what: "thread_register",
            reason: errno_text(rte_errno()),
        });
    }
    Ok(lcore_id())
}

/// Gives back the lcore id [`register_thread`] took (before the thread ends).
pub fn unregister_thread() {
    // SAFETY: no-op for a thread that is not registered.
    unsafe { sys::rte_thread_unregister() }
}

/// Ticks per second of the TSC that `rte_rdtsc` reads.
pub fn tsc_hz() -> u64 {
    // SAFETY: no preconditions once EAL is up.
    unsafe { sys::rte_get_tsc_hz() }
}

/// A pool of packet buffers (`rte_pktmbuf_pool_create`).
pub struct Mempool {
    ptr: NonNull<sys::rte_mempool>,
}

// SAFETY: DPDK mempools are multi-producer/multi-consumer safe (per-lcore caches aside).
unsafe impl Send for Mempool {}
// SAFETY: as above; allocation and free are thread-safe.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// `n` buffers of `data_room` bytes (headroom included), a per-lcore cache of `cache`.
    pub fn new(
        _eal: &Eal,
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
    ) -> Result<Self, DpdkError> {
        let cname = cstring(name)?;
        // SAFETY: cname is a valid C string; the other arguments are plain integers.
        let p = unsafe {
            sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, sys::SOCKET_ID_ANY)
        };
        NonNull::new(p).map(|ptr| Mempool { ptr }).ok_or_else(|| DpdkError::Mempool {
            name: name.to_string(),
            reason: errno_text(rte_errno()),
        })
    }

    pub fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.ptr.as_ptr()
    }

    /// Buffers free in the pool now.
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is alive.
        unsafe { sys::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    pub fn alloc(&self) -> Option<Mbuf<'_>> {
        // SAFETY: the pool is alive; a NULL return means empty.
        let m = unsafe { sys::omni_rte_pktmbuf_alloc(self.ptr.as_ptr()) };
        NonNull::new(m).map(|ptr| Mbuf { ptr, _pool: PhantomData })
    }

    /// Fills `burst` up to [`BURST`] buffers; all or nothing, as DPDK allocates.
    pub fn alloc_burst<'p>(&'p self, burst: &mut MbufBurst<'p>, n: usize) -> bool {
        let n = n.min(BURST - burst.len);
        let at = burst.len;
        // SAFETY: the slice [at, at + n) of the array is ours to fill; the pool is alive.
        let r = unsafe {
            sys::omni_rte_pktmbuf_alloc_bulk(
                self.ptr.as_ptr(),
                burst.ptrs.as_mut_ptr().add(at),
                n as u32,
            )
        };
        if r == 0 {
            burst.len += n;
        }
        r == 0
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: no Mbuf borrows this pool any more (lifetimes); buffers held elsewhere by
        // DPDK (a port's rings) are the caller's to stop first (EthPort drops stop ports).
        unsafe { sys::rte_mempool_free(self.ptr.as_ptr()) };
    }
}

/// One packet buffer, returned to its pool on drop.
pub struct Mbuf<'p> {
    ptr: NonNull<sys::rte_mbuf>,
    _pool: PhantomData<&'p Mempool>,
}

// SAFETY: an mbuf is owned by one holder at a time; moving it between threads is how
// DPDK pipelines work.
unsafe impl Send for Mbuf<'_> {}

impl<'p> Mbuf<'p> {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `ptr` is a valid single-segment mbuf from a pool that outlives `'p`, owned by no one
    /// else.
    pub unsafe fn from_raw(ptr: NonNull<sys::rte_mbuf>) -> Self {
        Mbuf { ptr, _pool: PhantomData }
    }

    pub fn into_raw(self) -> NonNull<sys::rte_mbuf> {
        let p = self.ptr;
        std::mem::forget(self);
        p
    }

    // The accessors below read and write the first segment's fields directly, as DPDK's
    // static-inline functions do, instead of calling the C shim: they run several times
    // per packet, and a call across the language boundary is never inlined.

    /// The mbuf's header, shared.
    #[inline]
    fn raw(&self) -> &sys::rte_mbuf {
        // SAFETY: the mbuf is alive and ours for as long as `self` is borrowed.
        unsafe { self.ptr.as_ref() }
    }

    /// The mbuf's header, exclusive.
    #[inline]
    fn raw_mut(&mut self) -> &mut sys::rte_mbuf {
        // SAFETY: as `raw`; `&mut self` makes the access exclusive.
        unsafe { self.ptr.as_mut() }
    }

    /// Bytes in the first segment (`rte_pktmbuf_data_len`).
    #[inline]
    pub fn len(&self) -> usize {
        self.raw().data_len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the packet is in one segment (the data plane handles only those).
    #[inline]
    pub fn is_contiguous(&self) -> bool {
        self.raw().nb_segs == 1
    }

    /// Where the first segment's data starts (`rte_pktmbuf_mtod`).
    #[inline]
    fn data_ptr(&self) -> *mut u8 {
        let m = self.raw();
        // SAFETY: data_off stays within the buffer of buf_len bytes at buf_addr (DPDK's
        // invariant, kept by every method here).
        unsafe { m.buf_addr.cast::<u8>().add(m.data_off as usize) }
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: the first segment holds data_len initialised bytes from data_ptr, which
        // we own for the borrow's duration.
        unsafe { std::slice::from_raw_parts(self.data_ptr(), self.len()) }
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `data`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr(), self.len()) }
    }

    /// Bytes free before the data (`rte_pktmbuf_headroom`).
    #[inline]
    pub fn headroom(&self) -> usize {
        self.raw().data_off as usize
    }

    /// Bytes free after the first segment's data (`rte_pktmbuf_tailroom`, which a
    /// single-segment packet has at its end).
    #[inline]
    pub fn tailroom(&self) -> usize {
        let m = self.raw();
        (m.buf_len as usize).saturating_sub(m.data_off as usize + m.data_len as usize)
    }

    /// Grows the packet by `n` bytes at the front (into the headroom). `false` if there is
    /// not enough headroom; the packet is then unchanged.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> bool {
        if n > self.headroom() {
            return false;
        }
        // As rte_pktmbuf_prepend: the first segment and the packet grow.
        let m = self.raw_mut();
        m.data_off -= n as u16;
        m.data_len += n as u16;
        m.pkt_len += n as u32;
        true
    }

    /// Grows the packet by `n` bytes at the end. `false` if there is not enough tailroom.
    #[inline]
    pub fn append(&mut self, n: usize) -> bool {
        if n > u16::MAX as usize {
            return false;
        }
        if !self.is_contiguous() {
            // DPDK appends to the last segment: its own function walks the chain.
            // SAFETY: the mbuf is ours; DPDK checks the last segment's tailroom.
            return !unsafe { sys::omni_rte_pktmbuf_append(self.ptr.as_ptr(), n as u16) }.is_null();
        }
        if n > self.tailroom() {
            return false;
        }
        let m = self.raw_mut();
        m.data_len += n as u16;
        m.pkt_len += n as u32;
        true
    }

    /// Removes `n` bytes from the front. `false` if the packet is shorter.
    #[inline]
    pub fn adj(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        // As rte_pktmbuf_adj: from the first segment.
        let m = self.raw_mut();
        m.data_off += n as u16;
        m.data_len -= n as u16;
        m.pkt_len -= n as u32;
        true
    }

    /// Removes `n` bytes from the end. `false` if the packet is shorter.
    #[inline]
    pub fn trim(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        if self.is_contiguous() {
            // As rte_pktmbuf_trim, whose last segment is the first here.
            let m = self.raw_mut();
            m.data_len -= n as u16;
            m.pkt_len -= n as u32;
            return true;
        }
        // SAFETY: checked against the length; the mbuf is ours.
        unsafe { sys::omni_rte_pktmbuf_trim(self.ptr.as_ptr(), n as u16) == 0 }
    }

    /// Sets the packet to `bytes` (from the default headroom on). `false` if it does not fit.
    pub fn set(&mut self, bytes: &[u8]) -> bool {
        // SAFETY: the mbuf is ours; reset restores the default headroom and length 0.
        unsafe { sys::omni_rte_pktmbuf_reset(self.ptr.as_ptr()) };
        if !self.append(bytes.len()) {
            return false;
        }
        self.data_mut().copy_from_slice(bytes);
        true
    }
}

impl AsMut<[u8]> for Mbuf<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.data_mut()
    }
}

impl Drop for Mbuf<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; it goes back to its pool.
        unsafe { sys::omni_rte_pktmbuf_free(self.ptr.as_ptr()) };
    }
}

/// Up to [`BURST`] mbufs, as received or to be sent in one burst. Unsent ones are freed on
/// drop.
pub struct MbufBurst<'p> {
    ptrs: [*mut sys::rte_mbuf; BURST],
    len: usize,
    _pool: PhantomData<&'p Mempool>,
}

impl Default for MbufBurst<'_> {
    fn default() -> Self {
        Self { ptrs: [std::ptr::null_mut(); BURST], len: 0, _pool: PhantomData }
    }
}

// SAFETY: owns its mbufs exclusively, like `Mbuf`.
unsafe impl Send for MbufBurst<'_> {}

impl<'p> MbufBurst<'p> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == BURST
    }

    /// Adds a buffer; gives it back when the burst is full.
    pub fn push(&mut self, m: Mbuf<'p>) -> Result<(), Mbuf<'p>> {
        if self.is_full() {
            return Err(m);
        }
        self.ptrs[self.len] = m.into_raw().as_ptr();
        self.len += 1;
        Ok(())
    }

    /// Takes the buffers out, in order.
    pub fn drain(&mut self) -> impl Iterator<Item = Mbuf<'p>> + '_ {
        let n = std::mem::take(&mut self.len);
        self.ptrs[..n].iter().map(|p| {
            // SAFETY: the first `n` pointers are valid mbufs this burst owned; ownership
            // moves to the caller (len is already 0, so drop will not free them again).
            unsafe { Mbuf::from_raw(NonNull::new_unchecked(*p)) }
        })
    }

    /// The i-th buffer.
    pub fn get_mut(&mut self, i: usize) -> Option<MbufRef<'_, 'p>> {
        (i < self.len).then(|| MbufRef {
            // SAFETY: index checked; the pointer is a valid mbuf this burst owns.
            m: std::mem::ManuallyDrop::new(unsafe {
                Mbuf::from_raw(NonNull::new_unchecked(self.ptrs[i]))
            }),
            _burst: PhantomData,
        })
    }

    /// Drops the first `n` (sent) entries, keeping the rest in order.
    fn consume_front(&mut self, n: usize) {
        self.ptrs.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

impl Drop for MbufBurst<'_> {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the first `len` pointers are mbufs we own.
            unsafe { sys::omni_rte_pktmbuf_free_bulk(self.ptrs.as_mut_ptr(), self.len as u32) };
        }
    }
}

/// A borrowed mbuf of a burst (not freed when it goes).
pub struct MbufRef<'b, 'p> {
    m: std::mem::ManuallyDrop<Mbuf<'p>>,
    _burst: PhantomData<&'b mut MbufBurst<'p>>,
}

impl<'p> std::ops::Deref for MbufRef<'_, 'p> {
    type Target = Mbuf<'p>;
    fn deref(&self) -> &Mbuf<'p> {
        &self.m
    }
}

impl<'p> std::ops::DerefMut for MbufRef<'_, 'p> {
    fn deref_mut(&mut self) -> &mut Mbuf<'p> {
        &mut self.m
    }
}

/// Link state of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    /// Mbit/s (0 when unknown).
    pub speed_mbps: u32,
}

/// The counters DPDK keeps per port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Dropped by the NIC for want of RX descriptors.
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// A DPDK Ethernet port (a probed device or a vdev), stopped and closed on drop.
pub struct EthPort {
    id: u16,
    name: String,
    started: bool,
}

impl EthPort {
    /// The port DPDK knows by `name` (a PCI address, or a vdev's name).
    pub fn by_name(_eal: &Eal, name: &str) -> Result<Self, DpdkError> {
        let cname = cstring(name)?;
        let mut id = 0u16;
        // SAFETY: cname is a valid C string; id is written on success.
        let r = unsafe { sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if r != 0 {
            return Err(DpdkError::NoPort(name.to_string()));
        }
        Ok(EthPort { id, name: name.to_string(), started: false })
    }

    /// Creates the virtual device `name` with `args` (e.g. `net_memif0`,
    /// `role=server,socket=/run/omni/memif.sock`) and returns its port.
    pub fn vdev(eal: &Eal, name: &str, args: &str) -> Result<Self, DpdkError> {
        let (cname, cargs) = (cstring(name)?, cstring(args)?);
        // SAFETY: both are valid C strings; DPDK copies what it keeps.
        let r = unsafe { sys::rte_vdev_init(cname.as_ptr(), cargs.as_ptr()) };
        if r != 0 {
            return Err(DpdkError::Vdev {
                name: name.into(),
                args: args.into(),
                reason: errno_text(-r),
            });
        }
        Self::by_name(eal, name)
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, what: &'static str, r: i32) -> Result<(), DpdkError> {
        if r < 0 {
            return Err(DpdkError::Port { port: self.id, what, reason: errno_text(-r) });
        }
        Ok(())
    }

    /// Configures `queues` RX and TX queues (RSS across RX queues when more than one) with
    /// `descriptors` each, takes RX buffers from `pool`, enables promiscuous mode where the
    /// driver has it, and starts the port.
    pub fn start(
        &mut self,
        queues: u16,
        descriptors: u16,
        pool: &Mempool,
    ) -> Result<(), DpdkError> {
        let mut conf = sys::rte_eth_conf::default();
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: info is a valid out-parameter.
        self.check("dev_info_get", unsafe { sys::rte_eth_dev_info_get(self.id, &mut info) })?;
        if queues > info.max_rx_queues.min(info.max_tx_queues) {
            return Err(DpdkError::Port {
                port: self.id,
                what: "configure",
                reason: format!(
                    "{queues} queues asked, the driver has at most {} RX and {} TX queues \
                     (for a vdev, give it more: net_af_packet qpairs=N, net_tap queues=N)",
                    info.max_rx_queues, info.max_tx_queues
                ),
            });
        }
        // SAFETY: returns a constant.
        let rss_hf = unsafe { sys::omni_rte_rss_ip_udp() } & info.flow_type_rss_offloads;
        // Hardware RSS where the driver has it; a virtual device spreads flows over its
        // queues by its own means (af_packet fanout, the kernel's TAP queue choice, memif's
        // peer writing to each queue).
        if queues > 1 && rss_hf != 0 {
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
        }
        // SAFETY: conf is a valid configuration for the duration of the call.
        self.check("configure", unsafe {
            sys::rte_eth_dev_configure(self.id, queues, queues, &conf)
        })?;
        // SAFETY: plain integer query.
        let socket = unsafe { sys::rte_eth_dev_socket_id(self.id) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        for q in 0..queues {
            // SAFETY: queue q < configured count; NULL conf = driver defaults; the pool
            // outlives the port's use of it (the port is stopped before the pool is freed
            // by the owner's drop order).
            self.check("rx_queue_setup", unsafe {
                sys::rte_eth_rx_queue_setup(
                    self.id,
                    q,
                    descriptors,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            })?;
            // SAFETY: as above.
            self.check("tx_queue_setup", unsafe {
                sys::rte_eth_tx_queue_setup(self.id, q, descriptors, socket, std::ptr::null())
            })?;
        }
        // SAFETY: configured above.
        self.check("start", unsafe { sys::rte_eth_dev_start(self.id) })?;
        self.started = true;
        // Not every driver has promiscuous mode (memif); it does not matter there.
        // SAFETY: started port.
        let _ = unsafe { sys::rte_eth_promiscuous_enable(self.id) };
        Ok(())
    }

    /// Receives up to the free room of `burst` from queue `q`. Returns how many arrived.
    pub fn rx_burst<'p>(&self, q: u16, burst: &mut MbufBurst<'p>, _pool: &'p Mempool) -> usize {
        let room = BURST - burst.len;
        // SAFETY: the port is started (a stopped port returns 0); the array has `room`
        // free slots from `len`; received mbufs become the burst's.
        let n = unsafe {
            sys::omni_rte_eth_rx_burst(
                self.id,
                q,
                burst.ptrs.as_mut_ptr().add(burst.len),
                room as u16,
            )
        } as usize;
        burst.len += n;
        n
    }

    /// Sends `burst` on queue `q`; what was sent leaves the burst, the rest stays (in order)
    /// for the caller to retry or drop. Returns how many were sent.
    pub fn tx_burst(&self, q: u16, burst: &mut MbufBurst<'_>) -> usize {
        if burst.len == 0 {
            return 0;
        }
        // SAFETY: the first `len` pointers are mbufs we own; the driver takes ownership of
        // the first `n` it reports sent.
        let n = unsafe {
            sys::omni_rte_eth_tx_burst(self.id, q, burst.ptrs.as_mut_ptr(), burst.len as u16)
        } as usize;
        burst.consume_front(n);
        n
    }

    /// Stops and starts a started port again (a memif client connects anew).
    pub fn restart(&self) -> Result<(), DpdkError> {
        // SAFETY: our port id; stop then start with the configuration already set.
        self.check("stop", unsafe { sys::rte_eth_dev_stop(self.id) })?;
        // SAFETY: as above.
        self.check("start", unsafe { sys::rte_eth_dev_start(self.id) })
    }

    /// Sets the port's MTU (for `net_tap`, the kernel interface's).
    pub fn set_mtu(&self, mtu: u16) -> Result<(), DpdkError> {
        // SAFETY: plain integer arguments.
        self.check("set_mtu", unsafe { sys::rte_eth_dev_set_mtu(self.id, mtu) })
    }

    pub fn mac(&self) -> Result<[u8; 6], DpdkError> {
        let mut a = sys::rte_ether_addr::default();
        // SAFETY: a is a valid out-parameter.
        self.check("macaddr_get", unsafe { sys::rte_eth_macaddr_get(self.id, &mut a) })?;
        Ok(a.addr_bytes)
    }

    pub fn link(&self) -> Result<LinkStatus, DpdkError> {
        let mut l = sys::rte_eth_link::default();
        // SAFETY: l is a valid out-parameter.
        self.check("link_get", unsafe { sys::rte_eth_link_get_nowait(self.id, &mut l) })?;
        Ok(LinkStatus { up: l.link_status() != 0, speed_mbps: l.link_speed })
    }

    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: s is a valid out-parameter.
        self.check("stats_get", unsafe { sys::rte_eth_stats_get(self.id, &mut s) })?;
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }
}

impl Drop for EthPort {
    fn drop(&mut self) {
        // SAFETY: our port id; stopping a stopped port is harmless, close releases it.
        unsafe {
            if self.started {
                sys::rte_eth_dev_stop(self.id);
            }
            sys::rte_eth_dev_close(self.id);
        }
    }
}

/// A DPDK ring of mbufs between two cores (single producer, single consumer).
pub struct Ring {
    ptr: NonNull<sys::rte_ring>,
}

// SAFETY: an SP/SC rte_ring is safe with one producer thread and one consumer thread; the
// methods take `&self`, and callers split the roles (the data plane's workers do).
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring of `count` slots (a power of two; one is kept empty).
    pub fn new(_eal: &Eal, name: &str, count: u32) -> Result<Self, DpdkError> {
        let cname = cstring(name)?;
        let flags = sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ;
        // SAFETY: cname is a valid C string; the rest are integers.
        let p = unsafe { sys::rte_ring_create(cname.as_ptr(), count, sys::SOCKET_ID_ANY, flags) };
        NonNull::new(p)
            .map(|ptr| Ring { ptr })
            .ok_or_else(|| DpdkError::Ring { name: name.into(), reason: errno_text(rte_errno()) })
    }

    /// Moves as many of `burst`'s mbufs as fit into the ring (from the front); returns how
    /// many.
    pub fn enqueue(&self, burst: &mut MbufBurst<'_>) -> usize {
        // SAFETY: the first `len` pointers are mbufs we own; the ring takes the first `n`.
        let n = unsafe {
            sys::omni_rte_ring_enqueue_burst(
                self.ptr.as_ptr(),
                burst.ptrs.as_ptr().cast::<*mut c_void>(),
                burst.len as u32,
            )
        } as usize;
        burst.consume_front(n);
        n
    }

    /// Takes up to the free room of `burst` out of the ring; returns how many.
    pub fn dequeue<'p>(&self, burst: &mut MbufBurst<'p>, _pool: &'p Mempool) -> usize {
        let room = BURST - burst.len;
        // SAFETY: `room` free slots from `len`; the ring only holds mbufs (enqueue).
        let n = unsafe {
            sys::omni_rte_ring_dequeue_burst(
                self.ptr.as_ptr(),
                burst.ptrs.as_mut_ptr().add(burst.len).cast::<*mut c_void>(),
                room as u32,
            )
        } as usize;
        burst.len += n;
        n
    }

    pub fn count(&self) -> u32 {
        // SAFETY: the ring is alive.
        unsafe { sys::omni_rte_ring_count(self.ptr.as_ptr()) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the ring is ours; mbufs left in it are the caller's loss (drained first
        // in the data plane).
        unsafe { sys::rte_ring_free(self.ptr.as_ptr()) };
    }
}
