//! Quotas of members: what an owner has in use (labs that are up, deployed functions,
//! reservations of requests still starting something), and the reservations that check and
//! take a quota in one step, for labs, functions, checkpoints and captures.

use axum::http::StatusCode;
use kobako_lab::spec::Lab;
use kobako_state::LabState;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ops;
use crate::AppState;

/// What `owner` has in use (VMs, MiB of memory; disk only when `disk`): labs that are up,
/// the reservations of deployed functions (`concurrency` clones of `memory_mib` each, which can
/// all run at once) and the reservations of requests still starting something (`held`); a
/// reserved lab or function is counted by its reservation, not twice. `skip` is left out (the
/// thing being checked).
pub(crate) fn quota_usage(
    db: &kobako_state::Db,
    owner: &str,
    held: &ops::Reservations,
    skip: Option<&ops::Claim>,
    disk: bool,
) -> ApiResult<ops::Usage> {
    let held = held.of(owner);
    let claimed = |c: &ops::Claim| Some(c) == skip || held.iter().any(|(h, _)| h == c);
    let mut u = ops::Usage::default();
    let labs = db.labs()?;
    for l in &labs {
        if l.owner.as_deref() != Some(owner) || claimed(&ops::Claim::Lab(l.name.clone())) {
            continue;
        }
        if matches!(
            l.state,
            LabState::Pending | LabState::Stopped | LabState::Failed
        ) {
            continue;
        }
        if let Ok(other) = serde_json::from_value::<Lab>(l.spec.clone()) {
            u.vms += other.vms().count() as i64;
            u.memory_mib += other.vms().map(|v| v.memory.0 as i64).sum::<i64>();
        }
    }
    for f in kobako_lab::functions::list() {
        if f.owner.as_deref() != Some(owner) || claimed(&ops::Claim::Function(f.name.clone())) {
            continue;
        }
        u.vms += i64::from(f.concurrency);
        u.memory_mib += i64::from(f.concurrency) * i64::from(f.memory_mib);
    }
    for (c, h) in &held {
        if Some(c) != skip {
            u += *h;
        }
    }
    if disk {
        let bytes: u64 = labs
            .iter()
            .filter(|l| l.owner.as_deref() == Some(owner))
            .map(|l| crate::cascade::lab_disk_bytes(&db_state_dir(db), &l.name))
            .sum();
        u.disk_mib += bytes.div_ceil(1024 * 1024) as i64;
    }
    Ok(u)
}

/// The state directory the database lives in (checkpoints and captures are under it).
fn db_state_dir(db: &kobako_state::Db) -> std::path::PathBuf {
    db.path()
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(kobako_state::state_root)
}

/// Checks that `want` more of `caller`'s quota is free beside what is in use and reserved,
/// and reserves it for `claim` in the same step (`None`: the caller has no such quota). 409
/// `quota_exceeded` naming the quota, what `what` needs and what uses the rest.
pub(crate) fn quota_reserve(
    db: &kobako_state::Db,
    caller: &Caller,
    claim: ops::Claim,
    want: ops::Usage,
    what: &str,
) -> ApiResult<Option<ops::Reservation>> {
    let u = &caller.user;
    let limited = (want.vms > 0 && u.max_vms.is_some())
        || (want.memory_mib > 0 && u.max_memory_mib.is_some())
        || (want.disk_mib > 0 && u.max_disk_mib.is_some());
    if caller.local || !limited {
        return Ok(None);
    }
    let mut held = ops::reservations();
    let used = quota_usage(db, caller.name(), &held, Some(&claim), want.disk_mib > 0)?;
    let over = |quota: &str, used: i64, want: i64, max: i64, unit: &str, uses: &str| {
        ApiError::new(
            StatusCode::CONFLICT,
            "quota_exceeded",
            format!(
                "quota exceeded ({quota}): {what} needs {want}{unit}, you have {used}{unit} in use of {max}{unit} ({uses}); {}",
                if quota == "max_disk_mib" {
                    "delete checkpoints or captures, or ask an admin for a larger quota"
                } else {
                    "take another lab down, remove a function or ask an admin for a larger quota"
                }
            ),
        )
    };
    const RUNNING: &str = "labs that are up or starting and deployed functions' concurrency";
    if let Some(max) = u.max_vms.filter(|_| want.vms > 0) {
        if used.vms + want.vms > max {
            return Err(over("max_vms", used.vms, want.vms, max, " VM(s)", RUNNING));
        }
    }
    if let Some(max) = u.max_memory_mib.filter(|_| want.memory_mib > 0) {
        if used.memory_mib + want.memory_mib > max {
            return Err(over(
                "max_memory_mib",
                used.memory_mib,
                want.memory_mib,
                max,
                " MiB of memory",
                RUNNING,
            ));
        }
    }
    if let Some(max) = u.max_disk_mib.filter(|_| want.disk_mib > 0) {
        if used.disk_mib + want.disk_mib > max {
            return Err(over(
                "max_disk_mib",
                used.disk_mib,
                want.disk_mib,
                max,
                " MiB of disk",
                "checkpoints and packet captures of your labs, and those being written",
            ));
        }
    }
    Ok(Some(held.reserve(caller.name(), claim, want)))
}

/// Reserves up to `most` MiB of `caller`'s disk quota for `claim` (a capture that stops when
/// its file is full): what is left of the quota, at most `most`. `None`: no disk quota, take
/// `most`. 409 `quota_exceeded` when less than 1 MiB is left.
pub(crate) fn disk_reserve_upto(
    db: &kobako_state::Db,
    caller: &Caller,
    claim: ops::Claim,
    most: i64,
    what: &str,
) -> ApiResult<(i64, Option<ops::Reservation>)> {
    let Some(max) = caller.user.max_disk_mib.filter(|_| !caller.local) else {
        return Ok((most, None));
    };
    let left = {
        let held = ops::reservations();
        let used = quota_usage(db, caller.name(), &held, Some(&claim), true)?;
        max - used.disk_mib
    };
    let want = ops::Usage {
        disk_mib: left.clamp(1, most.max(1)),
        ..Default::default()
    };
    // Checked again with the reservation taken in one step (another request may have taken
    // some meanwhile).
    let r = quota_reserve(db, caller, claim, want, what)?;
    Ok((want.disk_mib, r))
}

/// The VMs and memory `lab` runs when it is up.
pub(crate) fn lab_usage(lab: &Lab) -> ops::Usage {
    ops::Usage {
        vms: lab.vms().count() as i64,
        memory_mib: lab.vms().map(|v| v.memory.0 as i64).sum(),
        disk_mib: 0,
    }
}

/// Reserves `caller`'s quota for every VM of `lab` (being brought up, restarted, restored or
/// having VMs started), beside the caller's other labs, functions and reservations.
pub(crate) async fn reserve_lab(
    st: &AppState,
    caller: &Caller,
    lab: &Lab,
) -> ApiResult<Option<ops::Reservation>> {
    let (c, want, name) = (
        caller.clone(),
        lab_usage(lab),
        lab.name.as_str().to_string(),
    );
    st.db
        .run(move |db| {
            quota_reserve(
                db,
                &c,
                ops::Claim::Lab(name.clone()),
                want,
                &format!("lab '{name}'"),
            )
        })
        .await
}

/// Whether `lab` alone fits `caller`'s quota (422 `quota_exceeded` otherwise: the lab file
/// asks for more than the quota allows at all). What runs is checked at `up` ([`reserve_lab`]).
pub(crate) fn quota_check(caller: &Caller, lab: &Lab) -> ApiResult<()> {
    let want = lab_usage(lab);
    let over = |what: &str, want: i64, max: i64, unit: &str| {
        ApiError::unprocessable(
            "quota_exceeded",
            format!(
                "quota exceeded: lab '{}' needs {want}{unit} {what}, more than your quota of {max}{unit}; make the lab smaller or ask an admin for a larger quota",
                lab.name.as_str()
            ),
        )
    };
    if let Some(max) = caller.user.max_vms {
        if want.vms > max {
            return Err(over("VMs", want.vms, max, ""));
        }
    }
    if let Some(max) = caller.user.max_memory_mib {
        if want.memory_mib > max {
            return Err(over("of memory", want.memory_mib, max, " MiB"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::auth::{Role, User};

    /// A member with these quotas; each test its own name (reservations are per process).
    fn member(name: &str, max_vms: Option<i64>, max_disk_mib: Option<i64>) -> Caller {
        Caller {
            user: User {
                name: name.into(),
                role: Role::Member,
                max_vms,
                max_memory_mib: None,
                max_disk_mib,
                created_ms: 0,
            },
            local: false,
            cred: crate::auth::Credential::ApiToken { id: "t".into() },
        }
    }

    fn db(dir: &std::path::Path) -> kobako_state::Db {
        let db = kobako_state::Db::open_in(dir).unwrap();
        db.migrate_server().unwrap();
        db
    }

    #[test]
    fn concurrent_reservations_never_share_the_last_of_a_quota() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(db(dir.path()));
        let caller = member("ann1", Some(3), None);
        let go = Arc::new(Barrier::new(8));
        let results: Vec<_> = (0..8)
            .map(|i| {
                let (db, caller, go) = (db.clone(), caller.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    let want = ops::Usage {
                        vms: 1,
                        ..Default::default()
                    };
                    let claim = ops::Claim::Lab(format!("l{i}"));
                    quota_reserve(&db, &caller, claim, want, &format!("lab 'l{i}'"))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let held: Vec<_> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().and_then(|h| h.as_ref()))
            .collect();
        assert_eq!(held.len(), 3, "exactly the quota is reserved");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(e.code, "quota_exceeded");
            assert_eq!(e.status, StatusCode::CONFLICT);
            assert!(e.message.contains("max_vms"), "{}", e.message);
        }
        // A reservation released (its operation ended) frees its share.
        drop(results);
        let again = quota_reserve(
            &db,
            &caller,
            ops::Claim::Lab("l9".into()),
            ops::Usage {
                vms: 3,
                ..Default::default()
            },
            "lab 'l9'",
        )
        .unwrap();
        assert!(again.is_some());
    }

    #[test]
    fn a_reservation_of_a_thing_stands_for_it_and_is_not_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let caller = member("ann2", Some(2), None);
        let want = ops::Usage {
            vms: 2,
            ..Default::default()
        };
        let a = quota_reserve(&db, &caller, ops::Claim::Lab("a".into()), want, "lab 'a'").unwrap();
        // Checking `a` again (a restart) skips its own reservation; another lab does not fit.
        assert!(quota_reserve(&db, &caller, ops::Claim::Lab("a".into()), want, "lab 'a'").is_ok());
        let e =
            quota_reserve(&db, &caller, ops::Claim::Lab("b".into()), want, "lab 'b'").unwrap_err();
        assert!(e.message.contains("2 VM(s) in use of 2"), "{}", e.message);
        drop(a);
        // Other users' reservations and callers without quotas are not limited.
        assert!(member("ann2", None, None).user.max_vms.is_none());
        assert!(quota_reserve(
            &db,
            &member("ann2", None, None),
            ops::Claim::Lab("b".into()),
            want,
            "b"
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn disk_reservations_take_what_is_left_and_refuse_when_nothing_is() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let caller = member("ann3", None, Some(10));
        let (got, h1) =
            disk_reserve_upto(&db, &caller, ops::Claim::Disk("c1".into()), 64, "capture").unwrap();
        assert_eq!(got, 10, "all that is left, not the 64 asked");
        assert!(h1.is_some());
        let e = disk_reserve_upto(&db, &caller, ops::Claim::Disk("c2".into()), 64, "capture")
            .unwrap_err();
        assert_eq!(e.code, "quota_exceeded");
        assert!(e.message.contains("max_disk_mib"), "{}", e.message);
        drop(h1);
        let (got, _h) =
            disk_reserve_upto(&db, &caller, ops::Claim::Disk("c3".into()), 4, "capture").unwrap();
        assert_eq!(got, 4);
    }
}
