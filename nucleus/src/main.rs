//! `omni-nucleus`: the rendezvous and relay server of OmniNervous clusters.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use omni_nucleus::config::{Overrides, Settings};
use omni_proto::store;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "omni-nucleus",
    version,
    about = "OmniNervous Nucleus: rendezvous, NAT hole punching and relay",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// UDP address to serve [default: 0.0.0.0:51820].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// nucleus.toml.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Identity file; created (mode 0600) if missing [default: /etc/omni/nucleus.key].
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Prometheus address, or "off" [default: 127.0.0.1:9200].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Also relay over TLS on TCP at ADDR[:PORT] (port 443 if none), for nodes whose
    /// networks block UDP [default: off].
    #[arg(long, value_name = "ADDR")]
    tcp_listen: Option<String>,
    /// Drop members silent this long [default: 3 x register interval + 5].
    #[arg(long)]
    member_timeout_secs: Option<u64>,
    /// Ask nodes to re-register this often [default: 20].
    #[arg(long)]
    register_interval_secs: Option<u16>,
    /// Relay budget per node [default: 12500000].
    #[arg(long)]
    relay_bytes_per_sec: Option<u64>,
    /// Where the control socket lives [default: /run/omni-nucleus].
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the Nucleus public key (what nodes pin), creating the identity if missing.
    Pubkey {
        #[arg(long, default_value = "/etc/omni/nucleus.key")]
        identity: PathBuf,
    },
    /// Hand a revocation (`omni-daemon cluster revoke`) to the running Nucleus: it removes
    /// the revoked member, pushes the revocation to every member, and gives it to nodes
    /// that register later. The cluster needs `authority` in its [[clusters]] entry.
    Revoke {
        file: PathBuf,
        #[arg(long, default_value = omni_nucleus::config::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Hand a group policy (`omni-daemon cluster policy`) to the running Nucleus, which
    /// pushes it to every member and to nodes that register later.
    Policy {
        file: PathBuf,
        #[arg(long, default_value = omni_nucleus::config::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Print a shell completion script (e.g. `omni-nucleus completions bash`).
    Completions { shell: omni_cli::Shell },
    /// Print the manual page, or with --out write one page per command into a directory.
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

fn load_or_create(path: &std::path::Path) -> anyhow::Result<omni_proto::Identity> {
    match store::load(path) {
        Ok(id) => Ok(id),
        Err(store::IdentityStoreError::Missing(_)) => {
            let id = store::init(path, false)?;
            info!(path = %path.display(), key = %id.public_key(), "created a new Nucleus identity");
            Ok(id)
        }
        Err(e) => Err(e.into()),
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Pubkey { identity }) => {
            println!("{}", load_or_create(&identity)?.public_key());
            return Ok(());
        }
        Some(Cmd::Revoke { file, run_dir }) | Some(Cmd::Policy { file, run_dir }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let what = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(omni_nucleus::server::send_statement(&run_dir, &text))
                .with_context(|| format!("{} is refused", file.display()))?;
            println!("{what}");
            return Ok(());
        }
        Some(Cmd::Completions { shell }) => {
            omni_cli::print_completions(shell, Cli::command());
            return Ok(());
        }
        Some(Cmd::Man { out }) => {
            return Ok(omni_cli::write_man_pages(Cli::command(), out.as_deref())?);
        }
        None => {}
    }
    let settings = Settings::load(
        cli.config.as_deref(),
        Overrides {
            listen: cli.listen,
            identity: cli.identity,
            metrics_listen: cli.metrics_listen,
            tcp_listen: cli.tcp_listen,
            member_timeout_secs: cli.member_timeout_secs,
            register_interval_secs: cli.register_interval_secs,
            relay_bytes_per_sec: cli.relay_bytes_per_sec,
            run_dir: cli.run_dir,
        },
    )?;
    let identity = load_or_create(&settings.identity)?;
    // Before the runtime (capabilities are per thread).
    drop_privileges(&settings);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(omni_nucleus::server::run(settings, identity))
}

/// The Nucleus needs no capability once its identity is read, except to bind a port
/// below 1024 if told to. Everything else goes, for good (bounding set, no_new_privs).
fn drop_privileges(settings: &Settings) {
    use omni_caps::{Cap, CapSet};
    if !omni_caps::is_root() {
        return;
    }
    let low = |port: u16| port != 0 && port < 1024;
    let keep = if low(settings.listen.port())
        || settings.metrics_listen.is_some_and(|a| low(a.port()))
        || settings.tcp_listen.is_some_and(|a| low(a.port()))
    {
        CapSet::of(&[Cap::NetBindService])
    } else {
        CapSet::EMPTY
    };
    match omni_caps::restrict(keep, keep, keep) {
        Ok(()) => tracing::info!(kept = %keep, "capabilities dropped"),
        Err(e) => tracing::warn!("capabilities not dropped: {e}"),
    }
}

fn main() -> ExitCode {
    omni_cli::init_logging();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("omni-nucleus: error: {}", omni_cli::report::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
