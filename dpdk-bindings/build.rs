//! Finds the system's DPDK with pkg-config, compiles the C shim with DPDK's own flags and
//! generates the bindings with bindgen. A missing DPDK is a build error naming the package.

use std::path::PathBuf;
use std::process::Command;

fn pkg_config(args: &[&str]) -> Option<String> {
    let out = Command::new("pkg-config").args(args).arg("libdpdk").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-changed=src/shim.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    let Some(version) = pkg_config(&["--modversion"]) else {
        panic!(
            "\n\nDPDK not found: `pkg-config libdpdk` failed.\n\
             Install it: apt install libdpdk-dev (scripts/setup.sh does), or point \
             PKG_CONFIG_PATH at a DPDK build's lib/pkgconfig.\n\
             bindgen also needs libclang: apt install libclang-dev.\n"
        );
    };
    let major: u32 = version.split('.').next().and_then(|v| v.parse().ok()).unwrap_or(0);
    if major < 22 {
        panic!(
            "\n\nDPDK {version} is too old: OmniNervous needs 22.11 or newer (Debian 12's libdpdk-dev).\n"
        );
    }
    let cflags: Vec<String> = pkg_config(&["--cflags"])
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // `-include rte_config.h` comes as two words.
    let mut shim = cc::Build::new();
    shim.file("src/shim.c").define("ALLOW_EXPERIMENTAL_API", None).warnings(false);
    for f in &cflags {
        shim.flag(f);
    }
    shim.compile("omni_dpdk_shim");

    for l in pkg_config(&["--libs"]).unwrap_or_default().split_whitespace() {
        if let Some(dir) = l.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = l.strip_prefix("-l") {
            // `-l:librte_foo.so.23` style entries name a file.
            let lib = lib
                .strip_prefix(':')
                .map(|f| f.trim_start_matches("lib").split(".so").next().unwrap_or(f).to_string());
            match lib {
                Some(name) => println!("cargo:rustc-link-lib=dylib={name}"),
                None => println!("cargo:rustc-link-lib=dylib={}", l.trim_start_matches("-l")),
            }
        }
    }

    // rte_vdev_init lives in the vdev bus driver, which pkg-config's list leaves out.
    println!("cargo:rustc-link-lib=dylib=rte_bus_vdev");

    let bindings = bindgen::Builder::default()
        .header("src/shim.h")
        .clang_args(cflags.iter().filter(|f| !f.starts_with("-march")))
        .clang_arg("-DALLOW_EXPERIMENTAL_API")
        .allowlist_function("omni_rte_.*")
        .allowlist_function("rte_eal_init|rte_eal_cleanup|rte_eal_get_runtime_dir|rte_strerror|rte_socket_id")
        .allowlist_function("rte_pktmbuf_pool_create|rte_mempool_free|rte_mempool_avail_count")
        .allowlist_function("rte_eth_dev_.*|rte_eth_rx_queue_setup|rte_eth_tx_queue_setup")
        .allowlist_function("rte_eth_macaddr_get|rte_eth_link_get_nowait|rte_eth_stats_get")
        .allowlist_function("rte_eth_promiscuous_enable|rte_eth_dev_count_avail")
        .allowlist_function("rte_ring_create|rte_ring_free")
        .allowlist_function("rte_vdev_init|rte_vdev_uninit")
        .allowlist_function("rte_lcore_count|rte_get_tsc_hz|rte_thread_register|rte_thread_unregister")
        .allowlist_var("RTE_ETH_.*|RING_F_.*|RTE_PKTMBUF_HEADROOM|RTE_MBUF_DEFAULT_BUF_SIZE|SOCKET_ID_ANY|RTE_MAX_ETHPORTS")
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen over DPDK's headers (needs libclang: apt install libclang-dev)");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    bindings.write_to_file(out.join("bindings.rs")).expect("write bindings");
}
