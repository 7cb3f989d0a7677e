//! Where an S3 mount's endpoint, region and credentials come from, the way the AWS tools look
//! for them, so that a machine set up for `aws` works unchanged:
//!
//! * credentials: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), else
//!   the profile (`--s3-profile`, else `AWS_PROFILE`, else `default`) in the shared credentials
//!   file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`), else that profile in the
//!   config file (`AWS_CONFIG_FILE`, else `~/.aws/config`, sections `[profile NAME]` and
//!   `[default]`);
//! * region: `--s3-region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's
//!   `region` in the config file, else `us-east-1`;
//! * endpoint: `--s3-endpoint`, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else the
//!   region's AWS endpoint; addressing: `--s3-addressing`, else path-style for an endpoint that
//!   is not AWS's (what S3-compatible servers expect) and virtual-hosted for AWS.
//!
//! Secrets are read here, in the process that mounts, and never put on a command line or in a
//! log: the background mount process reads them again from the same places.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fs_core::provider::s3::S3Config;

/// How the bucket is named in requests.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Addressing {
    /// `https://endpoint/BUCKET/key` (S3-compatible servers).
    Path,
    /// `https://BUCKET.endpoint/key` (AWS).
    Virtual,
}

impl Addressing {
    pub fn name(self) -> &'static str {
        match self {
            Addressing::Path => "path",
            Addressing::Virtual => "virtual",
        }
    }
}

/// What the command line says of an S3 remote (nothing secret).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub addressing: Option<Addressing>,
    pub profile: Option<String>,
}

/// The environment and files the settings come from (a seam for tests).
pub struct Sources {
    pub env: HashMap<String, String>,
    pub home: Option<PathBuf>,
}

impl Sources {
    pub fn process() -> Sources {
        Sources {
            env: std::env::vars().collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.env
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn file(&self, var: &str, default: &str) -> Option<PathBuf> {
        match self.var(var) {
            Some(p) => Some(PathBuf::from(p)),
            None => self.home.as_ref().map(|h| h.join(default)),
        }
    }
}

/// `[section]` → key → value of an INI file as the AWS tools write it; `None` when the file
/// does not exist.
fn read_ini(path: &Path) -> Result<Option<HashMap<String, HashMap<String, String>>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut out: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            continue;
        }
        if let (Some(s), Some((k, v))) = (&section, line.split_once('=')) {
            out.entry(s.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Some(out))
}

/// The profile's section of the config file (`[profile NAME]`, or `[default]`).
fn config_section(
    config: &HashMap<String, HashMap<String, String>>,
    profile: &str,
) -> Option<HashMap<String, String>> {
    let named = format!("profile {profile}");
    config
        .get(&named)
        .or_else(|| {
            (profile == "default")
                .then(|| config.get("default"))
                .flatten()
        })
        .cloned()
}

/// The provider configuration of `s3://bucket/prefix` with `opts`.
pub fn s3_config(
    bucket: &str,
    prefix: &str,
    opts: &S3Options,
    timeout: Duration,
    src: &Sources,
) -> Result<S3Config> {
    let profile = opts
        .profile
        .clone()
        .or_else(|| src.var("AWS_PROFILE").map(str::to_string))
        .unwrap_or_else(|| "default".to_string());
    let config_path = src.file("AWS_CONFIG_FILE", ".aws/config");
    let config = match &config_path {
        Some(p) => read_ini(p)?.unwrap_or_default(),
        None => HashMap::new(),
    };
    let from_config = config_section(&config, &profile).unwrap_or_default();

    let (access_key, secret_key, session_token) = match (
        src.var("AWS_ACCESS_KEY_ID"),
        src.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(a), Some(s)) => (
            a.to_string(),
            s.to_string(),
            src.var("AWS_SESSION_TOKEN").map(str::to_string),
        ),
        (Some(_), None) | (None, Some(_)) => bail!(
            "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set; set both, or neither to use the profile {profile:?}"
        ),
        (None, None) => {
            let creds_path = src.file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
            let creds = match &creds_path {
                Some(p) => read_ini(p)?.unwrap_or_default(),
                None => HashMap::new(),
            };
            let section = creds
                .get(&profile)
                .cloned()
                .or_else(|| (!from_config.is_empty()).then(|| from_config.clone()))
                .unwrap_or_default();
            match (
                section.get("aws_access_key_id"),
                section.get("aws_secret_access_key"),
            ) {
                (Some(a), Some(s)) => (
                    a.clone(),
                    s.clone(),
                    section.get("aws_session_token").cloned(),
                ),
                _ => bail!(
                    "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the profile {profile:?} aws_access_key_id and aws_secret_access_key in {}{}",
                    creds_path
                        .as_deref()
                        .map_or("~/.aws/credentials".into(), |p| p.display().to_string()),
                    if opts.profile.is_none() && src.var("AWS_PROFILE").is_none() {
                        " (or choose another profile with --s3-profile)"
                    } else {
                        ""
                    }
                ),
            }
        }
    };
    let region = opts
        .region
        .clone()
        .or_else(|| src.var("AWS_REGION").map(str::to_string))
        .or_else(|| src.var("AWS_DEFAULT_REGION").map(str::to_string))
        .or_else(|| from_config.get("region").cloned())
        .unwrap_or_else(|| "us-east-1".to_string());
    let endpoint = opts
        .endpoint
        .clone()
        .or_else(|| src.var("AWS_ENDPOINT_URL_S3").map(str::to_string))
        .or_else(|| src.var("AWS_ENDPOINT_URL").map(str::to_string));
    let aws = endpoint
        .as_deref()
        .is_none_or(|e| e.contains(".amazonaws.com"));
    let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let path_style = match opts.addressing {
        Some(a) => a == Addressing::Path,
        None => !aws,
    };
    Ok(S3Config {
        endpoint,
        region,
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        path_style,
        access_key,
        secret_key,
        session_token,
        request_timeout: timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(env: &[(&str, &str)], home: Option<&Path>) -> Sources {
        Sources {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: home.map(Path::to_path_buf),
        }
    }

    const T: Duration = Duration::from_secs(9);

    #[test]
    fn environment_first() {
        let src = sources(
            &[
                ("AWS_ACCESS_KEY_ID", "AK"),
                ("AWS_SECRET_ACCESS_KEY", "SK"),
                ("AWS_SESSION_TOKEN", "TOK"),
                ("AWS_DEFAULT_REGION", "eu-west-3"),
            ],
            None,
        );
        let c = s3_config("b", "p/q", &S3Options::default(), T, &src).unwrap();
        assert_eq!((c.access_key.as_str(), c.secret_key.as_str()), ("AK", "SK"));
        assert_eq!(c.session_token.as_deref(), Some("TOK"));
        assert_eq!(c.region, "eu-west-3");
        assert_eq!(c.endpoint, "https://s3.eu-west-3.amazonaws.com");
        assert!(!c.path_style, "AWS is addressed virtual-hosted");
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("b", "p/q"));
        assert_eq!(c.request_timeout, T);
        // A custom endpoint is addressed path-style unless told otherwise.
        let opts = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("r1".into()),
            ..S3Options::default()
        };
        let c = s3_config("b", "", &opts, T, &src).unwrap();
        assert!(c.path_style);
        assert_eq!(c.region, "r1");
        let opts = S3Options {
            addressing: Some(Addressing::Virtual),
            ..opts
        };
        assert!(!s3_config("b", "", &opts, T, &src).unwrap().path_style);
        let e = s3_config(
            "b",
            "",
            &S3Options::default(),
            T,
            &sources(&[("AWS_ACCESS_KEY_ID", "AK")], None),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only one of"), "{e}");
    }

    #[test]
    fn profiles_from_the_shared_files() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(
            home.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = DEFSECRET\n\n# work\n[work]\naws_access_key_id=WK\naws_secret_access_key=WKSECRET\naws_session_token = WT\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join(".aws/config"),
            "[default]\nregion = ap-south-1\n[profile work]\nregion=eu-central-1\n[profile cfgonly]\naws_access_key_id = C\naws_secret_access_key = CS\n",
        )
        .unwrap();
        let src = sources(&[], Some(home.path()));
        let c = s3_config("b", "", &S3Options::default(), T, &src).unwrap();
        assert_eq!(
            (c.access_key.as_str(), c.region.as_str()),
            ("DEF", "ap-south-1")
        );
        let src = sources(&[("AWS_PROFILE", "work")], Some(home.path()));
        let c = s3_config("b", "", &S3Options::default(), T, &src).unwrap();
        assert_eq!(
            (
                c.access_key.as_str(),
                c.session_token.as_deref(),
                c.region.as_str()
            ),
            ("WK", Some("WT"), "eu-central-1")
        );
        let opts = S3Options {
            profile: Some("cfgonly".into()),
            ..S3Options::default()
        };
        let c = s3_config("b", "", &opts, T, &src).unwrap();
        assert_eq!(c.access_key, "C");
        let opts = S3Options {
            profile: Some("nope".into()),
            ..S3Options::default()
        };
        let e = s3_config("b", "", &opts, T, &src).unwrap_err().to_string();
        assert!(
            e.contains("no S3 credentials") && e.contains("\"nope\""),
            "{e}"
        );
        assert!(!e.contains("DEFSECRET") && !e.contains("WKSECRET"), "{e}");
    }
}
