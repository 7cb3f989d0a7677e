//! `mountctl remote add|list|remove`: the named remotes of `named.rs`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::cli::{RemoteAddArgs, RemoteCommand, RemoteOptions};
use crate::named::{self, RemoteName, Remotes, StoredRemote};
use crate::plan::WEBDAV_PASSWORD_ENV;
use crate::remote::Remote;
use crate::secrets::Secret;

pub fn run(c: RemoteCommand) -> Result<()> {
    match c {
        RemoteCommand::Add(a) => add(*a),
        RemoteCommand::List { json } => list(json),
        RemoteCommand::Remove { name } => remove(&name),
    }
}

fn kind(r: &Remote) -> &'static str {
    match r {
        Remote::Local(_) => "a local folder",
        Remote::S3 { .. } => "an S3 remote",
        Remote::WebDav { .. } => "a WebDAV remote",
        Remote::Sftp { .. } => "an SFTP remote",
    }
}

/// The options that apply to `remote`, SFTP paths made absolute; the others refused.
fn options_for(remote: &Remote, url: &str, o: RemoteOptions) -> Result<RemoteOptions> {
    let given = |set: bool, flag: &str, of: &str| -> Result<()> {
        if set {
            bail!("{flag} is an option of {of}, and {url} is {}", kind(remote));
        }
        Ok(())
    };
    let s3 = matches!(remote, Remote::S3 { .. });
    let sftp = matches!(remote, Remote::Sftp { .. });
    given(
        !s3 && o.s3_endpoint.is_some(),
        "--s3-endpoint",
        "s3:// remotes",
    )?;
    given(!s3 && o.s3_region.is_some(), "--s3-region", "s3:// remotes")?;
    given(
        !s3 && o.s3_addressing.is_some(),
        "--s3-addressing",
        "s3:// remotes",
    )?;
    given(
        !s3 && o.s3_profile.is_some(),
        "--s3-profile",
        "s3:// remotes",
    )?;
    given(
        !sftp && o.sftp_key.is_some(),
        "--sftp-key",
        "sftp:// remotes",
    )?;
    given(
        !sftp && o.sftp_known_hosts.is_some(),
        "--sftp-known-hosts",
        "sftp:// remotes",
    )?;
    given(
        matches!(remote, Remote::Local(_)) && o.request_timeout.is_some(),
        "--request-timeout",
        "network remotes",
    )?;
    let file = |p: Option<PathBuf>, what: &str, flag: &str| -> Result<Option<PathBuf>> {
        let Some(p) = p else { return Ok(None) };
        let abs = std::path::absolute(&p)
            .with_context(|| format!("cannot make {} absolute", p.display()))?;
        if !abs.is_file() {
            bail!(
                "the {what} {} does not exist; give another with {flag}",
                abs.display()
            );
        }
        utf8(&abs)?;
        Ok(Some(abs))
    };
    Ok(RemoteOptions {
        sftp_key: file(o.sftp_key, "SSH key", "--sftp-key")?,
        sftp_known_hosts: file(o.sftp_known_hosts, "known_hosts file", "--sftp-known-hosts")?,
        ..o
    })
}

fn utf8(p: &Path) -> Result<()> {
    if p.to_str().is_none() {
        bail!(
            "{} is not valid UTF-8, which the remotes file cannot hold; choose a path with a UTF-8 name",
            p.display()
        );
    }
    Ok(())
}

/// The WebDAV password to store, if one was asked for: never from the command line.
fn password(remote: &Remote, from_env: bool, ask: bool) -> Result<Option<Secret>> {
    if !from_env && !ask {
        return Ok(None);
    }
    let (user, url) = match remote {
        Remote::WebDav { user: Some(u), url } => (u, url),
        Remote::WebDav { user: None, .. } => bail!(
            "the WebDAV URL names no user, so there is no password to store; write webdav(s)://USER@HOST/PATH"
        ),
        other => bail!(
            "only a WebDAV remote has a password to store, and this is {} (S3 credentials come from the AWS variables or profile files, --s3-profile; SFTP logs in with a key, --sftp-key)",
            kind(other)
        ),
    };
    let pw = if from_env {
        match std::env::var(WEBDAV_PASSWORD_ENV) {
            Ok(p) if !p.is_empty() => p,
            _ => bail!("--password-from-env: {WEBDAV_PASSWORD_ENV} is not set (or empty); set it to the password, or use --ask-password on a terminal"),
        }
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("--ask-password needs a terminal; without one, put the password in {WEBDAV_PASSWORD_ENV} and use --password-from-env");
        }
        let p = rpassword::prompt_password(format!("WebDAV password of {user} at {url}: "))
            .context("cannot read from the terminal")?;
        if p.is_empty() {
            bail!("the password is empty; nothing was stored");
        }
        let again = rpassword::prompt_password(format!("WebDAV password of {user} (again): "))
            .context("cannot read from the terminal")?;
        if again != p {
            bail!("the two passwords differ; nothing was stored");
        }
        p
    };
    Ok(Some(Secret::new(pw)))
}

fn add(a: RemoteAddArgs) -> Result<()> {
    let name = RemoteName::new(&a.name).map_err(|e| anyhow!(e))?;
    let remote = match Remote::parse(&a.url)? {
        Remote::Local(p) => Remote::Local(
            std::path::absolute(&p)
                .with_context(|| format!("cannot make {} absolute", p.display()))?,
        ),
        r => r,
    };
    let url = remote.url()?;
    let options = options_for(&remote, &url, a.options)?;
    let path = named::file_path()?;
    let exists = |all: &Remotes| -> Result<()> {
        if let (Some(old), false) = (all.get(name.as_str()), a.force) {
            bail!(
                "there is already a remote named {:?} ({}) in {}; `mountctl remote remove {name}` first, or add --force to replace it",
                name.as_str(),
                old.url,
                path.display()
            );
        }
        Ok(())
    };
    // Before asking for a password, and again under the lock.
    exists(&Remotes::load(&path)?)?;
    let password = password(&remote, a.password_from_env, a.ask_password)?;
    let stored_password = password.is_some();
    let _lock = named::lock(&path)?;
    let mut all = Remotes::load(&path)?;
    exists(&all)?;
    let replaced = all
        .insert(
            name.clone(),
            StoredRemote::new(url.clone(), options, password),
        )
        .is_some();
    all.save()?;
    println!(
        "{} remote {name} ({url}) in {}; mount it with `mountctl mount {name}: MOUNTPOINT`",
        if replaced { "replaced" } else { "added" },
        path.display()
    );
    match &remote {
        Remote::Local(p) if !p.is_dir() => eprintln!(
            "mountctl: note: the folder {} does not exist now; it must when it is mounted",
            p.display()
        ),
        Remote::WebDav { user: Some(_), .. } if !stored_password => eprintln!(
            "mountctl: note: no password stored; the mount takes it from {WEBDAV_PASSWORD_ENV} (or store one with --ask-password or --password-from-env)"
        ),
        _ => {}
    }
    Ok(())
}

fn list(as_json: bool) -> Result<()> {
    let path = named::file_path()?;
    let all = Remotes::load(&path)?;
    if as_json {
        let v: Vec<Value> = all
            .iter()
            .map(|(name, r)| {
                let options: serde_json::Map<String, Value> = r
                    .shown_options()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Value::String(v)))
                    .collect();
                json!({
                    "name": name.as_str(),
                    "url": r.url,
                    "options": options,
                    "password": r.password.as_ref().map(|_| "stored"),
                })
            })
            .collect();
        println!("{}", Value::Array(v));
        return Ok(());
    }
    if all.is_empty() {
        println!(
            "no named remotes in {}; add one with `mountctl remote add NAME URL`",
            path.display()
        );
        return Ok(());
    }
    let width = all.iter().map(|(n, _)| n.as_str().len()).max().unwrap_or(0);
    for (name, r) in all.iter() {
        let mut extra: Vec<String> = r
            .shown_options()
            .into_iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if r.password.is_some() {
            extra.push("password: stored".into());
        }
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("  ({})", extra.join(", "))
        };
        println!("{:width$}  {}{extra}", name.as_str(), r.url);
    }
    Ok(())
}

fn remove(name: &str) -> Result<()> {
    let path = named::file_path()?;
    let absent = || {
        anyhow!(
            "no remote named {name:?} in {}; `mountctl remote list` shows the named remotes",
            path.display()
        )
    };
    // Checked before locking too, so that removing from no file creates nothing.
    if Remotes::load(&path)?.get(name).is_none() {
        return Err(absent());
    }
    let _lock = named::lock(&path)?;
    let mut all = Remotes::load(&path)?;
    let old = all.remove(name).ok_or_else(absent)?;
    all.save()?;
    println!("removed remote {name} ({})", old.url);
    Ok(())
}
