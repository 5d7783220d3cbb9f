//! Runs the XDP program on a packet in the kernel without a NIC (BPF_PROG_TEST_RUN): the
//! verdict, and the time per run over many repetitions. Used by the drop-rate benchmark
//! (one core's packets per second for a given packet) and by tests of the program.

use std::os::fd::{AsFd, AsRawFd};

use aya::Ebpf;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::Xdp;
use omni_xdp_common::{XdpConfig, maps};

use crate::loader::{OBJECT, XdpLoadError};

/// The `test` member of `union bpf_attr` (linux/bpf.h), as far as we use it.
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_int = 10;

/// Which program of the object to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// The fabric's filter (`omni_xdp`).
    Filter,
    /// A plain `XDP_DROP`, the baseline.
    DropAll,
}

/// The object loaded (not attached anywhere), ready for test runs.
pub struct TestBed {
    ebpf: Ebpf,
}

/// A run's outcome: the program's verdict (XDP_DROP = 1, XDP_PASS = 2, XDP_REDIRECT = 4)
/// and the mean time per run in nanoseconds as the kernel measured it.
#[derive(Debug, Clone, Copy)]
pub struct RunResult {
    pub verdict: u32,
    pub ns_per_run: u32,
}

impl TestBed {
    pub fn load(cfg: XdpConfig) -> Result<Self, XdpLoadError> {
        let object = OBJECT.ok_or(XdpLoadError::NotBuilt)?;
        let mut ebpf = Ebpf::load(object).map_err(|e| XdpLoadError::Load(e.to_string()))?;
        {
            let map = ebpf.map_mut(maps::CONFIG).ok_or(XdpLoadError::Map {
                name: maps::CONFIG,
                detail: "missing from the object".into(),
            })?;
            let mut config: Array<&mut MapData, XdpConfig> = Array::try_from(map)
                .map_err(|e| XdpLoadError::Map { name: maps::CONFIG, detail: e.to_string() })?;
            config
                .set(0, cfg, 0)
                .map_err(|e| XdpLoadError::Map { name: maps::CONFIG, detail: e.to_string() })?;
        }
        for name in [omni_xdp_common::PROGRAM, "omni_xdp_drop_all"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| XdpLoadError::Load(format!("{name} missing from the object")))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| XdpLoadError::Load(e.to_string()))?;
            prog.load().map_err(|e| XdpLoadError::Load(e.to_string()))?;
        }
        Ok(Self { ebpf })
    }

    /// Marks receiver index `index` live, as the data plane would.
    pub fn add_session(&mut self, index: u32) -> Result<(), XdpLoadError> {
        let map = self.ebpf.map_mut(maps::SESSIONS).ok_or(XdpLoadError::Map {
            name: maps::SESSIONS,
            detail: "missing from the object".into(),
        })?;
        let mut sessions: HashMap<&mut MapData, u32, u8> = HashMap::try_from(map)
            .map_err(|e| XdpLoadError::Map { name: maps::SESSIONS, detail: e.to_string() })?;
        sessions
            .insert(index, 1, 0)
            .map_err(|e| XdpLoadError::Map { name: maps::SESSIONS, detail: e.to_string() })
    }

    /// Totals of the filter's counter slots (see `omni_xdp_common::counter`).
    pub fn counters(&self) -> [u64; omni_xdp_common::counter::COUNT as usize] {
        let mut out = [0u64; omni_xdp_common::counter::COUNT as usize];
        let Some(map) = self.ebpf.map(maps::COUNTERS) else { return out };
        let Ok(c) = PerCpuArray::<&MapData, u64>::try_from(map) else { return out };
        for (i, v) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = c.get(&(i as u32), 0) {
                *v = per_cpu.iter().sum();
            }
        }
        out
    }

    /// Runs `program` on `packet` (an Ethernet frame) `repeat` times in the kernel.
    pub fn run(
        &self,
        program: Program,
        packet: &[u8],
        repeat: u32,
    ) -> Result<RunResult, XdpLoadError> {
        let name = match program {
            Program::Filter => omni_xdp_common::PROGRAM,
            Program::DropAll => "omni_xdp_drop_all",
        };
        let prog: &Xdp = self
            .ebpf
            .program(name)
            .ok_or_else(|| XdpLoadError::Load(format!("{name} missing")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| XdpLoadError::Load(e.to_string()))?;
        let fd = prog.fd().map_err(|e| XdpLoadError::Load(e.to_string()))?;
        let mut attr = TestRunAttr {
            prog_fd: fd.as_fd().as_raw_fd() as u32,
            data_size_in: packet.len() as u32,
            data_in: packet.as_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: bpf(2) with a zero-padded attr of the size given; the kernel reads
        // `packet` (valid for `data_size_in` bytes) and writes only into `attr`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &raw mut attr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        if r < 0 {
            return Err(XdpLoadError::Load(format!(
                "BPF_PROG_TEST_RUN: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(RunResult { verdict: attr.retval, ns_per_run: attr.duration })
    }
}

/// A test packet: Ethernet (optionally one VLAN tag), IPv4 (10.0.0.1 to 10.0.0.2) or IPv6,
/// and UDP from port 4000 to `dport`, carrying `payload`. Checksums are left zero (the
/// program does not look at them).
pub fn udp_frame(v6: bool, vlan: bool, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    if vlan {
        f.extend([0x81, 0x00, 0x00, 0x07]);
    }
    let udp_len = (8 + payload.len()) as u16;
    if v6 {
        f.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend(udp_len.to_be_bytes());
        f.extend([17, 64]);
        f.extend([0xfd; 16]);
        f.extend([0xfe; 16]);
    } else {
        f.extend([0x08, 0x00, 0x45, 0]);
        f.extend((20 + udp_len).to_be_bytes());
        f.extend([0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    }
    f.extend(4000u16.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend(udp_len.to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    f
}
