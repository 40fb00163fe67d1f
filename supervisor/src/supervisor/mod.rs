//! The supervisor: one event loop that owns every service's state.
//!
//! Everything that happens (a child exits, a timer fires, a health check changes, a signal
//! arrives, an API call) is an [`Event`] on one channel, handled in order on one thread. There is
//! no polling: with nothing to do, envd-init sleeps in `epoll` and wakes up zero times.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::config::{self, FailureStrategy, ServiceSpec};
use crate::guard;
use crate::health::{self, CheckContext, HealthReport};
use crate::proto::supervisor::{ExitInfo, Health, ServiceState, ServiceStatus};
use crate::reaper::{self, Exit, ExitKind, Waiters};
use crate::service_logs::{self, Line, LogBuffer, Sink, Stream};
use crate::spawn::{self, SpawnRequest};
use decide::{AfterExit, Phase};

mod control;
mod decide;
mod exits;
mod start;
mod stop;

/// Something the supervisor must react to.
#[derive(Debug)]
pub enum Event {
    /// A child was reaped.
    Exited(Exit),
    /// A health check changed its mind.
    Health(HealthReport),
    /// A timer set for one start (`generation`) of a service fired.
    Timer {
        /// The service.
        service: String,
        /// The start it was set for.
        generation: u64,
        /// What it is for.
        kind: TimerKind,
    },
    /// A signal was delivered to envd-init.
    Signal(Signal),
    /// A request from the API.
    Api(ApiRequest),
    /// Leftover processes had their grace time after SIGTERM.
    LeftoverDeadline,
    /// The main command did not exit in time after SIGTERM during shutdown.
    MainDeadline,
}

/// Timer purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// The start delay or restart backoff is over.
    Start,
    /// The termination wait is over: SIGKILL.
    Kill,
    /// The service stayed healthy long enough: its restart attempts start from zero again.
    ResetAttempts,
}

/// Why an API call that changes state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiRefusal {
    /// No service has that name.
    #[error("no service named {0:?}")]
    NoSuchService(String),
    /// The environment is stopping: nothing starts or stops on request any more.
    #[error("the environment is stopping")]
    Stopping,
}

/// The answer to an API call that changes state.
pub type ApiReply = oneshot::Sender<Result<ServiceStatus, ApiRefusal>>;

/// API calls that change state.
#[derive(Debug)]
pub enum ApiRequest {
    /// Stop (if running) and start a service again.
    Restart(String, ApiReply),
    /// Stop a service and keep it stopped.
    Stop(String, ApiReply),
}

/// What the API reads: the live status of every service and their log tails.
pub struct Shared {
    /// Every service's status, in start order; updated after every event.
    pub status: watch::Sender<Vec<ServiceStatus>>,
    /// Log tails by service name.
    pub logs: Mutex<HashMap<String, Arc<LogBuffer>>>,
    /// Where API requests go.
    pub events: mpsc::UnboundedSender<Event>,
}

impl Shared {
    /// The log tail of a service, if it exists.
    pub fn log_buffer(&self, name: &str) -> Option<Arc<LogBuffer>> {
        self.logs.lock().ok()?.get(name).cloned()
    }

    fn log_buffer_or_new(&self, name: &str) -> Arc<LogBuffer> {
        match self.logs.lock() {
            Ok(mut map) => map.entry(name.to_string()).or_default().clone(),
            Err(_) => Arc::new(LogBuffer::default()),
        }
    }
}

/// How envd-init was started.
pub struct Options {
    /// Service directories; `true` marks one that may be missing.
    pub service_dirs: Vec<(PathBuf, bool)>,
    /// `-- MAIN_CMD ARGS...`: tini's contract.
    pub main_cmd: Option<Vec<String>>,
}

/// What to do once a stopping service has exited.
#[derive(Debug, Clone, PartialEq)]
enum AfterStop {
    /// Stay stopped.
    Stay,
    /// Start again (API restart).
    Restart,
    /// Start again with a changed spec (reload).
    Replace(Box<ServiceSpec>),
    /// Forget the service (removed on reload).
    Remove,
}

struct Service {
    spec: Arc<ServiceSpec>,
    state: ServiceState,
    pid: Option<Pid>,
    generation: u64,
    attempts_used: u32,
    restarts: u32,
    last_exit: Option<ExitInfo>,
    health: Health,
    since: SystemTime,
    detail: String,
    delay_done: bool,
    timer_pending: bool,
    after_stop: Option<AfterStop>,
    health_task: Option<AbortHandle>,
    removed: bool,
    logs: Arc<LogBuffer>,
    /// The process group of a stopping service whose leader has exited but whose other members
    /// have not yet: the stop is complete only when the group is empty (or SIGKILLed).
    lingering: Option<Pid>,
    /// Why the last start failed before the program ran (missing binary, bad user ...).
    start_error: Option<String>,
}

impl Service {
    fn new(spec: ServiceSpec, logs: Arc<LogBuffer>) -> Self {
        Service {
            spec: Arc::new(spec),
            state: ServiceState::Pending,
            pid: None,
            generation: 0,
            attempts_used: 0,
            restarts: 0,
            last_exit: None,
            health: Health::Unknown,
            since: SystemTime::now(),
            detail: String::new(),
            delay_done: false,
            timer_pending: false,
            after_stop: None,
            health_task: None,
            removed: false,
            logs,
            lingering: None,
            start_error: None,
        }
    }

    fn set_state(&mut self, state: ServiceState, detail: impl Into<String>) {
        self.state = state;
        self.detail = detail.into();
        self.since = SystemTime::now();
    }

    /// Applies what a stop was for, once nothing of the service runs; `was_running` says
    /// whether a process was stopped (a restart of one counts as a restart).
    fn apply_after_stop(&mut self, after: AfterStop, how: &str, was_running: bool) {
        match after {
            AfterStop::Stay => self.set_state(ServiceState::Stopped, how),
            AfterStop::Restart => {
                self.attempts_used = 0;
                if was_running {
                    self.restarts += 1;
                    self.set_state(ServiceState::Pending, "restarting on request");
                } else {
                    self.set_state(ServiceState::Pending, "starting on request");
                }
            }
            AfterStop::Replace(spec) => {
                self.spec = Arc::new(*spec);
                self.attempts_used = 0;
                self.set_state(ServiceState::Pending, "changed on reload");
            }
            AfterStop::Remove => self.removed = true,
        }
    }

    /// Running and healthy, or finished successfully: what dependents wait for.
    fn satisfies_dependents(&self) -> bool {
        (self.state == ServiceState::Running && self.health == Health::Healthy)
            || self.state == ServiceState::Finished
    }

    fn note(&self, text: String) {
        crate::info!("{}: {text}", self.spec.name);
        self.logs.push(Line {
            stream: Stream::Stderr,
            text: format!("[envd-init] {text}").into_bytes(),
            at: unix_millis(),
        });
    }

    fn status(&self) -> ServiceStatus {
        ServiceStatus {
            name: self.spec.name.clone(),
            state: self.state as i32,
            pid: self.pid.map(|p| p.as_raw() as u32).unwrap_or(0),
            restarts: self.restarts,
            last_exit: self.last_exit,
            health: self.health as i32,
            since: unix_secs(self.since),
            detail: self.detail.clone(),
        }
    }
}

struct MainProcess {
    pid: Pid,
    exit: Option<ExitKind>,
}

/// The supervisor's state.
pub struct Supervisor {
    services: Vec<Service>,
    events: mpsc::UnboundedSender<Event>,
    waiters: Waiters,
    shared: Arc<Shared>,
    dirs: Vec<(PathBuf, bool)>,
    main: Option<MainProcess>,
    phase: Phase,
    /// A service whose failure strategy is `shutdown` failed: envd-init exits with 1.
    failed_shutdown: bool,
    next_generation: u64,
    is_pid1: bool,
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Signals envd-init handles. Everything but TERM, INT and HUP is forwarded to the main command.
const HANDLED_SIGNALS: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGCONT,
    Signal::SIGWINCH,
    Signal::SIGTSTP,
    Signal::SIGURG,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGPIPE,
];

/// Runs envd-init until the environment is stopped; returns the exit code.
///
/// `specs` must already be validated; the caller reports configuration errors.
pub async fn run(
    specs: Vec<ServiceSpec>,
    options: Options,
    shared_ready: impl FnOnce(Arc<Shared>),
) -> i32 {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<Exit>();
    let waiters = Waiters::default();
    let (status_tx, _) = watch::channel(Vec::new());
    let shared = Arc::new(Shared {
        status: status_tx,
        logs: Mutex::new(HashMap::new()),
        events: events_tx.clone(),
    });

    // Signal handlers first, so nothing sent during start-up is lost.
    for &sig in HANDLED_SIGNALS {
        match signal(SignalKind::from_raw(sig as i32)) {
            Ok(stream) => {
                let tx = events_tx.clone();
                let stream = Arc::new(tokio::sync::Mutex::new(stream));
                guard::spawn_restarting("signal handling", move || {
                    let (tx, stream) = (tx.clone(), stream.clone());
                    async move {
                        let mut stream = stream.lock().await;
                        while stream.recv().await.is_some() {
                            if tx.send(Event::Signal(sig)).is_err() {
                                break;
                            }
                        }
                    }
                });
            }
            Err(e) => crate::warn!("cannot handle {sig}: {e}"),
        }
    }
    {
        let tx = events_tx.clone();
        tokio::spawn(async move {
            while let Some(exit) = exit_rx.recv().await {
                if tx.send(Event::Exited(exit)).is_err() {
                    break;
                }
            }
        });
    }
    {
        let (waiters, exit_tx) = (waiters.clone(), exit_tx);
        guard::spawn_restarting("the reaper", move || {
            reaper::run(waiters.clone(), exit_tx.clone())
        });
    }

    let is_pid1 = std::process::id() == 1;
    if !is_pid1 {
        // Orphans of our services must come to us, not to the host's init.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            crate::warn!("cannot become a child subreaper: {e}");
        }
    }

    let mut sup = Supervisor {
        services: Vec::new(),
        events: events_tx,
        waiters,
        shared: shared.clone(),
        dirs: options.service_dirs,
        main: None,
        phase: Phase::Running,
        failed_shutdown: false,
        next_generation: 1,
        is_pid1,
    };
    for spec in specs {
        let logs = shared.log_buffer_or_new(&spec.name);
        sup.services.push(Service::new(spec, logs));
    }
    shared_ready(shared);

    if let Some(argv) = options.main_cmd {
        match spawn_main(&argv) {
            Ok(pid) => sup.main = Some(MainProcess { pid, exit: None }),
            Err(e) => {
                eprintln!("envd-init: cannot run {:?}: {e}", argv[0]);
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                sup.main = Some(MainProcess {
                    pid: Pid::from_raw(0),
                    exit: Some(ExitKind::Code(code)),
                });
                sup.begin_shutdown();
            }
        }
    }

    sup.tick();
    sup.publish();
    while sup.phase != Phase::Done {
        let Some(event) = events_rx.recv().await else {
            break;
        };
        // A bug in handling one event must not take PID 1 (and the container) down with it.
        guard::contain("handling an event", || sup.handle(event));
        // Drain what is already queued before publishing once.
        while let Ok(event) = events_rx.try_recv() {
            guard::contain("handling an event", || sup.handle(event));
        }
        guard::contain("starting services", || sup.tick());
        guard::contain("publishing status", || sup.publish());
    }
    sup.exit_code()
}

/// Starts the main command in its own process group, in the terminal's foreground when stdin is
/// a terminal (tini's `isolate_child`).
fn spawn_main(argv: &[String]) -> std::io::Result<Pid> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).process_group(0);
    let tty = std::io::stdin().is_terminal();
    if tty {
        // SAFETY: only async-signal-safe calls (sigaction, tcsetpgrp, getpid).
        unsafe {
            cmd.pre_exec(|| {
                use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
                let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
                let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
                let _ = sigaction(Signal::SIGTTOU, &ignore);
                let _ = nix::unistd::tcsetpgrp(std::io::stdin(), nix::unistd::getpid());
                let _ = sigaction(Signal::SIGTTOU, &default);
                Ok(())
            });
        }
    }
    let child = cmd.stdin(Stdio::inherit()).spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
}

impl Supervisor {
    fn index(&self, name: &str) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.spec.name == name && !s.removed)
    }

    fn publish(&self) {
        let statuses: Vec<ServiceStatus> = self
            .services
            .iter()
            .filter(|s| !s.removed)
            .map(Service::status)
            .collect();
        self.shared.status.send_if_modified(|current| {
            if *current == statuses {
                false
            } else {
                *current = statuses;
                true
            }
        });
    }

    fn exit_code(&self) -> i32 {
        decide::exit_code(self.main.as_ref().map(|m| m.exit), self.failed_shutdown)
    }

    fn timer(&self, idx: usize, delay: Duration, kind: TimerKind) {
        let service = self.services[idx].spec.name.clone();
        let generation = self.services[idx].generation;
        let tx = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Event::Timer {
                service,
                generation,
                kind,
            });
        });
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Exited(exit) => self.on_exit(exit),
            Event::Health(report) => self.on_health(report),
            Event::Timer {
                service,
                generation,
                kind,
            } => self.on_timer(&service, generation, kind),
            Event::Signal(sig) => self.on_signal(sig),
            Event::Api(req) => self.on_api(req),
            Event::LeftoverDeadline => {
                if self.phase == Phase::Finishing {
                    kill_leftovers(self.is_pid1, Signal::SIGKILL);
                    self.phase = Phase::Done;
                }
            }
            Event::MainDeadline => {
                if let Some(main) = &self.main {
                    if main.exit.is_none() {
                        let _ = killpg(main.pid, Signal::SIGKILL);
                    }
                }
            }
        }
    }
}

/// At the very end: as PID 1, signal every remaining process; as a subreaper, our adopted
/// children. Returns whether anything was signalled.
fn kill_leftovers(is_pid1: bool, sig: Signal) -> bool {
    if is_pid1 {
        // kill(-1) from PID 1 reaches every other process of the namespace.
        return kill(Pid::from_raw(-1), sig).is_ok();
    }
    let me = std::process::id() as i32;
    let mut any = false;
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The fields after the command name (which may hold spaces) start after ") ".
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(me) {
                let _ = kill(Pid::from_raw(pid), sig);
                any = true;
            }
        }
    }
    any
}
