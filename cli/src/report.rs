//! One line for an error and its causes, each cause said once.
//!
//! Errors here carry their cause either in their message or as `source()`, not both, but
//! errors from other libraries do not always keep to that (an I/O error quoted in the
//! message of an error that also returns it as its source). The binaries print through
//! this, so a user reads "cannot read config file x: No such file or directory" and not the
//! OS error twice.

use std::error::Error;

/// `error: cause: cause's cause`, leaving out a cause whose text is already in the line.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Quoting {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting the node")]
    struct Outer(#[source] Quoting);

    fn not_found() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::NotFound)
    }

    #[test]
    fn a_quoted_cause_is_said_once() {
        let e = Quoting { path: "/x.toml", source: not_found() };
        let line = chain(&e);
        assert_eq!(line.matches(&not_found().to_string()).count(), 1, "{line}");
        assert!(line.starts_with("cannot read /x.toml: "), "{line}");
    }

    #[test]
    fn causes_not_in_the_message_are_appended_in_order() {
        let e = Outer(Quoting { path: "/x.toml", source: not_found() });
        assert_eq!(chain(&e), format!("starting the node: cannot read /x.toml: {}", not_found()));
    }
}
