//! Task states and transitions.
//!
//! States move only along: not started → in progress (by claiming) → finished | failed | not
//! started (lease expired, failTask with retry, or setById to 0 as an explicit release);
//! failed → not started (an explicit retry); finished is final. Every route asks [`decide`];
//! anything else is a [`Refusal`] (409), except that setById to the state a task already has is
//! a no-op. The seed let setById move any task to any state (DEFECTS 8) and returned a task
//! whose lease expired to "not started" forever (DEFECTS 9); here both are decided in one place.

use std::fmt;

/// A task's state, with the seed's numbers (0, 1, 2) and shoal's failed (3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// 0: waiting to be claimed (or held, when the task is held).
    NotStarted,
    /// 1: claimed by a worker under a lease.
    InProgress,
    /// 2: done; final.
    Finished,
    /// 3: failed, with a reason; can be retried explicitly.
    Failed,
}

impl State {
    /// The seed's number for the state.
    pub fn code(self) -> u8 {
        match self {
            Self::NotStarted => 0,
            Self::InProgress => 1,
            Self::Finished => 2,
            Self::Failed => 3,
        }
    }

    /// The state for a number; `None` for anything else (a 400).
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::NotStarted),
            1 => Some(Self::InProgress),
            2 => Some(Self::Finished),
            3 => Some(Self::Failed),
            _ => None,
        }
    }

    /// All states, in number order.
    pub const ALL: [Self; 4] = [
        Self::NotStarted,
        Self::InProgress,
        Self::Finished,
        Self::Failed,
    ];
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotStarted => "not started",
            Self::InProgress => "in progress",
            Self::Finished => "finished",
            Self::Failed => "failed",
        })
    }
}

/// What is known of a task when a route acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// Its state.
    pub state: State,
    /// Created held and not released yet (only while not started).
    pub held: bool,
    /// Claims so far.
    pub attempts: u32,
}

/// What a route (or the lease and hold clocks) asks to do with a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `getNewTask`, or setById to 1: take it under a new lease.
    Claim,
    /// `finishTask`, or setById to 2.
    Finish,
    /// `failTask` (with `retry`: back to not started), or setById to 3.
    Fail {
        /// Return it to not started instead of failing it.
        retry: bool,
    },
    /// `extendLease`: push the lease deadline forward.
    ExtendLease,
    /// `releaseTask`: make a held task visible to workers.
    Release,
    /// `cancelTask`: fail a task that is not finished, with reason `cancelled`.
    Cancel,
    /// setById to 0: an explicit release (in progress) or retry (failed).
    Reset,
    /// The lease ran out (checked at claim time and by the sweeper).
    LeaseExpired,
    /// A held task was never released within the hold timeout.
    HoldExpired,
}

impl Action {
    /// The action setById to `target` stands for.
    pub fn set_to(target: State) -> Self {
        match target {
            State::NotStarted => Self::Reset,
            State::InProgress => Self::Claim,
            State::Finished => Self::Finish,
            State::Failed => Self::Fail { retry: false },
        }
    }
}

/// What an allowed action does to the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing changes (setById to the current state, releasing a released task).
    Nothing,
    /// Becomes in progress under a new lease; attempts + 1.
    Claimed,
    /// The lease deadline moves; nothing else changes.
    LeaseExtended,
    /// Moves to `state`; `held` is cleared; any lease ends; `error` is recorded when given.
    MovesTo {
        /// The new state.
        state: State,
        /// The reason, for failed tasks.
        error: Option<String>,
    },
}

/// Why an action was refused: a 409 whose reason names the task's state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Decides what `action` does to `task`. `max_attempts` bounds the claims a task gets: a task
/// that would go back to not started after that many claims fails instead, so a poison input
/// cannot take down workers one after another.
pub fn decide(task: Task, action: Action, max_attempts: u32) -> Result<Effect, Refusal> {
    use State::{Failed, Finished, InProgress, NotStarted};
    let refuse = |what: &str| {
        let held = if task.held { " and held" } else { "" };
        Err(Refusal(format!(
            "cannot {what} a task that is {}{held}",
            task.state
        )))
    };
    let back_to_queue = |why: &str| {
        if task.attempts >= max_attempts {
            Effect::MovesTo {
                state: Failed,
                error: Some(format!(
                    "{why} after {} attempts (the maximum)",
                    task.attempts
                )),
            }
        } else {
            Effect::MovesTo {
                state: NotStarted,
                error: None,
            }
        }
    };
    match (action, task.state) {
        (Action::Claim, NotStarted) if !task.held => Ok(Effect::Claimed),
        (Action::Claim, _) => refuse("claim"),
        (Action::Finish, InProgress) => Ok(Effect::MovesTo {
            state: Finished,
            error: None,
        }),
        (Action::Finish, _) => refuse("finish"),
        (Action::Fail { retry: false }, InProgress) => Ok(Effect::MovesTo {
            state: Failed,
            error: None,
        }),
        (Action::Fail { retry: true }, InProgress) => Ok(back_to_queue("failed")),
        (Action::Fail { .. }, _) => refuse("fail"),
        (Action::ExtendLease, InProgress) => Ok(Effect::LeaseExtended),
        (Action::ExtendLease, _) => refuse("extend the lease of"),
        (Action::Release, NotStarted) => Ok(if task.held {
            Effect::MovesTo {
                state: NotStarted,
                error: None,
            }
        } else {
            Effect::Nothing
        }),
        (Action::Release, _) => refuse("release"),
        (Action::Cancel, NotStarted | InProgress) => Ok(Effect::MovesTo {
            state: Failed,
            error: Some("cancelled".to_owned()),
        }),
        (Action::Cancel, _) => refuse("cancel"),
        (Action::Reset, InProgress | Failed) => Ok(Effect::MovesTo {
            state: NotStarted,
            error: None,
        }),
        (Action::Reset, NotStarted) => Ok(Effect::Nothing),
        (Action::Reset, Finished) => refuse("reset"),
        (Action::LeaseExpired, InProgress) => Ok(back_to_queue("lease expired")),
        (Action::LeaseExpired, _) => refuse("expire the lease of"),
        (Action::HoldExpired, NotStarted) if task.held => Ok(Effect::MovesTo {
            state: Failed,
            error: Some("never released".to_owned()),
        }),
        (Action::HoldExpired, _) => refuse("expire the hold of"),
    }
}

/// setById: `target` for `task`. Setting the state a task already has is a no-op (`Nothing`),
/// except that finishing a finished task stays a conflict, as finishTask's does.
pub fn set_by_id(task: Task, target: State, max_attempts: u32) -> Result<Effect, Refusal> {
    if target == task.state && target != State::Finished {
        return Ok(Effect::Nothing);
    }
    decide(task, Action::set_to(target), max_attempts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::{Failed, Finished, InProgress, NotStarted};

    fn task(state: State) -> Task {
        Task {
            state,
            held: false,
            attempts: 1,
        }
    }

    fn moves_to(state: State) -> Effect {
        Effect::MovesTo { state, error: None }
    }

    #[test]
    fn codes_round_trip_and_unknown_codes_are_rejected() {
        for s in State::ALL {
            assert_eq!(State::from_code(i64::from(s.code())), Some(s));
        }
        for bad in [-1, 4, 99, i64::MIN, i64::MAX] {
            assert_eq!(State::from_code(bad), None);
        }
    }

    /// Every (state, setById target): the transition table, exhaustively.
    #[test]
    fn set_by_id_allows_exactly_the_listed_transitions() {
        let allowed = [
            (NotStarted, InProgress),
            (InProgress, Finished),
            (InProgress, Failed),
            (InProgress, NotStarted),
            (Failed, NotStarted),
        ];
        for from in State::ALL {
            for to in State::ALL {
                let result = set_by_id(task(from), to, 5);
                if from == to && to != Finished {
                    assert_eq!(result, Ok(Effect::Nothing), "{from} → {to} is a no-op");
                } else if allowed.contains(&(from, to)) {
                    assert!(result.is_ok(), "{from} → {to} must be allowed: {result:?}");
                } else {
                    assert!(
                        result.is_err(),
                        "{from} → {to} must be a conflict: {result:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn finished_is_final_through_every_route() {
        for action in [
            Action::Claim,
            Action::Finish,
            Action::Fail { retry: false },
            Action::Fail { retry: true },
            Action::ExtendLease,
            Action::Release,
            Action::Cancel,
            Action::Reset,
            Action::LeaseExpired,
            Action::HoldExpired,
        ] {
            assert!(decide(task(Finished), action, 5).is_err(), "{action:?}");
        }
    }

    #[test]
    fn claiming_needs_a_visible_not_started_task() {
        assert_eq!(
            decide(task(NotStarted), Action::Claim, 5),
            Ok(Effect::Claimed)
        );
        let held = Task {
            held: true,
            ..task(NotStarted)
        };
        assert!(
            decide(held, Action::Claim, 5).is_err(),
            "held tasks are invisible"
        );
        assert!(decide(task(InProgress), Action::Claim, 5).is_err());
        assert!(decide(task(Failed), Action::Claim, 5).is_err());
    }

    #[test]
    fn lease_expiry_and_retries_stop_at_max_attempts() {
        // DEFECTS 9: the seed returned an unprocessable task to the queue forever.
        let young = Task {
            attempts: 4,
            ..task(InProgress)
        };
        let spent = Task {
            attempts: 5,
            ..task(InProgress)
        };
        assert_eq!(
            decide(young, Action::LeaseExpired, 5),
            Ok(moves_to(NotStarted))
        );
        assert_eq!(
            decide(young, Action::Fail { retry: true }, 5),
            Ok(moves_to(NotStarted))
        );
        for action in [Action::LeaseExpired, Action::Fail { retry: true }] {
            match decide(spent, action, 5) {
                Ok(Effect::MovesTo {
                    state: Failed,
                    error: Some(reason),
                }) => assert!(reason.contains("5 attempts"), "{reason}"),
                other => panic!("{action:?}: {other:?}"),
            }
        }
        assert!(decide(task(NotStarted), Action::LeaseExpired, 5).is_err());
    }

    #[test]
    fn holds_release_and_expire() {
        let held = Task {
            held: true,
            attempts: 0,
            state: NotStarted,
        };
        assert_eq!(decide(held, Action::Release, 5), Ok(moves_to(NotStarted)));
        assert_eq!(
            decide(task(NotStarted), Action::Release, 5),
            Ok(Effect::Nothing)
        );
        assert!(decide(task(InProgress), Action::Release, 5).is_err());
        assert_eq!(
            decide(held, Action::HoldExpired, 5),
            Ok(Effect::MovesTo {
                state: Failed,
                error: Some("never released".into())
            })
        );
        assert!(decide(task(NotStarted), Action::HoldExpired, 5).is_err());
    }

    #[test]
    fn cancel_fails_unfinished_tasks_with_a_reason() {
        for from in [NotStarted, InProgress] {
            assert_eq!(
                decide(task(from), Action::Cancel, 5),
                Ok(Effect::MovesTo {
                    state: Failed,
                    error: Some("cancelled".into())
                })
            );
        }
        assert!(decide(task(Failed), Action::Cancel, 5).is_err());
    }

    #[test]
    fn leases_extend_only_while_in_progress() {
        assert_eq!(
            decide(task(InProgress), Action::ExtendLease, 5),
            Ok(Effect::LeaseExtended)
        );
        for from in [NotStarted, Finished, Failed] {
            assert!(decide(task(from), Action::ExtendLease, 5).is_err());
        }
    }

    #[test]
    fn refusals_say_why() {
        let Err(Refusal(reason)) = decide(task(Finished), Action::Finish, 5) else {
            panic!("finishing a finished task must be refused");
        };
        assert_eq!(reason, "cannot finish a task that is finished");
    }
}
