//! The XDP program's object, built from `../ebpf` by this crate's build script (see
//! build.rs), as bytes the loader hands to aya.
//!
//! `cargo build -p omni-ebpf-core` builds it alone; the object is then also at
//! `target/bpfel-unknown-none/<profile>/omni-ebpf` (for `bpftool`, `ip link ... xdp obj`
//! or `llvm-objdump`).

#![forbid(unsafe_code)]

/// Bytes aligned for the ELF parser (aya reads the object in place).
#[repr(C, align(32))]
struct Aligned<B: ?Sized>(B);

#[cfg(omni_xdp_program)]
static ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/omni-xdp")));

/// The program object, when this build has it (the eBPF toolchain was present).
#[cfg(omni_xdp_program)]
pub static OBJECT: Option<&[u8]> = Some(&ALIGNED.0);
#[cfg(not(omni_xdp_program))]
pub static OBJECT: Option<&[u8]> = None;

#[cfg(test)]
mod tests {
    #[test]
    fn the_object_is_an_aligned_bpf_elf_when_built() {
        let Some(o) = super::OBJECT else {
            eprintln!("skipped: this build has no XDP program (no eBPF toolchain)");
            return;
        };
        assert_eq!(o.as_ptr() as usize % 32, 0);
        assert_eq!(&o[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([o[18], o[19]]), 247, "e_machine is EM_BPF");
    }
}
