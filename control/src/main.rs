//! `omni-daemon`: the OmniNervous control daemon and its command-line tools.

#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use omni_daemon::config::{self, CliOverrides, FileConfig, Settings};
use omni_daemon::daemon;
use omni_daemon::status::{self, Request, Status};
use omni_proto::store as identity_store;

#[derive(Debug, Parser)]
#[command(
    name = "omni-daemon",
    version,
    about = "OmniNervous: an identity-addressed, encrypted L2 fabric",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the public key of an identity.
    Pubkey {
        #[arg(long, default_value = config::DEFAULT_IDENTITY)]
        identity: PathBuf,
    },
    /// Show the running daemon's peers, sessions and FDB (like `wg show`).
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = config::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Cluster secrets.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Hand a revocation (`omni-daemon cluster revoke`) to the running daemon: it ends
    /// every session with the revoked node at once, keeps it out from then on, and keeps
    /// the revocation across restarts.
    Revoke {
        file: PathBuf,
        #[arg(long, default_value = config::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Hand a group policy (`omni-daemon cluster policy`) to the running daemon: it is in
    /// force at once (if newer than the one in force), kept across restarts, and passed on
    /// to every peer and Nucleus.
    Policy {
        file: PathBuf,
        #[arg(long, default_value = config::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Start a new handshake with one peer, or with every peer.
    Rekey {
        #[arg(long)]
        peer: Option<String>,
        #[arg(long, default_value = config::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Print a shell completion script (e.g. `omni-daemon completions bash >
    /// /etc/bash_completion.d/omni-daemon`).
    Completions { shell: omni_cli::Shell },
    /// Print the manual page, or with --out write one page per command into a directory.
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Make a new cluster secret: prints the secret (one token) on stdout, and on stderr
    /// the cluster key a Nucleus may pin.
    New { name: String },
    /// Create the cluster's authority: an Ed25519 key (file mode 0600, keep it offline)
    /// that signs certificates, revocations and policies. Prints its public key last.
    Init {
        name: String,
        #[arg(long, value_name = "FILE")]
        authority: PathBuf,
        /// Replace an existing authority file (every certificate it signed stops counting).
        #[arg(long)]
        force: bool,
    },
    /// Sign a node certificate: the node's key, name and groups, valid from now.
    Enroll {
        #[arg(long, value_name = "FILE")]
        authority: PathBuf,
        /// The node's public key (`omni-daemon pubkey` on the node).
        #[arg(long, value_name = "NODE_PUBKEY")]
        node: String,
        #[arg(long)]
        name: String,
        /// Comma-separated groups (e.g. robots,arm).
        #[arg(long, default_value = "")]
        groups: String,
        /// How long it is valid: 90d, 12h, 2w...
        #[arg(long, default_value = "90d")]
        expires: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a revocation of a node key (or of one certificate, by serial).
    Revoke {
        #[arg(long, value_name = "FILE")]
        authority: PathBuf,
        #[arg(long, value_name = "NODE_PUBKEY", required_unless_present = "serial")]
        node: Option<String>,
        /// A certificate serial (as `cluster show` prints it) instead of a key.
        #[arg(long, conflicts_with = "node")]
        serial: Option<String>,
        /// Let members forget it after this long (e.g. the certificate's remaining life);
        /// default: never.
        #[arg(long)]
        forget_after: Option<String>,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a group policy from its TOML source ([[allow]] between = ["robots", "ops"]).
    Policy {
        #[arg(long, value_name = "FILE")]
        authority: PathBuf,
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Show a certificate, revocation or policy file, its signature checked.
    Show { file: PathBuf },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Create a new identity (Ed25519, file mode 0600) and print its public key.
    #[arg(long)]
    init: bool,
    /// With --init: replace an existing identity.
    #[arg(long, requires = "init")]
    force: bool,
    /// Validate the configuration (the file and the options given with it) and the
    /// identity, print what would run, and exit without starting anything: 0 when it
    /// would start, 1 with the key that is wrong.
    #[arg(long, conflicts_with = "init")]
    check: bool,
    /// TOML config file (default: ~/.omni/config.toml if it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Identity file [default: /etc/omni/identity.key].
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Underlay UDP port [default: 51820].
    #[arg(long)]
    port: Option<u16>,
    /// A peer's public key; repeatable, each optionally followed by --endpoint.
    #[arg(long = "peer", action = ArgAction::Append, value_name = "KEY")]
    peers: Vec<String>,
    /// The preceding --peer's address (host:port).
    #[arg(long = "endpoint", action = ArgAction::Append, value_name = "HOST:PORT")]
    endpoints: Vec<String>,
    /// TAP interface name [default: omni0].
    #[arg(long)]
    tap: Option<String>,
    /// TAP MTU [default: underlay MTU minus overhead].
    #[arg(long)]
    mtu: Option<u32>,
    /// Underlay address to bind [default: all].
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Underlay interface (sizes the MTU; the NIC of the xdp backend).
    #[arg(long, visible_alias = "iface")]
    interface: Option<String>,
    /// Directory for the control socket and shared memory [default: /run/omni].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Directory for what outlives a restart (revocations) [default: /var/lib/omni].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Path of omni-dataplane [default: next to omni-daemon].
    #[arg(long)]
    dataplane: Option<PathBuf>,
    /// Prometheus listen address, or "off" [default: 127.0.0.1:9100].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Turn off the data plane's TAP and UDP offloads (for comparison).
    #[arg(long)]
    no_offload: bool,
    /// No real-time lane: no access queue (real-time frames queue with bulk ones), one
    /// underlay socket; see docs/qos.md.
    #[arg(long)]
    no_qos_lanes: bool,
    /// Microseconds bulk frames may stand in the data plane's access queue before CoDel
    /// drops (50 to 100000) [default: 500].
    #[arg(long)]
    qos_delay_target_us: Option<u64>,
    /// DSCPs of real-time frames, comma-separated: names (EF, CS5, AF41, ...) or numbers
    /// 0-63, or none [default: EF,CS5,CS6,CS7].
    #[arg(long, value_name = "LIST")]
    qos_real_time_dscp: Option<String>,
    /// DSCPs of background frames [default: CS1].
    #[arg(long, value_name = "LIST")]
    qos_background_dscp: Option<String>,
    /// 802.1Q priorities (0-7) of real-time frames; a tagged frame's PCP decides its class
    /// [default: 5,6,7].
    #[arg(long, value_name = "LIST")]
    qos_real_time_pcp: Option<String>,
    /// 802.1Q priorities of background frames [default: 1].
    #[arg(long, value_name = "LIST")]
    qos_background_pcp: Option<String>,
    /// socket backend: per cent of each data-plane pass that real-time datagrams may take
    /// ahead of bulk ones on their own socket (1 to 90) [default: 33].
    #[arg(long, value_name = "PERCENT")]
    qos_real_time_share: Option<u8>,
    /// Seal and send bulk traffic on a second data-plane thread: true or false [default:
    /// true with 4 cores or more].
    #[arg(long)]
    crypto_thread: Option<bool>,
    /// socket/xdp backends: when the data plane holds /dev/cpu_dma_latency at 0 so idle CPUs
    /// poll instead of sleeping deeply (machine-wide while held): busy (while bulk traffic
    /// flows), always or off [default: busy].
    #[arg(long, value_parser = clap::builder::TypedValueParser::map(
        clap::builder::EnumValueParser::<omni_shm::settings::CpuLatency>::new(),
        |m| m.name().to_string()))]
    cpu_latency: Option<String>,
    /// socket/xdp backends: pin the data plane's I/O thread to this CPU (keep it off the
    /// cores your applications use) [default: the scheduler places it].
    #[arg(long)]
    dataplane_cpu: Option<u32>,
    /// socket/xdp backends: the data plane's I/O thread's nice value, -20 to 19 [default:
    /// 0; -10 puts it ahead of busy applications, which then get less CPU].
    #[arg(long, allow_hyphen_values = true)]
    dataplane_nice: Option<i32>,
    /// socket/xdp backends: microseconds the data plane keeps polling after traffic
    /// (yielding the CPU) before it sleeps, so an answer costs no wake-up; it backs off
    /// where it catches nothing and is off under bulk traffic; 0 sleeps at once [default:
    /// 200].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=omni_shm::settings::SPIN_MAX_US))]
    spin_us: Option<u64>,
    /// Data-plane backend: socket (UDP socket + TAP, anywhere), xdp (XDP + AF_XDP on
    /// --interface) or dpdk (ports from the config's [dpdk] section) [default: socket].
    #[arg(long, value_parser = ["socket", "xdp", "dpdk"])]
    backend: Option<String>,
    /// xdp backend: how the XDP program is attached [default: auto].
    #[arg(long, value_parser = ["auto", "native", "skb"])]
    xdp_mode: Option<String>,
    /// Transport cipher: auto (AES-256-GCM where both CPUs have AES instructions, else
    /// ChaCha20-Poly1305), chacha20-poly1305 or aes-256-gcm (only that one) [default: auto].
    #[arg(long)]
    cipher: Option<String>,
    /// Nucleus address (repeatable).
    #[arg(long, action = ArgAction::Append)]
    nucleus: Vec<String>,
    /// Port of the Nuclei's relay over TLS on TCP, used when UDP gets no answer; 0: never
    /// [default: 443].
    #[arg(long, value_name = "PORT")]
    nucleus_tcp_port: Option<u16>,
    /// socket backend: an underlay interface to reach peers by (repeatable, in order of
    /// preference: --uplink wlan0 --uplink wwan0); each peer's traffic moves to the next
    /// within ~3 probe intervals when its uplink stops answering (docs/uplinks.md).
    #[arg(long = "uplink", value_name = "IFACE", action = ArgAction::Append)]
    uplinks: Vec<String>,
    /// Milliseconds between path probes on each uplink (10 to 1000) [default: 40].
    #[arg(long, value_name = "MS")]
    uplink_probe_ms: Option<u32>,
    /// Do not probe peers' path MTU (frames too big for a narrower path are then
    /// fragmented by the kernel, or lost on the xdp backend; docs/path-mtu.md).
    #[arg(long)]
    no_path_mtu_probing: bool,
    #[arg(long)]
    cluster: Option<String>,
    /// The cluster secret (visible to other users in the process list: prefer
    /// --cluster-secret-file or the config file).
    #[arg(long)]
    cluster_secret: Option<String>,
    /// A file (mode 0600) holding the cluster secret.
    #[arg(long, conflicts_with = "cluster_secret")]
    cluster_secret_file: Option<PathBuf>,
    /// This node's certificate (`omni-daemon cluster enroll`); needs --authority-pubkey.
    #[arg(long, value_name = "FILE")]
    certificate: Option<PathBuf>,
    /// The cluster authority's public key: peers must hold certificates it signed.
    #[arg(long, value_name = "AUTHORITY_PUBKEY")]
    authority_pubkey: Option<String>,
    #[arg(long)]
    max_sessions_per_ip: Option<u32>,
    #[arg(long)]
    handshake_timeout_secs: Option<f64>,
    #[arg(long)]
    rekey_after_secs: Option<f64>,
    #[arg(long)]
    reject_after_secs: Option<f64>,
    #[arg(long)]
    keepalive_secs: Option<f64>,
    #[arg(long)]
    fdb_aging_secs: Option<f64>,
}

/// Pairs each `--endpoint` with the `--peer` before it, by position on the command line.
fn pair_peers(
    m: &clap::ArgMatches,
    peers: &[String],
    endpoints: &[String],
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let pi: Vec<usize> = m.indices_of("peers").map(|i| i.collect()).unwrap_or_default();
    let ei: Vec<usize> = m.indices_of("endpoints").map(|i| i.collect()).unwrap_or_default();
    let mut out: Vec<(String, Option<String>)> = peers.iter().map(|p| (p.clone(), None)).collect();
    for (e, at) in endpoints.iter().zip(ei) {
        let owner = pi.iter().rposition(|&p| p < at);
        match owner {
            None => bail!(
                "--endpoint {e} comes before any --peer; write --peer KEY --endpoint HOST:PORT"
            ),
            Some(k) if out[k].1.is_some() => bail!("--peer {} has two --endpoint values", out[k].0),
            Some(k) => out[k].1 = Some(e.clone()),
        }
    }
    Ok(out)
}

fn load_settings(run: RunArgs, peers: Vec<(String, Option<String>)>) -> anyhow::Result<Settings> {
    let file = match &run.config {
        Some(p) => FileConfig::load(p)?,
        None => match config::default_config_path().filter(|p| p.exists()) {
            Some(p) => FileConfig::load(&p)?,
            None => FileConfig::default(),
        },
    };
    let cli = CliOverrides {
        identity: run.identity,
        port: run.port,
        tap: run.tap,
        mtu: run.mtu,
        bind: run.bind,
        interface: run.interface,
        run_dir: run.run_dir,
        state_dir: run.state_dir,
        dataplane: run.dataplane,
        metrics_listen: run.metrics_listen,
        no_offload: run.no_offload,
        no_qos_lanes: run.no_qos_lanes,
        qos_delay_target_us: run.qos_delay_target_us,
        qos_real_time_dscp: run.qos_real_time_dscp,
        qos_background_dscp: run.qos_background_dscp,
        qos_real_time_pcp: run.qos_real_time_pcp,
        qos_background_pcp: run.qos_background_pcp,
        qos_real_time_share: run.qos_real_time_share,
        crypto_thread: run.crypto_thread,
        cpu_latency: run.cpu_latency,
        dataplane_cpu: run.dataplane_cpu,
        dataplane_nice: run.dataplane_nice,
        spin_us: run.spin_us,
        backend: run.backend,
        xdp_mode: run.xdp_mode,
        cipher: run.cipher,
        nucleus: run.nucleus,
        nucleus_tcp_port: run.nucleus_tcp_port,
        uplinks: run.uplinks,
        uplink_probe_ms: run.uplink_probe_ms,
        no_path_mtu_probing: run.no_path_mtu_probing,
        cluster: run.cluster,
        cluster_secret: run.cluster_secret,
        cluster_secret_file: run.cluster_secret_file,
        certificate: run.certificate,
        authority_pubkey: run.authority_pubkey,
        peers,
        max_sessions_per_ip: run.max_sessions_per_ip,
        handshake_timeout_secs: run.handshake_timeout_secs,
        rekey_after_secs: run.rekey_after_secs,
        reject_after_secs: run.reject_after_secs,
        keepalive_secs: run.keepalive_secs,
        fdb_aging_secs: run.fdb_aging_secs,
    };
    Ok(Settings::resolve(file, cli)?)
}

/// The authority's commands: everything runs here, offline; nothing talks to a daemon.
fn cluster(command: ClusterCmd) -> anyhow::Result<()> {
    use omni_daemon::membership as m;
    use omni_proto::membership::{cert, policy, revocation};
    let now = m::unix_now();
    let write = |out: &std::path::Path, comment: String, text: String| -> anyhow::Result<()> {
        std::fs::write(out, format!("{comment}{text}"))
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
        Ok(())
    };
    match command {
        ClusterCmd::New { name } => {
            let secret = omni_proto::cluster::new_secret_token();
            let cluster = omni_proto::cluster::Cluster::new(&name, &secret)?;
            println!("{secret}");
            eprintln!(
                "cluster {name}: give the secret above to every node (--cluster {name} --cluster-secret <SECRET>); keep it private."
            );
            eprintln!(
                "cluster key, for a Nucleus that pins its clusters ([[clusters]] name = \"{name}\", key = ...): {}",
                cluster.public_key()
            );
            Ok(())
        }
        ClusterCmd::Init { name, authority, force } => {
            let a = m::create_authority(&authority, &name, force)?;
            eprintln!(
                "cluster {name}: authority key in {} (mode 0600; keep it offline). Give nodes its \
                 public key (--authority-pubkey, [network] authority):",
                authority.display()
            );
            println!("{}", a.identity.public_key());
            Ok(())
        }
        ClusterCmd::Enroll { authority, node, name, groups, expires, out } => {
            let a = m::load_authority(&authority)?;
            let node: omni_proto::PublicKey =
                node.parse().with_context(|| format!("--node {node}: not a public key"))?;
            let life = m::parse_duration(&expires).context("--expires")?;
            // A few minutes back: a node whose clock is a little behind still admits it.
            let not_before = now.saturating_sub(300);
            let c = cert::Certificate {
                serial: rand::random(),
                cluster: a.cluster.clone(),
                node,
                name,
                groups: m::parse_groups(&groups).context("--groups")?,
                not_before,
                not_after: now + life,
            };
            let bytes = c.sign(&a.identity)?;
            let s = cert::SignedCertificate::parse(&bytes)?;
            let comment = format!(
                "# {} ({}) in cluster {}, valid until {}\n",
                c.name,
                c.groups.join(", "),
                c.cluster,
                m::format_time(c.not_after)
            );
            write(&out, comment, s.to_text())
        }
        ClusterCmd::Revoke { authority, node, serial, forget_after, out } => {
            let a = m::load_authority(&authority)?;
            let target = match (node, serial) {
                (Some(k), _) => revocation::Target::Key(
                    k.parse().with_context(|| format!("--node {k}: not a public key"))?,
                ),
                (None, Some(s)) => {
                    let n = match s.strip_prefix("0x") {
                        Some(h) => u64::from_str_radix(h, 16),
                        None => s.parse(),
                    };
                    revocation::Target::Serial(
                        n.with_context(|| format!("--serial {s}"))
                            .context("expected a number, e.g. 0x1f2e3d4c5b6a7988")?,
                    )
                }
                (None, None) => bail!("name what to revoke: --node KEY or --serial N"),
            };
            let until = match forget_after {
                Some(d) => now + m::parse_duration(&d).context("--forget-after")?,
                None => 0,
            };
            let r =
                revocation::Revocation { cluster: a.cluster.clone(), target, issued: now, until };
            let s = revocation::SignedRevocation::parse(&r.sign(&a.identity)?)?;
            let comment = format!("# revocation in cluster {}\n", a.cluster);
            write(&out, comment, s.to_text())
        }
        ClusterCmd::Policy { authority, file, out } => {
            let a = m::load_authority(&authority)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let p = m::policy_from_toml(&text, &a.cluster, now)
                .with_context(|| format!("{} is refused", file.display()))?;
            let s = policy::SignedPolicy::parse(&p.sign(&a.identity)?)?;
            if s.bytes.len() > omni_proto::membership::MAX_SHARED {
                bail!(
                    "{} is refused: signed, the policy is {} bytes, and members pass on at most \
                     {} (fewer rules, or shorter group names)",
                    file.display(),
                    s.bytes.len(),
                    omni_proto::membership::MAX_SHARED
                );
            }
            let comment = format!("# policy version {} of cluster {}\n", p.version, a.cluster);
            write(&out, comment, s.to_text())
        }
        ClusterCmd::Show { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let d = m::describe(&text, now)
                .with_context(|| format!("{} is refused", file.display()))?;
            print!("{d}");
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn real_main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.command {
        Some(Cmd::Pubkey { identity }) => {
            println!("{}", identity_store::load(&identity)?.public_key());
            Ok(())
        }
        Some(Cmd::Status { json, run_dir }) => {
            let v = runtime()?.block_on(status::query(&run_dir, &Request::Status))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let s: Status = serde_json::from_value(v).context("unexpected status reply")?;
                print!("{}", status::render(&s));
            }
            Ok(())
        }
        Some(Cmd::Cluster { command }) => cluster(command),
        Some(Cmd::Completions { shell }) => {
            omni_cli::print_completions(shell, Cli::command());
            Ok(())
        }
        Some(Cmd::Man { out }) => Ok(omni_cli::write_man_pages(Cli::command(), out.as_deref())?),
        Some(Cmd::Revoke { file, run_dir }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let v = runtime()?.block_on(status::query(&run_dir, &Request::Revoke { text }))?;
            let ended = v["ended"].as_array().map(Vec::len).unwrap_or(0);
            println!("revocation accepted; sessions ended with {ended} peer(s)");
            Ok(())
        }
        Some(Cmd::Policy { file, run_dir }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let v = runtime()?.block_on(status::query(&run_dir, &Request::Policy { text }))?;
            println!("policy version {} in force", v["version"]);
            Ok(())
        }
        Some(Cmd::Rekey { peer, run_dir }) => {
            runtime()?.block_on(status::query(&run_dir, &Request::Rekey { peer }))?;
            Ok(())
        }
        None => {
            let run = cli.run;
            if run.init {
                let path = match (&run.identity, &run.config) {
                    (Some(p), _) => p.clone(),
                    (None, _) => {
                        let force = run.force;
                        let s = load_settings(run, vec![])?;
                        let id = identity_store::init(&s.daemon.identity_path, force)?;
                        println!("Your Public Identity: {}", id.public_key());
                        return Ok(());
                    }
                };
                let id = identity_store::init(&path, run.force)?;
                println!("Your Public Identity: {}", id.public_key());
                return Ok(());
            }
            let check = run.check;
            let peers = pair_peers(&matches, &run.peers, &run.endpoints)?;
            let settings = load_settings(run, peers)?;
            let identity = identity_store::load(&settings.daemon.identity_path)?;
            if check {
                // What the daemon reads of the machine before it starts: the MTU (and so
                // the interface it is sized from).
                let mtu = daemon::tap_mtu(&settings)?;
                // The certificate names this key and is valid now (at run time an invalid
                // one is only logged, so that a renewal can follow).
                daemon::admission(&settings, &identity)?;
                if let Some(m) = &settings.network.membership {
                    let (c, now) = (&m.certificate, omni_daemon::membership::unix_now());
                    c.admit(&m.authority, &c.cert.cluster, now)
                        .with_context(|| format!("{}", m.certificate_path.display()))?;
                }
                println!("{}", config::summary(&settings, &identity.public_key(), mtu));
                return Ok(());
            }
            // Before the runtime: capabilities are per thread.
            omni_daemon::privileges::drop_for_daemon(&settings);
            runtime()?.block_on(daemon::run(settings, identity))
        }
    }
}

fn main() -> ExitCode {
    omni_cli::init_logging();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("omni-daemon: error: {}", omni_cli::report::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
