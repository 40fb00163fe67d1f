//! Starting: which services can start, spawning them, and what their health and timers change.

use super::*;

impl Supervisor {
    /// Starts whatever can start, and drives a shutdown in progress.
    pub(super) fn tick(&mut self) {
        if self.phase.stopping() {
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

    pub(super) fn start(&mut self, idx: usize) {
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

    pub(super) fn spawn_service(
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
        tokio::spawn(service_logs::pump(
            out_read,
            Stream::Stdout,
            out_sink,
            buffer.clone(),
        ));
        tokio::spawn(service_logs::pump(
            err_read,
            Stream::Stderr,
            err_sink,
            buffer,
        ));
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

    pub(super) fn on_health(&mut self, report: HealthReport) {
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

    pub(super) fn on_timer(&mut self, name: &str, generation: u64, kind: TimerKind) {
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
                if s.state == ServiceState::Backoff && !self.phase.stopping() {
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
}
