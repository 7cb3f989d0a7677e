//! `mountctl mount`: check everything, get the passphrase, then serve the mount here
//! (`--foreground`) or in a background process that reports back once the mount is live.

use anyhow::Result;

use crate::cli::MountArgs;
use crate::daemon::{self, Ready};
use crate::plan::MountPlan;
use crate::{named, secrets, serve};

pub fn run(mut args: MountArgs) -> Result<()> {
    if args.daemon_child {
        return child(&args);
    }
    // NAME: or NAME:SUB becomes the stored URL and options (the child gets the URL).
    let stored_password = named::resolve_mount(&mut args)?;
    let plan = MountPlan::check(&args, stored_password)?;
    let what = if plan.new_cache() {
        "New cache passphrase"
    } else {
        "Cache passphrase"
    };
    let pw = secrets::passphrase(
        args.pass.passphrase_file.as_deref(),
        secrets::ENV,
        what,
        plan.new_cache(),
    )?;
    if args.foreground {
        return serve::run(&plan, pw, &mut Ready::terminal());
    }
    let pid = daemon::spawn(&plan, pw)?;
    println!(
        "mounted {} on {} (process {pid}, log {})",
        plan.remote.display(),
        plan.mountpoint.display(),
        plan.log_file().display()
    );
    Ok(())
}

/// The background process started by [`daemon::spawn`]: every outcome before readiness goes
/// back to the parent on the ready pipe.
fn child(args: &MountArgs) -> Result<()> {
    let mut ready = Ready::pipe();
    let r = (|| {
        daemon::detach()?;
        let secrets = daemon::secrets_from_stdin()?;
        let plan = MountPlan::check(args, secrets.webdav_password)?;
        serve::run(&plan, secrets.passphrase, &mut ready)
    })();
    if let Err(e) = &r {
        ready.failed(&format!("{e:#}"));
    }
    r
}
