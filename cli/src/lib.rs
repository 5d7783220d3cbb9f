//! The edge of every OmniNervous binary: how it logs, how it reports an error, and the
//! manual pages and shell completions made from its clap definition (so they never drift
//! from the real options).

#![forbid(unsafe_code)]

pub mod report;

pub use clap_complete::Shell;

/// The field names serde's derive hands to `deserialize_struct`, captured by a
/// deserializer that reads nothing else.
pub fn field_names<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    struct Names(&'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for &mut Names {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(serde::de::Error::custom("only the field names were wanted"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut names = Names(&[]);
    let _ = T::deserialize(&mut names);
    names.0
}

use std::io::Write;
use std::path::Path;

/// Logs to stderr, filtered by `OMNI_LOG` (default `info`); colour only on a terminal, so
/// logs redirected to files stay plain text.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OMNI_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The completion script for `shell`, written to stdout.
pub fn print_completions(shell: clap_complete::Shell, mut cmd: clap::Command) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
}

/// The manual pages of `cmd`: with a directory, one page per command and subcommand
/// (`omni-daemon.1`, `omni-daemon-status.1`, ...) written into it; without, the top page
/// on stdout.
pub fn write_man_pages(cmd: clap::Command, dir: Option<&Path>) -> std::io::Result<()> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)
        }
        None => {
            let mut out = std::io::stdout().lock();
            let written = clap_mangen::Man::new(cmd).render(&mut out).and_then(|()| out.flush());
            // `omni-daemon man | head` is not an error.
            match written {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other,
            }
        }
    }
}
