//! delay-probe: a kobako scenario step written in Rust, built to WebAssembly.
//!
//! Measures the round trip between two VMs, adds a delay to the link between them, checks the
//! round trip grew by about twice that delay (netem-like delay is one-way, applied in both
//! directions), clears the delay and checks the round trip is back. Leaves `baseline_ms`,
//! `delayed_ms` and `restored_ms` as step variables.
//!
//! Step variables it reads: `from` (NODE.VM), `to` (an address), `link`, `delay_ms` (100).

mod kobako;

fn avg_rtt_ms(from: &str, to: &str) -> Result<f64, String> {
    let out = kobako::exec(from, &format!("ping -c 3 -W 2 {to}"), 20_000)?;
    if out.code != 0 {
        return Err(format!("ping {to} from {from}: exit {}: {}", out.code, out.stdout));
    }
    // busybox: "round-trip min/avg/max = 0.263/0.301/0.340 ms"
    // iputils: "rtt min/avg/max/mdev = 0.040/0.050/0.061/0.008 ms"
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .ok_or_else(|| format!("no round-trip line in {:?}", out.stdout))?;
    line.split('=')
        .nth(1)
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("cannot read the average from {line:?}"))
}

fn need(name: &str) -> String {
    match kobako::var(name) {
        Some(v) => v,
        None => {
            kobako::check(false, &format!("step variable `{name}` is not set"));
            unreachable!()
        }
    }
}

fn probe() -> Result<(), String> {
    let from = need("from");
    let to = need("to");
    let link = need("link");
    let delay: i32 = kobako::var("delay_ms")
        .map(|v| v.parse().map_err(|_| format!("delay_ms {v:?} is not a number")))
        .transpose()?
        .unwrap_or(100);

    let base = avg_rtt_ms(&from, &to)?;
    kobako::log(&format!("baseline {from} -> {to}: {base:.1} ms"));
    kobako::set_var("baseline_ms", &format!("{base:.1}"));

    kobako::impair(&link, delay, 0, 0, 0)?;
    kobako::sleep_ms(200);
    let delayed = avg_rtt_ms(&from, &to)?;
    kobako::log(&format!("with {delay} ms on {link}: {delayed:.1} ms"));
    kobako::set_var("delayed_ms", &format!("{delayed:.1}"));
    let want = base + 2.0 * delay as f64 * 0.95;
    kobako::check(
        delayed >= want,
        &format!("round trip {delayed:.1} ms with {delay} ms delay on {link}, expected at least {want:.1} ms"),
    );

    kobako::clear(&link)?;
    let restored = avg_rtt_ms(&from, &to)?;
    kobako::log(&format!("cleared {link}: {restored:.1} ms"));
    kobako::set_var("restored_ms", &format!("{restored:.1}"));
    kobako::check(
        restored < base + delay as f64,
        &format!("round trip {restored:.1} ms after clearing {link}, expected below {:.1} ms", base + delay as f64),
    );
    kobako::log(&format!("done after {} ms", kobako::elapsed_ms()));
    Ok(())
}

/// The entry point kobako calls: 0 = passed.
#[no_mangle]
pub extern "C" fn run() -> i32 {
    kobako::panics_fail_the_step();
    match probe() {
        Ok(()) => 0,
        Err(e) => {
            kobako::check(false, &e);
            1
        }
    }
}
