//! Service files: Horust's TOML format, accepted as is, plus envd's additions.
//!
//! Every problem is reported as `FILE:LINE: what is wrong` and stops start-up: a file with an
//! unknown key, a bad value, an unknown dependency or a dependency cycle is never skipped
//! silently (Horust logs and skips such a file, then runs without the service).
//!
//! Additions to Horust's format: a `tcp` health check; `interval`, `timeout`, `max-failed` and
//! `start-period` in `[healthiness]`; `attempts` in `[restart]` bounds every strategy and resets
//! once the service has stayed healthy for `reset-after` (default 10 s).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

/// A problem in one service file, located to a line (the type build files use too).
pub type ConfigError = crate::located::Located;

/// All problems found while loading a set of service directories.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// When a service is started again after it exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartStrategy {
    /// Never restart (Horust's default).
    #[default]
    Never,
    /// Restart when the exit is not successful.
    OnFailure,
    /// Restart whatever the exit.
    Always,
}

/// What a service's final failure does to the rest of the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailureStrategy {
    /// Nothing else happens.
    #[default]
    Ignore,
    /// Stop every service that starts after this one.
    KillDependents,
    /// Stop the whole environment; envd-init then exits non-zero.
    Shutdown,
}

/// Where one of a service's output streams goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// envd-init's own standard output.
    Stdout,
    /// envd-init's own standard error.
    Stderr,
    /// A file, appended to and rotated when `rotate_size` (bytes, 0 = never) is reached.
    File {
        /// The log file.
        path: PathBuf,
        /// Rotation threshold in bytes; 0 disables rotation.
        rotate_size: u64,
    },
}

/// A log file rotates at this size unless the file says otherwise (`0` = never): with
/// [`ROTATED_FILES_KEPT`] old files a service's logs stay under about 100 MB per stream.
pub const DEFAULT_ROTATE_SIZE: u64 = 16 * 1024 * 1024;

fn default_rotate_size() -> u64 {
    DEFAULT_ROTATE_SIZE
}

/// How many rotated files are kept beside a log file (`log.1` … `log.5`).
pub const ROTATED_FILES_KEPT: usize = 5;

/// Restart policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// When to restart.
    pub strategy: RestartStrategy,
    /// `backoff` as the file gives it: the n-th consecutive restart waits n × backoff (Horust's
    /// meaning). Unset: [`DEFAULT_BACKOFF_FIRST`] doubling up to [`DEFAULT_BACKOFF_MAX`].
    pub backoff: Option<Duration>,
    /// Upper bound on consecutive restarts, for every strategy; `None` is unbounded.
    pub attempts: Option<u32>,
    /// How long a service must stay healthy for the attempt counter to reset.
    pub reset_after: Duration,
}

/// The first restart's wait when a file sets no `backoff`.
pub const DEFAULT_BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between restarts when a file sets no `backoff`.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);

impl RestartPolicy {
    /// The wait before the `n`-th consecutive restart (n starts at 1): n × `backoff` when the
    /// file sets one; otherwise 0.1 s, 0.2 s, 0.4 s … doubling up to 10 s, so a program that can
    /// never start costs one attempt per 10 s, not hundreds per second.
    pub fn delay(&self, n: u32) -> Duration {
        match self.backoff {
            Some(b) => b.saturating_mul(n),
            None => {
                let doublings = n.saturating_sub(1).min(16);
                DEFAULT_BACKOFF_FIRST
                    .saturating_mul(1 << doublings)
                    .min(DEFAULT_BACKOFF_MAX)
            }
        }
    }
}

/// Health checks; every configured check must pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthSpec {
    /// `HEAD`/`GET` URL; any 2xx passes.
    pub http_endpoint: Option<String>,
    /// Healthy once this file exists (it is deleted before each start).
    pub file_path: Option<PathBuf>,
    /// A command (split like a shell, no shell) that passes when it exits 0.
    pub command: Option<Vec<String>>,
    /// `HOST:PORT` that must accept a TCP connection.
    pub tcp: Option<String>,
    /// Time between checks once healthy.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive failures after which a running service is restarted as failed.
    pub max_failed: u32,
    /// Failures during this period after a start do not count.
    pub start_period: Duration,
}

impl HealthSpec {
    /// Whether any check is configured.
    pub fn has_checks(&self) -> bool {
        self.http_endpoint.is_some()
            || self.file_path.is_some()
            || self.command.is_some()
            || self.tcp.is_some()
    }
}

/// The environment a service gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvSpec {
    /// Pass envd-init's whole environment on.
    pub keep_env: bool,
    /// Variables of envd-init's environment to pass on.
    pub re_export: Vec<String>,
    /// Variables to set.
    pub additional: BTreeMap<String, String>,
}

/// How a service is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// Sent to the service's process group.
    pub signal: Signal,
    /// Time before SIGKILL follows.
    pub wait: Duration,
    /// Stop this service when any of these fails.
    pub die_if_failed: Vec<String>,
}

/// cgroup v2 limits (best effort: a warning when the cgroup cannot be made).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResourceLimit {
    /// CPUs (e.g. 0.5 = half a core).
    pub cpu: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    /// Most tasks.
    pub pids_max: Option<u64>,
}

impl Eq for ResourceLimit {}

/// One validated service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Unique name (default: the file name without `.toml`).
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Program and arguments, split like a shell and exec'd without one.
    pub argv: Vec<String>,
    /// Wait this long before each start.
    pub start_delay: Duration,
    /// Start once these are running and healthy (or finished successfully).
    pub start_after: Vec<String>,
    /// Stop only after these have stopped.
    pub shutdown_after: Vec<String>,
    /// User name or uid to run as.
    pub user: Option<String>,
    /// Working directory.
    pub working_directory: Option<PathBuf>,
    /// Standard output destination.
    pub stdout: Output,
    /// Standard error destination.
    pub stderr: Output,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Health checks.
    pub health: HealthSpec,
    /// Exit codes that count as success.
    pub successful_exit_codes: Vec<i32>,
    /// What a final failure does.
    pub failure_strategy: FailureStrategy,
    /// Environment.
    pub env: EnvSpec,
    /// How to stop it.
    pub termination: Termination,
    /// cgroup limits.
    pub resources: ResourceLimit,
}

// ---------------------------------------------------------------------------------------------
// The raw file format. Field names are Horust's; `deny_unknown_fields` makes a typo an error.

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    command: Spanned<String>,
    #[serde(default, deserialize_with = "duration")]
    start_delay: Duration,
    start_after: Option<Spanned<Vec<String>>>,
    shutdown_after: Option<Spanned<Vec<String>>>,
    user: Option<UserValue>,
    working_directory: Option<PathBuf>,
    stdout: Option<String>,
    stderr: Option<String>,
    #[serde(default = "default_rotate_size", deserialize_with = "byte_size")]
    stdout_rotate_size: u64,
    #[serde(default = "default_rotate_size", deserialize_with = "byte_size")]
    stderr_rotate_size: u64,
    // Accepted for compatibility: rotated files are always numbered (`log.1` …).
    #[serde(default)]
    #[allow(dead_code)]
    stdout_should_append_timestamp_to_filename: bool,
    #[serde(default)]
    #[allow(dead_code)]
    stderr_should_append_timestamp_to_filename: bool,
    // Horust parses this key and never uses it; accepted so such files still load.
    #[allow(dead_code)]
    signal_rewrite: Option<toml::Value>,
    #[serde(default)]
    restart: RawRestart,
    #[serde(default)]
    healthiness: RawHealthiness,
    #[serde(default)]
    failure: RawFailure,
    #[serde(default)]
    environment: RawEnvironment,
    #[serde(default)]
    termination: RawTermination,
    #[serde(default)]
    resource_limit: RawResourceLimit,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum UserValue {
    Uid(u32),
    Name(String),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawRestart {
    #[serde(default)]
    strategy: RestartStrategy,
    #[serde(default, deserialize_with = "opt_duration")]
    backoff: Option<Duration>,
    attempts: Option<u32>,
    #[serde(default, deserialize_with = "opt_duration")]
    reset_after: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawHealthiness {
    http_endpoint: Option<Spanned<String>>,
    file_path: Option<PathBuf>,
    command: Option<Spanned<String>>,
    tcp: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "opt_duration")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
    max_failed: Option<u32>,
    #[serde(default, deserialize_with = "opt_duration")]
    start_period: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawFailure {
    #[serde(default = "default_success_codes")]
    successful_exit_code: Vec<i32>,
    #[serde(default)]
    strategy: FailureStrategy,
}

impl Default for RawFailure {
    fn default() -> Self {
        RawFailure {
            successful_exit_code: default_success_codes(),
            strategy: FailureStrategy::Ignore,
        }
    }
}

fn default_success_codes() -> Vec<i32> {
    vec![0]
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawEnvironment {
    #[serde(default)]
    keep_env: bool,
    #[serde(default)]
    re_export: Vec<String>,
    #[serde(default)]
    additional: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawTermination {
    #[serde(default = "default_signal", deserialize_with = "signal")]
    signal: Signal,
    #[serde(default = "default_wait", deserialize_with = "duration")]
    wait: Duration,
    die_if_failed: Option<Spanned<Vec<String>>>,
}

impl Default for RawTermination {
    fn default() -> Self {
        RawTermination {
            signal: default_signal(),
            wait: default_wait(),
            die_if_failed: None,
        }
    }
}

fn default_signal() -> Signal {
    Signal::SIGTERM
}

fn default_wait() -> Duration {
    Duration::from_secs(5)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawResourceLimit {
    cpu: Option<f64>,
    #[serde(default, deserialize_with = "opt_byte_size")]
    memory: Option<u64>,
    pids_max: Option<u64>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Parses `5s`, `500ms`, `1m 30s` (humantime); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("invalid duration {s:?} ({e}); write it like \"5s\", \"500ms\" or \"1m 30s\"")
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match SizeValue::deserialize(d)? {
        SizeValue::Bytes(n) => Ok(n),
        SizeValue::Text(s) => parse_byte_size(&s).map_err(de::Error::custom),
    }
}

fn opt_byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    byte_size(d).map(Some)
}

/// Parses `1048576`, `100 MB`, `512KiB`, `1G`.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}; write it like \"100 MB\" or \"512KiB\""))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {s:?}; use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    Ok((value * mult) as u64)
}

fn signal<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
    let s = String::deserialize(d)?;
    parse_signal(&s).map_err(de::Error::custom)
}

/// Parses a signal name with or without the `SIG` prefix (`TERM`, `SIGUSR1`, `int`).
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| format!("unknown signal {s:?}; use a name like \"TERM\", \"INT\" or \"USR1\""))
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// Replaces `${NAME}` in one value with the variable's value; `$${` is a literal `${`. Any other
/// `$` is left alone, so `$HOME` or `${x:-y}` reach the program (a shell) as written. Only the
/// values listed in docs/supervisor.md are expanded, after the TOML is parsed and the command
/// split: a value can hold any text (quotes, spaces) without breaking the file or the argv.
/// `USER` and `HOME` fall back to the current user's passwd entry. Err: the unset name.
pub fn expand(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let reference = tail
            .strip_prefix("${")
            .and_then(|t| t.find('}').map(|end| &t[..end]))
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        match reference {
            Some(name) => {
                let v = secret_or_env(name)
                    .or_else(|| passwd_fallback(name))
                    .ok_or_else(|| name.to_string())?;
                out.push_str(&v);
                rest = &tail[name.len() + 3..];
            }
            None => {
                out.push('$');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Variables that carry secrets: envd-init takes them out of its own environment at start (so
/// services with `keep-env` and SSH sessions never see them) and keeps them only for expansion
/// in the service files that name them.
pub const SECRET_VARIABLES: &[&str] = &[
    "ENVD_API_TOKEN",
    "ENVD_JUPYTER_TOKEN",
    "ENVD_VSCODE_PASSWORD",
];

static SECRETS: std::sync::OnceLock<BTreeMap<String, String>> = std::sync::OnceLock::new();

/// Moves [`SECRET_VARIABLES`] out of the process environment into envd-init's private store.
/// Call once, before any thread starts.
pub fn take_secrets_from_env() {
    let mut taken = BTreeMap::new();
    for name in SECRET_VARIABLES {
        if let Some(v) = std::env::var_os(name) {
            taken.insert(name.to_string(), v.to_string_lossy().into_owned());
            std::env::remove_var(name);
        }
    }
    let _ = SECRETS.set(taken);
}

/// A secret taken by [`take_secrets_from_env`], else the environment variable.
pub fn secret_or_env(name: &str) -> Option<String> {
    SECRETS
        .get()
        .and_then(|m| m.get(name).cloned())
        .or_else(|| std::env::var(name).ok())
}

fn passwd_fallback(name: &str) -> Option<String> {
    let user = crate::identity::current_user()?;
    match name {
        "USER" | "LOGNAME" => Some(user.name),
        "HOME" => Some(user.dir.to_string_lossy().into_owned()),
        _ => None,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

struct Located {
    spec: ServiceSpec,
    text: String,
    start_after_offset: usize,
    shutdown_after_offset: usize,
    die_if_failed_offset: usize,
}

/// Parses one service file's text. `file` is used for the default name and in errors.
pub fn parse_service(file: &Path, text: &str) -> Result<ServiceSpec, ConfigError> {
    parse_located(file, text).map(|l| l.spec)
}

fn parse_located(file: &Path, original: &str) -> Result<Located, ConfigError> {
    let text = original.to_string();
    let err_at = |offset: usize, message: String| ConfigError {
        file: file.to_path_buf(),
        line: line_of(&text, offset),
        column: 0,
        message,
    };
    let raw: RawService = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start)).unwrap_or(0);
        ConfigError {
            file: file.to_path_buf(),
            line,
            column: 0,
            message: e.message().trim().to_string(),
        }
    })?;

    let mut raw = raw;
    let name = match raw.name.take() {
        Some(n) => n,
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if name.is_empty() {
        return Err(err_at(0, "the service name is empty".into()));
    }
    let unset = |name: String| {
        let at = text.find(&format!("${{{name}}}")).unwrap_or(0);
        err_at(
            at,
            format!(
                "environment variable {name} (in ${{{name}}}) is not set (write $${{{name}}} to pass ${{{name}}} on as it is)"
            ),
        )
    };
    let ex = |v: String| expand(&v).map_err(unset);
    let ex_opt = |v: Option<String>| v.map(ex).transpose();
    let ex_all = |v: Vec<String>| v.into_iter().map(ex).collect::<Result<Vec<_>, _>>();
    let command_span = raw.command.span();
    let argv = split_command(raw.command.get_ref())
        .map_err(|m| err_at(command_span.start, format!("command: {m}")))?;
    let argv = ex_all(argv)?;
    let health_command = match &raw.healthiness.command {
        Some(c) => Some(ex_all(split_command(c.get_ref()).map_err(|m| {
            err_at(c.span().start, format!("healthiness command: {m}"))
        })?)?),
        None => None,
    };
    // Values with where they were written, so a check's error names its own line.
    let spanned = |v: Option<Spanned<String>>| v.map(|s| (s.span().start, s.into_inner()));
    let http_endpoint = spanned(raw.healthiness.http_endpoint.take());
    let http_endpoint = http_endpoint
        .map(|(at, v)| ex(v).map(|v| (at, v)))
        .transpose()?;
    let tcp = spanned(raw.healthiness.tcp.take());
    let tcp = tcp.map(|(at, v)| ex(v).map(|v| (at, v))).transpose()?;
    raw.healthiness.file_path = ex_opt(path_text(raw.healthiness.file_path))?.map(PathBuf::from);
    raw.working_directory = ex_opt(path_text(raw.working_directory))?.map(PathBuf::from);
    raw.stdout = ex_opt(raw.stdout)?;
    raw.stderr = ex_opt(raw.stderr)?;
    raw.user = match raw.user {
        Some(UserValue::Name(n)) => Some(UserValue::Name(ex(n)?)),
        other => other,
    };
    for v in raw.environment.additional.values_mut() {
        *v = ex(std::mem::take(v))?;
    }
    if let Some((at, url)) = &http_endpoint {
        if !url.starts_with("http://") {
            return Err(err_at(
                *at,
                format!("http-endpoint {url:?} must start with http:// (https is not supported)"),
            ));
        }
    }
    if let Some((at, addr)) = &tcp {
        if !addr.contains(':') {
            return Err(err_at(
                *at,
                format!("tcp health check {addr:?} must be HOST:PORT"),
            ));
        }
    }
    let output = |value: Option<String>, default: Output, rotate_size: u64| match value.as_deref() {
        None => default,
        Some("STDOUT") => Output::Stdout,
        Some("STDERR") => Output::Stderr,
        Some(path) => Output::File {
            path: PathBuf::from(path),
            rotate_size,
        },
    };
    let split_list = |v: Option<Spanned<Vec<String>>>| match v {
        Some(s) => (s.span().start, s.into_inner()),
        None => (0, Vec::new()),
    };
    let (start_after_offset, start_after) = split_list(raw.start_after);
    let (shutdown_after_offset, shutdown_after) = split_list(raw.shutdown_after);
    let (die_if_failed_offset, die_if_failed) = split_list(raw.termination.die_if_failed);
    let user = raw.user.map(|u| match u {
        UserValue::Uid(n) => n.to_string(),
        UserValue::Name(s) => s,
    });
    let spec = ServiceSpec {
        name,
        file: file.to_path_buf(),
        argv,
        start_delay: raw.start_delay,
        start_after,
        shutdown_after,
        user,
        working_directory: raw.working_directory,
        stdout: output(raw.stdout, Output::Stdout, raw.stdout_rotate_size),
        stderr: output(raw.stderr, Output::Stderr, raw.stderr_rotate_size),
        restart: RestartPolicy {
            strategy: raw.restart.strategy,
            backoff: raw.restart.backoff,
            attempts: raw.restart.attempts,
            reset_after: raw.restart.reset_after.unwrap_or(Duration::from_secs(10)),
        },
        health: HealthSpec {
            http_endpoint: http_endpoint.map(|(_, v)| v),
            file_path: raw.healthiness.file_path,
            command: health_command,
            tcp: tcp.map(|(_, v)| v),
            interval: raw.healthiness.interval.unwrap_or(Duration::from_secs(1)),
            timeout: raw.healthiness.timeout.unwrap_or(Duration::from_secs(1)),
            max_failed: raw.healthiness.max_failed.unwrap_or(3).max(1),
            start_period: raw.healthiness.start_period.unwrap_or_default(),
        },
        successful_exit_codes: raw.failure.successful_exit_code,
        failure_strategy: raw.failure.strategy,
        env: EnvSpec {
            keep_env: raw.environment.keep_env,
            re_export: raw.environment.re_export,
            additional: raw.environment.additional,
        },
        termination: Termination {
            signal: raw.termination.signal,
            wait: raw.termination.wait,
            die_if_failed,
        },
        resources: ResourceLimit {
            cpu: raw.resource_limit.cpu,
            memory: raw.resource_limit.memory,
            pids_max: raw.resource_limit.pids_max,
        },
    };
    Ok(Located {
        spec,
        text,
        start_after_offset,
        shutdown_after_offset,
        die_if_failed_offset,
    })
}

fn path_text(p: Option<PathBuf>) -> Option<String> {
    p.map(|p| p.to_string_lossy().into_owned())
}

fn split_command(command: &str) -> Result<Vec<String>, String> {
    let argv = shlex::split(command.trim())
        .ok_or_else(|| "unbalanced quotes or a trailing backslash".to_string())?;
    if argv.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(argv)
}

/// Lists the `*.toml` files of the directories, sorted by name within each directory. A
/// directory that does not exist is an error unless `optional`.
pub fn service_files(dirs: &[(PathBuf, bool)]) -> Result<Vec<PathBuf>, ConfigErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for (dir, optional) in dirs {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut found: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                    .collect();
                found.sort();
                files.extend(found);
            }
            Err(e) if *optional && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(ConfigError {
                file: dir.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read the services directory: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Loads and validates every service file of the directories: each file parses, names are
/// unique, every referenced service exists and `start-after` has no cycle.
pub fn load(dirs: &[(PathBuf, bool)]) -> Result<Vec<ServiceSpec>, ConfigErrors> {
    let files = service_files(dirs)?;
    let mut errors = Vec::new();
    let mut located: Vec<Located> = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse_located(&file, &text) {
                Ok(l) => located.push(l),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(ConfigError {
                file: file.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    resolve_file_name_references(&mut located);
    validate(&located, &mut errors);
    if errors.is_empty() {
        Ok(located.into_iter().map(|l| l.spec).collect())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Horust names a service without `name` after its file, `.toml` included, so its files refer
/// to each other as `backend.toml`. Such references are mapped to our names (the file stem).
fn resolve_file_name_references(located: &mut [Located]) {
    let aliases: HashMap<String, String> = located
        .iter()
        .filter_map(|l| {
            let file_name = l.spec.file.file_name()?.to_string_lossy().into_owned();
            Some((file_name, l.spec.name.clone()))
        })
        .collect();
    let names: HashSet<String> = located.iter().map(|l| l.spec.name.clone()).collect();
    let fix = |list: &mut Vec<String>| {
        for dep in list.iter_mut() {
            if !names.contains(dep) {
                if let Some(name) = aliases.get(dep) {
                    *dep = name.clone();
                }
            }
        }
    };
    for l in located.iter_mut() {
        fix(&mut l.spec.start_after);
        fix(&mut l.spec.shutdown_after);
        fix(&mut l.spec.termination.die_if_failed);
    }
}

fn validate(located: &[Located], errors: &mut Vec<ConfigError>) {
    let mut by_name: HashMap<&str, &Located> = HashMap::new();
    for l in located {
        if let Some(first) = by_name.insert(&l.spec.name, l) {
            errors.push(ConfigError {
                file: l.spec.file.clone(),
                line: l
                    .text
                    .find("name")
                    .map(|o| line_of(&l.text, o))
                    .unwrap_or(0),
                column: 0,
                message: format!(
                    "service name {:?} is already used by {}",
                    l.spec.name,
                    first.spec.file.display()
                ),
            });
        }
    }
    for l in located {
        let lists = [
            ("start-after", &l.spec.start_after, l.start_after_offset),
            (
                "shutdown-after",
                &l.spec.shutdown_after,
                l.shutdown_after_offset,
            ),
            (
                "die-if-failed",
                &l.spec.termination.die_if_failed,
                l.die_if_failed_offset,
            ),
        ];
        for (key, list, offset) in lists {
            for dep in list {
                if !by_name.contains_key(dep.as_str()) && key != "start-after" {
                    // Only ordering or a kill condition depends on it: it has no effect, but a
                    // typo deserves a word.
                    crate::warn!(
                        "{}: {key} names an unknown service {dep:?}; it has no effect",
                        l.spec.file.display()
                    );
                } else if !by_name.contains_key(dep.as_str()) {
                    let known: Vec<&str> = by_name.keys().copied().collect();
                    let hint = crate::suggest::closest(dep, &known)
                        .map(|c| format!(" (did you mean {c:?}?)"))
                        .unwrap_or_default();
                    errors.push(ConfigError {
                        file: l.spec.file.clone(),
                        line: line_of(&l.text, offset),
                        column: 0,
                        message: format!("{key} names an unknown service {dep:?}{hint}"),
                    });
                } else if dep == &l.spec.name {
                    errors.push(ConfigError {
                        file: l.spec.file.clone(),
                        line: line_of(&l.text, offset),
                        column: 0,
                        message: format!("{key} names the service itself"),
                    });
                }
            }
        }
    }
    // Cycles in start-after (and in shutdown-after) would leave services waiting forever.
    for (key, pick) in [
        (
            "start-after",
            (|s: &ServiceSpec| &s.start_after) as fn(&ServiceSpec) -> &Vec<String>,
        ),
        ("shutdown-after", |s: &ServiceSpec| &s.shutdown_after),
    ] {
        if let Some(cycle) = find_cycle(located, pick) {
            let first = by_name[cycle[0].as_str()];
            let offset = if key == "start-after" {
                first.start_after_offset
            } else {
                first.shutdown_after_offset
            };
            errors.push(ConfigError {
                file: first.spec.file.clone(),
                line: line_of(&first.text, offset),
                column: 0,
                message: format!("{key} forms a cycle: {}", cycle.join(" -> ")),
            });
        }
    }
}

fn find_cycle(located: &[Located], deps: fn(&ServiceSpec) -> &Vec<String>) -> Option<Vec<String>> {
    let graph: HashMap<&str, &Vec<String>> = located
        .iter()
        .map(|l| (l.spec.name.as_str(), deps(&l.spec)))
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        graph: &HashMap<&'a str, &'a Vec<String>>,
        marks: &mut HashMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let pos = stack.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = stack[pos..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::Visiting);
        stack.push(node);
        if let Some(deps) = graph.get(node) {
            for d in deps.iter() {
                if let Some((key, _)) = graph.get_key_value(d.as_str()) {
                    if let Some(c) = visit(key, graph, marks, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    let mut names: Vec<&str> = graph.keys().copied().collect();
    names.sort();
    for n in names {
        let mut stack = Vec::new();
        if let Some(c) = visit(n, &graph, &mut marks, &mut stack) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServiceSpec, ConfigError> {
        parse_service(Path::new("/etc/envd/services/svc.toml"), text)
    }

    #[test]
    fn minimal_file_gets_horust_defaults() {
        let s = parse("command = \"/bin/sleep 10\"\n").unwrap();
        assert_eq!(s.name, "svc");
        assert_eq!(s.argv, vec!["/bin/sleep", "10"]);
        assert_eq!(s.restart.strategy, RestartStrategy::Never);
        assert_eq!(s.termination.wait, Duration::from_secs(5));
        assert_eq!(s.termination.signal, Signal::SIGTERM);
        assert_eq!(s.successful_exit_codes, vec![0]);
        assert_eq!(s.stdout, Output::Stdout);
        assert_eq!(s.stderr, Output::Stderr);
        assert!(!s.health.has_checks());
        // Log files rotate unless told not to.
        let s = parse(
            "command = \"x\"\nstdout = \"/l/out\"\nstderr-rotate-size = 0\nstderr = \"/l/err\"\n",
        )
        .unwrap();
        assert!(matches!(
            s.stdout,
            Output::File {
                rotate_size: DEFAULT_ROTATE_SIZE,
                ..
            }
        ));
        assert!(matches!(s.stderr, Output::File { rotate_size: 0, .. }));
    }

    #[test]
    fn envd_generated_file_parses() {
        std::env::set_var("ENVD_WORKDIR", "/home/envd/project");
        let text = "name = \"sshd\"\ncommand = \"\"\"\n/var/envd/bin/envd-sshd --port 2222 --shell zsh\n\"\"\"\nstdout = \"/var/log/horust/sshd_stdout.log\"\nstderr = \"/var/log/horust/sshd_stderr.log\"\nuser = \"${USER}\"\nworking-directory = \"${ENVD_WORKDIR}\"\nstart-after = [\"init_0\",\"init_1\",]\n\n[environment]\nkeep-env = true\n\n[restart]\nstrategy = \"on-failure\"\nbackoff = \"1s\"\nattempts = 2\n\n[termination]\nwait = \"5s\"\n";
        let s = parse(text).unwrap();
        assert_eq!(s.name, "sshd");
        assert_eq!(s.argv[0], "/var/envd/bin/envd-sshd");
        assert_eq!(
            s.working_directory.unwrap(),
            PathBuf::from("/home/envd/project")
        );
        assert!(s.user.is_some());
        assert_eq!(s.start_after, vec!["init_0", "init_1"]);
        assert_eq!(s.restart.strategy, RestartStrategy::OnFailure);
        assert_eq!(s.restart.attempts, Some(2));
        assert!(s.env.keep_env);
    }

    #[test]
    fn expansion_reaches_only_named_values_and_keeps_shell_text() {
        std::env::set_var("ENVD_TEST_DIR", "/work/my \"odd\" dir");
        let text = r#"command = "/bin/bash -c 'x=1; echo $${x} $HOME $${ENVD_TEST_DIR} ${ENVD_TEST_DIR}'"
working-directory = "${ENVD_TEST_DIR}"
[environment]
additional = { WHERE = "${ENVD_TEST_DIR}/sub" }
"#;
        let s = parse(text).unwrap();
        assert_eq!(
            s.argv[2], "x=1; echo ${x} $HOME ${ENVD_TEST_DIR} /work/my \"odd\" dir",
            "{:?}",
            s.argv
        );
        assert_eq!(
            s.working_directory.unwrap(),
            PathBuf::from("/work/my \"odd\" dir")
        );
        assert_eq!(s.env.additional["WHERE"], "/work/my \"odd\" dir/sub");
    }

    #[test]
    fn expand_rules() {
        std::env::set_var("ENVD_TEST_X", "v a l");
        assert_eq!(expand("a ${ENVD_TEST_X} b").unwrap(), "a v a l b");
        assert_eq!(expand("$${ENVD_TEST_X}").unwrap(), "${ENVD_TEST_X}");
        assert_eq!(
            expand("$HOME ${x:-y} $ $$ ${").unwrap(),
            "$HOME ${x:-y} $ $$ ${"
        );
        assert_eq!(
            expand("${ENVD_TEST_SURELY_UNSET}").unwrap_err(),
            "ENVD_TEST_SURELY_UNSET"
        );
    }

    #[test]
    fn restart_delay_curves() {
        let policy = |backoff| RestartPolicy {
            strategy: RestartStrategy::Always,
            backoff,
            attempts: None,
            reset_after: Duration::from_secs(10),
        };
        let default: Vec<u128> = (1..=10)
            .map(|n| policy(None).delay(n).as_millis())
            .collect();
        assert_eq!(
            default,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
        assert_eq!(policy(None).delay(u32::MAX), DEFAULT_BACKOFF_MAX);
        let horust = policy(Some(Duration::from_secs(1)));
        assert_eq!(horust.delay(3), Duration::from_secs(3));
        assert_eq!(policy(Some(Duration::ZERO)).delay(5), Duration::ZERO);
    }

    #[test]
    fn unknown_key_is_located() {
        let e = parse("command = \"true\"\n\n[restart]\nstrategy = \"always\"\nbakoff = \"1s\"\n")
            .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(
            e.to_string().starts_with("/etc/envd/services/svc.toml:5: "),
            "{e}"
        );
        assert!(e.message.contains("bakoff"), "{e}");
    }

    #[test]
    fn bad_values_are_located() {
        let e = parse("command = \"true\"\n[termination]\nsignal = \"TREM\"\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("unknown signal"), "{e}");
        let e = parse("command = \"true\"\n[restart]\nbackoff = \"soon\"\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");
        let e = parse("command = \"true\"\n[restart]\nstrategy = \"sometimes\"\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = parse("\ncommand = \"sh -c 'oops\"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("unbalanced"), "{e}");
        let e = parse("command = \"true\"\nuser = \"${ENVD_TEST_SURELY_UNSET}\"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("ENVD_TEST_SURELY_UNSET"), "{e}");
    }

    #[test]
    fn sizes_durations_signals() {
        assert_eq!(parse_byte_size("100 MB").unwrap(), 100_000_000);
        assert_eq!(parse_byte_size("512KiB").unwrap(), 524_288);
        assert_eq!(parse_byte_size("42").unwrap(), 42);
        assert!(parse_byte_size("3 parsecs").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_signal("usr1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("SIGHUP").unwrap(), Signal::SIGHUP);
    }

    #[test]
    fn our_additions_parse() {
        let s = parse(
            "command = \"srv\"\n[healthiness]\ntcp = \"127.0.0.1:80\"\ninterval = \"250ms\"\ntimeout = \"2s\"\nmax-failed = 5\nstart-period = \"3s\"\n[restart]\nstrategy = \"always\"\nattempts = 3\nreset-after = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(s.health.tcp.as_deref(), Some("127.0.0.1:80"));
        assert_eq!(s.health.interval, Duration::from_millis(250));
        assert_eq!(s.health.max_failed, 5);
        assert_eq!(s.restart.reset_after, Duration::from_secs(1));
    }

    #[test]
    fn suggestions() {}

    #[test]
    fn a_bad_health_check_is_located_by_its_own_span() {
        // "tcp" and "http-endpoint" appear earlier in the file: the error still names the line
        // of the check itself.
        let text = "command = \"echo tcp http-endpoint\"\n\n[healthiness]\ntcp = \"nohostport\"\n";
        let e = parse_service(Path::new("/etc/envd/services/svc.toml"), text).unwrap_err();
        assert!(
            e.to_string().starts_with("/etc/envd/services/svc.toml:4: "),
            "{e}"
        );
        let text =
            "command = \"echo http-endpoint\"\n[healthiness]\nhttp-endpoint = \"https://x\"\n";
        let e = parse_service(Path::new("/etc/envd/services/svc.toml"), text).unwrap_err();
        assert!(
            e.to_string().starts_with("/etc/envd/services/svc.toml:3: "),
            "{e}"
        );
    }
}
