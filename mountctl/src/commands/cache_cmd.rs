//! `mountctl cache ...`: create, inspect, re-key and wipe the encrypted cache.

use anyhow::{bail, Context, Result};
use cache::{CacheConfig, CacheLimit, ChunkCache, Health, KdfParams, Passphrase};

use crate::cli::{CacheCommand, CacheOpenArgs};
use crate::secrets;
use crate::units::human;

pub fn run(cmd: CacheCommand) -> Result<()> {
    match cmd {
        CacheCommand::Init(open) => {
            let c = open_cache(&open)?;
            let u = c.usage();
            println!(
                "cache ready in {} ({} of {} used)",
                c.dir().display(),
                human(u.used_bytes),
                human(u.limit_bytes)
            );
            Ok(())
        }
        CacheCommand::Status { open, json } => {
            let c = open_cache(&open)?;
            print_status(&c, json);
            Ok(())
        }
        CacheCommand::Passwd {
            dir,
            pass,
            new_passphrase_file,
        } => {
            require_cache(&dir.cache_dir)?;
            let old = secrets::passphrase(
                pass.passphrase_file.as_deref(),
                secrets::ENV,
                "Current passphrase",
                false,
            )?;
            let new = secrets::passphrase(
                new_passphrase_file.as_deref(),
                secrets::ENV_NEW,
                "New passphrase",
                true,
            )?;
            ChunkCache::change_key(
                &dir.cache_dir,
                &Passphrase::new(old, KdfParams::DEFAULT),
                &Passphrase::new(new, KdfParams::DEFAULT),
            )?;
            println!("passphrase changed for {}", dir.cache_dir.display());
            Ok(())
        }
        CacheCommand::Wipe { dir, yes } => {
            if !yes {
                bail!(
                    "wiping destroys every cached file, including changes not yet uploaded; run again with --yes to confirm"
                );
            }
            ChunkCache::wipe(&dir.cache_dir)?;
            println!(
                "cache {} wiped (key destroyed first)",
                dir.cache_dir.display()
            );
            Ok(())
        }
    }
}

fn require_cache(dir: &std::path::Path) -> Result<()> {
    if !cache::crypto::keys::key_file_exists(dir) {
        bail!(
            "no cache in {}; create one with `mountctl cache init --cache-dir {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

fn open_cache(a: &CacheOpenArgs) -> Result<ChunkCache> {
    let dir = &a.dir.cache_dir;
    let new = !cache::crypto::keys::key_file_exists(dir);
    let what = if new {
        "New cache passphrase"
    } else {
        "Cache passphrase"
    };
    let pw = secrets::passphrase(a.pass.passphrase_file.as_deref(), secrets::ENV, what, new)?;
    let limit = CacheLimit {
        max_bytes: a.cache_size,
        min_free_bytes: a.cache_min_free,
    };
    ChunkCache::open(
        CacheConfig::new(dir, limit),
        &Passphrase::new(pw, KdfParams::DEFAULT),
    )
    .with_context(|| format!("cannot open the cache in {}", dir.display()))
}

fn print_status(c: &ChunkCache, json: bool) {
    let u = c.usage();
    let s = c.stats();
    let health = match c.health() {
        Health::Healthy => "healthy".to_string(),
        Health::Degraded { last_error, .. } => format!("degraded: {last_error}"),
    };
    if json {
        let v = serde_json::json!({
            "dir": c.dir(),
            "used_bytes": u.used_bytes,
            "limit_bytes": u.limit_bytes,
            "pinned_bytes": u.pinned_bytes,
            "dirty_bytes": u.dirty_bytes,
            "chunks": u.chunks,
            "dirty_chunks": u.dirty_chunks,
            "pinned_chunks": u.pinned_chunks,
            "repaired_at_open": s.repaired_at_open,
            "health": health,
        });
        println!("{v}");
    } else {
        println!("cache:   {}", c.dir().display());
        println!(
            "used:    {} of {}",
            human(u.used_bytes),
            human(u.limit_bytes)
        );
        println!(
            "dirty:   {} in {} chunks",
            human(u.dirty_bytes),
            u.dirty_chunks
        );
        println!(
            "pinned:  {} in {} chunks",
            human(u.pinned_bytes),
            u.pinned_chunks
        );
        println!("chunks:  {}", u.chunks);
        println!("health:  {health}");
    }
}
