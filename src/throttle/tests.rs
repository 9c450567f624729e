use super::*;

fn spec(quota: u32) -> BudgetSpec {
    BudgetSpec {
        quota,
        safety_margin: 0.05,
        burst: 0.05,
        max_wait: Duration::from_secs(2),
        max_waiters: 10_000,
    }
}

/// Tencent's 200/s gives a budget of 190 per second: a burst of 9, then 181/s.
#[test]
fn budget_numbers_for_tencents_quota() {
    let spec = spec(200);
    assert_eq!(
        (spec.budget(), spec.burst_calls(), spec.rate()),
        (190, 9, 181)
    );
    let tiny = BudgetSpec { quota: 2, ..spec };
    assert_eq!((tiny.budget(), tiny.burst_calls(), tiny.rate()), (1, 1, 1));
    let no_margin = BudgetSpec {
        safety_margin: 0.0,
        ..spec
    };
    assert_eq!(no_margin.budget(), 199, "always strictly below the quota");
}

/// Under paused time, 10 s of unbounded demand yields at most `budget` permits in every
/// sliding second and a sustained rate of `rate`.
#[tokio::test(start_paused = true)]
async fn no_sliding_second_exceeds_the_budget() {
    let budget = std::sync::Arc::new(Budget::new(BudgetSpec {
        max_wait: Duration::from_secs(60),
        ..spec(200)
    }));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..2_000 {
        let budget = std::sync::Arc::clone(&budget);
        tasks.push(tokio::spawn(async move {
            let _ = budget
                .acquire(Instant::now() + Duration::from_secs(60))
                .await
                .unwrap();
            Instant::now()
        }));
    }
    let mut times = Vec::new();
    for task in tasks {
        times.push(task.await.unwrap() - start);
    }
    times.sort();
    let mut max_in_window = 0;
    let mut left = 0;
    for right in 0..times.len() {
        while times[right] - times[left] >= Duration::from_secs(1) {
            left += 1;
        }
        max_in_window = max_in_window.max(right - left + 1);
    }
    assert!(max_in_window <= 190, "{max_in_window} calls in one second");
    // 2,000 calls at 181/s after a burst of 9 take (2000 - 9) / 181 s ≈ 11.0 s.
    let last = *times.last().unwrap();
    assert!(
        last >= Duration::from_millis(10_990) && last <= Duration::from_millis(11_010),
        "{last:?}"
    );
}

/// Callers are served in arrival order.
#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_in_first_out() {
    let budget = std::sync::Arc::new(Budget::new(spec(20)));
    let order = std::sync::Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..30 {
        let budget = std::sync::Arc::clone(&budget);
        let order = std::sync::Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            if budget
                .acquire(Instant::now() + Duration::from_secs(60))
                .await
                .is_ok()
            {
                order.lock().unwrap().push(i);
            }
        }));
        // Arrival order is spawn order: let each task reserve before the next starts.
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    assert!(!order.is_empty());
}

/// A caller whose slot is beyond `max_wait` is refused at once with the wait it would
/// have needed, and reserves nothing.
#[tokio::test(start_paused = true)]
async fn beyond_max_wait_is_refused_with_retry_after() {
    let budget = Budget::new(BudgetSpec {
        max_wait: Duration::ZERO,
        ..spec(20)
    });
    // Budget 19, burst 1 → rate 18/s: one call now, the next ~55.6 ms later.
    let far = Instant::now() + Duration::from_secs(60);
    let _ = budget.acquire(far).await.unwrap();
    let refused = budget.acquire(far).await.unwrap_err();
    assert_eq!(
        refused,
        ThrottleError::Saturated {
            retry_after: Duration::from_secs(1) / 18
        }
    );
    tokio::time::advance(Duration::from_secs(1) / 18).await;
    let _ = budget.acquire(far).await.unwrap();
}

/// A caller that may not wait (deadline already past) still gets a slot that is free now,
/// and is refused only when it would have to wait.
#[tokio::test(start_paused = true)]
async fn no_wait_callers_take_free_slots_only() {
    let budget = Budget::new(spec(20));
    let past = Instant::now();
    tokio::time::advance(Duration::from_millis(1)).await;
    let _ = budget.acquire(past).await.expect("a free slot");
    assert!(matches!(
        budget.acquire(past).await,
        Err(ThrottleError::Saturated { .. })
    ));
}

/// A caller that leaves before its slot gives it back: the next caller gets that slot, so
/// departures waste no quota; the latest reservation is simply undone.
#[tokio::test(start_paused = true)]
async fn abandoned_slots_are_given_back() {
    let budget = std::sync::Arc::new(Budget::new(spec(20)));
    let interval = Duration::from_secs(1) / 18; // budget 19, burst 1, rate 18/s
    let far = Instant::now() + Duration::from_secs(60);
    let start = Instant::now();
    // tokio's timer wakes on whole milliseconds, so a slot is reached up to 1 ms late.
    let near = |elapsed: Duration, slot: Duration| {
        assert!(
            elapsed >= slot && elapsed <= slot + Duration::from_millis(1),
            "{elapsed:?} is not slot {slot:?}"
        )
    };
    let _ = budget.acquire(far).await.unwrap(); // slot 0
    let spawn_waiter = || {
        let budget = std::sync::Arc::clone(&budget);
        tokio::spawn(async move {
            let _ = budget.acquire(far).await.unwrap();
            Instant::now() - start
        })
    };
    let first = spawn_waiter(); // slot 1
    tokio::task::yield_now().await;
    let second = spawn_waiter(); // slot 2
    tokio::task::yield_now().await;
    first.abort(); // leaves before slot 1
    let _ = first.await;
    assert_eq!(budget.waiters(), 1);
    // A newcomer takes the returned slot 1, not a fresh slot 3.
    let _ = budget.acquire(far).await.unwrap();
    near(Instant::now() - start, interval);
    near(second.await.unwrap(), interval * 2);
    // The latest reservation, abandoned, is undone: the next caller gets its slot.
    let third = spawn_waiter(); // slot 3
    tokio::task::yield_now().await;
    third.abort();
    let _ = third.await;
    let _ = budget.acquire(far).await.unwrap();
    near(Instant::now() - start, interval * 3);
}

/// When `max_waiters` callers already wait, the next one is refused with QueueFull.
#[tokio::test(start_paused = true)]
async fn full_queue_refuses_newcomers() {
    let budget = std::sync::Arc::new(Budget::new(BudgetSpec {
        max_waiters: 2,
        ..spec(20)
    }));
    let far = Instant::now() + Duration::from_secs(60);
    let _ = budget.acquire(far).await.unwrap(); // no wait
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let budget = std::sync::Arc::clone(&budget);
        waiting.push(tokio::spawn(async move { budget.acquire(far).await }));
        tokio::task::yield_now().await;
    }
    assert_eq!(budget.waiters(), 2);
    assert!(matches!(
        budget.acquire(far).await,
        Err(ThrottleError::QueueFull { .. })
    ));
    for task in waiting {
        let _ = task.await.unwrap().unwrap();
    }
    assert_eq!(budget.waiters(), 0);
}

/// A back-off pauses new and already-waiting callers until it ends, doubling per strike
/// and resetting after a success.
#[tokio::test(start_paused = true)]
async fn back_off_pauses_waiters_and_doubles() {
    let budget = std::sync::Arc::new(Budget::new(spec(20)));
    let far = Instant::now() + Duration::from_secs(60);
    let _ = budget.acquire(far).await.unwrap();
    let waiter = {
        let budget = std::sync::Arc::clone(&budget);
        tokio::spawn(async move {
            let started = Instant::now();
            let _ = budget.acquire(far).await.unwrap();
            Instant::now() - started
        })
    };
    tokio::task::yield_now().await;
    let base = Duration::from_secs(1);
    assert_eq!(
        budget.back_off(base, Duration::from_secs(30), PauseReason::FrequencyLimit),
        base
    );
    assert!(budget.is_paused());
    assert_eq!(
        waiter.await.unwrap(),
        base,
        "the waiter moved to the pause's end"
    );
    assert_eq!(
        budget.back_off(base, Duration::from_secs(30), PauseReason::FrequencyLimit),
        base * 2
    );
    budget.record_success();
    assert_eq!(
        budget.back_off(base, Duration::from_secs(30), PauseReason::FrequencyLimit),
        base
    );
    let quick = Budget::new(BudgetSpec {
        max_wait: Duration::from_millis(100),
        ..spec(20)
    });
    quick.lock_out(LOCKOUT);
    assert!(matches!(
        quick.acquire(far).await,
        Err(ThrottleError::LockedOut { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_new_spec_applies_to_slots_taken_after_it() {
    let spec = |quota| BudgetSpec {
        quota,
        safety_margin: 0.0,
        burst: 0.0,
        max_wait: Duration::from_secs(10),
        max_waiters: 100,
    };
    // 6/s: budget 5, burst 1, rate 4 → one slot per 250 ms.
    let budget = Budget::new(spec(6));
    let start = Instant::now();
    budget.acquire(start).await.unwrap();
    budget
        .acquire(start + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(Instant::now() - start, Duration::from_millis(250));
    // 3/s: budget 2, burst 1, rate 1 → the next slot is 250 ms after the last (reserved
    // under the old spec), the one after it a whole second later.
    budget.set_spec(spec(3));
    assert_eq!(budget.spec().quota, 3);
    budget
        .acquire(start + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(Instant::now() - start, Duration::from_millis(500));
    budget
        .acquire(start + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(Instant::now() - start, Duration::from_millis(1500));
}

/// A larger burst is earned by idle time under the new numbers, not granted at once: raising
/// the burst of a saturated budget keeps every sliding second at the budget.
#[tokio::test(start_paused = true)]
async fn a_larger_burst_does_not_add_calls_to_a_busy_second() {
    let spec = |burst| BudgetSpec {
        quota: 101,
        safety_margin: 0.05,
        burst,
        max_wait: Duration::from_secs(10),
        max_waiters: 100,
    };
    // Budget 95 either way: burst 1 and rate 94, then burst 9 and rate 86.
    let budget = Budget::new(spec(0.0));
    let start = Instant::now();
    let mut grants = Vec::new();
    // A caller every millisecond takes a slot if one is free at once (no waiting).
    while Instant::now() < start + Duration::from_secs(4) {
        if Instant::now() >= start + Duration::from_secs(2) && budget.spec().burst == 0.0 {
            budget.set_spec(spec(0.1));
        }
        if budget.acquire(Instant::now()).await.is_ok() {
            grants.push(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let busiest = grants
        .iter()
        .map(|&from| {
            grants
                .iter()
                .filter(|&&t| t >= from && t < from + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert_eq!(spec(0.1).budget(), 95);
    assert!(busiest <= 95, "{busiest} calls in one second");
    // And the budget is used: the new rate holds after the change.
    let last_second = grants
        .iter()
        .filter(|&&t| t >= start + Duration::from_secs(3))
        .count();
    assert!(last_second >= 85, "{last_second}");
}
