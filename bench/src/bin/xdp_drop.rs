//! How fast the XDP program throws away what is not the fabric's, against a plain
//! `XDP_DROP`: both run in the kernel on the same packets with BPF_PROG_TEST_RUN (no NIC,
//! no generator in the way: the figure is one core's packets per second for the program
//! alone). Cases alternate over repetitions; medians are reported.
//!
//!   sudo target/release/xdp_drop [--runs N] [--reps R]

use std::process::ExitCode;

use clap::Parser;
use omni_xdp::XdpConfig;
use omni_xdp::test_run::{Program, TestBed, udp_frame};

#[derive(Parser)]
#[command(about = "XDP drop rate of unauthorised packets against a plain XDP_DROP")]
struct Args {
    /// Program runs per measurement.
    #[arg(long, default_value_t = 5_000_000)]
    runs: u32,
    /// Repetitions (median reported).
    #[arg(long, default_value_t = 5)]
    reps: u32,
}

const PORT: u16 = 51820;

fn udp4(dport: u16, payload: &[u8]) -> Vec<u8> {
    udp_frame(false, false, dport, payload)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bed = match TestBed::load(XdpConfig::with_rate(PORT, 10, 10)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xdp_drop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut transport = vec![4, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde];
    transport.extend([0u8; 56]);
    let mut init = vec![1, 0, 0, 0];
    init.extend([0x5a; omni_proto::wire::handshake_init::LEN - 4]);
    let cases: Vec<(&str, Program, Vec<u8>)> = vec![
        ("plain XDP_DROP (baseline)", Program::DropAll, udp4(PORT, &transport)),
        ("transport, unknown receiver index", Program::Filter, udp4(PORT, &transport)),
        ("random UDP to the fabric port", Program::Filter, udp4(PORT, &[0xff; 64])),
        ("handshake initiation over the rate", Program::Filter, udp4(PORT, &init)),
        ("ordinary traffic (passed to the kernel)", Program::Filter, udp4(53, &[0u8; 64])),
    ];
    let mut ns: Vec<Vec<f64>> = vec![vec![]; cases.len()];
    for rep in 0..args.reps {
        // Alternate the order so drift on this shared machine hits every case alike.
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..cases.len()).collect()
        } else {
            (0..cases.len()).rev().collect()
        };
        for i in order {
            let (_, prog, pkt) = &cases[i];
            // Wall time around the run: the kernel's own figure is whole nanoseconds.
            let t = std::time::Instant::now();
            match bed.run(*prog, pkt, args.runs) {
                Ok(_) => ns[i].push(t.elapsed().as_nanos() as f64 / args.runs as f64),
                Err(e) => {
                    eprintln!("xdp_drop: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut ns[0]);
    println!(
        "| packet | program | ns/packet | Mpps per core | x plain XDP_DROP |\n|---|---|---|---|---|"
    );
    for (i, (name, prog, _)) in cases.iter().enumerate() {
        let m = median(&mut ns[i]);
        let which = match prog {
            Program::DropAll => "XDP_DROP",
            Program::Filter => "omni_xdp",
        };
        println!("| {name} | {which} | {m:.1} | {:.1} | {:.2} |", 1e3 / m, base / m);
    }
    println!(
        "\n{} runs per measurement, {} repetitions (median), BPF_PROG_TEST_RUN on one core.",
        args.runs, args.reps
    );
    ExitCode::SUCCESS
}
