//! The rings between two real processes over one mapped file: 200 000 records each way,
//! every one arriving once, in order, intact. The child is this test binary re-run with an
//! environment variable that selects its role.

use std::process::Command;
use std::time::{Duration, Instant};

use omni_shm::{Params, Region};

const N: u64 = 200_000;
const CHILD_ENV: &str = "OMNI_RING_CHILD_REGION";

fn record(seq: u64, slot: &mut [u8]) {
    slot[..8].copy_from_slice(&seq.to_le_bytes());
    // A payload derived from the sequence number, so torn or stale slots are caught.
    for (i, b) in slot[8..40].iter_mut().enumerate() {
        *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
}

fn check(expect: u64, slot: &[u8]) {
    let seq = u64::from_le_bytes(slot[..8].try_into().unwrap());
    assert_eq!(seq, expect, "records arrive once and in order");
    for (i, b) in slot[8..40].iter().enumerate() {
        assert_eq!(*b, (seq as u8).wrapping_mul(31).wrapping_add(i as u8), "record {seq} intact");
    }
}

/// Both directions at once from one side: produce on `tx`, consume on `rx`.
fn pump(
    tx: &mut omni_shm::ring::Producer<'_, omni_shm::ring::RawSlots>,
    rx: &mut omni_shm::ring::Consumer<'_, omni_shm::ring::RawSlots>,
) {
    let (mut sent, mut got) = (0u64, 0u64);
    let start = Instant::now();
    while sent < N || got < N {
        assert!(start.elapsed() < Duration::from_secs(60), "stalled at sent {sent} got {got}");
        let mut progress = false;
        while sent < N && tx.push_with(|s| record(sent, s)).is_ok() {
            sent += 1;
            progress = true;
        }
        while let Some(()) = rx.pop_with(|s| check(got, s)).unwrap() {
            got += 1;
            progress = true;
        }
        if !progress {
            std::thread::yield_now();
        }
    }
}

#[test]
fn ring_child_role() {
    // Runs only as the child of the test below.
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    let region = Region::open(path.as_ref(), Params::for_peers(4), false).unwrap();
    let mut ends = region.control_ends(0);
    pump(&mut ends.cmd, &mut ends.event);
}

#[test]
fn rings_carry_records_between_processes() {
    let path = std::env::temp_dir().join(format!("omni-ring-xproc-{}.shm", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let region = Region::open(&path, Params::for_peers(4), true).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "ring_child_role", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .spawn()
        .unwrap();
    let mut ends = region.dataplane_ends(0);
    // The data plane's side: consume commands, produce events.
    pump(&mut ends.event, &mut ends.cmd);
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    let _ = std::fs::remove_file(&path);
}
