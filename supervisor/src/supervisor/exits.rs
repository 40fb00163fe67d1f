//! Exits: what a service's end means (restart, finished, failed), and completing stops.

use super::*;

impl Supervisor {
    pub(super) fn on_exit(&mut self, exit: Exit) {
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

    pub(super) fn on_service_exit(&mut self, idx: usize, kind: ExitKind) {
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

        let decision = decide::after_exit(
            &s.spec,
            s.attempts_used,
            s.health,
            kind,
            self.phase,
            s.start_error.is_some(),
        );
        match decision {
            AfterExit::Restart { delay, at_once } => {
                s.attempts_used += 1;
                s.restarts += 1;
                s.note(format!(
                    "exited ({kind}); restart {} in {delay:?}",
                    s.restarts
                ));
                s.health = Health::Unknown;
                if at_once {
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
            }
            AfterExit::Finished => {
                s.note(format!("finished ({kind})"));
                s.set_state(ServiceState::Finished, format!("finished ({kind})"));
            }
            AfterExit::Failed { gave_up } => {
                let what = match &s.start_error {
                    Some(e) => format!("cannot start: {e}"),
                    None => format!("failed ({kind})"),
                };
                let why = if gave_up {
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
    }

    /// Applies what a stop was for, once the service's processes are gone.
    pub(super) fn finish_stop(&mut self, idx: usize, how: &str) {
        let s = &mut self.services[idx];
        s.lingering = None;
        s.generation = self.next_generation;
        self.next_generation += 1;
        let Some(after) = s.after_stop.take() else {
            return;
        };
        s.note(how.to_string());
        s.health = Health::Unknown;
        s.apply_after_stop(after, how, true);
        if self.phase.stopping() && !s.removed {
            s.set_state(ServiceState::Stopped, how);
        }
        self.services.retain(|s| !s.removed || s.pid.is_some());
    }

    /// Completes the stops whose lingering process groups are now empty.
    pub(super) fn check_lingering(&mut self) {
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

    pub(super) fn on_final_failure(&mut self, idx: usize) {
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
                self.failed_shutdown = true;
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
}
