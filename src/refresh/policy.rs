//! When to refresh: pure functions of a grant's state, the time and the request. The same
//! decision is taken before the refresh lock (the hot path, on a lock-free read) and again
//! under it (on the row as it is then).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{GrantState, Scope, TokenStatus};

/// What a caller asks of the access token.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// Valid for at least this long (the refresh buffer, or the caller's longer
    /// `minValiditySeconds`).
    AtLeast(Duration),
    /// Refreshed now, whatever its expiry.
    Forced,
    /// The keeper's refresh: only while the grant is still due (`next_refresh_at` has
    /// passed); a grant another replica refreshed meanwhile is left as it is.
    Due,
}

/// What to do with a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The stored access token will do.
    Serve,
    /// Ask the provider.
    Refresh,
    /// A recent transient failure's cool-down runs until `until`: no refresh before then.
    CoolDown { until: DateTime<Utc> },
    /// The grant is dead: the user must consent again.
    Dead,
    /// The grant has no refresh token, so it cannot be refreshed: consent again.
    NoRefreshToken,
    /// The grant lacks scopes the caller asked for.
    MissingScopes(Vec<Scope>),
}

/// The decision on a grant's state at `now`, for a caller asking `scopes` and `validity`.
pub fn decide(
    state: &GrantState,
    now: DateTime<Utc>,
    scopes: &[Scope],
    validity: Validity,
) -> Decision {
    if state.status != TokenStatus::Active {
        return Decision::Dead;
    }
    let missing: Vec<Scope> = scopes
        .iter()
        .filter(|s| !state.scopes.contains(s))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Decision::MissingScopes(missing);
    }
    match validity {
        Validity::AtLeast(validity) if state.expires_at > after(now, validity) => {
            return Decision::Serve;
        }
        Validity::Due if state.next_refresh_at.is_none_or(|due| due > now) => {
            return Decision::Serve;
        }
        _ => {}
    }
    if let Some(until) = state.retry_after.filter(|t| *t > now) {
        return Decision::CoolDown { until };
    }
    if !state.has_refresh_token {
        return Decision::NoRefreshToken;
    }
    Decision::Refresh
}

/// What a caller gets when no refresh can be made now (a cool-down, a busy lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The stored access token, which has not actually expired.
    Serve,
    /// Nothing valid: try again after this long.
    Unavailable { retry_after: Duration },
}

/// The stored token while it has not actually expired, else a wait until `until` (at
/// least a second).
pub fn fallback(state: &GrantState, now: DateTime<Utc>, until: DateTime<Utc>) -> Fallback {
    if state.expires_at > now {
        return Fallback::Serve;
    }
    let wait = (until - now).to_std().unwrap_or_default();
    Fallback::Unavailable {
        retry_after: wait.max(Duration::from_secs(1)),
    }
}

/// How long to wait before the next refresh after a transient failure: `base` doubled per
/// failure already counted, at most `max`, and never less than what the provider asked.
pub fn cooldown(
    failures: u32,
    base: Duration,
    max: Duration,
    provider_asked: Option<Duration>,
) -> Duration {
    let backoff = base.saturating_mul(1u32 << failures.min(16)).min(max);
    provider_asked.map_or(backoff, |asked| backoff.max(asked))
}

/// `now + duration`, saturating at the latest representable time: durations here come from
/// providers and configuration, and adding them must never panic.
pub fn after(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(duration)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    const MIN: Duration = Duration::from_secs(60);

    fn scope(s: &str) -> Scope {
        Scope::parse(s).unwrap()
    }

    fn at(now: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
        now + TimeDelta::seconds(seconds)
    }

    /// An active grant with a refresh token and the scope `a`, expiring `expires_in_s`
    /// seconds from `now`.
    fn grant(now: DateTime<Utc>, expires_in_s: i64) -> GrantState {
        GrantState {
            status: TokenStatus::Active,
            expires_at: at(now, expires_in_s),
            scopes: vec![scope("a")],
            has_refresh_token: true,
            refresh_failures: 0,
            retry_after: None,
            next_refresh_at: None,
        }
    }

    #[test]
    fn every_branch_of_the_decision() {
        let now = Utc::now();
        let dead = GrantState {
            status: TokenStatus::ReauthorizationRequired,
            ..grant(now, 3600)
        };
        let cooling = GrantState {
            retry_after: Some(at(now, 30)),
            ..grant(now, 10)
        };
        let cooled = GrantState {
            retry_after: Some(at(now, -1)),
            ..grant(now, 10)
        };
        let no_refresh = GrantState {
            has_refresh_token: false,
            ..grant(now, 10)
        };
        let fresh_no_refresh = GrantState {
            has_refresh_token: false,
            ..grant(now, 3600)
        };
        let fresh_cooling = GrantState {
            retry_after: Some(at(now, 30)),
            ..grant(now, 3600)
        };
        let none: &[Scope] = &[];
        let a = [scope("a")];
        let ab = [scope("a"), scope("b")];
        let cases: Vec<(&str, GrantState, &[Scope], Validity, Decision)> = vec![
            (
                "fresh: served",
                grant(now, 3600),
                none,
                Validity::AtLeast(MIN),
                Decision::Serve,
            ),
            (
                "fresh with the asked scope",
                grant(now, 3600),
                &a,
                Validity::AtLeast(MIN),
                Decision::Serve,
            ),
            (
                "within the validity asked: refreshed",
                grant(now, 30),
                none,
                Validity::AtLeast(MIN),
                Decision::Refresh,
            ),
            (
                "exactly at the bound: refreshed",
                grant(now, 60),
                none,
                Validity::AtLeast(MIN),
                Decision::Refresh,
            ),
            (
                "expired: refreshed",
                grant(now, -10),
                none,
                Validity::AtLeast(MIN),
                Decision::Refresh,
            ),
            (
                "a longer validity asked: refreshed",
                grant(now, 3600),
                none,
                Validity::AtLeast(Duration::from_secs(7200)),
                Decision::Refresh,
            ),
            (
                "forced: refreshed even when fresh",
                grant(now, 3600),
                none,
                Validity::Forced,
                Decision::Refresh,
            ),
            (
                "keeper, due: refreshed even when fresh",
                GrantState {
                    next_refresh_at: Some(at(now, -1)),
                    ..grant(now, 3600)
                },
                none,
                Validity::Due,
                Decision::Refresh,
            ),
            (
                "keeper, refreshed meanwhile (no longer due): left alone",
                GrantState {
                    next_refresh_at: Some(at(now, 600)),
                    ..grant(now, 10)
                },
                none,
                Validity::Due,
                Decision::Serve,
            ),
            (
                "keeper, never due: left alone",
                grant(now, 10),
                none,
                Validity::Due,
                Decision::Serve,
            ),
            (
                "keeper, due but dead: dead",
                GrantState {
                    next_refresh_at: Some(at(now, -1)),
                    ..dead.clone()
                },
                none,
                Validity::Due,
                Decision::Dead,
            ),
            (
                "dead: dead",
                dead.clone(),
                none,
                Validity::AtLeast(MIN),
                Decision::Dead,
            ),
            (
                "dead wins over missing scopes",
                dead.clone(),
                &ab,
                Validity::AtLeast(MIN),
                Decision::Dead,
            ),
            (
                "dead, forced: dead",
                dead,
                none,
                Validity::Forced,
                Decision::Dead,
            ),
            (
                "missing scopes",
                grant(now, 3600),
                &ab,
                Validity::AtLeast(MIN),
                Decision::MissingScopes(vec![scope("b")]),
            ),
            (
                "missing scopes win over a refresh",
                grant(now, 10),
                &ab,
                Validity::AtLeast(MIN),
                Decision::MissingScopes(vec![scope("b")]),
            ),
            (
                "cooling down and due",
                cooling.clone(),
                none,
                Validity::AtLeast(MIN),
                Decision::CoolDown { until: at(now, 30) },
            ),
            (
                "cooling down, forced",
                cooling,
                none,
                Validity::Forced,
                Decision::CoolDown { until: at(now, 30) },
            ),
            (
                "cooling down but fresh: served",
                fresh_cooling,
                none,
                Validity::AtLeast(MIN),
                Decision::Serve,
            ),
            (
                "a cool-down that ended: refreshed",
                cooled,
                none,
                Validity::AtLeast(MIN),
                Decision::Refresh,
            ),
            (
                "due without a refresh token",
                no_refresh.clone(),
                none,
                Validity::AtLeast(MIN),
                Decision::NoRefreshToken,
            ),
            (
                "forced without a refresh token",
                no_refresh,
                none,
                Validity::Forced,
                Decision::NoRefreshToken,
            ),
            (
                "fresh without a refresh token: served",
                fresh_no_refresh,
                none,
                Validity::AtLeast(MIN),
                Decision::Serve,
            ),
        ];
        for (name, state, scopes, validity, expected) in cases {
            assert_eq!(decide(&state, now, scopes, validity), expected, "{name}");
        }
    }

    #[test]
    fn the_fallback_serves_an_unexpired_token_and_otherwise_says_how_long_to_wait() {
        let now = Utc::now();
        assert_eq!(fallback(&grant(now, 5), now, at(now, 30)), Fallback::Serve);
        assert_eq!(
            fallback(&grant(now, -5), now, at(now, 30)),
            Fallback::Unavailable {
                retry_after: Duration::from_secs(30)
            }
        );
        // A wait already over, or under a second, is a second.
        assert_eq!(
            fallback(&grant(now, -5), now, at(now, -30)),
            Fallback::Unavailable {
                retry_after: Duration::from_secs(1)
            }
        );
        assert_eq!(
            fallback(&grant(now, 0), now, now),
            Fallback::Unavailable {
                retry_after: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn the_cooldown_doubles_per_failure_up_to_the_cap_and_honours_the_provider() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(300);
        let cases = [
            (0, None, 10),
            (1, None, 20),
            (2, None, 40),
            (5, None, 300),
            (40, None, 300),
            (u32::MAX, None, 300),
            (0, Some(120), 120),
            (5, Some(120), 300),
            (0, Some(3600), 3600),
        ];
        for (failures, asked, expected) in cases {
            assert_eq!(
                cooldown(failures, base, max, asked.map(Duration::from_secs)),
                Duration::from_secs(expected),
                "{failures} failures, provider asked {asked:?}"
            );
        }
        assert_eq!(
            cooldown(16, Duration::MAX, Duration::MAX, None),
            Duration::MAX
        );
    }

    #[test]
    fn adding_a_huge_duration_saturates_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(after(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            after(now, Duration::from_secs(9_000_000_000_000)),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            after(now, Duration::from_secs(60)),
            now + TimeDelta::seconds(60)
        );
    }
}
