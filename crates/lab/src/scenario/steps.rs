//! What each step kind does.
//!
//! A step kind is a field of [`Step`](super::Step) (parsed there, its names checked in
//! `check_against`), one name in `ACTIONS`, and one branch of [`run_once`] returning an
//! [`Outcome`]: what was expected, what was observed, why it failed, and measured numbers. A
//! kind that delegates to a module (a WASM step, [`super::wasm_run`]) gets the run's [`Ctx`]
//! ([`super::ctx`]) and reports through its `Outcome`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kobako_runtime::VmDir;

use super::ctx::{join_all, Ctx, Fault, Outcome};
use super::model::*;
use crate::controller::{self, Result};
use crate::spec::model::Chance;
use crate::spec::units::Percent;
use crate::spec::{Attachment, Impairment};

/// `ping` output → (average rtt ms if any reply, loss %).
pub fn parse_ping(out: &str) -> (Option<f64>, Option<f64>) {
    let loss = out
        .lines()
        .find(|l| l.contains("packet loss"))
        .and_then(|l| {
            l.split(',')
                .find(|p| p.contains("packet loss"))?
                .trim()
                .split('%')
                .next()?
                .trim()
                .parse()
                .ok()
        });
    let avg = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1)?.trim().split('/').nth(1)?.parse().ok());
    (avg, loss)
}

/// `traceroute -n` output → the hop addresses, in order (`*` for a silent hop).
pub fn parse_traceroute(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.parse::<u32>().is_ok())
        })
        .map(|l| l.split_whitespace().nth(1).unwrap_or("*").to_string())
        .collect()
}

/// The HTTP status in `wget -S` / curl output (`HTTP/1.1 404 Not Found` → 404).
pub fn parse_http_status(out: &str) -> Option<u16> {
    out.lines()
        .filter_map(|l| {
            let i = l.find("HTTP/")?;
            l[i..].split_whitespace().nth(1)?.parse().ok()
        })
        .next_back()
}

fn check_num(what: &str, v: Option<f64>, min: Option<f64>, max: Option<f64>) -> Option<String> {
    match v {
        None if min.is_some() || max.is_some() => Some(format!("no {what} measured")),
        Some(v) => {
            if let Some(m) = max {
                if v > m {
                    return Some(format!("{what} {v:.1} > {m}"));
                }
            }
            if let Some(m) = min {
                if v < m {
                    return Some(format!("{what} {v:.1} < {m}"));
                }
            }
            None
        }
        None => None,
    }
}

fn range(what: &str, unit: &str, min: Option<f64>, max: Option<f64>, out: &mut Vec<String>) {
    if let Some(m) = min {
        out.push(format!("{what} ≥ {m}{unit}"));
    }
    if let Some(m) = max {
        out.push(format!("{what} ≤ {m}{unit}"));
    }
}

/// Seconds from two `/proc/uptime` readings in a line `KBT A B`.
fn uptime_secs(out: &str) -> Option<f64> {
    let l = out.lines().find(|l| l.starts_with("KBT "))?;
    let mut w = l.split_whitespace().skip(1);
    let a: f64 = w.next()?.parse().ok()?;
    let b: f64 = w.next()?.parse().ok()?;
    Some(b - a)
}

/// Runs step `st` once.
pub(super) async fn run_once(ctx: &Ctx<'_>, st: &Step) -> Result<Outcome> {
    let lab = ctx.lab.as_str();
    let mut o = Outcome::default();
    let ex = st.expect.clone().unwrap_or_default();
    if let Some(t) = st.wait_ready {
        let deadline = Instant::now() + t.duration();
        loop {
            let db = controller::db()?;
            let vms = db.vms(lab)?;
            let not: Vec<String> = vms
                .iter()
                .filter(|r| controller::observed(r).0 != kobako_state::VmState::Ready)
                .map(|r| r.name.clone())
                .collect();
            if !vms.is_empty() && not.is_empty() {
                o.observed = Some(format!("{} VMs ready", vms.len()));
                break;
            }
            if Instant::now() > deadline {
                o.failure = Some(format!("not ready after {t}: {}", not.join(", ")));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    } else if let Some(i) = &st.impair {
        let chance = |p: Option<Percent>| {
            p.map(|percent| Chance {
                percent,
                correlation: Default::default(),
            })
        };
        let imp = Impairment {
            delay: i.delay,
            jitter: i.jitter,
            loss: chance(i.loss),
            rate: i.rate,
            corrupt: chance(i.corrupt),
            duplicate: chance(i.duplicate),
            reorder: None,
        };
        o.faults.push(ctx.impair(&i.link, Some(imp))?);
    } else if let Some(l) = &st.clear {
        o.faults.push(ctx.impair(l, None)?);
    } else if let Some(l) = &st.link {
        o.faults.push(ctx.set_link(&l.link, l.state == UpDown::Up)?);
    } else if let Some(e) = &st.exec {
        let timeout = e
            .timeout
            .map(|t| t.duration())
            .unwrap_or(Duration::from_secs(30));
        let t = Instant::now();
        let (code, out, err) = ctx.exec(&e.vm, &e.cmd, timeout).await?;
        let want_exit = ex.exit.unwrap_or(0);
        o.expected = Some(format!(
            "exit {want_exit}{}{}",
            ex.stdout_contains
                .as_ref()
                .map(|s| format!(", stdout contains {s:?}"))
                .unwrap_or_default(),
            ex.stdout_not_contains
                .as_ref()
                .map(|s| format!(", stdout without {s:?}"))
                .unwrap_or_default()
        ));
        let short: String = out.chars().take(400).collect();
        o.observed = Some(format!("exit {code}, stdout {short:?}"));
        o.metric("exit", code);
        o.metric("time_ms", t.elapsed().as_millis() as u64);
        if code != want_exit {
            o.failure = Some(format!(
                "exit {code}, expected {want_exit}{}",
                if err.trim().is_empty() {
                    String::new()
                } else {
                    format!(" (stderr: {})", err.trim())
                }
            ));
        } else if let Some(s) = ex.stdout_contains.as_ref().filter(|s| !out.contains(*s)) {
            o.failure = Some(format!("stdout does not contain {s:?}"));
        } else if let Some(s) = ex.stdout_not_contains.as_ref().filter(|s| out.contains(*s)) {
            o.failure = Some(format!("stdout contains {s:?}"));
        }
    } else if let Some(r) = &st.rtt {
        let to = ctx.address(&r.from, &r.to)?;
        let cmd = format!("ping -c {} -W 2 {to}", r.count.max(1));
        let (_, out, _) = ctx
            .exec(&r.from, &cmd, Duration::from_secs(10 + 3 * r.count as u64))
            .await?;
        let (avg, loss) = parse_ping(&out);
        o.metric("rtt_ms", avg);
        o.metric("loss_pct", loss);
        o.observed = Some(format!(
            "rtt {} ms, loss {}%",
            avg.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
            loss.map(|v| format!("{v:.0}")).unwrap_or("-".into())
        ));
        let mut want = Vec::new();
        range("rtt", " ms", ex.min_ms, ex.max_ms, &mut want);
        range("loss", "%", ex.min_loss, ex.max_loss, &mut want);
        o.expected = (!want.is_empty()).then(|| want.join(", "));
        o.failure = check_num("rtt ms", avg, ex.min_ms, ex.max_ms)
            .or_else(|| check_num("loss %", loss, ex.min_loss, ex.max_loss));
    } else if let Some(d) = st.sleep {
        tokio::time::sleep(d.duration()).await;
    } else if let Some(v) = &st.pause {
        let name = controller::resolve_in_lab(lab, v)?;
        ctx.rt.pause(&VmDir::for_name(&name)).await?;
        o.faults.push(Fault::Paused(name));
    } else if let Some(v) = &st.resume {
        let name = controller::resolve_in_lab(lab, v)?;
        ctx.rt.resume(&VmDir::for_name(&name)).await?;
        ctx.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|f| f != &Fault::Paused(name.clone()));
    } else if let Some(w) = &st.wasm {
        o = super::wasm_run::run(ctx, w).await?;
    } else if let Some(t) = &st.restart {
        let target = t.strip_prefix(&format!("{lab}/")).unwrap_or(t);
        let r =
            controller::restart(ctx.rt.clone(), lab, Some(target), ctx.boot, ctx.progress).await?;
        if !r.ok() {
            o.failure = Some("restarted VMs did not all become ready".into());
        }
        ctx.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|f| !matches!(f, Fault::Killed(k) if k == target || k.starts_with(&format!("{target}."))));
    } else if let Some(v) = &st.kill {
        let short = v.strip_prefix(&format!("{lab}/")).unwrap_or(v).to_string();
        let name = controller::resolve_in_lab(lab, &short)?;
        ctx.rt.kill(&VmDir::for_name(&name)).await?;
        o.observed = Some(format!("{name} killed"));
        o.faults.push(Fault::Killed(short));
    } else if let Some(c) = &st.restore {
        let r = controller::checkpoint::restore(ctx.rt.clone(), lab, c, ctx.progress).await?;
        o.observed = Some(format!("checkpoint {c} restored"));
        if !r.ok() {
            o.failure = Some(format!("after restoring {c}, not every VM is ready"));
        }
    } else if let Some(set) = &st.partition {
        o.faults = partition(ctx, set)?;
        o.observed = Some(format!(
            "{} cut off ({} links, {} network ports)",
            set.join(", "),
            o.faults
                .iter()
                .filter(|f| matches!(f, Fault::Link(_)))
                .count(),
            o.faults
                .iter()
                .filter(|f| matches!(f, Fault::Port(..)))
                .count()
        ));
    } else if let Some(h) = &st.heal {
        let done = if h == "all" {
            ctx.undo(None).await
        } else {
            ctx.undo(Some(&[Fault::Link(h.clone())])).await
        };
        o.observed = Some(if done.is_empty() {
            "nothing to heal".into()
        } else {
            done.join("; ")
        });
    } else if let Some(h) = &st.http {
        let secs = h
            .timeout
            .map(|t| t.duration().as_secs().max(1))
            .unwrap_or(10);
        let url = h.url.replace('\'', "");
        let cmd = format!(
            "rm -f /tmp/.kb-http; read a _ < /proc/uptime; \
             if command -v curl >/dev/null 2>&1; then curl -s -o /tmp/.kb-http -w 'HTTP/1.1 %{{http_code}}\\n' -m {secs} '{url}'; \
             else timeout {secs} wget -S -q -O /tmp/.kb-http '{url}' 2>&1; fi; rc=$?; read b _ < /proc/uptime; \
             echo; echo \"KBT $a $b\"; echo \"KBRC $rc\"; echo KBBODY; head -c 4000 /tmp/.kb-http 2>/dev/null"
        );
        let (_, out, err) = ctx
            .exec(&h.from, &cmd, Duration::from_secs(secs + 10))
            .await?;
        let (head, body) = out.split_once("KBBODY\n").unwrap_or((&out, ""));
        let status = parse_http_status(head);
        let ms = uptime_secs(head).map(|s| (s * 1000.0).round());
        o.metric("status", status);
        o.metric("time_ms", ms);
        let want = ex.status.unwrap_or(200);
        let mut w = vec![format!("status {want}")];
        range("time", " ms", ex.min_ms, ex.max_ms, &mut w);
        if let Some(s) = &ex.stdout_contains {
            w.push(format!("body contains {s:?}"));
        }
        o.expected = Some(w.join(", "));
        let short: String = body.chars().take(200).collect();
        o.observed = Some(format!(
            "status {}, {} ms, body {short:?}",
            status.map(|s| s.to_string()).unwrap_or("-".into()),
            ms.map(|m| format!("{m:.0}")).unwrap_or("-".into())
        ));
        o.failure = if status != Some(want) {
            Some(match status {
                Some(s) => format!("status {s}, expected {want}"),
                None => format!(
                    "no HTTP response ({})",
                    (head.trim().to_string() + " " + err.trim()).trim()
                ),
            })
        } else if let Some(f) = check_num("time ms", ms, ex.min_ms, ex.max_ms) {
            Some(f)
        } else {
            ex.stdout_contains
                .as_ref()
                .filter(|s| !body.contains(*s))
                .map(|s| format!("body does not contain {s:?}"))
        };
    } else if let Some(r) = &st.reach {
        reach(ctx, r, &ex, &mut o).await?;
    } else if let Some(t) = &st.throughput {
        throughput(ctx, t, &ex, &mut o).await?;
    } else if let Some(p) = &st.path {
        let to = ctx.address(&p.from, &p.to)?;
        let (_, out, err) = ctx
            .exec(
                &p.from,
                &format!("traceroute -n -m 8 -q 1 -w 1 {to} 2>&1"),
                Duration::from_secs(30),
            )
            .await?;
        let hops = parse_traceroute(&out);
        o.metric("hops", hops.len());
        o.observed = Some(if hops.is_empty() {
            format!("no route traced: {}", (out + &err).trim())
        } else {
            format!("hops {}", hops.join(" → "))
        });
        if let Some(v) = &ex.via {
            o.expected = Some(format!("via {v}"));
            if !hops.iter().any(|h| h == v) {
                o.failure = Some(format!("the route does not pass {v}"));
            }
        }
    }
    Ok(o)
}

/// Cuts VMs `set` off from the rest: links to a VM outside the set go down, and so does each
/// of their ports on a network shared with a VM outside the set (so the set's VMs lose that
/// network entirely; links between them keep working).
fn partition(ctx: &Ctx<'_>, set: &[String]) -> Result<Vec<Fault>> {
    let lab = &ctx.rec.lab;
    let mut inside = BTreeSet::new();
    for v in set {
        let short = v.strip_prefix(&format!("{}/", ctx.lab)).unwrap_or(v);
        inside.insert(lab.find_vm(short)?.id.clone());
    }
    let mut faults = Vec::new();
    for l in &lab.links {
        let [a, b] = &l.endpoints;
        if inside.contains(&a.vm) != inside.contains(&b.vm) {
            faults.push(ctx.set_link(l.name.as_str(), false)?);
        }
    }
    for vm in lab.vms().filter(|v| inside.contains(&v.id)) {
        for i in &vm.interfaces {
            if matches!(i.attach, Attachment::Link(_)) {
                continue;
            }
            let shared_outside = lab.vms().filter(|o| !inside.contains(&o.id)).any(|o| {
                o.interfaces.iter().any(|oi| match (&oi.attach, &i.attach) {
                    (Attachment::Network(x), Attachment::Network(y)) => x == y,
                    (Attachment::NodeNetwork, Attachment::NodeNetwork) => o.id.node == vm.id.node,
                    _ => false,
                })
            });
            if shared_outside {
                let name = format!("{}.{}", vm.id.node.as_str(), vm.id.vm.as_str());
                controller::set_port_state(&ctx.lab, &name, i.name.as_str(), false)?;
                faults.push(Fault::Port(name, i.name.as_str().into()));
            }
        }
    }
    Ok(faults)
}

async fn reach(ctx: &Ctx<'_>, r: &ReachStep, ex: &Expect, o: &mut Outcome) -> Result<()> {
    // Per source: the address of each other VM it would use.
    let mut plan: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for from in &r.vms {
        let mut targets = Vec::new();
        for to in r.vms.iter().filter(|v| *v != from) {
            targets.push((to.clone(), ctx.address(from, to)?));
        }
        plan.push((from.clone(), targets));
    }
    let probes = plan.iter().map(|(from, targets)| {
        let cmd = format!(
            "for t in {}; do (if ping -c 2 -W 1 $t >/dev/null 2>&1; then echo \"R $t\"; else echo \"N $t\"; fi) & done; wait",
            targets.iter().map(|t| t.1.as_str()).collect::<Vec<_>>().join(" ")
        );
        async move {
            let res = ctx.exec(from, &cmd, Duration::from_secs(30)).await;
            (from.clone(), targets, res)
        }
    });
    let results = join_all(probes).await;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut notes = Vec::new();
    for (from, targets, res) in results {
        // A VM that cannot run the probe (killed, paused) reaches nobody.
        let out = match res {
            Ok((_, out, _)) => out,
            Err(e) => {
                notes.push(format!("{from}: {e}"));
                String::new()
            }
        };
        let mut to: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("R "))
            .filter_map(|a| {
                targets
                    .iter()
                    .find(|t| t.1 == a.trim())
                    .map(|t| t.0.clone())
            })
            .collect();
        to.sort();
        seen.insert(from, to);
    }
    let show = |m: &BTreeMap<String, Vec<String>>| {
        m.iter()
            .map(|(k, v)| format!("{k} → [{}]", v.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    o.observed = Some(format!(
        "{}{}",
        show(&seen),
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        }
    ));
    o.metric("reachable", seen.values().map(|v| v.len()).sum::<usize>());
    let mut mismatches = Vec::new();
    if let Some(want) = &ex.reach {
        let want: BTreeMap<String, Vec<String>> = want
            .iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                v.sort();
                (k.clone(), v)
            })
            .collect();
        o.expected = Some(show(&want));
        for (from, tos) in &want {
            let got = seen.get(from).cloned().unwrap_or_default();
            for t in tos.iter().filter(|t| !got.contains(t)) {
                mismatches.push(format!("{from} cannot reach {t}"));
            }
            for t in got.iter().filter(|t| !tos.contains(t)) {
                mismatches.push(format!("{from} reaches {t}"));
            }
        }
    }
    o.metric("mismatches", mismatches.len());
    if !mismatches.is_empty() {
        o.failure = Some(mismatches.join(", "));
    }
    Ok(())
}

async fn throughput(ctx: &Ctx<'_>, t: &ThroughputStep, ex: &Expect, o: &mut Outcome) -> Result<()> {
    let kib = t.size.map(|m| m.0 * 1024).unwrap_or(4096).max(1);
    let to = match &t.address {
        Some(a) => a.clone(),
        None => ctx.address(&t.from, &t.to)?,
    };
    // A fresh port and directory per step; the server is stopped by its command line and
    // ends by itself after 120 s in any case.
    let port = 5201 + (ctx.now_ms() % 2000) as u32;
    let dir = format!("/tmp/kbtp{port}");
    let stop = format!(
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q 'httpd -f -p [{d}]{rest:03} ' && kill ${{p#/proc/}}; done; rm -rf {dir}",
        d = port / 1000,
        rest = port % 1000
    );
    let serve = format!(
        "mkdir -p {dir} && dd if=/dev/zero of={dir}/f bs=1024 count={kib} 2>/dev/null && \
         (setsid timeout 120 busybox httpd -f -p {port} -h {dir} >/dev/null 2>&1 </dev/null &) && sleep 0.3"
    );

    let (code, _, err) = ctx.exec(&t.to, &serve, Duration::from_secs(30)).await?;
    if code != 0 {
        o.failure = Some(format!(
            "could not serve the test data on {}: {}",
            t.to,
            err.trim()
        ));
        return Ok(());
    }
    let get = format!(
        "read a _ < /proc/uptime; \
         if command -v wget >/dev/null 2>&1; then timeout 60 wget -q -O /dev/null http://{to}:{port}/f; \
         else curl -s -o /dev/null -m 60 http://{to}:{port}/f; fi; rc=$?; read b _ < /proc/uptime; \
         echo \"KBT $a $b\"; exit $rc"
    );
    let r = ctx.exec(&t.from, &get, Duration::from_secs(70)).await;
    let _ = ctx.exec(&t.to, &stop, Duration::from_secs(10)).await;
    let (code, out, err) = r?;
    let bytes = kib * 1024;
    let secs = uptime_secs(&out).map(|s| s.max(0.01));
    let mbps = secs.map(|s| bytes as f64 * 8.0 / s / 1e6);
    o.metric("bytes", bytes);
    o.metric("time_ms", secs.map(|s| (s * 1000.0).round()));
    o.metric("mbps", mbps.map(|m| (m * 100.0).round() / 100.0));
    let mut w = Vec::new();
    range("throughput", " Mbit/s", ex.min_mbps, ex.max_mbps, &mut w);
    o.expected = (!w.is_empty()).then(|| w.join(", "));
    if code != 0 {
        o.metrics.clear();
        o.observed = Some(format!("download from {to} failed (exit {code})"));
        o.failure = Some(format!(
            "download from {} ({to}) failed: {}",
            t.to,
            err.trim()
        ));
        return Ok(());
    }
    o.observed = Some(format!(
        "{} KiB in {} s = {} Mbit/s",
        kib,
        secs.map(|s| format!("{s:.2}")).unwrap_or("-".into()),
        mbps.map(|m| format!("{m:.2}")).unwrap_or("-".into())
    ));
    o.failure = check_num("Mbit/s", mbps, ex.min_mbps, ex.max_mbps);
    Ok(())
}
