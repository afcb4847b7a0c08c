//! The report of a run: per-step results, JUnit XML and a self-contained HTML page.

use serde::Serialize;

/// The result of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Position in the report (depth first, 1-based).
    pub index: usize,
    /// Position in the file: `3`, or `3.2` for the second step of group 3.
    pub id: String,
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
    /// Measured values (rtt_ms, loss_pct, …) of the last attempt.
    pub metrics: serde_json::Value,
    /// Every attempt of a repeated step (`every`, `within`), for the plot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
}

/// One attempt of a repeated step.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Milliseconds from the start of the run.
    pub t_ms: u64,
    pub ok: bool,
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
    /// Why the run stopped before its end (`interrupted (Ctrl-C)`, `cancelled by alice`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Report {
    /// `PASSED`, `FAILED`, or `STOPPED (why)` for a run that was interrupted or cancelled.
    pub fn verdict(&self) -> String {
        match (&self.interrupted, self.passed) {
            (Some(why), _) => format!("STOPPED ({why})"),
            (None, true) => "PASSED".into(),
            (None, false) => "FAILED".into(),
        }
    }

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
                xml(&format!("{} {}", s.id, s.name)),
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
                "skipped" => x.push_str(&format!(
                    "<skipped message=\"{}\"/>",
                    xml(s.message.as_deref().unwrap_or("an earlier step failed"))
                )),
                _ => {}
            }
            x.push_str("</testcase>\n");
        }
        x.push_str("</testsuite>\n");
        x
    }

    /// Measured points `(t_ms, value)` of `metric`, from samples and single attempts.
    pub fn series(&self, metric: &str) -> Vec<(f64, f64)> {
        let mut pts = Vec::new();
        for s in &self.steps {
            if s.samples.is_empty() {
                if let Some(v) = s.metrics.get(metric).and_then(|v| v.as_f64()) {
                    pts.push((s.started_ms as f64, v));
                }
            }
            for x in &s.samples {
                if let Some(v) = x.metrics.get(metric).and_then(|v| v.as_f64()) {
                    pts.push((x.t_ms as f64, v));
                }
            }
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    }

    /// An inline SVG plot of RTT (left axis) and loss (right axis, 0–100 %) over the run, with
    /// a dashed line where each fault step happened.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (720.0, 220.0, 40.0);
        let total = self.duration_ms.max(1) as f64;
        let x = |t: f64| pad + t / total * (w - 2.0 * pad);
        let rtt = self.series("rtt_ms");
        let loss = self.series("loss_pct");
        let max_rtt = rtt.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
        let y = |v: f64, max: f64| h - pad - v / max * (h - 2.0 * pad);
        let line = |pts: &[(f64, f64)], max: f64| {
            pts.iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v, max)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let dots = |pts: &[(f64, f64)], max: f64, color: &str| {
            pts.iter()
                .map(|(t, v)| {
                    format!(
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"><title>{:.0} ms: {v:.1}</title></circle>",
                        x(*t),
                        y(*v, max),
                        t
                    )
                })
                .collect::<String>()
        };
        let mut marks = String::new();
        for s in self.steps.iter().filter(|s| {
            matches!(
                s.action.as_str(),
                "impair"
                    | "clear"
                    | "link"
                    | "pause"
                    | "resume"
                    | "kill"
                    | "restart"
                    | "restore"
                    | "partition"
                    | "heal"
            )
        }) {
            let px = x(s.started_ms as f64);
            marks.push_str(&format!(
                "<line x1=\"{px:.1}\" y1=\"{pad}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" transform=\"rotate(-30 {:.1} {:.1})\">{}</text>",
                h - pad,
                px + 2.0,
                pad - 4.0,
                px + 2.0,
                pad - 4.0,
                xml(&s.name)
            ));
        }
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" style=\"border:1px solid #ccc\">\
             <line x1=\"{pad}\" y1=\"{b:.1}\" x2=\"{r:.1}\" y2=\"{b:.1}\" stroke=\"#333\"/>\
             <text x=\"{pad}\" y=\"{tl:.1}\" font-size=\"11\">0 ms</text><text x=\"{r:.1}\" y=\"{tl:.1}\" font-size=\"11\" text-anchor=\"end\">{total:.0} ms</text>\
             <text x=\"4\" y=\"{pad}\" font-size=\"11\" fill=\"#1565c0\">RTT {max_rtt:.0} ms</text>\
             <text x=\"{r:.1}\" y=\"{pad}\" font-size=\"11\" fill=\"#c62828\" text-anchor=\"end\">loss 100%</text>\
             {marks}\
             <polyline class=\"rtt\" fill=\"none\" stroke=\"#1565c0\" stroke-width=\"2\" points=\"{pr}\"/>{dr}\
             <polyline class=\"loss\" fill=\"none\" stroke=\"#c62828\" stroke-width=\"1.5\" stroke-dasharray=\"2 2\" points=\"{pl}\"/>{dl}\
             </svg>",
            b = h - pad,
            r = w - pad,
            tl = h - pad + 14.0,
            pr = line(&rtt, max_rtt),
            dr = dots(&rtt, max_rtt, "#1565c0"),
            pl = line(&loss, 100.0),
            dl = dots(&loss, 100.0, "#c62828"),
        )
    }

    /// A self-contained HTML page: verdict, a timeline of the steps (when each fault happened,
    /// what each check expected and saw), and the plot of measured RTT and loss.
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
            let ticks: String = s
                .samples
                .iter()
                .map(|x| {
                    format!(
                        "<i style=\"left:{:.2}%;background:{}\"></i>",
                        x.t_ms as f64 / total * 100.0,
                        if x.ok { "#1b5e20" } else { "#b71c1c" }
                    )
                })
                .collect();
            rows.push_str(&format!(
                "<tr class=\"{status}\"><td>{id}</td><td>{name}</td><td>{action}</td><td>{status}</td><td>{at} ms</td><td>{dur} ms</td><td><div class=bar><span style=\"left:{left:.2}%;width:{width:.2}%;background:{color}\"></span>{ticks}</div></td><td>{exp}</td><td>{obs}</td><td>{msg}</td></tr>\n",
                id = xml(&s.id),
                name = xml(&s.name),
                action = xml(&s.action),
                status = xml(&s.status),
                at = s.started_ms,
                dur = s.duration_ms,
                exp = xml(s.expected.as_deref().unwrap_or("")),
                obs = xml(s.observed.as_deref().unwrap_or("")),
                msg = xml(s.message.as_deref().unwrap_or(""))
            ));
        }
        format!(
            "<!doctype html><html><head><meta charset=utf-8><title>{name}</title><style>\
             body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
             td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;font-size:13px;vertical-align:top}}\
             tr.failed td{{background:#ffebee}}\
             .bar{{position:relative;width:300px;height:12px;background:#eee}}\
             .bar span{{position:absolute;top:0;height:12px;opacity:.6}}.bar i{{position:absolute;top:0;width:2px;height:12px}}</style></head><body>\
             <h1>{name}: {verdict}</h1><p>lab {lab}, {n} steps, {dur} ms</p>\
             <h2>Timeline</h2>\
             <table><tr><th>#</th><th>step</th><th>action</th><th>status</th><th>at</th><th>took</th><th>timeline</th><th>expected</th><th>observed</th><th>message</th></tr>{rows}</table>\
             <h2>RTT and loss over time</h2><p>blue: RTT (ms), red dashed: loss (%), grey: fault steps</p>{svg}\
             <h2>Cleanup</h2><ul>{cleanup}</ul></body></html>\n",
            name = xml(&self.scenario),
            verdict = xml(&self.verdict()),
            lab = xml(&self.lab),
            n = self.steps.len(),
            dur = self.duration_ms,
            svg = self.svg(),
            cleanup = self
                .cleanup
                .iter()
                .map(|c| format!("<li>{}</li>", xml(c)))
                .collect::<String>()
        )
    }
}
