use std::time::{Duration, Instant};

use super::*;

fn policy(restart: RestartPolicy) -> Policy {
    Policy {
        restart,
        max_restarts: 3,
        restart_window: Duration::from_secs(300),
        backoff: Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        },
        stable_after: Duration::from_secs(60),
    }
}

const NO_JITTER: f64 = 0.5;

/// The phase after a step and the effects it asked for.
type Outcome = (Phase, Vec<Effect>);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A lifecycle already running since `t0`.
fn running(p: &Policy, t0: Instant) -> Lifecycle {
    let mut l = Lifecycle::new();
    assert_eq!(
        l.step(Input::Start, p, t0, NO_JITTER).unwrap(),
        vec![Effect::Spawn]
    );
    l.step(Input::Ready, p, t0, NO_JITTER).unwrap();
    assert_eq!(l.phase, Phase::Running);
    l
}

#[test]
fn transition_table() {
    let t = Instant::now();
    let p = policy(RestartPolicy::OnFailure);
    let stopping = |a| Phase::Stopping(a);
    let health = AfterStop::Recover(Failure::HealthCheck);
    #[rustfmt::skip]
    let table: Vec<(Phase, Input, Option<Outcome>)> = vec![
        (Phase::Exited, Input::Start, Some((Phase::Starting, vec![Effect::Spawn]))),
        (Phase::Running, Input::Start, Some((Phase::Running, vec![]))),
        (Phase::Starting, Input::Ready, Some((Phase::Running, vec![]))),
        (Phase::Running, Input::Stop, Some((stopping(AfterStop::Stop), vec![Effect::Terminate]))),
        (Phase::Starting, Input::Stop, Some((stopping(AfterStop::Stop), vec![Effect::Terminate]))),
        (stopping(health), Input::Stop, Some((stopping(AfterStop::Stop), vec![]))),
        (Phase::BackingOff { until: t }, Input::Stop, Some((Phase::Stopped, vec![Effect::Forget]))),
        (Phase::Failed, Input::Stop, Some((Phase::Stopped, vec![Effect::Forget]))),
        (Phase::Exited, Input::Stop, Some((Phase::Stopped, vec![Effect::Forget]))),
        (Phase::Running, Input::Restart, Some((stopping(AfterStop::Restart), vec![Effect::Terminate]))),
        (Phase::Failed, Input::Restart, Some((Phase::Starting, vec![Effect::Spawn]))),
        (Phase::BackingOff { until: t }, Input::Restart, Some((Phase::Starting, vec![Effect::Spawn]))),
        (Phase::Running, Input::Unhealthy, Some((stopping(health), vec![Effect::Terminate]))),
        (Phase::Starting, Input::StartupTimeout, Some((stopping(AfterStop::Recover(Failure::StartupTimeout)), vec![Effect::Terminate]))),
        (stopping(AfterStop::Stop), Input::Exited(ExitReason::Signal(15)), Some((Phase::Stopped, vec![Effect::Forget]))),
        (stopping(AfterStop::Restart), Input::Exited(ExitReason::Code(0)), Some((Phase::Starting, vec![Effect::Spawn]))),
        (Phase::BackingOff { until: t }, Input::BackoffElapsed, Some((Phase::Starting, vec![Effect::Spawn]))),
        (Phase::Running, Input::Exited(ExitReason::Code(0)), Some((Phase::Exited, vec![]))),
        // scale to zero
        (Phase::Running, Input::Idle, Some((stopping(AfterStop::Sleep), vec![Effect::Terminate]))),
        (stopping(AfterStop::Sleep), Input::Exited(ExitReason::Signal(15)), Some((Phase::Sleeping, vec![]))),
        (Phase::Sleeping, Input::Wake, Some((Phase::Starting, vec![Effect::Spawn]))),
        (Phase::Starting, Input::Wake, Some((Phase::Starting, vec![]))),
        (Phase::Running, Input::Wake, Some((Phase::Running, vec![]))),
        (Phase::Failed, Input::Wake, Some((Phase::Failed, vec![]))),
        (Phase::Sleeping, Input::Stop, Some((Phase::Stopped, vec![Effect::Forget]))),
        (Phase::Sleeping, Input::Restart, Some((Phase::Starting, vec![Effect::Spawn]))),
        (stopping(AfterStop::Sleep), Input::Stop, Some((stopping(AfterStop::Stop), vec![]))),
        // invalid
        (Phase::Running, Input::Ready, None),
        (Phase::Exited, Input::Ready, None),
        (Phase::Stopped, Input::Start, None),
        (Phase::Stopped, Input::Stop, None),
        (Phase::Exited, Input::Unhealthy, None),
        (Phase::Running, Input::BackoffElapsed, None),
        (Phase::Running, Input::StartupTimeout, None),
        (Phase::Sleeping, Input::Idle, None),
        (Phase::Starting, Input::Idle, None),
        (Phase::Stopped, Input::Wake, None),
        (Phase::Exited, Input::Exited(ExitReason::Code(1)), None),
    ];
    for (from, input, want) in table {
        let mut l = Lifecycle::new();
        l.phase = from;
        let got = l.step(input.clone(), &p, t, NO_JITTER);
        match want {
            Some((phase, effects)) => {
                let effects_got = got.unwrap_or_else(|e| panic!("{from:?} + {input:?}: {e}"));
                assert_eq!(
                    (l.phase, effects_got),
                    (phase, effects),
                    "{from:?} + {input:?}"
                );
            }
            None => assert!(got.is_err(), "{from:?} + {input:?} should be invalid"),
        }
    }
}

#[test]
fn restart_policies() {
    let t0 = Instant::now();
    let t = t0 + secs(1);
    #[rustfmt::skip]
    let table = [
        (RestartPolicy::Always, ExitReason::Code(0), true),
        (RestartPolicy::Always, ExitReason::Code(3), true),
        (RestartPolicy::OnFailure, ExitReason::Code(0), false),
        (RestartPolicy::OnFailure, ExitReason::Code(3), true),
        (RestartPolicy::OnFailure, ExitReason::Signal(9), true),
        (RestartPolicy::OnFailure, ExitReason::SpawnFailed("nope".into()), true),
        (RestartPolicy::Never, ExitReason::Code(3), false),
        (RestartPolicy::Never, ExitReason::Signal(9), false),
    ];
    for (restart, reason, restarts) in table {
        let p = policy(restart);
        let mut l = running(&p, t0);
        l.step(Input::Exited(reason.clone()), &p, t, NO_JITTER)
            .unwrap();
        let want = if restarts {
            Phase::BackingOff { until: t + secs(1) }
        } else {
            Phase::Exited
        };
        assert_eq!(l.phase, want, "{restart:?} {reason:?}");
        assert_eq!(l.last_exit, Some(reason));
    }
}

#[test]
fn health_and_startup_failures_restart_even_if_exit_was_clean() {
    let t0 = Instant::now();
    let p = policy(RestartPolicy::OnFailure);
    let mut l = running(&p, t0);
    l.step(Input::Unhealthy, &p, t0, NO_JITTER).unwrap();
    l.step(Input::Exited(ExitReason::Code(0)), &p, t0, NO_JITTER)
        .unwrap();
    assert!(matches!(l.phase, Phase::BackingOff { .. }));
    assert_eq!(l.last_exit, Some(ExitReason::HealthCheck));

    let never = policy(RestartPolicy::Never);
    let mut l = Lifecycle::new();
    l.step(Input::Start, &never, t0, NO_JITTER).unwrap();
    l.step(Input::StartupTimeout, &never, t0, NO_JITTER)
        .unwrap();
    l.step(Input::Exited(ExitReason::Signal(15)), &never, t0, NO_JITTER)
        .unwrap();
    assert_eq!(l.phase, Phase::Exited);
    assert_eq!(l.last_exit, Some(ExitReason::StartupTimeout));
}

/// Crash right after each start: delays double, and the fourth crash within the window fails.
#[test]
fn crash_loop_backs_off_then_fails() {
    let p = policy(RestartPolicy::Always);
    let mut now = Instant::now();
    let mut l = Lifecycle::new();
    l.step(Input::Start, &p, now, NO_JITTER).unwrap();
    let mut delays = vec![];
    loop {
        now += secs(1);
        l.step(Input::Exited(ExitReason::Code(1)), &p, now, NO_JITTER)
            .unwrap();
        match l.phase {
            Phase::BackingOff { until } => {
                delays.push(until - now);
                now = until;
                assert_eq!(
                    l.step(Input::BackoffElapsed, &p, now, NO_JITTER).unwrap(),
                    vec![Effect::Spawn]
                );
            }
            Phase::Failed => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delays, vec![secs(1), secs(2), secs(4)]);
    assert_eq!(l.restarts, 3);
    // Failed stays failed: nothing but a user action moves it.
    assert!(l.step(Input::BackoffElapsed, &p, now, NO_JITTER).is_err());
    assert_eq!(
        l.step(Input::Restart, &p, now, NO_JITTER).unwrap(),
        vec![Effect::Spawn]
    );
    now += secs(1);
    l.step(Input::Exited(ExitReason::Code(1)), &p, now, NO_JITTER)
        .unwrap();
    assert_eq!(
        l.phase,
        Phase::BackingOff {
            until: now + secs(1)
        },
        "user restart resets backoff"
    );
}

#[test]
fn restarts_outside_the_window_do_not_count() {
    let p = policy(RestartPolicy::Always);
    let mut now = Instant::now();
    let mut l = Lifecycle::new();
    l.step(Input::Start, &p, now, NO_JITTER).unwrap();
    // One crash every 200 s (never ready, so no stable run): never more than 2 in a 300 s window.
    for _ in 0..10 {
        now += secs(200);
        l.step(Input::Exited(ExitReason::Code(1)), &p, now, NO_JITTER)
            .unwrap();
        let Phase::BackingOff { until } = l.phase else {
            panic!("failed too early: {:?}", l.phase)
        };
        now = until;
        l.step(Input::BackoffElapsed, &p, now, NO_JITTER).unwrap();
    }
    assert_eq!(l.restarts, 10);
}

#[test]
fn stable_run_resets_backoff_and_budget() {
    let p = policy(RestartPolicy::Always);
    let mut now = Instant::now();
    let mut l = Lifecycle::new();
    l.step(Input::Start, &p, now, NO_JITTER).unwrap();
    for _ in 0..3 {
        now += secs(1);
        l.step(Input::Exited(ExitReason::Code(1)), &p, now, NO_JITTER)
            .unwrap();
        let Phase::BackingOff { until } = l.phase else {
            panic!()
        };
        now = until;
        l.step(Input::BackoffElapsed, &p, now, NO_JITTER).unwrap();
    }
    // The budget is used up; now a healthy run longer than stable_after.
    l.step(Input::Ready, &p, now, NO_JITTER).unwrap();
    now += secs(61);
    l.step(Input::Exited(ExitReason::Code(1)), &p, now, NO_JITTER)
        .unwrap();
    assert_eq!(
        l.phase,
        Phase::BackingOff {
            until: now + secs(1)
        }
    );

    // A short run does not reset.
    let mut l2 = l.clone();
    let Phase::BackingOff { until } = l2.phase else {
        panic!()
    };
    l2.step(Input::BackoffElapsed, &p, until, NO_JITTER)
        .unwrap();
    l2.step(Input::Ready, &p, until, NO_JITTER).unwrap();
    let later = until + secs(5);
    l2.step(Input::Exited(ExitReason::Code(1)), &p, later, NO_JITTER)
        .unwrap();
    assert_eq!(
        l2.phase,
        Phase::BackingOff {
            until: later + secs(2)
        }
    );
}

#[test]
fn zero_max_restarts_fails_at_once() {
    let mut p = policy(RestartPolicy::Always);
    p.max_restarts = 0;
    let t = Instant::now();
    let mut l = running(&p, t);
    l.step(Input::Exited(ExitReason::Code(1)), &p, t, NO_JITTER)
        .unwrap();
    assert_eq!(l.phase, Phase::Failed);
}

#[test]
fn an_instance_brought_back_asleep_starts_on_its_first_wake() {
    let (t, p) = (Instant::now(), policy(RestartPolicy::OnFailure));
    let mut l = Lifecycle::asleep();
    assert_eq!(l.phase, Phase::Sleeping);
    assert_eq!(l.step(Input::Idle, &p, t, NO_JITTER).ok(), None);
    assert_eq!(
        l.step(Input::Wake, &p, t, NO_JITTER).unwrap(),
        vec![Effect::Spawn]
    );
    assert_eq!(l.phase, Phase::Starting);
    let mut l = Lifecycle::asleep();
    assert_eq!(
        l.step(Input::Stop, &p, t, NO_JITTER).unwrap(),
        vec![Effect::Forget]
    );
}

#[test]
fn the_servers_own_shortage_never_spends_the_restart_budget() {
    let mut p = policy(RestartPolicy::Never);
    p.max_restarts = 1;
    let t = Instant::now();
    let mut l = Lifecycle::new();
    l.step(Input::Start, &p, t, NO_JITTER).unwrap();
    // Many failed spawns for lack of file descriptors: retried every second, whatever the
    // policy (the instance never ran), never Failed, restarts not counted.
    for i in 0..10u64 {
        let now = t + secs(i);
        let busy = ExitReason::ServerBusy("too many open files".into());
        l.step(Input::Exited(busy), &p, now, NO_JITTER).unwrap();
        assert_eq!(
            l.phase,
            Phase::BackingOff {
                until: now + SERVER_BUSY_RETRY
            }
        );
        assert_eq!(
            l.step(
                Input::BackoffElapsed,
                &p,
                now + SERVER_BUSY_RETRY,
                NO_JITTER
            )
            .unwrap(),
            vec![Effect::Spawn]
        );
    }
    assert_eq!(l.restarts, 0);
    // A real failure still counts as before.
    l.step(
        Input::Exited(ExitReason::SpawnFailed("no such file".into())),
        &p,
        t,
        NO_JITTER,
    )
    .unwrap();
    assert_eq!(l.phase, Phase::Exited);
}
