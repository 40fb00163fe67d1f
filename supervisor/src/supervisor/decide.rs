//! The supervisor's decisions as pure functions: what an exit leads to, which stop request wins,
//! what holds a service's stop back during shutdown, and the exit code. The event loop applies
//! them (signals, timers, spawns); these only decide, so they are unit-tested without root, a PID
//! namespace or a process (as Horust tests its service handler).

use std::time::Duration;

use crate::config::{RestartStrategy, ServiceSpec};
use crate::proto::supervisor::Health;
use crate::reaper::ExitKind;

/// Where envd-init as a whole is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Starting and keeping services up.
    Running,
    /// Stopping services in reverse dependency order; `forced` after a second TERM/INT, when
    /// every process was SIGKILLed and the order no longer holds anything back.
    Stopping {
        /// A second TERM/INT arrived.
        forced: bool,
    },
    /// Every service is down; leftover processes got SIGTERM and a short grace.
    Finishing,
    /// Nothing is left: the loop ends.
    Done,
}

impl Phase {
    /// Whether the environment is on its way down (no starts, restarts, reloads or API changes).
    pub fn stopping(self) -> bool {
        self != Phase::Running
    }
}

/// What a service's own exit (not a stop asked for) leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AfterExit {
    /// Start it again after `delay`; `at_once` when that can happen within this event (no
    /// delay, and the last start did run the program: a failed start always goes through a
    /// timer, so a zero backoff cannot recurse).
    Restart {
        /// The wait before the start.
        delay: Duration,
        /// Start without a timer.
        at_once: bool,
    },
    /// It ended successfully and stays down.
    Finished,
    /// It failed and stays down; `gave_up` when its restart attempts are used up.
    Failed {
        /// Restarts were wanted but none are left.
        gave_up: bool,
    },
}

/// What the exit `kind` of a service means, given its spec, the attempts already used since
/// the last reset, its last health, whether the environment is stopping, and whether the exit is
/// a start that failed before the program ran.
pub(super) fn after_exit(
    spec: &ServiceSpec,
    attempts_used: u32,
    health: Health,
    kind: ExitKind,
    phase: Phase,
    start_failed: bool,
) -> AfterExit {
    let success = matches!(kind, ExitKind::Code(c) if spec.successful_exit_codes.contains(&c))
        && health != Health::Unhealthy;
    let wants_restart = match spec.restart.strategy {
        RestartStrategy::Always => true,
        RestartStrategy::OnFailure => !success,
        RestartStrategy::Never => false,
    };
    let within_attempts = spec.restart.attempts.is_none_or(|n| attempts_used < n);
    if wants_restart && within_attempts && !phase.stopping() {
        let delay = spec.start_delay + spec.restart.delay(attempts_used + 1);
        let at_once = delay.is_zero() && !start_failed;
        return AfterExit::Restart { delay, at_once };
    }
    if success {
        AfterExit::Finished
    } else {
        AfterExit::Failed {
            gave_up: wants_restart && !within_attempts,
        }
    }
}

/// Of two requests to stop the same service, the one that holds: a later "stay stopped" wins
/// over a restart or reload; otherwise the first one asked stays.
pub(super) fn stop_request_wins<T: PartialEq>(current: Option<&T>, new: &T, stay: &T) -> bool {
    new == stay || current.is_none()
}

/// Whether, during shutdown, `other` (still alive) holds back the stop of `service`: it started
/// after `service`, or `service` is to stop only after it. Nothing holds back a forced stop.
pub(super) fn holds_back_stop(
    service: &ServiceSpec,
    other: &ServiceSpec,
    other_alive: bool,
    phase: Phase,
) -> bool {
    let forced = matches!(phase, Phase::Stopping { forced: true });
    other_alive
        && !forced
        && (other.start_after.contains(&service.name)
            || service.shutdown_after.contains(&other.name))
}

/// envd-init's exit code: the main command's status when there is one (tini's contract), else 1
/// when a service with `failure strategy = "shutdown"` ended the environment, else 0.
pub(super) fn exit_code(main_exit: Option<Option<ExitKind>>, failed_shutdown: bool) -> i32 {
    match main_exit {
        Some(exit) => exit.map(ExitKind::as_status).unwrap_or(0),
        None => i32::from(failed_shutdown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A service as a file would give it, with a 100 ms backoff.
    fn spec(name: &str, strategy: RestartStrategy, attempts: Option<u32>) -> ServiceSpec {
        let file = format!("/etc/envd/services/{name}.toml");
        let mut s = crate::config::parse_service(Path::new(&file), "command = \"true\"\n")
            .expect("a minimal service file parses");
        s.restart.strategy = strategy;
        s.restart.attempts = attempts;
        s.restart.backoff = Some(Duration::from_millis(100));
        s
    }

    const RUNNING: Phase = Phase::Running;

    #[test]
    fn always_restarts_even_after_success_with_n_times_backoff() {
        let s = spec("a", RestartStrategy::Always, None);
        let d = after_exit(&s, 2, Health::Healthy, ExitKind::Code(0), RUNNING, false);
        let delay = Duration::from_millis(300);
        assert_eq!(
            d,
            AfterExit::Restart {
                delay,
                at_once: false
            }
        );
    }

    #[test]
    fn on_failure_finishes_on_success_and_restarts_on_failure() {
        let s = spec("a", RestartStrategy::OnFailure, None);
        let ok = after_exit(&s, 0, Health::Healthy, ExitKind::Code(0), RUNNING, false);
        assert_eq!(ok, AfterExit::Finished);
        let bad = after_exit(&s, 0, Health::Healthy, ExitKind::Code(3), RUNNING, false);
        assert!(matches!(bad, AfterExit::Restart { .. }), "{bad:?}");
        let killed = after_exit(&s, 0, Health::Healthy, ExitKind::Signal(9), RUNNING, false);
        assert!(matches!(killed, AfterExit::Restart { .. }), "{killed:?}");
    }

    #[test]
    fn an_unhealthy_exit_with_code_zero_is_a_failure() {
        let s = spec("a", RestartStrategy::Never, None);
        let d = after_exit(&s, 0, Health::Unhealthy, ExitKind::Code(0), RUNNING, false);
        assert_eq!(d, AfterExit::Failed { gave_up: false });
    }

    #[test]
    fn successful_exit_codes_decide_success() {
        let mut s = spec("a", RestartStrategy::OnFailure, None);
        s.successful_exit_codes = vec![0, 42];
        let d = after_exit(&s, 0, Health::Healthy, ExitKind::Code(42), RUNNING, false);
        assert_eq!(d, AfterExit::Finished);
    }

    #[test]
    fn attempts_run_out_and_say_so() {
        let s = spec("a", RestartStrategy::Always, Some(3));
        let last = after_exit(&s, 2, Health::Healthy, ExitKind::Code(1), RUNNING, false);
        assert!(matches!(last, AfterExit::Restart { .. }), "{last:?}");
        let out = after_exit(&s, 3, Health::Healthy, ExitKind::Code(1), RUNNING, false);
        assert_eq!(out, AfterExit::Failed { gave_up: true });
        let never = spec("b", RestartStrategy::Never, Some(0));
        let d = after_exit(
            &never,
            0,
            Health::Healthy,
            ExitKind::Code(1),
            RUNNING,
            false,
        );
        assert_eq!(d, AfterExit::Failed { gave_up: false });
    }

    #[test]
    fn nothing_restarts_while_the_environment_stops() {
        let s = spec("a", RestartStrategy::Always, None);
        for phase in [Phase::Stopping { forced: false }, Phase::Finishing] {
            let d = after_exit(&s, 0, Health::Healthy, ExitKind::Code(1), phase, false);
            assert_eq!(d, AfterExit::Failed { gave_up: false }, "{phase:?}");
        }
    }

    #[test]
    fn zero_delay_restarts_at_once_but_a_failed_start_waits_for_a_timer() {
        let mut s = spec("a", RestartStrategy::Always, None);
        s.restart.backoff = Some(Duration::ZERO);
        let ran = after_exit(&s, 0, Health::Healthy, ExitKind::Code(1), RUNNING, false);
        let zero = Duration::ZERO;
        assert_eq!(
            ran,
            AfterExit::Restart {
                delay: zero,
                at_once: true
            }
        );
        let failed = after_exit(&s, 0, Health::Healthy, ExitKind::Code(127), RUNNING, true);
        assert_eq!(
            failed,
            AfterExit::Restart {
                delay: zero,
                at_once: false
            }
        );
    }

    #[test]
    fn start_delay_adds_to_the_backoff_and_the_default_backoff_doubles() {
        let mut s = spec("a", RestartStrategy::Always, None);
        s.restart.backoff = None;
        s.start_delay = Duration::from_secs(1);
        let delays: Vec<Duration> = (0..3)
            .map(
                |n| match after_exit(&s, n, Health::Healthy, ExitKind::Code(1), RUNNING, false) {
                    AfterExit::Restart { delay, .. } => delay,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        let ms = |n| Duration::from_secs(1) + Duration::from_millis(n);
        assert_eq!(delays, vec![ms(100), ms(200), ms(400)]);
    }

    #[test]
    fn a_later_stay_stopped_wins_over_a_restart() {
        let (stay, restart) = ("stay", "restart");
        assert!(stop_request_wins(None, &restart, &stay));
        assert!(!stop_request_wins(Some(&stay), &restart, &stay));
        assert!(stop_request_wins(Some(&restart), &stay, &stay));
        assert!(!stop_request_wins(Some(&restart), &restart, &stay));
    }

    #[test]
    fn shutdown_stops_dependents_first_and_honours_shutdown_after() {
        let db = spec("db", RestartStrategy::Never, None);
        let mut web = spec("web", RestartStrategy::Never, None);
        web.start_after = vec!["db".into()];
        let stopping = Phase::Stopping { forced: false };
        // db waits for web, which started after it; web waits for nothing.
        assert!(holds_back_stop(&db, &web, true, stopping));
        assert!(!holds_back_stop(&web, &db, true, stopping));
        // Once web is gone, db may stop.
        assert!(!holds_back_stop(&db, &web, false, stopping));
        // shutdown-after: logger stops after app.
        let app = spec("app", RestartStrategy::Never, None);
        let mut logger = spec("logger", RestartStrategy::Never, None);
        logger.shutdown_after = vec!["app".into()];
        assert!(holds_back_stop(&logger, &app, true, stopping));
        // A forced stop holds nothing back.
        assert!(!holds_back_stop(
            &db,
            &web,
            true,
            Phase::Stopping { forced: true }
        ));
    }

    #[test]
    fn exit_code_follows_the_main_command_then_a_failed_shutdown() {
        assert_eq!(exit_code(Some(Some(ExitKind::Code(7))), true), 7);
        assert_eq!(exit_code(Some(Some(ExitKind::Signal(15))), false), 143);
        assert_eq!(exit_code(Some(None), true), 0);
        assert_eq!(exit_code(None, true), 1);
        assert_eq!(exit_code(None, false), 0);
    }

    #[test]
    fn only_running_is_not_stopping() {
        assert!(!Phase::Running.stopping());
        for p in [
            Phase::Stopping { forced: true },
            Phase::Finishing,
            Phase::Done,
        ] {
            assert!(p.stopping(), "{p:?}");
        }
    }
}
