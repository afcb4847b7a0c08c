//! The report of a run: per-step results, JUnit XML and a self-contained HTML page.

use serde::Serialize;

/// The result of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub index: usize,
    pub name: String,
    pub action: String,
    /// `passed`, `failed`, `skipped`.
    pub status: String,
    /// Milliseconds from the start of the run.
    pub started_ms: u64,
    pub duration_ms: u64,
    pub expected: Option<String>,
    pub observed: Option<String>,
    pub message: Option<String>,
    /// Measured values (rtt_ms, loss_pct) for plots.
    pub metrics: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub lab: String,
    pub passed: bool,
    pub started_ms: i64,
    pub duration_ms: u64,
    pub steps: Vec<StepResult>,
    /// What was undone at the end.
    pub cleanup: Vec<String>,
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Report {
    /// JUnit XML: one test case per step.
    pub fn junit(&self) -> String {
        let failures = self.steps.iter().filter(|s| s.status == "failed").count();
        let skipped = self.steps.iter().filter(|s| s.status == "skipped").count();
        let mut x = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
            xml(&self.scenario),
            self.steps.len(),
            self.duration_ms as f64 / 1000.0
        );
        for s in &self.steps {
            x.push_str(&format!(
                "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
                xml(&self.lab),
                xml(&s.name),
                s.duration_ms as f64 / 1000.0
            ));
            match s.status.as_str() {
                "failed" => x.push_str(&format!(
                    "<failure message=\"{}\">expected: {}\nobserved: {}\nat {} ms</failure>",
                    xml(s.message.as_deref().unwrap_or("")),
                    xml(s.expected.as_deref().unwrap_or("-")),
                    xml(s.observed.as_deref().unwrap_or("-")),
                    s.started_ms
                )),
                "skipped" => x.push_str("<skipped/>"),
                _ => {}
            }
            x.push_str("</testcase>\n");
        }
        x.push_str("</testsuite>\n");
        x
    }

    /// A self-contained HTML page: verdict, a timeline of the steps, and the measured RTTs.
    pub fn html(&self) -> String {
        let total = self.duration_ms.max(1) as f64;
        let mut rows = String::new();
        for s in &self.steps {
            let left = s.started_ms as f64 / total * 100.0;
            let width = (s.duration_ms as f64 / total * 100.0).max(0.4);
            let color = match s.status.as_str() {
                "passed" => "#2e7d32",
                "failed" => "#c62828",
                _ => "#9e9e9e",
            };
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} ms</td><td><div class=bar><span style=\"left:{left:.2}%;width:{width:.2}%;background:{color}\"></span></div></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                s.index,
                xml(&s.name),
                xml(&s.status),
                s.started_ms,
                xml(s.expected.as_deref().unwrap_or("")),
                xml(s.observed.as_deref().unwrap_or("")),
                xml(s.message.as_deref().unwrap_or(""))
            ));
        }
        // RTT over time as an inline SVG polyline.
        let pts: Vec<(f64, f64)> = self
            .steps
            .iter()
            .filter_map(|s| Some((s.started_ms as f64, s.metrics.get("rtt_ms")?.as_f64()?)))
            .collect();
        let max_rtt = pts.iter().map(|p| p.1).fold(1.0f64, f64::max);
        let poly: Vec<String> = pts
            .iter()
            .map(|(t, r)| {
                format!(
                    "{:.1},{:.1}",
                    t / total * 600.0,
                    150.0 - r / max_rtt * 140.0
                )
            })
            .collect();
        format!(
            "<!doctype html><html><head><meta charset=utf-8><title>{name}</title><style>\
             body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
             td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;font-size:14px}}\
             .bar{{position:relative;width:300px;height:10px;background:#eee}}\
             .bar span{{position:absolute;top:0;height:10px}}</style></head><body>\
             <h1>{name}: {verdict}</h1><p>lab {lab}, {n} steps, {dur} ms</p>\
             <table><tr><th>#</th><th>step</th><th>status</th><th>at</th><th>timeline</th><th>expected</th><th>observed</th><th>message</th></tr>{rows}</table>\
             <h2>RTT over time (max {max_rtt:.0} ms)</h2><svg width=600 height=150 style=\"border:1px solid #ccc\">\
             <polyline fill=none stroke=#1565c0 stroke-width=2 points=\"{poly}\"/></svg>\
             <h2>Cleanup</h2><ul>{cleanup}</ul></body></html>\n",
            name = xml(&self.scenario),
            verdict = if self.passed { "PASSED" } else { "FAILED" },
            lab = xml(&self.lab),
            n = self.steps.len(),
            dur = self.duration_ms,
            poly = poly.join(" "),
            cleanup = self
                .cleanup
                .iter()
                .map(|c| format!("<li>{}</li>", xml(c)))
                .collect::<String>()
        )
    }
}
