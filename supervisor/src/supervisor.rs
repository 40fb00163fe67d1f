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

use crate::config::{self, FailureStrategy, RestartStrategy, ServiceSpec};
use crate::guard;
use crate::health::{self, CheckContext, HealthReport};
use crate::logs::{self, Line, LogBuffer, Sink, Stream};
use crate::proto::supervisor::{ExitInfo, Health, ServiceState, ServiceStatus};
use crate::reaper::{self, Exit, ExitKind, Waiters};
use crate::spawn::{self, SpawnRequest};

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

/// API calls that change state.
#[derive(Debug)]
pub enum ApiRequest {
    /// Stop (if running) and start a service again.
    Restart(String, oneshot::Sender<Result<ServiceStatus, String>>),
    /// Stop a service and keep it stopped.
    Stop(String, oneshot::Sender<Result<ServiceStatus, String>>),
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
    shutting_down: bool,
    shutdown_failed: bool,
    forced: bool,
    finishing: bool,
    done: bool,
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
        shutting_down: false,
        shutdown_failed: false,
        forced: false,
        finishing: false,
        done: false,
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
    while !sup.done {
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
        if let Some(main) = &self.main {
            return main.exit.map(ExitKind::as_status).unwrap_or(0);
        }
        if self.shutdown_failed {
            1
        } else {
            0
        }
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
                if self.finishing {
                    kill_leftovers(self.is_pid1, Signal::SIGKILL);
                    self.done = true;
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

    // ---- starting ------------------------------------------------------------------------

    /// Starts whatever can start, and drives a shutdown in progress.
    fn tick(&mut self) {
        if self.shutting_down {
            self.drive_shutdown();
            return;
        }
        // Loop: a service that finishes instantly can unblock others in the same tick.
        for _ in 0..self.services.len().max(1) {
            let mut started_any = false;
            for idx in 0..self.services.len() {
                let s = &self.services[idx];
                if s.removed || s.state != ServiceState::Pending || s.timer_pending {
                    continue;
                }
                let ready = s.spec.start_after.iter().all(|dep| {
                    self.index(dep)
                        .is_some_and(|d| self.services[d].satisfies_dependents())
                });
                if !ready {
                    continue;
                }
                if !s.spec.start_delay.is_zero() && !s.delay_done {
                    let delay = s.spec.start_delay;
                    self.services[idx].timer_pending = true;
                    self.timer(idx, delay, TimerKind::Start);
                    continue;
                }
                self.start(idx);
                started_any = true;
            }
            if !started_any {
                break;
            }
        }
    }

    fn start(&mut self, idx: usize) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let spec = self.services[idx].spec.clone();
        {
            let s = &mut self.services[idx];
            s.generation = generation;
            s.delay_done = false;
            s.timer_pending = false;
        }
        match self.spawn_service(idx, &spec, generation) {
            Ok(pid) => {
                let has_checks = spec.health.has_checks();
                let s = &mut self.services[idx];
                s.pid = Some(pid);
                s.start_error = None;
                if has_checks {
                    s.health = Health::Unknown;
                    s.set_state(ServiceState::Starting, "waiting for health checks");
                } else {
                    s.health = Health::Healthy;
                    s.set_state(ServiceState::Running, "");
                    if s.attempts_used > 0 {
                        let reset = spec.restart.reset_after;
                        self.timer(idx, reset, TimerKind::ResetAttempts);
                    }
                }
                crate::info!("{}: started (pid {})", spec.name, pid.as_raw());
            }
            Err(message) => {
                // A start that fails follows the restart policy like an exit with 127 (a
                // shell's "command not found"): a binary that appears later is picked up.
                let s = &mut self.services[idx];
                s.note(format!("cannot start: {message}"));
                s.start_error = Some(message);
                self.on_service_exit(idx, ExitKind::Code(127));
            }
        }
    }

    fn spawn_service(
        &mut self,
        idx: usize,
        spec: &Arc<ServiceSpec>,
        generation: u64,
    ) -> Result<Pid, String> {
        let identity = match &spec.user {
            Some(u) => Some(spawn::resolve_user(u)?),
            None => None,
        };
        let who = identity.clone().unwrap_or_else(spawn::current_identity);
        let env = spawn::service_env(spec, &who);
        if let Some(path) = &spec.health.file_path {
            let _ = std::fs::remove_file(path);
        }
        let out_sink = Sink::open(&spec.stdout).map_err(|e| format!("stdout log: {e}"))?;
        let err_sink = Sink::open(&spec.stderr).map_err(|e| format!("stderr log: {e}"))?;
        let (out_read, out_write) = spawn::output_pipe().map_err(|e| e.to_string())?;
        let (err_read, err_write) = spawn::output_pipe().map_err(|e| e.to_string())?;
        let cgroup = match spawn::prepare_cgroup(&spec.name, &spec.resources) {
            Ok(c) => c,
            Err(e) => {
                self.services[idx].note(format!("resource limits not applied: {e}"));
                None
            }
        };
        let pid = spawn::spawn(SpawnRequest {
            argv: &spec.argv,
            env: &env,
            cwd: spec.working_directory.as_deref(),
            identity: identity.as_ref(),
            stdout: out_write,
            stderr: err_write,
            cgroup,
        })
        .map_err(|e| format!("{:?}: {e}", spec.argv[0]))?;
        let buffer = self.services[idx].logs.clone();
        tokio::spawn(logs::pump(
            out_read,
            Stream::Stdout,
            out_sink,
            buffer.clone(),
        ));
        tokio::spawn(logs::pump(err_read, Stream::Stderr, err_sink, buffer));
        if spec.health.has_checks() {
            let ctx = CheckContext {
                service: spec.name.clone(),
                generation,
                spec: spec.health.clone(),
                env: Arc::new(env),
                identity,
                waiters: self.waiters.clone(),
            };
            let (tx, mut rx) = mpsc::unbounded_channel();
            let events = self.events.clone();
            let task = tokio::spawn(async move {
                let checks = health::run(ctx, tx);
                tokio::pin!(checks);
                loop {
                    tokio::select! {
                        _ = &mut checks => {
                            while let Ok(r) = rx.try_recv() { let _ = events.send(Event::Health(r)); }
                            break;
                        }
                        Some(r) = rx.recv() => { let _ = events.send(Event::Health(r)); }
                    }
                }
            });
            self.services[idx].health_task = Some(task.abort_handle());
        }
        Ok(pid)
    }

    fn on_health(&mut self, report: HealthReport) {
        let Some(idx) = self.index(&report.service) else {
            return;
        };
        let s = &mut self.services[idx];
        if s.generation != report.generation || s.pid.is_none() {
            return;
        }
        if report.healthy {
            s.health = Health::Healthy;
            if s.state == ServiceState::Starting {
                s.set_state(ServiceState::Running, "");
            }
            let reset = s.spec.restart.reset_after;
            self.timer(idx, reset, TimerKind::ResetAttempts);
        } else if s.state == ServiceState::Running || s.state == ServiceState::Starting {
            s.health = Health::Unhealthy;
            s.note(format!(
                "unhealthy: {}; restarting it as failed",
                report.detail
            ));
            s.detail = report.detail;
            // Killed as a failure: the restart policy decides what happens next.
            if let Some(pid) = s.pid {
                let _ = killpg(pid, s.spec.termination.signal);
                let wait = s.spec.termination.wait;
                self.timer(idx, wait, TimerKind::Kill);
            }
        }
    }

    fn on_timer(&mut self, name: &str, generation: u64, kind: TimerKind) {
        let Some(idx) = self.index(name) else {
            return;
        };
        let s = &mut self.services[idx];
        if s.generation != generation {
            return;
        }
        match kind {
            TimerKind::Start => {
                if !s.timer_pending {
                    return;
                }
                s.timer_pending = false;
                s.delay_done = true;
                if s.state == ServiceState::Backoff && !self.shutting_down {
                    s.set_state(ServiceState::Pending, "");
                }
            }
            TimerKind::Kill => {
                if let Some(pgid) = s.lingering {
                    s.note("process group still alive after the wait; sending SIGKILL".into());
                    let _ = killpg(pgid, Signal::SIGKILL);
                } else if let Some(pid) = s.pid {
                    s.note(format!(
                        "still running {:?} after {}; sending SIGKILL to its process group",
                        s.spec.termination.wait, s.spec.termination.signal
                    ));
                    let _ = killpg(pid, Signal::SIGKILL);
                }
            }
            TimerKind::ResetAttempts => {
                if s.state == ServiceState::Running && s.health == Health::Healthy {
                    s.attempts_used = 0;
                }
            }
        }
    }

    // ---- exits ---------------------------------------------------------------------------

    fn on_exit(&mut self, exit: Exit) {
        if let Some(main) = &mut self.main {
            if main.pid == exit.pid && main.exit.is_none() {
                main.exit = Some(exit.kind);
                crate::info!("main command ended: {}", exit.kind);
                self.begin_shutdown();
                return;
            }
        }
        let Some(idx) = self
            .services
            .iter()
            .position(|s| s.pid == Some(exit.pid) && !s.removed)
        else {
            // An adopted orphan, perhaps the last of a stopping service's group.
            self.check_lingering();
            return;
        };
        self.on_service_exit(idx, exit.kind);
    }

    fn on_service_exit(&mut self, idx: usize, kind: ExitKind) {
        let s = &mut self.services[idx];
        if let Some(task) = s.health_task.take() {
            task.abort();
        }
        let pid = s.pid.take();
        s.last_exit = Some(match kind {
            ExitKind::Code(c) => ExitInfo {
                code: Some(c),
                signal: None,
                at: unix_secs(SystemTime::now()),
            },
            ExitKind::Signal(sig) => ExitInfo {
                code: None,
                signal: Some(sig),
                at: unix_secs(SystemTime::now()),
            },
        });

        if s.after_stop.is_some() {
            // Stopped on purpose. Members of its group that got the signal too may still be
            // cleaning up: wait for them (they are reparented to us) until the SIGKILL deadline.
            if let Some(pid) = pid {
                if killpg(pid, None).is_ok() {
                    s.lingering = Some(pid);
                    return;
                }
            }
            self.finish_stop(idx, &format!("stopped ({kind})"));
            return;
        }
        // A new generation makes the old instance's pending timers and reports stale.
        s.generation = self.next_generation;
        self.next_generation += 1;

        let success = matches!(kind, ExitKind::Code(c) if s.spec.successful_exit_codes.contains(&c))
            && s.health != Health::Unhealthy;
        let wants_restart = match s.spec.restart.strategy {
            RestartStrategy::Always => true,
            RestartStrategy::OnFailure => !success,
            RestartStrategy::Never => false,
        };
        let within_attempts = s.spec.restart.attempts.is_none_or(|n| s.attempts_used < n);
        if wants_restart && within_attempts && !self.shutting_down {
            s.attempts_used += 1;
            s.restarts += 1;
            let delay = s.spec.start_delay + s.spec.restart.delay(s.attempts_used);
            s.note(format!(
                "exited ({kind}); restart {} in {delay:?}",
                s.restarts
            ));
            s.health = Health::Unknown;
            // After a failed start, always through a timer: a zero backoff must not recurse.
            if delay.is_zero() && s.start_error.is_none() {
                s.set_state(ServiceState::Pending, format!("restarting after {kind}"));
                s.delay_done = true;
                self.start(idx);
            } else {
                s.set_state(
                    ServiceState::Backoff,
                    format!("exited ({kind}), restarting"),
                );
                s.timer_pending = true;
                self.timer(idx, delay, TimerKind::Start);
            }
            return;
        }
        if success {
            s.note(format!("finished ({kind})"));
            s.set_state(ServiceState::Finished, format!("finished ({kind})"));
        } else {
            let what = match &s.start_error {
                Some(e) => format!("cannot start: {e}"),
                None => format!("failed ({kind})"),
            };
            let why = if wants_restart && !within_attempts {
                format!("{what} after {} restart attempts", s.attempts_used)
            } else {
                what
            };
            s.note(why.clone());
            s.health = Health::Unhealthy;
            s.set_state(ServiceState::Failed, why);
            self.on_final_failure(idx);
        }
    }

    /// Applies what a stop was for, once the service's processes are gone.
    fn finish_stop(&mut self, idx: usize, how: &str) {
        let s = &mut self.services[idx];
        s.lingering = None;
        s.generation = self.next_generation;
        self.next_generation += 1;
        let Some(after) = s.after_stop.take() else {
            return;
        };
        s.note(how.to_string());
        s.health = Health::Unknown;
        match after {
            AfterStop::Stay => s.set_state(ServiceState::Stopped, how),
            AfterStop::Restart => {
                s.restarts += 1;
                s.attempts_used = 0;
                s.set_state(ServiceState::Pending, "restarting on request");
            }
            AfterStop::Replace(spec) => {
                s.spec = Arc::new(*spec);
                s.attempts_used = 0;
                s.set_state(ServiceState::Pending, "changed on reload");
            }
            AfterStop::Remove => s.removed = true,
        }
        if self.shutting_down && !s.removed {
            s.set_state(ServiceState::Stopped, how);
        }
        self.services.retain(|s| !s.removed || s.pid.is_some());
    }

    /// Completes the stops whose lingering process groups are now empty.
    fn check_lingering(&mut self) {
        let mut idx = 0;
        while idx < self.services.len() {
            if let Some(pgid) = self.services[idx].lingering {
                if killpg(pgid, None).is_err() {
                    let before = self.services.len();
                    self.finish_stop(idx, "stopped");
                    if self.services.len() < before {
                        continue;
                    }
                }
            }
            idx += 1;
        }
    }

    fn on_final_failure(&mut self, idx: usize) {
        let name = self.services[idx].spec.name.clone();
        let strategy = self.services[idx].spec.failure_strategy;
        match strategy {
            FailureStrategy::Ignore => {}
            FailureStrategy::KillDependents => {
                for d in 0..self.services.len() {
                    if self.services[d].spec.start_after.contains(&name) {
                        self.stop(d, AfterStop::Stay);
                    }
                }
            }
            FailureStrategy::Shutdown => {
                crate::warn!("service {name} failed and its failure strategy is shutdown");
                self.shutdown_failed = true;
                self.begin_shutdown();
            }
        }
        for d in 0..self.services.len() {
            if self.services[d]
                .spec
                .termination
                .die_if_failed
                .contains(&name)
            {
                self.services[d].note(format!("stopping: {name} failed (die-if-failed)"));
                self.stop(d, AfterStop::Stay);
            }
        }
    }

    // ---- stopping ------------------------------------------------------------------------

    /// Sends the termination signal to a service's process group and arms the SIGKILL timer;
    /// a service that is not running gets `after` applied at once.
    fn stop(&mut self, idx: usize, after: AfterStop) {
        let s = &mut self.services[idx];
        if s.lingering.is_some() {
            if after == AfterStop::Stay || s.after_stop.is_none() {
                s.after_stop = Some(after);
            }
            return;
        }
        match s.pid {
            Some(pid) => {
                if s.state == ServiceState::Stopping {
                    // Already stopping: a later "stay stopped" wins over a restart.
                    if after == AfterStop::Stay || s.after_stop.is_none() {
                        s.after_stop = Some(after);
                    }
                    return;
                }
                if let Some(task) = s.health_task.take() {
                    task.abort();
                }
                s.after_stop = Some(after);
                let sig = s.spec.termination.signal;
                let wait = s.spec.termination.wait;
                s.set_state(ServiceState::Stopping, format!("sent {sig}"));
                if let Err(e) = killpg(pid, sig) {
                    crate::debug!("killpg({pid}, {sig}): {e}");
                }
                self.timer(idx, wait, TimerKind::Kill);
            }
            None => {
                s.timer_pending = false;
                s.generation = self.next_generation;
                self.next_generation += 1;
                match after {
                    AfterStop::Stay => s.set_state(ServiceState::Stopped, "stopped"),
                    AfterStop::Restart => {
                        s.attempts_used = 0;
                        s.set_state(ServiceState::Pending, "starting on request");
                    }
                    AfterStop::Replace(spec) => {
                        s.spec = Arc::new(*spec);
                        s.attempts_used = 0;
                        s.set_state(ServiceState::Pending, "changed on reload");
                    }
                    AfterStop::Remove => {
                        s.removed = true;
                        self.services.retain(|s| !s.removed || s.pid.is_some());
                    }
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        crate::info!("stopping the environment");
        self.shutting_down = true;
        for s in &mut self.services {
            if s.pid.is_none() && matches!(s.state, ServiceState::Pending | ServiceState::Backoff) {
                s.timer_pending = false;
                s.set_state(ServiceState::Stopped, "environment stopping");
            }
        }
        if let Some(main) = &self.main {
            if main.exit.is_none() {
                let _ = killpg(main.pid, Signal::SIGTERM);
                let tx = self.events.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let _ = tx.send(Event::MainDeadline);
                });
            }
        }
    }

    /// Stops services in reverse dependency order: a service is signalled once every service
    /// that started after it (start-after) and everything in its shutdown-after list is down.
    fn drive_shutdown(&mut self) {
        if self.finishing {
            return;
        }
        let alive: Vec<bool> = self
            .services
            .iter()
            .map(|s| s.pid.is_some() || s.lingering.is_some())
            .collect();
        let mut to_stop = Vec::new();
        for (idx, s) in self.services.iter().enumerate() {
            if s.pid.is_none() || s.state == ServiceState::Stopping {
                continue;
            }
            let name = &s.spec.name;
            let blocked = self.services.iter().enumerate().any(|(o, other)| {
                o != idx
                    && alive[o]
                    && !self.forced
                    && (other.spec.start_after.contains(name)
                        || s.spec.shutdown_after.contains(&other.spec.name))
            });
            if !blocked {
                to_stop.push(idx);
            }
        }
        for idx in to_stop {
            self.stop(idx, AfterStop::Stay);
        }
        let main_running = self.main.as_ref().is_some_and(|m| m.exit.is_none());
        if self
            .services
            .iter()
            .all(|s| s.pid.is_none() && s.lingering.is_none())
            && !main_running
        {
            self.finishing = true;
            if kill_leftovers(self.is_pid1, Signal::SIGTERM) {
                let tx = self.events.clone();
                tokio::spawn(async move {
                    // Leftovers get a short grace; reaping them continues meanwhile.
                    let deadline = Instant::now() + Duration::from_millis(100);
                    tokio::time::sleep_until(deadline.into()).await;
                    let _ = tx.send(Event::LeftoverDeadline);
                });
            } else {
                self.done = true;
            }
        }
    }

    // ---- signals and API -----------------------------------------------------------------

    fn on_signal(&mut self, sig: Signal) {
        let main_pid = self
            .main
            .as_ref()
            .filter(|m| m.exit.is_none())
            .map(|m| m.pid);
        match sig {
            Signal::SIGTERM | Signal::SIGINT => {
                if let Some(pid) = main_pid {
                    // tini's contract: the main command decides; its exit ends the environment.
                    let _ = killpg(pid, sig);
                } else if self.shutting_down {
                    crate::warn!("second {sig}: killing everything now");
                    self.forced = true;
                    for s in &self.services {
                        if let Some(pid) = s.pid.or(s.lingering) {
                            let _ = killpg(pid, Signal::SIGKILL);
                        }
                    }
                } else {
                    self.begin_shutdown();
                }
            }
            Signal::SIGHUP => self.reload(),
            Signal::SIGCHLD => {}
            other => {
                if let Some(pid) = main_pid {
                    let _ = killpg(pid, other);
                } else {
                    crate::debug!("ignoring {other}: no main command to forward it to");
                }
            }
        }
    }

    fn reload(&mut self) {
        if self.shutting_down {
            return;
        }
        let specs = match config::load(&self.dirs) {
            Ok(s) => s,
            Err(errors) => {
                eprintln!("envd-init: reload refused, keeping the running services:\n{errors}");
                return;
            }
        };
        crate::info!("reloading {} service files", specs.len());
        let new_names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let old: Vec<(usize, String)> = self
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.removed)
            .map(|(i, s)| (i, s.spec.name.clone()))
            .collect();
        let mut removals = Vec::new();
        for (idx, name) in &old {
            if !new_names.contains(name) {
                removals.push(*idx);
            }
        }
        for spec in specs {
            match self.index(&spec.name) {
                Some(idx) => {
                    if *self.services[idx].spec != spec {
                        self.services[idx].note("definition changed; restarting".into());
                        self.stop(idx, AfterStop::Replace(Box::new(spec)));
                    }
                }
                None => {
                    let logs = self.shared.log_buffer_or_new(&spec.name);
                    self.services.push(Service::new(spec, logs));
                }
            }
        }
        // Remove from the back so indices stay valid.
        removals.sort_unstable();
        for idx in removals.into_iter().rev() {
            let name = self.services[idx].spec.name.clone();
            self.services[idx].note("removed from the services directory; stopping".into());
            self.stop(idx, AfterStop::Remove);
            if let Ok(mut logs) = self.shared.logs.lock() {
                if self
                    .services
                    .iter()
                    .all(|s| s.spec.name != name || s.removed)
                {
                    logs.remove(&name);
                }
            }
        }
    }

    fn on_api(&mut self, req: ApiRequest) {
        let (name, reply, after) = match req {
            ApiRequest::Restart(n, r) => (n, r, AfterStop::Restart),
            ApiRequest::Stop(n, r) => (n, r, AfterStop::Stay),
        };
        if self.shutting_down {
            let _ = reply.send(Err("the environment is stopping".into()));
            return;
        }
        let Some(idx) = self.index(&name) else {
            let _ = reply.send(Err(format!("no service named {name:?}")));
            return;
        };
        self.stop(idx, after);
        self.tick();
        let status = self
            .index(&name)
            .map(|i| self.services[i].status())
            .ok_or_else(|| format!("no service named {name:?}"));
        let _ = reply.send(status);
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
