//! The run's rules, one test each. Every test drives the machine the way the
//! host's run loop does (`handle` then `start_ready`) and checks the effects.

use super::*;
use crate::dag::{TaskPolicy, TaskSpec};

const SECOND: Duration = Duration::from_secs(1);

/// A DAG of `tasks` given as `(id, upstream ids)`, each with `policy`.
fn dag(tasks: &[(&str, &[&str])], policy: TaskPolicy, max_active_tasks: u32) -> DagSpec {
    DagSpec {
        id: "d".into(),
        description: String::new(),
        params: Map::new(),
        max_active_tasks,
        schedule: None,
        tasks: tasks
            .iter()
            .map(|(id, after)| TaskSpec {
                id: (*id).into(),
                plugin: "p".into(),
                component: "c".into(),
                after: after.iter().map(|a| (*a).to_owned()).collect(),
                params: Map::new(),
                connections: Vec::new(),
                privileged_connections: Vec::new(),
                policy,
            })
            .collect(),
    }
}

fn retries(n: u32, delay: Duration) -> TaskPolicy {
    TaskPolicy {
        retries: n,
        retry_delay: delay,
        ..TaskPolicy::default()
    }
}

/// A new run of `spec`: every instance scheduled with its policy's tries.
fn fresh(spec: DagSpec) -> RunMachine {
    let slots: Vec<(String, Slot)> = spec
        .tasks
        .iter()
        .map(|t| (t.id.clone(), Slot::new(t.policy.max_tries())))
        .collect();
    RunMachine::new(spec, slots)
}

/// A run resumed with the given stored instances.
fn stored(spec: DagSpec, slots: &[(&str, TaskState, u32)]) -> RunMachine {
    let slots: Vec<(String, Slot)> = slots
        .iter()
        .map(|(id, state, try_number)| {
            let max = spec.task(id).map_or(1, |t| t.policy.max_tries());
            let slot = Slot {
                state: *state,
                try_number: *try_number,
                output: (*state == TaskState::Success).then(|| Value::from(format!("out-{id}"))),
                ..Slot::new(max)
            };
            ((*id).to_owned(), slot)
        })
        .collect();
    RunMachine::new(spec, slots)
}

fn started(effects: &[Effect]) -> Vec<(String, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::StartTry {
                task_id,
                try_number,
            } => Some((task_id.clone(), *try_number)),
            _ => None,
        })
        .collect()
}

fn states(effects: &[Effect]) -> Vec<(String, TaskState)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SetState { task_id, state, .. } => Some((task_id.clone(), *state)),
            _ => None,
        })
        .collect()
}

fn succeed(m: &mut RunMachine, task: &str, try_number: u32) -> Vec<Effect> {
    let mut effects = m.handle(Event::TryFinished {
        task_id: task.into(),
        try_number,
        outcome: TryOutcome::Success {
            output: format!("\"out-{task}\""),
        },
    });
    effects.extend(m.start_ready());
    effects
}

fn fail(m: &mut RunMachine, task: &str, try_number: u32, retryable: bool) -> Vec<Effect> {
    let mut effects = m.handle(Event::TryFinished {
        task_id: task.into(),
        try_number,
        outcome: TryOutcome::Failed {
            error: format!("boom {try_number}"),
            retryable,
        },
    });
    effects.extend(m.start_ready());
    effects
}

fn retry_due(m: &mut RunMachine, task: &str) -> Vec<Effect> {
    let mut effects = m.handle(Event::RetryDue {
        task_id: task.into(),
    });
    effects.extend(m.start_ready());
    effects
}

fn delays(effects: &[Effect]) -> Vec<Duration> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ScheduleRetry { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect()
}

fn s(id: &str) -> String {
    id.to_owned()
}

#[test]
fn roots_start_and_downstream_waits() {
    let mut m = fresh(dag(&[("a", &[]), ("b", &["a"])], TaskPolicy::default(), 8));
    assert_eq!(started(&m.start_ready()), [(s("a"), 1)]);
    assert!(!m.is_done());
}

#[test]
fn downstream_starts_when_upstream_succeeds() {
    let mut m = fresh(dag(&[("a", &[]), ("b", &["a"])], TaskPolicy::default(), 8));
    m.start_ready();
    let effects = succeed(&mut m, "a", 1);
    assert_eq!(
        effects[0],
        Effect::EndTry {
            task_id: s("a"),
            try_number: 1,
            state: TaskState::Success,
            output: Some("\"out-a\"".into()),
            error: None,
        }
    );
    assert_eq!(started(&effects), [(s("b"), 1)]);
}

#[test]
fn independent_tasks_start_together() {
    let mut m = fresh(dag(
        &[("a", &[]), ("b", &[]), ("c", &[])],
        TaskPolicy::default(),
        8,
    ));
    assert_eq!(
        started(&m.start_ready()),
        [(s("a"), 1), (s("b"), 1), (s("c"), 1)]
    );
}

#[test]
fn a_join_waits_for_every_upstream() {
    let mut m = fresh(dag(
        &[("a", &[]), ("b", &[]), ("c", &["a", "b"])],
        TaskPolicy::default(),
        8,
    ));
    m.start_ready();
    assert!(started(&succeed(&mut m, "a", 1)).is_empty());
    assert_eq!(started(&succeed(&mut m, "b", 1)), [(s("c"), 1)]);
}

#[test]
fn what_follows_a_try_is_what_its_success_would_start() {
    let mut m = fresh(dag(
        &[
            ("a", &[]),
            ("b", &[]),
            ("c", &["a"]),
            ("d", &["a", "b"]),
            ("e", &["c"]),
        ],
        TaskPolicy::default(),
        8,
    ));
    m.start_ready();
    // `d` also waits for `b`, which is still running; `e` is two steps away.
    assert_eq!(m.next_on_success("a"), ["c"]);
    assert_eq!(started(&succeed(&mut m, "a", 1)), [(s("c"), 1)]);
    // With `a` done, `b`'s success starts `d`; `c` is running, not waiting.
    assert_eq!(m.next_on_success("b"), ["d"]);
    assert_eq!(m.next_on_success("c"), ["e"]);
    assert!(m.next_on_success("e").is_empty());
}

#[test]
fn max_active_tasks_queues_the_rest() {
    let mut m = fresh(dag(
        &[("a", &[]), ("b", &[]), ("c", &[])],
        TaskPolicy::default(),
        2,
    ));
    let effects = m.start_ready();
    assert_eq!(started(&effects), [(s("a"), 1), (s("b"), 1)]);
    assert_eq!(states(&effects), [(s("c"), TaskState::Queued)]);
}

#[test]
fn a_queued_task_starts_when_a_slot_frees() {
    let mut m = fresh(dag(
        &[("a", &[]), ("b", &[]), ("c", &[])],
        TaskPolicy::default(),
        2,
    ));
    m.start_ready();
    let effects = succeed(&mut m, "b", 1);
    assert_eq!(started(&effects), [(s("c"), 1)]);
    // Queued once: the next pass does not announce it again.
    assert!(states(&effects).is_empty());
}

#[test]
fn max_active_tasks_of_one_runs_in_dag_order() {
    let mut m = fresh(dag(&[("a", &[]), ("b", &[])], TaskPolicy::default(), 1));
    assert_eq!(started(&m.start_ready()), [(s("a"), 1)]);
    assert_eq!(started(&succeed(&mut m, "a", 1)), [(s("b"), 1)]);
}

#[test]
fn a_retryable_failure_schedules_a_retry_after_the_delay() {
    let mut m = fresh(dag(&[("a", &[])], retries(2, 7 * SECOND), 8));
    m.start_ready();
    let effects = fail(&mut m, "a", 1, true);
    assert_eq!(
        effects[0],
        Effect::EndTry {
            task_id: s("a"),
            try_number: 1,
            state: TaskState::UpForRetry,
            output: None,
            error: Some("boom 1".into()),
        }
    );
    assert_eq!(delays(&effects), [7 * SECOND]);
    assert!(started(&effects).is_empty(), "no try before the delay");
    assert!(!m.is_done(), "a run with a pending retry has not ended");
}

#[test]
fn a_due_retry_starts_the_next_try() {
    let mut m = fresh(dag(&[("a", &[])], retries(2, SECOND), 8));
    m.start_ready();
    fail(&mut m, "a", 1, true);
    let effects = retry_due(&mut m, "a");
    assert_eq!(states(&effects), [(s("a"), TaskState::Scheduled)]);
    assert_eq!(started(&effects), [(s("a"), 2)]);
}

#[test]
fn the_last_try_failing_fails_the_task_and_the_run() {
    let mut m = fresh(dag(&[("a", &[])], retries(1, SECOND), 8));
    m.start_ready();
    fail(&mut m, "a", 1, true);
    retry_due(&mut m, "a");
    let effects = fail(&mut m, "a", 2, true);
    assert!(delays(&effects).is_empty());
    assert!(matches!(
        effects[0],
        Effect::EndTry {
            state: TaskState::Failed,
            ..
        }
    ));
    assert!(m.is_done());
    assert_eq!(
        m.outcome(),
        (RunState::Failed, Some("task `a` failed: boom 2".into()))
    );
}

#[test]
fn a_permanent_failure_spends_no_retry() {
    let mut m = fresh(dag(&[("a", &[])], retries(5, SECOND), 8));
    m.start_ready();
    let effects = fail(&mut m, "a", 1, false);
    assert!(delays(&effects).is_empty());
    assert_eq!(m.slot("a").map(|s| s.state), Some(TaskState::Failed));
    assert!(m.is_done());
}

#[test]
fn without_backoff_every_delay_is_the_same() {
    let mut m = fresh(dag(&[("a", &[])], retries(3, 4 * SECOND), 8));
    m.start_ready();
    let mut seen = Vec::new();
    for try_number in 1..=3 {
        seen.extend(delays(&fail(&mut m, "a", try_number, true)));
        retry_due(&mut m, "a");
    }
    assert_eq!(seen, [4 * SECOND, 4 * SECOND, 4 * SECOND]);
}

#[test]
fn exponential_backoff_doubles_up_to_its_cap() {
    let policy = TaskPolicy {
        retries: 5,
        retry_delay: 2 * SECOND,
        retry_exponential_backoff: true,
        max_retry_delay: 10 * SECOND,
        ..TaskPolicy::default()
    };
    let mut m = fresh(dag(&[("a", &[])], policy, 8));
    m.start_ready();
    let mut seen = Vec::new();
    for try_number in 1..=5 {
        seen.extend(delays(&fail(&mut m, "a", try_number, true)));
        retry_due(&mut m, "a");
    }
    assert_eq!(
        seen,
        [2 * SECOND, 4 * SECOND, 8 * SECOND, 10 * SECOND, 10 * SECOND]
    );
}

#[test]
fn a_failure_marks_everything_downstream_upstream_failed() {
    let mut m = fresh(dag(
        &[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("x", &[])],
        TaskPolicy::default(),
        8,
    ));
    m.start_ready();
    let effects = fail(&mut m, "a", 1, false);
    assert_eq!(
        states(&effects),
        [
            (s("b"), TaskState::UpstreamFailed),
            (s("c"), TaskState::UpstreamFailed)
        ]
    );
    let why = effects.iter().find_map(|e| match e {
        Effect::SetState { task_id, error, .. } if task_id == "c" => error.clone(),
        _ => None,
    });
    assert_eq!(why.as_deref(), Some("upstream task `a` failed"));
    // The independent task is still running; the run has not ended.
    assert_eq!(m.slot("x").map(|s| s.state), Some(TaskState::Running));
    assert!(!m.is_done());
}

#[test]
fn a_retry_does_not_block_downstream_for_good() {
    let mut m = fresh(dag(&[("a", &[]), ("b", &["a"])], retries(1, SECOND), 8));
    m.start_ready();
    let effects = fail(&mut m, "a", 1, true);
    assert!(
        states(&effects).is_empty(),
        "b stays scheduled: {effects:?}"
    );
    retry_due(&mut m, "a");
    assert_eq!(started(&succeed(&mut m, "a", 2)), [(s("b"), 1)]);
}

#[test]
fn upstream_outputs_reach_downstream() {
    let mut m = fresh(dag(
        &[("a", &[]), ("b", &[]), ("c", &["a", "b"])],
        TaskPolicy::default(),
        8,
    ));
    m.start_ready();
    succeed(&mut m, "a", 1);
    succeed(&mut m, "b", 1);
    let outputs = m.upstream_outputs("c");
    assert_eq!(outputs.get("a"), Some(&Value::from("out-a")));
    assert_eq!(outputs.get("b"), Some(&Value::from("out-b")));
    assert_eq!(outputs.len(), 2);
}

#[test]
fn an_output_that_is_not_json_is_kept_as_text() {
    let mut m = fresh(dag(&[("a", &[]), ("b", &["a"])], TaskPolicy::default(), 8));
    m.start_ready();
    m.handle(Event::TryFinished {
        task_id: s("a"),
        try_number: 1,
        outcome: TryOutcome::Success {
            output: "plain words".into(),
        },
    });
    assert_eq!(
        m.upstream_outputs("b").get("a"),
        Some(&Value::from("plain words"))
    );
}

#[test]
fn every_task_succeeding_is_a_successful_run() {
    let mut m = fresh(dag(&[("a", &[]), ("b", &["a"])], TaskPolicy::default(), 8));
    m.start_ready();
    succeed(&mut m, "a", 1);
    assert!(!m.is_done());
    succeed(&mut m, "b", 1);
    assert!(m.is_done());
    assert_eq!(m.outcome(), (RunState::Success, None));
}

#[test]
fn the_run_error_names_each_failed_task_in_dag_order() {
    let mut m = fresh(dag(&[("a", &[]), ("b", &[])], TaskPolicy::default(), 8));
    m.start_ready();
    fail(&mut m, "b", 1, false);
    fail(&mut m, "a", 1, false);
    assert_eq!(
        m.outcome(),
        (
            RunState::Failed,
            Some("task `a` failed: boom 1; task `b` failed: boom 1".into())
        )
    );
}

#[test]
fn a_late_report_of_an_old_try_is_ignored() {
    let mut m = fresh(dag(&[("a", &[])], retries(1, SECOND), 8));
    m.start_ready();
    fail(&mut m, "a", 1, true);
    retry_due(&mut m, "a");
    assert!(fail(&mut m, "a", 1, true).is_empty());
    assert_eq!(m.slot("a").map(|s| s.state), Some(TaskState::Running));
}

#[test]
fn after_a_host_death_a_running_try_fails_and_is_retried() {
    let spec = dag(&[("a", &[]), ("b", &["a"])], retries(1, SECOND), 8);
    let mut m = stored(
        spec,
        &[("a", TaskState::Running, 1), ("b", TaskState::Scheduled, 0)],
    );
    let effects = m.handle(Event::HostRestarted { adopt: false });
    assert_eq!(
        effects[0],
        Effect::EndTry {
            task_id: s("a"),
            try_number: 1,
            state: TaskState::UpForRetry,
            output: None,
            error: Some("the host process stopped during try 1".into()),
        }
    );
    assert_eq!(states(&effects), [(s("a"), TaskState::Scheduled)]);
    assert_eq!(started(&m.start_ready()), [(s("a"), 2)]);
}

#[test]
fn after_a_host_death_a_last_try_fails_the_task_and_downstream() {
    let spec = dag(&[("a", &[]), ("b", &["a"])], TaskPolicy::default(), 8);
    let mut m = stored(
        spec,
        &[("a", TaskState::Running, 1), ("b", TaskState::Scheduled, 0)],
    );
    let effects = m.handle(Event::HostRestarted { adopt: false });
    assert_eq!(
        states(&effects),
        [
            (s("a"), TaskState::Failed),
            (s("b"), TaskState::UpstreamFailed)
        ]
    );
    assert!(m.start_ready().is_empty());
    assert!(m.is_done());
    assert_eq!(m.outcome().0, RunState::Failed);
}

#[test]
fn after_a_host_death_waiting_instances_are_scheduled_and_successes_kept() {
    let spec = dag(
        &[("a", &[]), ("b", &["a"]), ("c", &["a"])],
        retries(2, SECOND),
        8,
    );
    let mut m = stored(
        spec,
        &[
            ("a", TaskState::Success, 1),
            ("b", TaskState::UpForRetry, 1),
            ("c", TaskState::Queued, 0),
        ],
    );
    let effects = m.handle(Event::HostRestarted { adopt: false });
    assert_eq!(
        states(&effects),
        [
            (s("b"), TaskState::Scheduled),
            (s("c"), TaskState::Scheduled)
        ]
    );
    // The succeeded task is not run again; its output still feeds downstream.
    assert_eq!(started(&m.start_ready()), [(s("b"), 2), (s("c"), 1)]);
    assert_eq!(
        m.upstream_outputs("b").get("a"),
        Some(&Value::from("out-a"))
    );
}

#[test]
fn after_a_host_death_an_adopting_executor_follows_running_tries_again() {
    let spec = dag(
        &[("a", &[]), ("b", &["a"]), ("c", &[])],
        retries(1, SECOND),
        1,
    );
    let mut m = stored(
        spec,
        &[
            ("a", TaskState::Success, 1),
            ("b", TaskState::Running, 2),
            ("c", TaskState::Queued, 0),
        ],
    );
    let effects = m.handle(Event::HostRestarted { adopt: true });
    assert_eq!(
        effects,
        [
            Effect::AdoptTry {
                task_id: s("b"),
                try_number: 2
            },
            Effect::SetState {
                task_id: s("c"),
                state: TaskState::Scheduled,
                error: None
            }
        ]
    );
    // The adopted try counts against max_active_tasks (1): c waits for it.
    assert!(started(&m.start_ready()).is_empty());
    let effects = m.handle(Event::TryFinished {
        task_id: s("b"),
        try_number: 2,
        outcome: TryOutcome::Success { output: "1".into() },
    });
    assert!(matches!(
        effects[0],
        Effect::EndTry {
            state: TaskState::Success,
            ..
        }
    ));
    assert_eq!(started(&m.start_ready()), [(s("c"), 1)]);
}

#[test]
fn abort_fails_every_pending_instance_and_keeps_successes() {
    let spec = dag(&[("a", &[]), ("b", &["a"])], TaskPolicy::default(), 8);
    let mut m = stored(
        spec,
        &[("a", TaskState::Success, 1), ("b", TaskState::Scheduled, 0)],
    );
    let effects = m.handle(Event::Abort {
        reason: "staging gone".into(),
    });
    assert_eq!(states(&effects), [(s("b"), TaskState::Failed)]);
    assert!(m.is_done());
    assert_eq!(
        m.outcome(),
        (
            RunState::Failed,
            Some("task `b` failed: staging gone".into())
        )
    );
}

#[test]
fn a_cleared_run_runs_only_what_was_cleared() {
    let spec = dag(
        &[("a", &[]), ("b", &["a"]), ("c", &["b"])],
        TaskPolicy::default(),
        8,
    );
    let mut m = stored(
        spec,
        &[
            ("a", TaskState::Success, 1),
            ("b", TaskState::Scheduled, 1),
            ("c", TaskState::Scheduled, 0),
        ],
    );
    assert_eq!(started(&m.start_ready()), [(s("b"), 2)]);
    assert_eq!(started(&succeed(&mut m, "b", 2)), [(s("c"), 1)]);
}

#[test]
fn a_clear_extends_the_tries_past_the_policy() {
    // The stored allowance (4), not the policy's (1), decides a retry.
    let spec = dag(&[("a", &[])], retries(0, SECOND), 8);
    let slot = Slot {
        state: TaskState::Scheduled,
        try_number: 1,
        max_tries: 4,
        output: None,
        error: Some("old".into()),
    };
    let mut m = RunMachine::new(spec, [(s("a"), slot)]);
    assert_eq!(started(&m.start_ready()), [(s("a"), 2)]);
    assert_eq!(delays(&fail(&mut m, "a", 2, true)), [SECOND]);
}

#[test]
fn a_task_the_run_never_had_is_not_run() {
    let spec = dag(&[("a", &[]), ("new", &[])], TaskPolicy::default(), 8);
    let mut m = stored(spec, &[("a", TaskState::Scheduled, 0)]);
    assert_eq!(started(&m.start_ready()), [(s("a"), 1)]);
}

fn run_states(pairs: &[(&str, TaskState)]) -> HashMap<String, TaskState> {
    pairs.iter().map(|(id, st)| (s(id), *st)).collect()
}

#[test]
fn clear_alone_takes_the_task_and_its_upstream_failed_downstream() {
    let spec = dag(
        &[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("x", &[])],
        TaskPolicy::default(),
        8,
    );
    let states = run_states(&[
        ("a", TaskState::Failed),
        ("b", TaskState::UpstreamFailed),
        ("c", TaskState::UpstreamFailed),
        ("x", TaskState::Success),
    ]);
    let got = plan_clear(&spec, &states, "a", ClearScope::default()).expect("clear");
    assert_eq!(got, ["a", "b", "c"]);
}

#[test]
fn clear_alone_leaves_succeeded_downstream() {
    let spec = dag(&[("a", &[]), ("b", &["a"])], TaskPolicy::default(), 8);
    let states = run_states(&[("a", TaskState::Success), ("b", TaskState::Success)]);
    let got = plan_clear(&spec, &states, "a", ClearScope::default()).expect("clear");
    assert_eq!(got, ["a"]);
}

#[test]
fn clear_downstream_takes_every_descendant_in_dag_order() {
    let spec = dag(
        &[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["a"]),
            ("d", &["b", "c"]),
            ("x", &[]),
        ],
        TaskPolicy::default(),
        8,
    );
    let states = run_states(&[
        ("a", TaskState::Success),
        ("b", TaskState::Success),
        ("c", TaskState::Success),
        ("d", TaskState::Success),
        ("x", TaskState::Success),
    ]);
    let scope = ClearScope {
        downstream: true,
        upstream: false,
    };
    assert_eq!(
        plan_clear(&spec, &states, "a", scope).expect("clear"),
        ["a", "b", "c", "d"]
    );
}

#[test]
fn clear_upstream_takes_every_ancestor() {
    let spec = dag(
        &[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("x", &[])],
        TaskPolicy::default(),
        8,
    );
    let states = run_states(&[
        ("a", TaskState::Success),
        ("b", TaskState::Success),
        ("c", TaskState::Failed),
        ("x", TaskState::Success),
    ]);
    let scope = ClearScope {
        downstream: false,
        upstream: true,
    };
    assert_eq!(
        plan_clear(&spec, &states, "c", scope).expect("clear"),
        ["a", "b", "c"]
    );
}

#[test]
fn clear_refuses_an_unknown_task_and_a_version_with_new_tasks() {
    let spec = dag(&[("a", &[]), ("b", &[])], TaskPolicy::default(), 8);
    let states = run_states(&[("a", TaskState::Failed)]);
    assert_eq!(
        plan_clear(&spec, &states, "zz", ClearScope::default()),
        Err(ClearError::UnknownTask {
            dag_id: s("d"),
            task_id: s("zz")
        })
    );
    let err = plan_clear(&spec, &states, "a", ClearScope::default()).expect_err("new task b");
    assert_eq!(
        err.to_string(),
        "the current version of `d` has tasks this run never had (b); start a new run"
    );
}
