//! Build + tear down a lab network of 50 links, kobako-net vs. iproute2.
//!
//! One "link" = a bridge with two persistent taps (the two VM interfaces), all up, with a
//! tbf rate limit on one end. Both sides create the same objects in a fresh namespace and
//! then remove the namespace with everything in it.
//!
//! Run as root: `cargo bench -p kobako-net --bench lab50` (env `KB_BENCH_RUNS`, default 3).

use std::process::Command;
use std::time::{Duration, Instant};

use kobako_net::{BridgeOpts, IfName, LabName, LabNet, Netns, PortSpec, Rtnl, Shaping};

/// Creates and deletes a bridge in a scratch namespace: a netlink operation that needs the
/// RTNL lock, so it waits for any namespace teardown still running in the kernel.
fn rtnl_probe(rt: &Rtnl) {
    let n = IfName::new("kbprobe").expect("name");
    rt.ensure_bridge(&n, BridgeOpts::default())
        .expect("probe bridge");
    rt.delete_link("kbprobe").expect("probe delete");
}

const LINKS: usize = 50;

fn ours(name: &LabName, probe: &Rtnl, detached: bool) -> (Duration, Duration) {
    let t0 = Instant::now();
    let net = LabNet::ensure(name).expect("create lab");
    let shaping = Shaping::new(10_000_000, 16_000, 64_000).expect("shaping");
    for i in 0..LINKS {
        let br = IfName::new(format!("l{i}")).expect("name");
        net.ensure_bridge(&br, None, None, false).expect("bridge");
        for side in ["a", "b"] {
            let tap = IfName::new(format!("t{i}{side}")).expect("name");
            net.ensure_port(&PortSpec::tap(tap, br.clone()))
                .expect("tap");
        }
        net.set_shaping(&IfName::new(format!("t{i}a")).expect("name"), Some(shaping))
            .expect("tbf");
    }
    let build = t0.elapsed();
    let t1 = Instant::now();
    if detached {
        net.destroy_detached().expect("delete lab");
    } else {
        net.destroy().expect("delete lab");
    }
    rtnl_probe(probe);
    (build, t1.elapsed())
}

fn run(script: &str) {
    let st = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .status()
        .expect("sh");
    assert!(st.success(), "script failed: {script}");
}

/// One `ip`/`tc` process per step, as a shell script would do it.
fn iproute2(ns: &str, probe: &Rtnl) -> (Duration, Duration) {
    let mut s = format!("ip netns add {ns}\nip -n {ns} link set lo up\n");
    for i in 0..LINKS {
        s += &format!(
            "ip -n {ns} link add l{i} type bridge\nip -n {ns} link set l{i} up\n\
             ip -n {ns} tuntap add t{i}a mode tap\nip -n {ns} link set t{i}a master l{i} up\n\
             ip -n {ns} tuntap add t{i}b mode tap\nip -n {ns} link set t{i}b master l{i} up\n\
             tc -n {ns} qdisc replace dev t{i}a root tbf rate 10mbit burst 16000 limit 64000\n"
        );
    }
    let t0 = Instant::now();
    run(&s);
    let build = t0.elapsed();
    let t1 = Instant::now();
    run(&format!("ip netns del {ns}"));
    rtnl_probe(probe);
    (build, t1.elapsed())
}

/// The fastest iproute2 can do: one `ip -batch` and one `tc -batch` process.
fn iproute2_batch(ns: &str, probe: &Rtnl) -> (Duration, Duration) {
    let dir = std::env::temp_dir();
    let ipf = dir.join("kb-bench.ip");
    let tcf = dir.join("kb-bench.tc");
    let mut ip = String::from("link set lo up\n");
    let mut tc = String::new();
    for i in 0..LINKS {
        ip += &format!(
            "link add l{i} type bridge\nlink set l{i} up\n\
             tuntap add t{i}a mode tap\nlink set t{i}a master l{i} up\n\
             tuntap add t{i}b mode tap\nlink set t{i}b master l{i} up\n"
        );
        tc += &format!("qdisc replace dev t{i}a root tbf rate 10mbit burst 16000 limit 64000\n");
    }
    std::fs::write(&ipf, ip).expect("write");
    std::fs::write(&tcf, tc).expect("write");
    let t0 = Instant::now();
    run(&format!(
        "ip netns add {ns}\nip -n {ns} -batch {}\ntc -n {ns} -batch {}",
        ipf.display(),
        tcf.display()
    ));
    let build = t0.elapsed();
    let t1 = Instant::now();
    run(&format!("ip netns del {ns}"));
    rtnl_probe(probe);
    let td = t1.elapsed();
    let _ = std::fs::remove_file(ipf);
    let _ = std::fs::remove_file(tcf);
    (build, td)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lab50 bench needs root");
        std::process::exit(1);
    }
    let runs: usize = std::env::var("KB_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let name = LabName::new("kbbench").expect("name");
    let ipns = "kb-kbbench-ip";
    let _ = LabNet::delete(&name);
    let _ = Command::new("ip")
        .args(["netns", "del", ipns])
        .stderr(std::process::Stdio::null())
        .status();
    let scratch = Netns::create("kb-bench-probe").expect("scratch netns");
    let probe = Rtnl::open(&scratch).expect("probe socket");

    let (mut ob, mut ot, mut ib, mut it, mut bb, mut bt) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut db, mut dt) = (vec![], vec![]);
    // `ip netns del` leaves the kernel tearing the namespace down in the background (holding
    // the RTNL lock); settle between measurements so no run pays for the previous one.
    let settle = || std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..runs {
        settle();
        let (b, t) = ours(&name, &probe, false);
        ob.push(b);
        ot.push(t);
        settle();
        let (b, t) = ours(&name, &probe, true);
        db.push(b);
        dt.push(t);
        settle();
        let (b, t) = iproute2(ipns, &probe);
        ib.push(b);
        it.push(t);
        settle();
        let (b, t) = iproute2_batch(ipns, &probe);
        bb.push(b);
        bt.push(t);
    }
    let (db, dt) = (median(db), median(dt));
    let (ob, ot, ib, it, bb, bt) = (
        median(ob),
        median(ot),
        median(ib),
        median(it),
        median(bb),
        median(bt),
    );
    println!("lab network of {LINKS} links (bridge + 2 taps + tbf each), median of {runs} runs");
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "", "build ms", "delete ms", "total ms"
    );
    for (n, b, t) in [
        ("kobako-net (netlink)", ob, ot),
        ("kobako-net, detached delete", db, dt),
        ("ip/tc, one process/step", ib, it),
        ("ip -batch + tc -batch", bb, bt),
    ] {
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>10.1}",
            n,
            ms(b),
            ms(t),
            ms(b + t)
        );
    }
    println!(
        "ratio ip/tc per step : kobako-net = {:.1}x (build {:.1}x)",
        ms(ib + it) / ms(ob + ot),
        ms(ib) / ms(ob)
    );
    println!(
        "ratio ip -batch      : kobako-net = {:.1}x (build {:.1}x)",
        ms(bb + bt) / ms(ob + ot),
        ms(bb) / ms(ob)
    );
    println!(
        "ratio ip/tc per step : kobako-net detached = {:.1}x",
        ms(ib + it) / ms(db + dt)
    );
    println!(
        "ratio ip -batch      : kobako-net detached = {:.1}x",
        ms(bb + bt) / ms(db + dt)
    );
    println!("delete ms = until the kernel is done: the delete call plus one RTNL-locked probe");
    println!("(`ip netns del` returns at once and the kernel tears the namespace down in the");
    println!("background holding the RTNL lock; kobako-net deletes every link before returning).");
    drop(probe);
    let _ = Netns::delete("kb-bench-probe");
}
