//! Where passphrases come from: `--passphrase-file`, the `SYNCOXIDE_PASSPHRASE` environment
//! variable, or a prompt on a terminal, in that order. Never from argv.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};

pub const ENV: &str = "SYNCOXIDE_PASSPHRASE";
pub const ENV_NEW: &str = "SYNCOXIDE_NEW_PASSPHRASE";

/// Reads the passphrase of a cache. `confirm`: ask twice on a terminal (creating a new cache).
pub fn passphrase(file: Option<&Path>, env: &str, what: &str, confirm: bool) -> Result<String> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the passphrase file {}", f.display()))?;
        let s = s.strip_suffix('\n').unwrap_or(&s);
        let s = s.strip_suffix('\r').unwrap_or(s);
        return non_empty(
            s.to_string(),
            &format!("the passphrase file {}", f.display()),
        );
    }
    if let Ok(s) = std::env::var(env) {
        return non_empty(s, env);
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(format!("{what}: "))
            .context("cannot read from the terminal")?;
        let p = non_empty(p, "the passphrase")?;
        if confirm {
            let again = rpassword::prompt_password(format!("{what} (again): "))
                .context("cannot read from the terminal")?;
            if again != p {
                bail!("the two passphrases differ; nothing was changed");
            }
        }
        return Ok(p);
    }
    bail!(
        "no passphrase: set {env}, pass --passphrase-file FILE, or run mountctl on a terminal to be asked"
    )
}

fn non_empty(s: String, from: &str) -> Result<String> {
    if s.is_empty() {
        bail!("{from} is empty; the cache needs a passphrase");
    }
    Ok(s)
}

/// A password or passphrase held in memory: never shown by `Debug`, so that a plan or a config
/// printed into a log shows `<secret>` instead.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    /// The secret itself, for the provider that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_not_debug_printed() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "<secret>");
        assert_eq!(format!("{:?}", Some(&s)), "Some(<secret>)");
        assert_eq!(s.expose(), "hunter2");
    }
}
